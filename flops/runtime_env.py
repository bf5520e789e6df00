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


# SuperExec looks for new tasks every second by default; each round waits for it three times
# (ServerApp start, train, evaluate). A quarter second costs a few idle HTTP calls.
FLOWER_TUNING_ENV: Mapping[str, str] = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"}


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus Flower's offline settings and `extra`."""
    env = dict(os.environ)
    env.update(FLOWER_OFFLINE_ENV)
    for key, value in FLOWER_TUNING_ENV.items():
        env.setdefault(key, value)
    # Flower starts its helpers (flower-superexec, flwr-clientapp) by name: put this
    # installation's scripts first so they come from the same environment.
    scripts = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != scripts:
        env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env
