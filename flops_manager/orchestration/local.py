"""The `local` backend: FL actors as processes on this machine, the embedded default.

Each service runs in its own session (process group) so that stopping it stops Flower's
children too, and so that a manager that dies does not take training down with it: a
restarted manager finds the groups again by the ids kept in the store.

A process that cannot be started (a missing executable, no permission, an unwritable log
folder) is a permanent `OrchestratorError`; only a machine out of processes or memory for now
(EAGAIN, ENOMEM) is transient. Status and logs read this machine and never fail transiently.
"""

import errno
import subprocess
from pathlib import Path

from flops.processes import group_alive, stop_group
from flops.runtime_env import process_env
from flops_manager.models import ProcessHandle
from flops_manager.orchestration.base import (
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
    TransientOrchestratorError,
)

# fork() or exec() refused for lack of resources that may come back: worth another try.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM})


class LocalOrchestrator(Orchestrator):
    name = "local"

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def log_path(self, spec: ServiceSpec) -> Path:
        return self.runs_dir / spec.project_id / "logs" / f"{spec.name}.log"

    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        log_path = self.log_path(spec)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log:
                child = subprocess.Popen(
                    spec.command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=process_env(spec.env),
                    start_new_session=True,
                )
        except OSError as error:
            kind = TransientOrchestratorError if error.errno in _TRANSIENT_ERRNOS else OrchestratorError
            raise kind(
                f"cannot start {spec.name} ({spec.command[0] if spec.command else 'no command'}): {error}"
            ) from error
        self._children[child.pid] = child
        return ProcessHandle(name=spec.name, backend=self.name, ref=str(child.pid), log_path=str(log_path))

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
        if not handle.log_path or not Path(handle.log_path).is_file():
            return ""
        lines = Path(handle.log_path).read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def undeploy(self, handle: ProcessHandle) -> None:
        pid = int(handle.ref)
        try:
            stop_group(pid, grace=5.0)
        except PermissionError as error:
            raise OrchestratorError(f"cannot stop {handle.name} (process group {pid}): {error}") from error
        child = self._children.pop(pid, None)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
