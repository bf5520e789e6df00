"""Which repositories a project may name in `ml_repo_url`: the manager's source policy.

Checked in the API's request thread before anything is stored, cloned or built, from the
string alone: nothing on disk or the network is looked at, so a refusal is the same text
whether or not a path exists (no oracle for another customer's folders).

- Remote URLs: only the configured schemes (`FLOPS_REPO_SCHEMES`, default `https`) and, when
  `FLOPS_REPO_HOSTS` is set, only those hosts (`git.example.com`, `*.example.com`). scp-style
  `user@host:path` counts as `ssh`. git's remote helpers (`ext::`, `fd::`, any `x::y`) never.
- Local paths and `file://` URLs: only under `FLOPS_REPO_LOCAL_ROOTS` (default
  `FLOPS_HOME/sources`), for the admin token; for customer tokens only when
  `FLOPS_REPO_LOCAL_FOR_CUSTOMERS=1`. The manager's own state (FLOPS_HOME: builds, runs,
  store, node data) is never a source, even under a root that contains it, unless the root
  is itself a folder inside FLOPS_HOME (the default `sources`).
"""

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field

from flops.config import SOURCES_FOLDER

DEFAULT_SCHEMES = ("https",)
KNOWN_SCHEMES = frozenset({"https", "http", "ssh", "git"})
# git's `<transport>::<address>` syntax runs a remote helper (ext:: runs any command).
_REMOTE_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
# git's scp-like syntax: [user@]host:path, with no slash before the first colon.
_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?P<host>[^@/:]+):(?!//)")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class SourceRefused(ValueError):
    """`ml_repo_url` names a source this manager does not take; `message` is for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in re.split(r"[,\s]+", value or "") if item.strip()]


class SourcePolicy(BaseModel):
    """Allowed repository sources (see the module doc); `FLOPS_REPO_*` in the environment."""

    schemes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCHEMES))
    # Empty: any host (of an allowed scheme).
    hosts: list[str] = Field(default_factory=list)
    # None: FLOPS_HOME/sources.
    local_roots: list[Path] | None = None
    local_for_customers: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "SourcePolicy":
        schemes = [s.lower() for s in _split(env.get("FLOPS_REPO_SCHEMES"))] or list(DEFAULT_SCHEMES)
        unknown = sorted(set(schemes) - KNOWN_SCHEMES)
        if unknown:
            raise ValueError(
                f"FLOPS_REPO_SCHEMES names {', '.join(unknown)}: give some of {', '.join(sorted(KNOWN_SCHEMES))} "
                "(local paths are FLOPS_REPO_LOCAL_ROOTS)"
            )
        roots = env.get("FLOPS_REPO_LOCAL_ROOTS")
        return cls(
            schemes=schemes,
            hosts=[h.lower() for h in _split(env.get("FLOPS_REPO_HOSTS"))],
            local_roots=None if roots is None else [Path(p) for p in roots.split(os.pathsep) if p.strip()],
            local_for_customers=env.get("FLOPS_REPO_LOCAL_FOR_CUSTOMERS", "0").lower() in ("1", "true", "yes"),
        )

    def roots(self, home: Path) -> list[Path]:
        """The folders local repositories may lie in, resolved."""
        roots = self.local_roots if self.local_roots is not None else [home / SOURCES_FOLDER]
        return [Path(os.path.realpath(root)) for root in roots]

    def describe(self, home: Path, admin: bool) -> str:
        """What this manager accepts, for the refusal and the docs."""
        hosts = ", ".join(self.hosts) if self.hosts else "any host"
        text = f"a {' or '.join(self.schemes)} URL ({hosts})"
        if admin or self.local_for_customers:
            roots = self.roots(home)
            if roots:
                text += f", or a local path under {os.pathsep.join(str(r) for r in roots)} (FLOPS_REPO_LOCAL_ROOTS)"
        else:
            text += "; local paths are not accepted from customer tokens (FLOPS_REPO_LOCAL_FOR_CUSTOMERS)"
        return text

    def check(self, url: str, home: Path, *, admin: bool, state: Sequence[Path] = ()) -> None:
        """Raise `SourceRefused` unless `url` is a source this policy allows (from the string alone).

        `state`: more folders of the manager's (node data elsewhere than FLOPS_HOME) that are
        never a source.
        """
        refusal = SourceRefused(f"ml_repo_url is not an allowed source: give {self.describe(home, admin)}")
        if _REMOTE_HELPER.match(url):
            raise refusal
        if not url or _CONTROL.search(url) or url.startswith("-"):
            raise SourceRefused("ml_repo_url must be a URL or path without spaces, control characters or a leading '-'")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            self._check_local(unquote(parts.path), [home, *state], home, admin, refusal)
            return
        if scheme and parts.netloc:
            host = (parts.hostname or "").lower()
            if scheme not in self.schemes or not host or not self._host_allowed(host):
                raise refusal
            return
        scp = _SCP_LIKE.match(url)
        if scp and not url.startswith(("/", ".", "~")):
            if "ssh" not in self.schemes or not self._host_allowed(scp.group("host").lower()):
                raise refusal
            return
        self._check_local(url, [home, *state], home, admin, refusal)

    def _host_allowed(self, host: str) -> bool:
        return not self.hosts or any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)

    def _check_local(self, path: str, state: Sequence[Path], home: Path, admin: bool, refusal: SourceRefused) -> None:
        if not (admin or self.local_for_customers) or not path.startswith("/"):
            raise refusal
        # realpath resolves symlinks as far as they exist and never fails: the same answer
        # for a folder that exists and one that does not.
        resolved = Path(os.path.realpath(path))
        private = [Path(os.path.realpath(folder)) for folder in state]
        if not any(_allowed_under(resolved, root, private) for root in self.roots(home)):
            raise refusal


def _allowed_under(path: Path, root: Path, state: Sequence[Path]) -> bool:
    """`path` lies in `root`, and in none of the manager's `state` folders unless `root` is a
    folder inside that one (FLOPS_HOME/sources inside FLOPS_HOME)."""
    if not path.is_relative_to(root):
        return False
    return all(not path.is_relative_to(folder) or (root.is_relative_to(folder) and root != folder) for folder in state)


def join_roots(roots: Sequence[Path]) -> str:
    """The value of FLOPS_REPO_LOCAL_ROOTS for `roots`."""
    return os.pathsep.join(str(root) for root in roots)
