"""Where FLOps keeps its state on a machine, and its default addresses.

Everything can be moved with environment variables, so tests and several users on one
machine never share state by accident.
"""

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TRACKING_URI = "http://127.0.0.1:7027"
# FLOPS_HOME holds the store, tokens, broker passwords and every project's files: only its owner enters.
PRIVATE_MODE = 0o700
# FLOPS_HOME/sources: where local repositories may lie by default (the manager's source policy).
SOURCES_FOLDER = "sources"

log = logging.getLogger("flops")


def flops_home(env: Mapping[str, str] | None = None) -> Path:
    """Root of FLOps's local state (`FLOPS_HOME` of `env`, default the process's; else `~/.flops`)."""
    return Path((os.environ if env is None else env).get("FLOPS_HOME") or Path.home() / ".flops")


def tracking_uri(env: Mapping[str, str] | None = None) -> str:
    """The MLflow tracking server (`FLOPS_TRACKING_URI` of `env`, default the process's)."""
    return (os.environ if env is None else env).get("FLOPS_TRACKING_URI") or DEFAULT_TRACKING_URI


def ensure_private_home(home: Path) -> Path:
    """Create `home` (FLOPS_HOME) private to this user (0700), or make an existing one so.

    A looser mode found on an existing folder is tightened, with one log line saying so.
    Sandboxed actors reach the paths they need through bind mounts, so 0700 does not block them.
    """
    home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODE)
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        home.chmod(PRIVATE_MODE)
        log.warning("FLOPS_HOME %s was open to others (mode %o): made private (0700)", home, mode)
    return home
