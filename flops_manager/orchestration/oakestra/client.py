"""Authenticated calls to Oakestra's system manager: login, token renewal, the answers' quirks, errors.

Errors are classified for the manager's retry: a system manager that cannot be reached, times out
or answers 5xx (408 and 429 too) raises `TransientOrchestratorError`; any other refusal (4xx, a
failed login, TLS verification) raises `OakestraAPIError` or `OrchestratorError` with Oakestra's
own message. 501 means "not implemented" and stays permanent.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests

from flops_manager.orchestration.base import OrchestratorError, TransientOrchestratorError
from flops_manager.orchestration.oakestra.settings import OakestraSettings

log = logging.getLogger(__name__)

# What `request(..., missing_ok=True)` returns for a 404.
MISSING = object()
# HTTP statuses worth another try later; every other 4xx / 5xx is an answer that will not change.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class OakestraAPIError(OrchestratorError):
    """The system manager refused a call (a 4xx, or 501): retrying the same call cannot help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def is_transient_status(status_code: int) -> bool:
    """Whether an HTTP status says "not now" (5xx but 501, 408, 429) rather than "no"."""
    return status_code in _TRANSIENT_STATUSES or (status_code >= 500 and status_code != 501)


def http_error(message: str, status_code: int) -> OrchestratorError:
    """The error for an answer with `status_code`: transient or an `OakestraAPIError`."""
    if is_transient_status(status_code):
        return TransientOrchestratorError(message)
    return OakestraAPIError(message, status_code)


def decode_body(text: str) -> Any:
    """An answer's JSON, decoded again while it is a string (Oakestra double-encodes); None if empty."""
    if not text.strip():
        return None
    try:
        value: Any = json.loads(text)
    except ValueError:
        return text
    while isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            break
    return value


def mongo_id(value: Any) -> str:
    """A Mongo id as a plain string: Oakestra sends `{"$oid": "..."}` or a string."""
    if isinstance(value, dict):
        return str(value.get("$oid", ""))
    return "" if value is None else str(value)


def error_message(value: Any) -> str:
    """Oakestra's explanation inside an error answer (its shapes vary between blueprints)."""
    if isinstance(value, dict):
        for key in ("message", "msg", "description", "reason", "error", "errors"):
            inner = value.get(key)
            if inner:
                return error_message(inner) if isinstance(inner, dict | list) else str(inner)
        return json.dumps(value)
    if isinstance(value, list):
        return "; ".join(error_message(item) for item in value)
    return "" if value is None else str(value)


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT without verifying them (Oakestra verifies); {} when it is not one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, without verifying it (the server does); None if there is none."""
    try:
        return float(token_claims(token)["exp"])
    except (KeyError, ValueError, TypeError):
        return None


class OakestraClient:
    """Authenticated calls to the system manager, with token renewal and the quirks absorbed."""

    def __init__(
        self,
        settings: OakestraSettings,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.verify = settings.verify
        self._clock = clock
        self._lock = threading.RLock()
        self._token: str | None = None
        self._token_expires = 0.0
        self._refresh_token: str | None = None
        self._user_id: str | None = None

    def close(self) -> None:
        self.session.close()

    # -- transport ---------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> requests.Response:
        url = self.settings.url + path
        for _ in range(2):
            try:
                response = self.session.request(
                    method,
                    url,
                    json=body,
                    headers=headers,
                    timeout=self.settings.timeout_s,
                    verify=self.settings.verify,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as error:  # a ConnectionError, but one retrying will not fix
                raise OrchestratorError(
                    f"TLS verification of the Oakestra system manager at {self.settings.url} failed: {error}. "
                    "Give its CA certificate in FLOPS_OAKESTRA_CA_FILE"
                ) from error
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as error:
                raise TransientOrchestratorError(
                    f"cannot reach Oakestra at {self.settings.url} ({method} {path}): {error}"
                ) from error
            except requests.RequestException as error:
                raise OrchestratorError(f"cannot call Oakestra at {self.settings.url}: {error}") from error
            if response.status_code not in (307, 308) or "Location" not in response.headers:
                return response
            # POST routes live under a trailing slash; follow the redirect once, same origin only
            # (the bearer token must not travel elsewhere), keeping method and body.
            target = urljoin(url, response.headers["Location"])
            if urlsplit(target)[:2] != urlsplit(self.settings.url)[:2] or target == url:
                break
            url = target
        raise OrchestratorError(f"Oakestra redirected {method} {path} again or elsewhere ({response.status_code})")

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True, missing_ok: bool = False) -> Any:
        """Call the system manager; the decoded answer, `MISSING` for a 404 when `missing_ok`.

        A 401 renews the token and retries once. Raises `TransientOrchestratorError` when Oakestra
        cannot be reached or answers 5xx, `OakestraAPIError` with Oakestra's message for a refusal.
        """
        response: requests.Response | None = None
        for attempt in range(2):
            headers = {"Accept": "application/json"}
            token = self._access_token() if auth else None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = self._send(method, path, body, headers)
            if response.status_code == 401 and auth and attempt == 0:
                with self._lock:
                    if self._token == token:  # not already renewed by another thread
                        self._renew()
                continue
            break
        assert response is not None
        if missing_ok and response.status_code == 404:
            return MISSING
        value = decode_body(response.text)
        if not response.ok:
            reason = error_message(value) or response.reason
            raise http_error(
                f"Oakestra {method} {path} failed (HTTP {response.status_code}): {reason}", response.status_code
            )
        return value

    # -- authentication ----------------------------------------------------------------------------

    def _access_token(self) -> str:
        with self._lock:
            if self._token is None:
                self.login()
            elif self._token_expires - self._clock() < self.settings.refresh_margin_s:
                self._renew()
            assert self._token is not None
            return self._token

    def login(self) -> None:
        """Log in with the settings' credentials; a refusal names the user and Oakestra's reason."""
        body: dict[str, str] = {
            "username": self.settings.username,
            "password": self.settings.password.get_secret_value(),
        }
        if self.settings.organization:
            body["organization_name"] = self.settings.organization
        response = self._send("POST", "/api/auth/login", body, {"Accept": "application/json"})
        value = decode_body(response.text)
        if not response.ok or not isinstance(value, dict) or not value.get("token"):
            reason = error_message(value) or response.reason
            raise http_error(
                f"Oakestra login as {self.settings.username!r} failed (HTTP {response.status_code}): {reason}",
                response.status_code,
            )
        self._set_token(str(value["token"]))
        self._refresh_token = str(value.get("refresh_token") or "") or None

    def _set_token(self, token: str) -> None:
        self._token = token
        expiry = _token_expiry(token)
        self._token_expires = expiry if expiry is not None else self._clock() + self.settings.token_lifetime_s

    def _renew(self) -> None:
        """Refresh the access token with the refresh token; log in again if that is refused."""
        if self._refresh_token:
            response = self._send(
                "POST",
                "/api/auth/refresh",
                None,
                {"Accept": "application/json", "Authorization": f"Bearer {self._refresh_token}"},
            )
            value = decode_body(response.text)
            if response.ok and isinstance(value, dict) and value.get("token"):
                self._set_token(str(value["token"]))
                if value.get("refresh_token"):
                    self._refresh_token = str(value["refresh_token"])
                return
            log.info("Oakestra token refresh refused (HTTP %s); logging in again", response.status_code)
        self.login()

    def user_id(self) -> str:
        """The caller's user id, which `GET /api/applications/<userid>` wants (Mongo `_id`, not the name)."""
        with self._lock:
            if self._user_id is None:
                user = self.request("GET", f"/api/user/{quote(self.settings.username, safe='')}")
                user_id = mongo_id(user.get("_id")) if isinstance(user, dict) else ""
                if not user_id:
                    raise OrchestratorError(f"Oakestra did not say the id of user {self.settings.username!r}")
                self._user_id = user_id
            return self._user_id
