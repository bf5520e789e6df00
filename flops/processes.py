"""Child processes that leave no orphans: own process group, own log file, group teardown.

Flower's SuperLink and SuperNode spawn SuperExec, which spawns app processes; only
signalling the whole process group reliably takes all of them down.
"""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

from flops.runtime_env import process_env


class ManagedProcess:
    """A command started in its own session, its output appended to `log_path`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        own_group: bool = True,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=process_env(env),
            cwd=cwd,
            start_new_session=own_group,
        )
        self.own_group = own_group

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout=timeout)

    def listens_on(self, port: int) -> bool:
        """Whether this process or one of its descendants listens on TCP `port`.

        Not merely whether the port is open: another process may have taken it, and then this
        one fails to bind while a connect to the port succeeds.
        """
        try:
            processes = [psutil.Process(self.pid), *descendants(self.pid)]
        except psutil.NoSuchProcess:
            return False
        for process in processes:
            try:
                sockets = process.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port for s in sockets):
                return True
        return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
        if self.own_group:
            stop_group(self.pid, grace)
        else:
            self.popen.terminate()
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._log.close()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[psutil.Process]:
    """All processes below `pid`: Flower's app processes may leave its process group."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def stop_group(pgid: int, grace: float = 5.0) -> None:
    """Terminate group `pgid` and every descendant of its leader, killing stragglers after `grace` s."""
    offspring = descendants(pgid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    for child in offspring:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_alive(pgid) and not any(_alive(child) for child in offspring):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for child in offspring:
        with contextlib.suppress(psutil.Error):
            child.kill()
    _reap(pgid)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    """Collect the exit status of `pid` if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
