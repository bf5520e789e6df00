"""Environment for every Flower process the platform starts.

Flower installs app dependencies at run time, phones home and checks for updates unless told
not to; air-gapped sites (and this project's machines) need all three off.
"""

import os
from collections.abc import Mapping

FLOWER_OFFLINE_ENV: Mapping[str, str] = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus Flower's offline settings and `extra`."""
    env = dict(os.environ)
    env.update(FLOWER_OFFLINE_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env
