"""Environment for every Flower process the platform starts.

Flower installs app dependencies at run time, phones home and checks for updates unless told
not to; air-gapped sites (and this project's machines) need all three off.
"""

import os
import sys
from collections.abc import Mapping
from pathlib import Path

FLOWER_OFFLINE_ENV: Mapping[str, str] = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus Flower's offline settings and `extra`."""
    env = dict(os.environ)
    env.update(FLOWER_OFFLINE_ENV)
    # Flower starts its helpers (flower-superexec, flwr-clientapp) by name: put this
    # installation's scripts first so they come from the same environment.
    scripts = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != scripts:
        env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env
