"""The dashboard's pages through Flask's test client: login, sessions, CSRF, CSP, tenancy, what a page shows.

The browser itself drives a real project in tests/test_dashboard_browser.py; these check each
rule on its own, quickly: a page without a session goes to the login form, a login keeps only an
opaque HttpOnly cookie in the browser, a customer's session reaches neither another customer's
page nor its JSON, cancel needs the session's CSRF token, and every page carries a strict CSP.
"""

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from flops.sla import parse_sla
from flops_manager.dashboard.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, DashboardSessions
from flops_manager.dashboard.views import learner_rows, project_row, timeline
from flops_manager.models import Project
from tests.manager_process import sla
from tests.test_api import ADMIN_TOKEN, UNRESOLVABLE_URL, Api, open_api

FLAG = {"figure": "local_loss", "value": 2.3, "median": 0.3, "score": 9.1}


@pytest.fixture(scope="module")
def api(module_tmp: Callable[[str], Path]) -> Iterator[Api]:
    instance, store = open_api(module_tmp("dashboard-home"))
    try:
        yield instance
    finally:
        store.close()


def customer_token(api: Api, customer: str) -> str:
    answer = api.call("POST", "/api/flops/tokens", json={"customer_id": customer})
    assert answer.status_code == 201, answer.get_json()
    return str(answer.get_json()["token"])


def submit(api: Api, customer: str, **fields: Any) -> str:
    """A project of `customer`'s with `fields`, stored as it is (nothing reconciles here)."""
    body = sla(Path("unused"), customerID=customer, ml_repo_url=UNRESOLVABLE_URL)
    project = Project.model_validate(
        {"project_id": uuid.uuid4().hex[:12], "customer_id": customer, "sla": parse_sla(body), **fields}
    )
    api.store.insert(project)
    return project.project_id


def signed_in_client(api: Api, token: str) -> FlaskClient:
    """A fresh browser that went through the login form with `token`."""
    browser = api.client.application.test_client()
    form = browser.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.get_data(as_text=True))
    assert csrf is not None
    answer = browser.post("/ui/login", data={"token": token, "csrf": csrf.group(1)})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return browser


def page_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def training_fields() -> dict[str, Any]:
    """Two finished rounds, node-2 flagged in the second; node-1 and node-2 placed and joined."""
    rounds = [
        {"round": n, "accuracy": 0.5 + n / 10, "loss": 1.0 / n, "learners": 2, "duration_s": 1.0, "per_learner": [
            {"learner": "node-1", "examples": 700, "local_loss": 0.3, "update_norm": 1.9, "global_accuracy": 0.8},
            {"learner": "node-2", "examples": 650, "local_loss": 2.3, "update_norm": 6.1, "flags": [FLAG] * (n == 2)},
        ]}
        for n in (1, 2)
    ]  # fmt: skip
    now = time.time()
    return {
        "status": "training",
        "rounds": rounds,
        "stages": {"building": {"started_at": now - 30, "ended_at": now - 20},
                   "deploying": {"started_at": now - 20, "ended_at": now - 12},
                   "training": {"started_at": now - 12}},
        "deployment": [
            {"name": f"learner-node-{n}", "backend": "local", "ref": str(10 + n), "active": True} for n in (1, 2)
        ] + [{"name": "aggregator", "backend": "local", "ref": "9", "active": True}],
        "events": [
            {"time": now - 11, "component": "learner", "event": "joined", "node": "node-1"},
            {"time": now - 11, "component": "learner", "event": "joined", "node": "node-2"},
            {"time": now - 5, "component": "aggregator", "event": "round", "round": 1},
            {"time": now - 1, "component": "aggregator", "event": "round", "round": 2},
        ],
    }  # fmt: skip


# ---------------------------------------------------------------------------------- login
def test_every_page_needs_a_session_and_goes_to_the_login_form(api: Api) -> None:
    project_id = submit(api, "Admin")
    browser = api.client.application.test_client()
    for path in ("/ui/projects", f"/ui/projects/{project_id}", f"/ui/projects/{project_id}/live", "/ui/projects/rows"):
        answer = browser.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["Location"].startswith("/ui/login?next="), answer.headers["Location"]
    page = f"http://localhost/ui/projects/{project_id}"
    fragment = browser.get(f"/ui/projects/{project_id}/live", headers={"HX-Request": "true", "HX-Current-URL": page})
    assert fragment.status_code == 401
    assert fragment.headers["HX-Redirect"] == f"/ui/login?next=/ui/projects/{project_id}"
    assert browser.post(f"/ui/projects/{project_id}/cancel").status_code == 303
    assert api.store.get(project_id).desired == "running"  # type: ignore[union-attr]


def test_a_login_keeps_only_an_opaque_http_only_cookie(api: Api) -> None:
    token = customer_token(api, "acme")
    browser = api.client.application.test_client()
    form = browser.get("/ui/login?next=/ui/projects")
    csrf = page_csrf(form.get_data(as_text=True))
    refused = browser.post("/ui/login", data={"token": "flops_forged-token-000000", "csrf": csrf})
    assert refused.status_code == 401 and "unknown or revoked token" in refused.get_data(as_text=True)
    no_csrf = browser.post("/ui/login", data={"token": token})
    assert no_csrf.status_code == 403 and browser.get_cookie(SESSION_COOKIE) is None

    answer = browser.post("/ui/login", data={"token": token, "csrf": csrf, "next": "/ui/projects"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/projects"
    set_cookie = next(v for v in answer.headers.getlist("Set-Cookie") if v.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Expires" not in set_cookie
    cookie = browser.get_cookie(SESSION_COOKIE)
    assert cookie is not None and token not in cookie.value and len(cookie.value) >= 40
    assert browser.get_cookie(LOGIN_CSRF_COOKIE, path="/ui/login") is None
    page = browser.get("/ui/projects")
    assert page.status_code == 200 and token not in page.get_data(as_text=True)
    assert "acme" in page.get_data(as_text=True)

    logout = browser.post("/ui/logout", data={"csrf": page_csrf(page.get_data(as_text=True))})
    assert logout.status_code == 303 and browser.get("/ui/projects").status_code == 303


def test_a_login_goes_back_only_to_a_dashboard_page(api: Api) -> None:
    browser = api.client.application.test_client()
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/flops/projects", "/ui\\..\\x"):
        csrf = page_csrf(browser.get("/ui/login").get_data(as_text=True))
        answer = browser.post("/ui/login", data={"token": ADMIN_TOKEN, "csrf": csrf, "next": target})
        assert answer.headers["Location"] == "/ui/projects", target


def test_a_revoked_token_ends_its_sessions(api: Api) -> None:
    token = customer_token(api, "shortlived")
    browser = signed_in_client(api, token)
    assert browser.get("/ui/projects").status_code == 200
    token_id = api.tokens.record_of(token)["token_id"]
    assert api.call("DELETE", f"/api/flops/tokens/{token_id}").status_code == 200
    answer = browser.get("/ui/projects")
    assert answer.status_code == 303 and "unknown+or+revoked" in answer.headers["Location"]


def test_sessions_expire_when_idle_and_the_oldest_goes_when_full() -> None:
    sessions = DashboardSessions(idle_timeout_s=0.05, max_sessions=2)
    first = sessions.open("a")
    assert sessions.get(first.session_id) is first
    time.sleep(0.1)
    assert sessions.get(first.session_id) is None
    second, third, fourth = sessions.open("b"), sessions.open("c"), sessions.open("d")
    assert sessions.get(second.session_id) is None and sessions.get(third.session_id) is third
    assert sessions.get(fourth.session_id) is fourth and not second.csrf_ok(None) and second.csrf_ok(second.csrf)


# ------------------------------------------------------------------------------- the pages
def test_pages_carry_a_strict_csp_and_no_inline_code(api: Api) -> None:
    project_id = submit(api, "Admin", **training_fields())
    browser = signed_in_client(api, ADMIN_TOKEN)
    for path in ("/ui/login", "/ui/projects", f"/ui/projects/{project_id}", f"/ui/projects/{project_id}/live"):
        answer = browser.get(path)
        assert answer.status_code == 200, path
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.headers["Cache-Control"] == "no-store"
        html = answer.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # every script is a file
        assert not re.search(r"\son[a-z]+=|\sstyle=|<style", html), path  # no inline handler or style
    script = browser.get("/ui/static/vendor/htmx-2.0.11.min.js")
    assert script.status_code == 200 and b"htmx" in script.data


def test_the_projects_list_shows_the_customers_own_projects_and_filters_by_status(api: Api) -> None:
    token = customer_token(api, "listing")
    mine, theirs = submit(api, "listing", status="training"), submit(api, "other")
    browser = signed_in_client(api, token)
    html = browser.get("/ui/projects").get_data(as_text=True)
    assert f'data-project="{mine}"' in html and theirs not in html
    assert f'data-project="{mine}"' in browser.get("/ui/projects/rows?status=active").get_data(as_text=True)
    assert mine not in browser.get("/ui/projects?status=completed").get_data(as_text=True)
    assert browser.get("/ui/projects?status=nonsense").status_code == 400


def test_a_customer_reaches_neither_another_customers_page_nor_its_json(api: Api) -> None:
    theirs = submit(api, "victim")
    browser = signed_in_client(api, customer_token(api, "intruder"))
    for path in (f"/ui/projects/{theirs}", f"/ui/projects/{theirs}/live"):
        answer = browser.get(path)
        assert answer.status_code == 404 and f"no project {theirs}" in answer.get_data(as_text=True)
    assert browser.get(f"/api/flops/projects/{theirs}").status_code == 404
    assert browser.get(f"/api/flops/projects/{theirs}/learners").status_code == 404


def test_the_session_cookie_reads_the_project_api_but_changes_nothing(api: Api) -> None:
    token = customer_token(api, "cookie")
    mine = submit(api, "cookie")
    browser = signed_in_client(api, token)
    assert browser.get(f"/api/flops/projects/{mine}").get_json()["project_id"] == mine
    assert browser.get("/api/flops/tracking").status_code == 401  # only the project routes take the cookie
    assert browser.delete(f"/api/flops/projects/{mine}").status_code == 401
    assert api.store.get(mine).desired == "running"  # type: ignore[union-attr]


def test_cancel_needs_the_sessions_csrf_token_from_this_origin(api: Api) -> None:
    token = customer_token(api, "canceller")
    mine = submit(api, "canceller")
    browser = signed_in_client(api, token)
    page = browser.get(f"/ui/projects/{mine}").get_data(as_text=True)
    assert 'id="cancel"' in page
    csrf = page_csrf(page)
    assert browser.post(f"/ui/projects/{mine}/cancel").status_code == 403
    assert browser.post(f"/ui/projects/{mine}/cancel", data={"csrf": "guessed"}).status_code == 403
    other_site = browser.post(
        f"/ui/projects/{mine}/cancel", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert other_site.status_code == 403 and api.store.get(mine).desired == "running"  # type: ignore[union-attr]
    done = browser.post(f"/ui/projects/{mine}/cancel", data={"csrf": csrf}, headers={"Origin": "http://localhost"})
    assert done.status_code == 303 and done.headers["Location"] == f"/ui/projects/{mine}"
    assert api.store.get(mine).desired == "cancelled"  # type: ignore[union-attr]


def test_the_project_page_shows_the_timeline_learners_flags_and_charts(api: Api) -> None:
    project_id = submit(api, "Admin", **training_fields())
    browser = signed_in_client(api, ADMIN_TOKEN)
    html = browser.get(f"/ui/projects/{project_id}").get_data(as_text=True)
    assert 'data-learner="node-2"\n          data-flagged="true"' in html
    assert 'data-learner="node-1"\n          data-flagged="false"' in html
    assert "local_loss 2.3 (round median 0.3, score 9.1)" in html and "flagged in round 2" in html
    assert f'id="project-root" data-project-url="/api/flops/projects/{project_id}"' in html
    assert '<li class="step step-running" data-stage="training">' in html
    assert "round 2 of 3" in html and 'hx-trigger="every 2s"' in html
    assert '<option value="aggregator">aggregator</option>' in html  # the log viewer's components


def test_statistics_and_importances_are_drawn_as_bars(api: Api) -> None:
    histogram = {"edges": [0.0, 1.0, 2.0], "counts": [5.0, 15.0]}
    training: dict[str, Any] = {
        "status": "completed", "project_id": "stats",
        "statistics": {"features": {"age": {"count": 20, "mean": 1.2, "histogram": histogram, "nodes": ["a", "b"]}}},
        "explanation": {"method": "shap", "importances": {"pixel_3": 0.5, "pixel_9": 0.25}, "examples": {"a": 40}},
    }  # fmt: skip
    project_id = submit(api, "Admin", status="completed", training=training)
    browser = signed_in_client(api, ADMIN_TOKEN)
    html = browser.get(f"/ui/projects/{project_id}").get_data(as_text=True)
    assert 'data-label="pixel_3" data-value="0.5"' in html and 'data-label="pixel_9" data-value="0.25"' in html
    assert re.search(r'data-label="pixel_9".*?<rect [^>]*width="110.0"', html, re.S)  # half the largest bar
    assert 'data-feature="age"' in html and 'data-label="1..2" data-value="15.0"' in html
    assert "hx-trigger" not in html  # a final project's page stops polling
    assert 'id="cancel"' not in html


def test_a_hierarchical_projects_page_shows_its_clusters_latest_cycle(api: Api) -> None:
    def cluster(name: str, cycle: int, accuracy: float) -> dict[str, Any]:
        return {"cluster": name, "cycle": cycle, "learners": [f"{name}-a", f"{name}-b"], "accuracy": accuracy,
                "loss": 0.3, "duration_s": 4.0, "rounds": [{"round": 1}, {"round": 2}]}  # fmt: skip

    cycles = [
        {"round": n, "duration_s": 9.0, "clusters": [cluster("north", n, 0.8 + n / 100), cluster("south", n, 0.7)]}
        for n in (1, 2)
    ]
    project_id = submit(api, "Admin", status="training", rounds=cycles)
    browser = signed_in_client(api, ADMIN_TOKEN)
    html = browser.get(f"/ui/projects/{project_id}/live").get_data(as_text=True)
    assert "cycle 2" in html and 'data-cluster="north"' in html and 'data-cluster="south"' in html
    north = html[html.index('data-cluster="north"') :]
    assert "north-a, north-b" in north and "0.82" in north.split("</tr>")[0]


# ------------------------------------------------------------------------------- the views
def test_views_derive_stage_states_progress_and_learner_liveness(api: Api) -> None:
    fields = training_fields()
    project = api.store.get(submit(api, "Admin", **fields))
    assert project is not None
    row = project_row(project)
    assert (row.rounds_done, row.rounds_planned, row.progress_percent, row.stage) == (2, 3, 66, "training")
    states = {step.stage: step.state for step in timeline(project)}
    assert states == {"building": "done", "deploying": "done", "training": "running", "post_training": "pending"}
    learners = {row.name: row for row in learner_rows(project)}
    assert learners["node-1"].online and learners["node-1"].rounds == 2 and learners["node-1"].last_seen
    assert learners["node-2"].flags and learners["node-2"].flagged_rounds == [2] and not learners["node-1"].flags

    fields["events"].append(
        {"time": time.time(), "component": "learner", "event": "failed", "node": "node-1", "message": "MemoryError"}
    )
    again = Project.model_validate({**project.model_dump(), "events": fields["events"]})
    node_1 = next(row for row in learner_rows(again) if row.name == "node-1")
    assert not node_1.online and node_1.failure == "MemoryError"
