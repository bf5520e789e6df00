"""The API's limits and timeouts, one settings object (`FLOPS_API_*`, `FLOPS_MAX_*`, `FLOPS_*_QUOTA_*`).

Every number a hostile or careless client could push against has a limit here, with the
environment variable that sets it; docs/security.md lists them.
"""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"{name} is '{value}': give a number") from error


class ApiLimits(BaseModel):
    # Request bodies: bytes (413 above), nesting depth of JSON/YAML (422 above).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_nesting_depth: int = Field(default=32, ge=4)
    # Slow work that runs for a request (dry runs, mock data): at most this many at once;
    # more answer 503 with Retry-After instead of waiting for a request thread.
    slow_workers: int = Field(default=2, ge=1)
    mock_timeout_s: float = Field(default=60.0, gt=0)
    # Logs: at most this many lines and bytes per component, read from the end of the file.
    max_log_lines: int = Field(default=5000, ge=1)
    max_log_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Mock data: node folders one request may make; tags one customer may own.
    max_mock_nodes: int = Field(default=64, ge=1)
    max_tags_per_customer: int = Field(default=32, ge=1)
    # Disk one customer's builds may hold (their live projects' build folders and
    # environments, plus an estimate for each build still running); 0: no quota.
    customer_disk_quota_mb: float = Field(default=4096.0, ge=0)
    build_estimate_mb: float = Field(default=200.0, ge=0)
    # waitress: request threads, open connections, the listen backlog, idle and
    # whole-request timeouts (a client sending its headers byte by byte is cut off after
    # request_timeout_s), and how often those are checked.
    threads: int = Field(default=8, ge=1)
    connection_limit: int = Field(default=512, ge=8)
    backlog: int = Field(default=1024, ge=8)
    channel_timeout_s: int = Field(default=30, ge=1)
    request_timeout_s: float = Field(default=15.0, gt=0)
    cleanup_interval_s: int = Field(default=2, ge=1)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ApiLimits":
        names = {
            "max_body_bytes": "FLOPS_API_MAX_BODY_BYTES",
            "max_nesting_depth": "FLOPS_API_MAX_NESTING",
            "slow_workers": "FLOPS_API_SLOW_WORKERS",
            "mock_timeout_s": "FLOPS_MOCK_TIMEOUT",
            "max_log_lines": "FLOPS_API_MAX_LOG_LINES",
            "max_log_bytes": "FLOPS_API_MAX_LOG_BYTES",
            "max_mock_nodes": "FLOPS_MAX_MOCK_NODES",
            "max_tags_per_customer": "FLOPS_MAX_TAGS_PER_CUSTOMER",
            "customer_disk_quota_mb": "FLOPS_CUSTOMER_DISK_QUOTA_MB",
            "build_estimate_mb": "FLOPS_BUILD_ESTIMATE_MB",
            "threads": "FLOPS_API_THREADS",
            "connection_limit": "FLOPS_API_CONNECTION_LIMIT",
            "backlog": "FLOPS_API_BACKLOG",
            "channel_timeout_s": "FLOPS_API_CHANNEL_TIMEOUT",
            "request_timeout_s": "FLOPS_API_REQUEST_TIMEOUT",
            "cleanup_interval_s": "FLOPS_API_CLEANUP_INTERVAL",
        }
        defaults = cls()
        values: dict[str, Any] = {}
        for field, name in names.items():
            default = getattr(defaults, field)
            number = _number(env, name, float(default))
            values[field] = int(number) if isinstance(default, int) else number
        return cls(**values)

    def waitress_options(self) -> dict[str, Any]:
        """waitress's `serve()`/`create_server()` options for these limits."""
        return {
            "threads": self.threads,
            "connection_limit": self.connection_limit,
            "backlog": self.backlog,
            "channel_timeout": self.channel_timeout_s,
            "cleanup_interval": self.cleanup_interval_s,
            # poll(2), not select(2): select cannot watch more than 1024 sockets.
            "asyncore_use_poll": True,
            "max_request_header_size": 64 * 1024,
            # waitress cuts larger bodies itself (a plain-text 413, the body never buffered whole);
            # up to this the app answers 413 in JSON.
            "max_request_body_size": 8 * self.max_body_bytes,
        }
