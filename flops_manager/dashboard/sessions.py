"""Dashboard logins: the API's token, kept by the manager behind an opaque browser-session cookie.

Contract: `POST /ui/login` with a token the API accepts opens a session; the browser gets only
a random session id, in a cookie that is HttpOnly (no script reads it), SameSite=Strict (no
other site's page sends it), Secure on HTTPS, and without an expiry (gone when the browser
closes). The token never appears in a URL, a page or the browser's storage. Every request
authenticates the token again (`TokenService.authenticate`), so a revoked token ends its
sessions at once. Sessions live in the manager's memory: a manager restart logs everyone out.

Each session has its own CSRF token: the forms that change something (cancel, logout) carry it
and are refused without it. The login form, which has no session yet, is protected by a
double-submit cookie (`LOGIN_CSRF_COOKIE`).
"""

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

SESSION_COOKIE = "flops_session"
LOGIN_CSRF_COOKIE = "flops_login_csrf"
IDLE_TIMEOUT_S = 8 * 3600.0
MAX_SESSIONS = 1000


@dataclass
class DashboardSession:
    session_id: str
    token: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_used: float = field(default_factory=time.monotonic)

    def authorization(self) -> str:
        """The `Authorization` header the API would get from this session's owner."""
        return f"Bearer {self.token}"

    def csrf_ok(self, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(self.csrf, str(offered))


class DashboardSessions:
    """Open dashboard sessions by id; the least recently used one goes when `max_sessions` are open."""

    def __init__(self, idle_timeout_s: float = IDLE_TIMEOUT_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self._sessions: dict[str, DashboardSession] = {}
        self._lock = threading.Lock()

    def open(self, token: str) -> DashboardSession:
        """A new session for `token` (already authenticated by the caller)."""
        session = DashboardSession(session_id=secrets.token_urlsafe(32), token=token)
        with self._lock:
            self._expire(time.monotonic())
            while len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions.values(), key=lambda known: known.last_used)
                del self._sessions[oldest.session_id]
            self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> DashboardSession | None:
        """The live session with this id (its idle clock restarted), else None."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is not None:
                session.last_used = now
            return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _expire(self, now: float) -> None:
        for stale in [key for key, known in self._sessions.items() if now - known.last_used > self.idle_timeout_s]:
            del self._sessions[stale]
