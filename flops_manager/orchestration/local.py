"""The `local` backend: FL actors as processes on this machine, the embedded default.

Each service runs in its own session (process group) so that stopping it stops Flower's
children too, and so that a manager that dies does not take training down with it: a
restarted manager finds the groups again by the ids kept in the store.

Every service runs user code, so every one starts in a sandbox (`flops.sandbox`): it sees
the system folders, its spec's `read_only_paths` and `writable_paths`, its interpreter, its
`secret_files` and the files its environment names (`*_FILE` variables), both as private
read-only copies its uid can read, and a private HOME (also its working folder) at
`<runs>/<project>/sandbox/<service>`; FLOPS_HOME, the store, tokens and other projects'
files are not there. As root it runs as FLOPS_SANDBOX_UID (65534 by default).
Its environment is `flops.runtime_env.actor_env`: the spec's `env`, nothing of the manager's.
The image builder (role `builder`) is FLOps's own code and needs the build cache: it runs
unsandboxed, without the manager's secrets, and sandboxes the steps that run user code itself.
The sandbox does not die with the manager (no --die-with-parent): training survives a
manager restart.

A process that cannot be started (a missing executable, no permission, an unwritable log
folder, no bubblewrap: install it or set FLOPS_SANDBOX=off) is a permanent
`OrchestratorError`; only a machine out of processes or memory for now (EAGAIN, ENOMEM) is
transient. Status and logs read this machine and never fail transiently.
"""

import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from flops.processes import group_alive, stop_group
from flops.runtime_env import process_env, without_manager_secrets
from flops.sandbox import Sandbox, SandboxSettings, SandboxUnavailable, python_paths, read_sandbox_pid, stop_sandbox
from flops_manager.models import ProcessHandle
from flops_manager.orchestration.base import (
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
    TransientOrchestratorError,
)

# The most of a log one call reads, from its end: a 300 MB log costs the manager this much.
MAX_LOG_TAIL_BYTES = 1024 * 1024
# fork() or exec() refused for lack of resources that may come back: worth another try.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM})
# FLOps's own one-shot builder: trusted, it sandboxes the install steps that run user code.
TRUSTED_ROLES = frozenset({"builder"})
SANDBOX_FOLDER = "sandbox"
log = logging.getLogger("flops.manager")


class LocalOrchestrator(Orchestrator):
    name = "local"

    def __init__(self, runs_dir: Path, sandbox: SandboxSettings | None = None) -> None:
        """Services under `runs_dir`; `sandbox` default: `SandboxSettings.from_env()` hiding `runs_dir` too."""
        self.runs_dir = runs_dir
        self.sandbox = sandbox or SandboxSettings.from_env(hidden=[runs_dir])
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        (log.warning if self.sandbox.mode != "uid" else log.info)("local backend: %s", self.sandbox.describe())

    def log_path(self, spec: ServiceSpec) -> Path:
        return self.runs_dir / spec.project_id / "logs" / f"{spec.name}.log"

    def sandbox_for(self, spec: ServiceSpec) -> Sandbox:
        """The sandbox `spec` runs in: its paths, its interpreter, its secrets and `*_FILE`s, a private HOME."""
        home = self.runs_dir / spec.project_id / SANDBOX_FOLDER / spec.name
        executable = spec.command[0] if spec.command and os.path.isabs(spec.command[0]) else None
        return Sandbox.create(
            self.sandbox,
            home,
            read_only=[*python_paths(executable), *spec.read_only_paths],
            writable=spec.writable_paths,
            secrets=[*spec.secret_files, *named_files(spec.env)],
            extra_env=spec.env,
            scripts=[os.path.dirname(executable)] if executable else [],
        )

    def _sandbox(self, spec: ServiceSpec) -> Sandbox | None:
        """The prepared sandbox `spec` starts in; None for FLOps's own builder."""
        if spec.role in TRUSTED_ROLES:
            return None
        try:
            self.sandbox.check()
            sandbox = self.sandbox_for(spec)
            program = spec.command[0] if spec.command else ""
            # Inside the sandbox a missing program would only be an exit code: refuse it here.
            if not shutil.which(program, path=sandbox.env["PATH"]):
                raise OrchestratorError(
                    f"cannot start {spec.name} ({program or 'no command'}): no such executable program"
                )
            missing = [path for path in sandbox.secrets if not path.is_file()]
            if missing:
                raise OrchestratorError(f"cannot start {spec.name}: its secret file {missing[0]} does not exist")
            sandbox.prepare()
            return sandbox
        except SandboxUnavailable as error:
            raise OrchestratorError(f"cannot start {spec.name} in a sandbox: {error}") from error
        except OSError as error:
            raise OrchestratorError(f"cannot prepare the sandbox of {spec.name}: {error}") from error

    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        log_path = self.log_path(spec)
        sandbox = self._sandbox(spec)
        info_read, info_write = os.pipe() if sandbox is not None and sandbox.settings.enabled else (-1, -1)
        info_fd = info_write if info_write >= 0 else None
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log, _launch(sandbox, spec, info_fd) as (command, env, fds):
                child = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    pass_fds=fds,
                )
        except OSError as error:
            if info_read >= 0:
                os.close(info_read)
            kind = TransientOrchestratorError if error.errno in _TRANSIENT_ERRNOS else OrchestratorError
            raise kind(
                f"cannot start {spec.name} ({spec.command[0] if spec.command else 'no command'}): {error}"
            ) from error
        finally:
            if info_write >= 0:
                os.close(info_write)
        sandbox_pid = None
        if info_read >= 0:
            try:
                sandbox_pid = read_sandbox_pid(info_read)
            finally:
                os.close(info_read)
        self._children[child.pid] = child
        return ProcessHandle(
            name=spec.name, backend=self.name, ref=str(child.pid), log_path=str(log_path), sandbox_pid=sandbox_pid
        )

    def status(self, handle: ProcessHandle) -> ServiceState:
        pid = int(handle.ref)
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return ServiceState(status=ServiceStatus.RUNNING)
            if group_alive(pid):  # the leader is gone but Flower helpers linger
                return ServiceState(status=ServiceStatus.RUNNING, detail="group still running")
            status = ServiceStatus.EXITED if code == 0 else ServiceStatus.FAILED
            return ServiceState(status=status, exit_code=code)
        # Started by an earlier manager: all we can know is whether the group lives.
        if group_alive(pid) and not _zombie(pid):
            return ServiceState(status=ServiceStatus.RUNNING)
        return ServiceState(status=ServiceStatus.GONE, detail="process ended while the manager was away")

    def logs(self, handle: ProcessHandle, tail: int = 200) -> str:
        """The last `tail` lines of the service's log, read from the end (at most MAX_LOG_TAIL_BYTES)."""
        if not handle.log_path:
            return ""
        return tail_file(Path(handle.log_path), tail)

    def undeploy(self, handle: ProcessHandle) -> None:
        pid = int(handle.ref)
        try:
            stop_group(pid, grace=5.0)
            if handle.sandbox_pid is not None:  # what ran inside, when bwrap itself was gone (SIGKILLed, say)
                stop_sandbox(handle.sandbox_pid, handle.started_at, grace=5.0)
        except PermissionError as error:
            raise OrchestratorError(f"cannot stop {handle.name} (process group {pid}): {error}") from error
        child = self._children.pop(pid, None)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@contextmanager
def _launch(
    sandbox: Sandbox | None, spec: ServiceSpec, info_fd: int | None
) -> Iterator[tuple[list[str], dict[str, str], tuple[int, ...]]]:
    """argv, whole environment and files to pass: the sandbox's (bwrap's info to `info_fd`), or the
    builder's own (no manager secrets)."""
    if sandbox is None:
        yield spec.command, without_manager_secrets(process_env(spec.env)), ()
        return
    with sandbox.launch(spec.command, info_fd=info_fd) as (argv, fds):
        yield argv, sandbox.env, fds


def named_files(env: Mapping[str, str]) -> list[str]:
    """Files the service's environment names (`FLOPS_MQTT_PASSWORD_FILE`, ...): it reads them, read-only."""
    return [value for key, value in env.items() if key.endswith("_FILE") and os.path.isabs(value)]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def tail_file(path: Path, lines: int, max_bytes: int = MAX_LOG_TAIL_BYTES) -> str:
    """The last `lines` lines of `path`, reading at most `max_bytes` from its end; "" if it is missing."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(max_bytes)
    except (FileNotFoundError, IsADirectoryError):
        return ""
    if start > 0:  # the first line read is cut: drop it
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
