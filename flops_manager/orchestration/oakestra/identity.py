"""Oakestra login tokens as API credentials: what the original `oak` CLI sends.

The `oak` CLI logs in to Oakestra's system manager and sends that access token to the FLOps
manager as `Authorization: Bearer <token>`; it has no way to send another. With
`FLOPS_OAKESTRA_USER_TOKENS=1` the manager asks the Oakestra it is configured for whether a
bearer that is not a FLOps token is a valid access token: `GET /api/user/<name>` with that
token answers 200 only for an unexpired access token of that user. The Oakestra user name
becomes the customer id (a customer, never the admin). An accepted token is remembered, by its
hash, until its `exp` and for at most `cache_s`, so a request costs Oakestra one call a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import requests

from flops_manager.auth import IdentityUnavailable, hash_token
from flops_manager.orchestration.oakestra.client import token_claims
from flops_manager.orchestration.oakestra.settings import OakestraSettings

# Oakestra user names FLOps accepts as customer ids (the API's customer-id pattern).
_MAX_NAME = 64


class OakestraIdentity:
    """Answers "whose Oakestra access token is this?" by asking Oakestra; None when it is nobody's."""

    def __init__(
        self,
        settings: OakestraSettings,
        *,
        cache_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.cache_s = cache_s
        self.clock = clock
        self.session = session or requests.Session()
        self._accepted: dict[str, tuple[str, float]] = {}  # token hash -> (user, valid until)
        self._lock = threading.Lock()

    def customer_for(self, token: str) -> str | None:
        """The Oakestra user `token` belongs to, or None; `IdentityUnavailable` if Oakestra can't say."""
        digest = hash_token(token)
        now = self.clock()
        with self._lock:
            cached = self._accepted.get(digest)
            if cached is not None and cached[1] > now:
                return cached[0]
        claims = token_claims(token)
        user = claims.get("sub") or claims.get("identity") or claims.get("username")
        if not isinstance(user, str) or not user or len(user) > _MAX_NAME or claims.get("type") == "refresh":
            return None
        url = f"{self.settings.url}/api/user/{quote(user, safe='')}"
        try:
            answer = self.session.get(
                url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=min(self.settings.timeout_s, 10.0),
                verify=self.settings.verify,
            )
        except requests.RequestException as error:
            raise IdentityUnavailable(f"Oakestra ({self.settings.url}) cannot be reached: {error}") from error
        if answer.status_code >= 500:
            raise IdentityUnavailable(f"Oakestra ({self.settings.url}) answered HTTP {answer.status_code}")
        if answer.status_code != 200:
            return None
        expires = claims.get("exp")
        until = now + self.cache_s
        if isinstance(expires, int | float):
            until = min(until, float(expires))
        with self._lock:
            self._accepted[digest] = (user, until)
        return user
