"""Overhead of FLOps over plain Flower: the same model, data split and rounds, run both ways.

Plain: a SuperLink, two SuperNodes and `flwr run` of a minimal app that calls the same
ModelManager (bench/plain_flower). FLOps: `flops train` of examples/digits-sklearn with
MLflow tracking, checkpoints and local evaluation. Reports per-round medians and the ratio.

    python bench/overhead.py --quick   # 2 repetitions x 3 rounds each way
    python bench/overhead.py --full    # 5 repetitions x 5 rounds
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BIN, median, observatory, offline_env, write_result  # noqa: E402
from flops.data.partition import partition  # noqa: E402
from flops.net import free_port, wait_until  # noqa: E402
from flops.processes import ManagedProcess  # noqa: E402

EXAMPLE = ROOT / "examples" / "digits-sklearn"


def plain_run(work: Path, data: Path, rounds: int) -> list[float]:
    app = work / "plain-app"
    shutil.copytree(ROOT / "bench" / "plain_flower", app)
    for source in EXAMPLE.glob("*.py"):
        shutil.copy(source, app / source.name)
    text = (app / "pyproject.toml").read_text().replace("num-rounds = 3", f"num-rounds = {rounds}")
    (app / "pyproject.toml").write_text(text)
    home = work / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    round_log = work / "rounds.log"
    env = {"FLWR_HOME": str(home), "BENCH_ROUND_LOG": str(round_log)}
    superlink = ManagedProcess(
        "superlink",
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        work / "superlink.log", env=env,
    )  # fmt: skip
    nodes = [
        ManagedProcess(
            f"node-{i}",
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(free_port()),
                "--node-config",
                f'data-dir="{data / f"node-{i}"}"',
            ],
            work / f"node-{i}.log",
            env=env,
        )
        for i in (1, 2)
    ]
    try:
        time.sleep(3)
        subprocess.run([str(BIN / "flwr"), "run", str(app), "bench"], env={**os.environ, **env}, check=True,
                       capture_output=True)  # fmt: skip
        wait_until(lambda: round_log.is_file() and len(round_log.read_text().splitlines()) > rounds, 900, 0.5)
    finally:
        for process in [*nodes, superlink]:
            process.stop()
    marks = [float(line.split()[1]) for line in round_log.read_text().splitlines()]
    return [b - a for a, b in itertools.pairwise(marks)]


def flops_run(work: Path, data: Path, rounds: int, tracking: str) -> list[float]:
    result = subprocess.run(
        [str(BIN / "flops"), "train", str(EXAMPLE), "--data-dir", str(data), "--learners", "2",
         "--rounds", str(rounds), "--tracking-uri", tracking, "--json"],
        capture_output=True, text=True, env={**os.environ, "FLOPS_HOME": str(work / "flops-home")}, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return [r["duration_s"] for r in summary["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repetitions x 3 rounds (default)")
    parser.add_argument("--full", action="store_true", help="5 repetitions x 5 rounds")
    args = parser.parse_args()
    reps, rounds = (5, 5) if args.full else (2, 3)
    offline_env()
    with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"
        partition("digits", 2, "digits", data)
        plain: list[float] = []
        ours: list[float] = []
        with observatory(work) as tracking:
            for rep in range(reps):  # alternate, so drift on a shared machine hits both alike
                plain += plain_run(work / f"plain-{rep}", data, rounds)
                ours += flops_run(work / f"flops-{rep}", data, rounds, tracking)
                print(f"rep {rep + 1}/{reps}: plain {plain[-rounds:]} flops {ours[-rounds:]}", flush=True)
    plain_median, ours_median = median(plain), median(ours)
    assert plain_median and ours_median
    ratio = ours_median / plain_median
    print(f"\n{'':24}{'plain Flower':>14}{'FLOps':>10}")
    print(f"{'median round (s)':24}{plain_median:>14.2f}{ours_median:>10.2f}")
    print(f"{'overhead':24}{'':>14}{(ratio - 1) * 100:>9.1f}%")
    path = write_result(
        "overhead",
        {"repetitions": reps, "rounds": rounds, "plain_round_s": plain, "flops_round_s": ours,
         "plain_median_s": plain_median, "flops_median_s": ours_median, "ratio": ratio},
    )  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
