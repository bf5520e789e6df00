"""Where FLOps keeps its state on a machine, and its default addresses.

Everything can be moved with environment variables, so tests and several users on one
machine never share state by accident.
"""

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TRACKING_URI = "http://127.0.0.1:7027"


def flops_home(env: Mapping[str, str] | None = None) -> Path:
    """Root of FLOps's local state (`FLOPS_HOME` of `env`, default the process's; else `~/.flops`)."""
    return Path((os.environ if env is None else env).get("FLOPS_HOME") or Path.home() / ".flops")


def tracking_uri(env: Mapping[str, str] | None = None) -> str:
    """The MLflow tracking server (`FLOPS_TRACKING_URI` of `env`, default the process's)."""
    return (os.environ if env is None else env).get("FLOPS_TRACKING_URI") or DEFAULT_TRACKING_URI
