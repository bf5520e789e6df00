"""Warm learners: one long-lived ClientApp process per run instead of one process per message.

Flower 1.41's SuperExec starts `flwr-clientapp --token T` for every message a SuperNode gets
(`SubprocessExecutor.launch`); that process imports Flower, NumPy and the user's code and loads
the node's data again, each round. Flower's warm pools are for Kubernetes only.

Contract: the learner runs `python -m learner.warm_clientapp supernode ARGS` (Flower's
flower-supernode with adaptive polling) and, in a thread of that same process, its SuperExec
(one process less per learner: Flower's SuperExec and SuperNode import the same modules). The
SuperExec hands the token of each ClientApp task to the worker process of the task's run, and
starts that worker (`python -m learner.warm_clientapp worker`; the first one as the SuperNode starts,
bound to the run of the first task it gets) on the run's first task. A worker
serves one run only: a task of another run gets a worker of its own, and a worker whose run is
no longer the latest one is stopped, so nothing one run imported or loaded is ever visible to
another's code. A worker runs each task as `flwr-clientapp` does (pull the message, context and
FAB from the SuperNode's Runtime API, call the ClientApp, push the reply and the context,
heartbeats meanwhile), but keeps the installed FAB and the loaded ClientApp, and so the user's
module with its loaded data (`learner.client_app`), between the tasks. Tokens reach the worker
through its stdin, never an argv. A worker that died is replaced at the run's next task; a task
it was running expires as Flower's own tasks do. The SuperExec thread's end (an error) ends the
SuperNode, so `flops-learner` sees it.

How: the SuperExec's plugin class (`run_superexec.AutoExecPlugin`) is replaced by a subclass and
its signal handlers (the SuperNode's main thread has its own) by nothing; only the pinned Flower
version is hooked (like `flops.flower_polling`), and on another version every message gets
Flower's own fresh process.
"""

import argparse
import atexit
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from logging import ERROR, INFO
from pathlib import Path
from typing import IO, Any

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.task_pb2 import Task
from flwr.supercore import log as flower_log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import LaunchResult
from flwr.supercore.superexec.plugin import AutoExecPlugin
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from flops.flower_polling import SUPEREXEC_MODULE, hooked_module, pinned_flower
from flops.flower_polling import install as install_adaptive_polling
from flops.net import port_open, wait_until

# Niceness: a learner's SuperNode yields the CPU to the SuperLink and ServerApp that every learner
# waits on, where they share a machine (the local backend; 50 learners on 2 cores made the SuperLink
# answer heartbeats so late that it took learners for dead); its ClientApp worker, batch work, yields
# more (added to the SuperNode's).
SUPERNODE_NICENESS = 5
WORKER_NICENESS = 10


class RunWorker:
    """The worker process of one run, fed task tokens through its stdin."""

    def __init__(self, run_id: int, command: list[str]) -> None:
        self.run_id = run_id
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def submit(self, token: str) -> bool:
        """Hand `token` to the worker; False when it is gone."""
        stdin: IO[bytes] | None = self.process.stdin
        if not self.alive or stdin is None:
            return False
        try:
            stdin.write(token.encode("ascii") + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def stop(self, finish_task: bool, grace: float = 5.0) -> None:
        """End the worker: after the task it runs (`finish_task`, up to `grace` s) or now (the SuperNode stops)."""
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()  # end of input: the worker exits after its task
        if not finish_task and self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WarmClientAppPlugin(AutoExecPlugin):
    """Flower's SuperExec plugin, with ClientApp tasks handed to their run's worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker: RunWorker | None = None
        # The first run's worker starts with the SuperNode, before any task: Flower and NumPy are
        # imported by the time the first message comes, so its task token's first heartbeat is on time
        # even when many learners start on one machine (a late one expires the token: the task fails).
        self.spare: RunWorker | None = RunWorker(0, self.worker_command())
        atexit.register(self.close_worker, finish_task=False)

    def launch_task(self, token: str, task: Task) -> LaunchResult:
        if task.type != TaskType.CLIENT_APP.value:
            return super().launch_task(token, task)
        for _attempt in range(2):  # a worker that died since its last task is replaced once
            if self.submit(task.run_id, token):
                return LaunchResult.accepted()
            self.close_worker(finish_task=False)  # gone already, or not answering
        return LaunchResult.failed(f"the ClientApp worker of run {task.run_id} does not start")

    def submit(self, run_id: int, token: str) -> bool:
        if self.worker is not None and self.worker.run_id != run_id:
            self.close_worker(finish_task=True)  # another run's turn: its code and data go with its process
        if self.worker is None:
            spare, self.spare = self.spare, None
            if spare is not None and spare.alive:
                spare.run_id = run_id
                self.worker = spare
            else:
                self.worker = RunWorker(run_id, self.worker_command())
        return self.worker.submit(token)

    def worker_command(self) -> list[str]:
        tls = ["--insecure"] if self.insecure else []
        if not self.insecure and self.root_certificates_path is not None:
            tls = ["--root-certificates", self.root_certificates_path]
        return [
            sys.executable, "-m", "learner.warm_clientapp", "worker",
            "--runtime-api-address", self.runtime_api_address,
            *tls,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip

    def close_worker(self, finish_task: bool) -> None:
        if self.worker is not None:
            self.worker.stop(finish_task)
            self.worker = None
        if not finish_task and self.spare is not None:  # the SuperNode stops
            self.spare.stop(finish_task=False)
            self.spare = None


def install() -> bool:
    """Make this process's SuperExec hand ClientApp tasks to run workers; False on another Flower."""
    if not pinned_flower("a fresh ClientApp process per message"):
        return False
    module = hooked_module(SUPEREXEC_MODULE, ("AutoExecPlugin",))
    module.AutoExecPlugin = WarmClientAppPlugin
    return True


class TaskRunner:
    """A worker's side: runs the tasks of one run, keeping the FAB and the ClientApp loaded."""

    def __init__(self, runtime_api_address: str, certificates: bytes | None, insecure: bool) -> None:
        self.runtime_api_address = runtime_api_address
        self.certificates = certificates
        self.insecure = insecure
        self.apps: dict[tuple[str, str, str], ClientApp] = {}  # by FAB: installed and loaded once
        self.run_id: int | None = None
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)

    def client(self, token: str) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api_address,
            insecure=self.insecure,
            root_certificates=self.certificates,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def app(self, fab_id: str, fab_version: str, fab_hash: str, fab_content: bytes) -> ClientApp:
        key = (fab_id, fab_version, fab_hash)
        if key not in self.apps:
            install_from_fab(fab_content, skip_prompt=True)
            self.apps[key] = self._load(fab_id, fab_version, fab_hash)
        return self.apps[key]

    def run(self, token: str) -> None:
        """One task, as `flwr.supernode.runtime.run_clientapp` runs it, without exiting."""
        client = self.client(token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message: Message | None = None
        reply: Message | None = None
        context: Context | None = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        marks = [time.monotonic()]  # start, input pulled, ClientApp returned, reply and output pushed
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            marks.append(time.monotonic())
            if self.run_id is None:
                self.run_id = run.run_id
            if run.run_id != self.run_id:
                raise RuntimeError(f"this worker serves run {self.run_id}, not run {run.run_id}")
            client_app = self.app(run.fab_id, run.fab_version, fab.hash_str, fab.content)
            reply = client_app(message=message, context=context)
            marks.append(time.monotonic())
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as failure:  # every failure goes back as the task's error
            code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(failure)}:<'{failure}'>"
            if isinstance(failure, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = "An exception was raised when attempting to load `ClientApp`"
            flower_log(ERROR, "ClientApp raised an exception", exc_info=failure)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            if reply is not None and context is not None:
                try:
                    push_message(client, reply, context)
                except Exception as failure:
                    flower_log(ERROR, "Failed to push reply message", exc_info=failure)
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
            marks.append(time.monotonic())
            if len(marks) == 4:  # where a message's time goes (docs/performance.md: a round's breakdown)
                pulled, computed, pushed = (round((b - a) * 1000) for a, b in itertools.pairwise(marks))
                flower_log(INFO, "[flops] message: input pulled in %d ms, ClientApp %d ms, reply pushed in %d ms",
                           pulled, computed, pushed)  # fmt: skip


def run_worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m learner.warm_clientapp worker")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--root-certificates", type=Path)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    install_adaptive_polling("object-pulls")  # with the other transport hooks
    os.nice(WORKER_NICENESS)  # see SUPERNODE_NICENESS
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    certificates = validate_and_resolve_root_certificates(
        str(args.root_certificates) if args.root_certificates else None, args.insecure
    )
    runner = TaskRunner(args.runtime_api_address, certificates, args.insecure)
    for line in sys.stdin.buffer:
        token = line.strip().decode("ascii")
        if token:
            runner.run(token)


def superexec_address(supernode_argv: list[str]) -> tuple[str, Path, Path]:
    """(Runtime API address, its CA, the SuperExec secret file) from the SuperNode's own arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--ssl-ca-certfile", required=True, type=Path)
    parser.add_argument("--superexec-auth-secret-file", required=True, type=Path)
    known, _rest = parser.parse_known_args(supernode_argv)
    return f"{known.host}:{known.port}", known.ssl_ca_certfile, known.superexec_auth_secret_file


def serve_tasks(runtime_api_address: str, root_certificates: Path, secret_file: Path) -> None:
    """The SuperExec's loop, in a thread of the SuperNode's process; its end ends the process."""
    try:
        module = hooked_module(SUPEREXEC_MODULE, ("run_superexec", "register_signal_handlers"))
        # Signals are the SuperNode's (main thread): its exit ends this daemon thread too.
        module.register_signal_handlers = lambda *args, **kwargs: None
        host, _, port = runtime_api_address.rpartition(":")
        if not wait_until(lambda: port_open(host, int(port)), 60):
            raise RuntimeError(f"the SuperNode's Runtime API at {runtime_api_address} did not open in 60 s")
        module.run_superexec(
            runtime_api_address=runtime_api_address,
            insecure=False,
            root_certificates_path=str(root_certificates),
            superexec_auth_secret=load_superexec_auth_secret(secret_file=str(secret_file)),
        )
    except BaseException as failure:  # flwr_exit raises SystemExit: in a thread it would end the thread only
        flower_log(ERROR, "SuperExec stopped: %s", failure, exc_info=failure)
    os.kill(os.getpid(), signal.SIGTERM)


def run_supernode(argv: list[str]) -> None:
    """Flower's flower-supernode with adaptive polling, its warm SuperExec in a thread of the same process."""
    address, root_certificates, secret_file = superexec_address(argv)
    os.nice(SUPERNODE_NICENESS)
    install_adaptive_polling("learner")  # the SuperNode's polling and its SuperExec's, linked
    install()
    threading.Thread(
        target=serve_tasks, args=(address, root_certificates, secret_file), name="superexec", daemon=True
    ).start()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def main(argv: list[str]) -> None:
    """`supernode ARGS` (Flower's flower-supernode with its warm SuperExec) or `worker ARGS`."""
    if argv[:1] == ["worker"]:
        run_worker(argv[1:])
    elif argv[:1] == ["supernode"]:
        run_supernode(argv[1:])
    else:
        raise SystemExit("usage: python -m learner.warm_clientapp {supernode|worker} ARGS...")


if __name__ == "__main__":
    main(sys.argv[1:])
