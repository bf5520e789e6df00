"""What every benchmark shares: the machine description, medians, result files, the stack.

Scripts are not tests: each prints a table and writes one JSON file to bench/results/.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flops.runtime_env import FLOWER_OFFLINE_ENV  # noqa: E402
from tests.git_repos import git, make_git_repo  # noqa: E402, F401  (re-exported for the scripts)

FINAL = ("completed", "failed", "cancelled")
ENV_REUSED_S = 5.0  # a cached environment takes milliseconds to find, a built one tens of seconds


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "flwr": version("flwr"),
        "mlflow": version("mlflow"),
        "flops": version("flops"),
    }


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def flops_train(example: Path, data: Path, tracking: str, project: str, *options: str) -> tuple[dict[str, Any], float]:
    """One `flops train EXAMPLE --json` (as project `project`, tracked at `tracking`): its summary and
    wall time; a failed training ends the benchmark with its output's end."""
    command = [
        str(BIN / "flops"), "train", str(example), "--data-dir", str(data), "--tracking-uri", tracking,
        "--project-id", project, "--json", *options,
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False, env=dict(os.environ))
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{project} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"name": name, "time": stamp, "machine": machine(), **data}, indent=2))
    return path


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def offline_env() -> None:
    """Flower offline in this process and everything it starts."""
    os.environ.update(FLOWER_OFFLINE_ENV)


@contextlib.contextmanager
def observatory(work: Path) -> Iterator[str]:
    """A real MLflow tracking server (flops-observatory) under `work`; its URI while the block runs.

    It requires credentials: this process, and what it starts, act as its admin (MLflow's
    variables and the credentials file, as the test suite's server fixture does).
    """
    from flops.actors import observatory_command
    from flops.net import free_port, http_ok, wait_until
    from flops.processes import ManagedProcess
    from flops.tracking_auth import CREDENTIALS_FILE_ENV, read_credentials
    from flops.tracking_server import admin_credentials_file

    port = free_port()
    home = work / "obs"
    process = ManagedProcess("observatory", observatory_command("127.0.0.1", port, home), work / "observatory.log")
    tracking = f"http://127.0.0.1:{port}"
    saved = dict(os.environ)
    try:
        if not wait_until(lambda: http_ok(tracking + "/health"), 120, 0.5):
            raise RuntimeError(f"the observatory did not start:\n{process.log_tail()}")
        admin_file = admin_credentials_file(home)
        os.environ.update({**read_credentials(admin_file).env(), CREDENTIALS_FILE_ENV: str(admin_file)})
        yield tracking
    finally:
        os.environ.clear()
        os.environ.update(saved)
        process.stop()


def add_mode_arguments(parser: argparse.ArgumentParser, quick: str, full: str) -> None:
    parser.add_argument("--quick", action="store_true", help=f"{quick} (default)")
    parser.add_argument("--full", action="store_true", help=full)
    # Tiny sizes to check that a script works; its numbers mean little.
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)


def mode_of(args: argparse.Namespace) -> str:
    return "smoke" if getattr(args, "smoke", False) else "full" if args.full else "quick"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: first column left-aligned, the rest right-aligned; floats with 2 decimals."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    cells = [[str(h) for h in headers], *([cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]  # fmt: skip
    return "\n".join(lines)


def project_sla(repo: Path, learners: int = 2, rounds: int = 3, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "customerID": "Admin",
        "ml_repo_url": str(repo),
        "ml_model_flavor": "sklearn",
        "training_configuration": {
            "data_tags": ["digits"], "training_rounds": rounds, "min_available_clients": learners,
            "min_fit_clients": learners, "min_evaluate_clients": learners,
        },
    }  # fmt: skip
    document.update(extra)
    return document


class EmbeddedStack:
    """`flops up` in a FLOPS_HOME of its own, every service on a free loopback port; `close()` is `flops down`.

    The environment variables it sets are restored by `close()`.
    """

    VARIABLES = ("FLOPS_HOME", "FLOPS_MANAGER_PORT", "FLOPS_MQTT_PORT", "FLOPS_OBSERVATORY_PORT",
                 "FLOPS_TRACKING_URI", "FLOPS_TOKEN", "FLOPS_TOKEN_FILE", "FLOPS_MANAGER_URL")  # fmt: skip

    def __init__(self, home: Path) -> None:
        from flops import stack
        from flops.client import ManagerClient
        from flops.net import free_port

        self.home = home
        self._saved = {name: os.environ.get(name) for name in self.VARIABLES}
        for name in self.VARIABLES:
            os.environ.pop(name, None)
        os.environ.update({
            "FLOPS_HOME": str(home), "FLOPS_MANAGER_PORT": str(free_port()), "FLOPS_MQTT_PORT": str(free_port()),
            "FLOPS_OBSERVATORY_PORT": str(free_port()),
        })  # fmt: skip
        offline_env()
        started = time.monotonic()
        try:
            self.state = stack.up(stack.StackSettings.from_env(os.environ))
        except BaseException:
            stack.down()
            self._restore()
            raise
        self.up_s = time.monotonic() - started
        token = Path(self.state["admin_token_file"]).read_text(encoding="utf-8").strip()
        self.url: str = self.state["manager_url"]
        self.token = token
        self.client = ManagerClient(self.url, token=token, timeout=60)

    def wait_for(self, project_id: str, statuses: Sequence[str] = FINAL, timeout: float = 1800,
                 poll_s: float = 0.5) -> dict[str, Any]:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            project = self.client.project(project_id)
            if project["status"] in statuses:
                return project
            if time.monotonic() > deadline:
                raise TimeoutError(f"project {project_id} still {project['status']} after {timeout:.0f} s")
            time.sleep(poll_s)

    def log_tail(self, service: str = "manager", chars: int = 3000) -> str:
        path = self.home / "stack" / f"{service}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def close(self) -> None:
        """Cancel active projects, stop served models, stop the services."""
        from flops import stack
        from flops.client import ManagerError

        try:
            projects = self.client.projects()
            for project in projects:
                self.client.cancel(project["project_id"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(p["status"] not in FINAL for p in self.client.projects()):
                time.sleep(0.5)
        except ManagerError as error:
            print(f"warning: could not cancel projects: {error}", flush=True)
        finally:
            stack.down()
            self._restore()

    def _restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def __enter__(self) -> "EmbeddedStack":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def environments_reused(run: dict[str, Any]) -> bool:
    """Whether a project's build found its learner and aggregator environments cached.

    Not the build's `reused`: the manager removes the build folders of ended projects when the
    next build starts (`flops_manager.disk.sweep_builds`), and bench/e2e.py cancels each project
    once completed, so a warm submit makes a new build folder around the cached environments.
    """
    stages = run.get("build_stage_s") or {}
    return float(stages.get("learner_env", 0)) + float(stages.get("aggregator_env", 0)) < ENV_REUSED_S
