"""Environment for every Flower process the platform starts.

Flower installs app dependencies at run time, phones home and checks for updates unless told
not to; air-gapped sites (and this project's machines) need all three off.

Two kinds of environment:

- `actor_env`: what a process that runs user code gets (aggregator, learners, model server,
  the builder's install steps): built from nothing, never from the caller's `os.environ`. A
  PATH, a private HOME, LANG, TMPDIR, unbuffered Python, Flower's offline settings, and the
  extras the caller names (the actor's broker credentials, its project id). No manager secret
  (FLOPS_ADMIN_TOKEN, the store's URI, the manager's MQTT or MLflow credentials) can reach it
  unless a caller names it.
- `process_env`: the caller's environment plus Flower's settings, for FLOps's own trusted
  processes (the stack's manager and observatory, `flops train` on the user's own machine)
  and for an actor's children inside its sandbox, whose environment is already `actor_env`.
"""

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

FLOWER_OFFLINE_ENV: Mapping[str, str] = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


# SuperExec looks for new tasks every second by default; each round waits for it three times
# (ServerApp start, train, evaluate). A quarter second costs a few idle HTTP calls.
FLOWER_TUNING_ENV: Mapping[str, str] = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"}


# Where programs are when the actor's own environment does not have them.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def actor_env(
    home: Path | str, extra: Mapping[str, str] | None = None, scripts: Sequence[Path | str] = ()
) -> dict[str, str]:
    """The whole environment of a process that runs user code: nothing of the caller's.

    `scripts` go first on PATH (the actor's environment's `bin`, so Flower finds its helpers
    there); `home` is the process's private, writable HOME; `extra` (the actor's own settings
    and credentials) is added last.
    """
    path = [str(folder) for folder in scripts if str(folder)]
    env = {
        "PATH": os.pathsep.join([*dict.fromkeys(path), SYSTEM_PATH]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        **FLOWER_OFFLINE_ENV,
        **FLOWER_TUNING_ENV,
    }
    if extra:
        env.update(extra)
    return env


# What only the manager itself may hold: never in the environment of a process it starts.
MANAGER_SECRETS = ("FLOPS_ADMIN_TOKEN", "FLOPS_ADMIN_TOKEN_FILE", "FLOPS_MONGO_URI", "FLOPS_TOKEN", "FLOPS_TOKEN_FILE")
MANAGER_SECRET_PREFIXES = ("FLOPS_OAKESTRA_",)


def without_manager_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """`env` less the manager's own secrets (`MANAGER_SECRETS`, `MANAGER_SECRET_PREFIXES`)."""
    return {
        key: value
        for key, value in env.items()
        if key not in MANAGER_SECRETS and not key.startswith(MANAGER_SECRET_PREFIXES)
    }


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus Flower's offline settings and `extra`.

    For trusted processes and for children inside a sandbox; user code that FLOps starts gets
    `actor_env` instead.
    """
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
