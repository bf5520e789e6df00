"""Where FLOps keeps its state on a machine, and its default addresses.

Everything can be moved with environment variables, so tests and several users on one
machine never share state by accident.
"""

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "http://127.0.0.1:7027"


def flops_home() -> Path:
    """Root of FLOps's local state (`FLOPS_HOME`, default `~/.flops`)."""
    return Path(os.environ.get("FLOPS_HOME") or Path.home() / ".flops")


def tracking_uri() -> str:
    return os.environ.get("FLOPS_TRACKING_URI") or DEFAULT_TRACKING_URI
