"""A real observatory (MLflow behind basic auth) for tests: started, killed and started again on one port."""

import os
import signal
from pathlib import Path

from flops.actors import observatory_command
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess, group_alive
from flops.tracking_server import admin_credentials_file

START_TIMEOUT_S = 120.0


class Observatory:
    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.admin_file = admin_credentials_file(home)
        self.process: ManagedProcess | None = None
        self.start()

    def start(self) -> None:
        process = ManagedProcess(
            "observatory", observatory_command("127.0.0.1", self.port, self.home), self.home.parent / "observatory.log"
        )
        self.process = process
        healthy = wait_until(lambda: http_ok(f"{self.uri}/health") or not process.running(), START_TIMEOUT_S, 0.3)
        assert healthy and process.running(), self.log()

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        assert wait_until(lambda: not group_alive(self.process.pid) and not http_ok(f"{self.uri}/health"), 10)

    def log(self) -> str:
        path = self.home.parent / "observatory.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.running():
            self.process.stop()
