"""The dashboard's pages under `/ui`: login, projects list, project page, cancel.

Server-rendered HTML (Jinja, autoescaped) refreshed in place by htmx fragments; the round
charts and the log viewer read the JSON API (`/api/flops/projects/...`) from the page, with
the session cookie (`sessions`). Every page and fragment needs a session; a customer sees only
its own projects (another's is "no project", as in the API). Every answer carries a strict
Content-Security-Policy: scripts and styles from the manager only, no inline code, no frames.
"""

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from flask import Blueprint, abort, g, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response

from flops_manager.auth import AuthError, Principal, TokenService, visible_project
from flops_manager.controller import Controller
from flops_manager.dashboard.sessions import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    DashboardSessions,
)
from flops_manager.dashboard.views import page_context, project_row
from flops_manager.models import ACTIVE_STATUSES, Project, ProjectStatus
from flops_manager.project_view import project_view

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a browser send `Origin: null` with the forms
}
ACTIVE_FILTER = "active"
POLL_TRIGGER = "every 2s"
F = TypeVar("F", bound=Callable[..., Any])


def dashboard_blueprint(controller: Controller, tokens: TokenService, sessions: DashboardSessions) -> Blueprint:
    pages = Blueprint(
        "dashboard", __name__, url_prefix="/ui", template_folder="templates", static_folder="static",
        static_url_path="/static",
    )  # fmt: skip
    store = controller.store

    @pages.after_request
    def secured(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.endpoint != "dashboard.static":
            response.headers["Cache-Control"] = "no-store"
        return response

    def login_redirect(message: str | None = None) -> Response:
        """To the login page, back here after; a polling fragment tells htmx to move the whole page."""
        target = request.full_path.rstrip("?") if request.method == "GET" else url_for("dashboard.projects")
        if request.headers.get("HX-Request"):  # a fragment: back to the page it polls for
            target = urlsplit(request.headers.get("HX-Current-URL", "")).path or target
        location = url_for("dashboard.login", next=target, reason=message)
        if request.headers.get("HX-Request"):
            response = make_response("", 401)
            response.headers["HX-Redirect"] = location
            return response
        return redirect(location, 303)

    def signed_in(view: F) -> F:
        """The view runs for a live session whose token the API still accepts (`g.session`, `g.principal`)."""

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                return login_redirect()
            try:
                g.principal = tokens.authenticate(session.authorization())
            except AuthError as error:
                sessions.close(session.session_id)
                return login_redirect(error.message)
            g.session = session
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def visible(project_id: str) -> Project:
        project = visible_project(store, g.principal, project_id)
        if project is None:
            abort(404, f"no project {project_id}")
        return project

    def render(template: str, status: int = 200, **context: Any) -> Response:
        return make_response(render_template(template, **context), status)

    @pages.errorhandler(404)
    def not_found(error: Any) -> Response:
        return render("error.html", 404, message=getattr(error, "description", "not found"))

    @pages.get("/")
    def home() -> Response:
        return redirect(url_for("dashboard.projects"), 303)

    @pages.get("/login")
    def login() -> Response:
        csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = render(
            "login.html", csrf=csrf, next=safe_next(request.args.get("next")), reason=request.args.get("reason")
        )
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="Strict", secure=request.is_secure,
                            path=url_for("dashboard.login"))  # fmt: skip
        return response

    @pages.post("/login")
    def sign_in() -> Response:
        offered = request.form.get("csrf", "")
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        next_page = safe_next(request.form.get("next"))
        if not expected or not hmac.compare_digest(expected, offered):
            return render("login.html", 403, csrf=expected, next=next_page,
                          reason="the login form expired: load the page again and sign in")  # fmt: skip
        token = request.form.get("token", "").strip()
        try:
            tokens.authenticate(f"Bearer {token}")
        except AuthError as error:
            return render("login.html", error.status, csrf=expected, next=next_page, reason=error.message)
        session = sessions.open(token)
        response = redirect(next_page or url_for("dashboard.projects"), 303)
        response.set_cookie(SESSION_COOKIE, session.session_id, httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/")  # fmt: skip
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=url_for("dashboard.login"))
        return response

    @pages.post("/logout")
    def sign_out() -> Response:
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is not None and session.csrf_ok(request.form.get("csrf")):
            sessions.close(session.session_id)
        response = redirect(url_for("dashboard.login"), 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def wanted_statuses() -> tuple[str, list[ProjectStatus] | None]:
        chosen = request.args.get("status", "").strip()
        if not chosen:
            return "", None
        if chosen == ACTIVE_FILTER:
            return chosen, list(ACTIVE_STATUSES)
        try:
            return chosen, [ProjectStatus(chosen)]
        except ValueError:
            abort(400, f"no status '{chosen}'")

    @pages.get("/projects")
    @signed_in
    def projects() -> Response:
        chosen, statuses = wanted_statuses()
        return render(
            "projects.html", chosen=chosen, rows=listed(statuses),
            statuses=[ACTIVE_FILTER, *[status.value for status in ProjectStatus]], trigger=POLL_TRIGGER,
        )  # fmt: skip

    @pages.get("/projects/rows")
    @signed_in
    def project_rows() -> Response:
        _, statuses = wanted_statuses()
        return render("_project_rows.html", rows=listed(statuses))

    def listed(statuses: list[ProjectStatus] | None) -> list[Any]:
        principal: Principal = g.principal
        customer = None if principal.is_admin else principal.customer_id
        return [project_row(project) for project in store.list(customer, statuses)]

    @pages.get("/projects/<project_id>")
    @signed_in
    def project_page(project_id: str) -> Response:
        project = visible(project_id)
        return render("project.html", trigger=POLL_TRIGGER,
                      components=controller.components(project), **context_of(project))  # fmt: skip

    @pages.get("/projects/<project_id>/live")
    @signed_in
    def project_live(project_id: str) -> Response:
        project = visible(project_id)
        return render("_project_live.html", trigger=POLL_TRIGGER,
                      **context_of(project))  # fmt: skip

    def context_of(project: Project) -> dict[str, Any]:
        return page_context(project, project_view(project, full=True))

    @pages.post("/projects/<project_id>/cancel")
    @signed_in
    def cancel(project_id: str) -> Response:
        if not g.session.csrf_ok(request.form.get("csrf")) or not same_origin():
            return render("error.html", 403,
                          message="this cancel request did not come from the project's page: open the page and "
                                  "use its Cancel button")  # fmt: skip
        project = visible(project_id)
        if project.active:
            controller.cancel(project_id)
        return redirect(url_for("dashboard.project_page", project_id=project_id), 303)

    def same_origin() -> bool:
        """A browser's Origin (sent with every form POST) must be this manager's, if it sent one."""
        origin = request.headers.get("Origin")
        return origin is None or origin == request.host_url.rstrip("/")

    return pages


def safe_next(target: str | None) -> str | None:
    """Only a dashboard path is a place to go back to after login (no open redirect)."""
    if not target or not target.startswith("/ui/") or target.startswith("//") or "\\" in target:
        return None
    return quote(target, safe="/?=&%-_.~")
