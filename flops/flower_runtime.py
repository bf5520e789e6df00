"""The Flower processes the aggregator and the learners run beside their SuperLink / SuperNode.

Both run Flower in `process` isolation with a SuperExec of their own (the aggregator's is a
process, a learner's a thread of its SuperNode: `learner.warm_clientapp`) and a shared secret only
they read (a 0600 file): Flower's own `subprocess` isolation ignores
the secret, and then anyone who reaches the Runtime API could acquire the run's task and read
its app (the customer's code) and messages. The secret travels as a file path, never as a value.
"""

import secrets
import sys
from pathlib import Path

from flops.pki import write_private

SECRET_BYTES = 32


def adaptive_flower_command(script: str) -> list[str]:
    """Flower's console script `script` (flower-supernode, flower-superexec) of this Python, with
    the adaptive polling of `flops.flower_polling`."""
    return [sys.executable, "-m", "flops.flower_polling", script]


def new_secret_file(path: Path) -> Path:
    """A fresh random secret in `path` (0600)."""
    write_private(path, secrets.token_hex(SECRET_BYTES).encode("ascii"))
    return path


def superexec_command(
    runtime_address: str,
    root_certificates: Path | None,
    secret_file: Path,
    parent_pid: int,
    launcher: list[str] | None = None,
) -> list[str]:
    """SuperExec for the Runtime API at `runtime_address`: TLS checked against `root_certificates`
    (None only for a SuperLink its aggregator was explicitly told to run without TLS).

    `launcher` runs Flower's flower-superexec (default: `adaptive_flower_command`'s); the
    learners' starts their warm ClientApp workers (`learner.warm_clientapp`)."""
    tls = ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    return [
        *(launcher or adaptive_flower_command("flower-superexec")),
        "--runtime-api-address", runtime_address,
        *tls,
        "--superexec-auth-secret-file", str(secret_file),
        "--parent-pid", str(parent_pid),
    ]  # fmt: skip
