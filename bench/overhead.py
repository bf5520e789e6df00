"""Overhead of FLOps over plain Flower: the same model, data split and rounds, run both ways, interleaved.

Plain: a SuperLink, two SuperNodes and `flwr run` of a minimal app that calls the same
ModelManager (bench/plain_flower), all with Flower 1.41's defaults: its own polling, SuperNodes
with `--isolation subprocess` (a fresh `flwr-clientapp` per message), FedAvg with a train and
an evaluate phase each round. FLOps: `flops train` of examples/digits-sklearn (warm learners,
one message per round, adaptive polling, MLflow tracking, checkpoints, local evaluation).
Repetitions alternate which side goes first. Reports the median round of each, the mean round
(training time / rounds) of each and the ratios; then, through the real manager as
bench/e2e.py does, one cold project (it builds) and one warm project (the same commit again)
and their POST-to-completed times.

    python bench/overhead.py --quick   # 2 repetitions x 3 rounds each way, 1 cold + 1 warm project (about 6 min)
    python bench/overhead.py --full    # 5 repetitions x 5 rounds, 1 cold + 1 warm project of 5 rounds
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BIN,
    EXAMPLES,
    EmbeddedStack,
    add_mode_arguments,
    environments_reused,
    make_git_repo,
    median,
    mode_of,
    observatory,
    offline_env,
    table,
    write_result,
)
from bench.e2e import LEARNERS, one_project  # noqa: E402
from flops.config import SOURCES_FOLDER  # noqa: E402
from flops.data.partition import partition  # noqa: E402
from flops.net import free_port, port_open, wait_until  # noqa: E402
from flops.processes import ManagedProcess  # noqa: E402
from tests.plain_flower import flower_home, flwr_run_command, start_superlink  # noqa: E402

EXAMPLE = EXAMPLES / "digits-sklearn"
# (repetitions, rounds per run and per project)
PLANS = {"quick": (2, 3), "full": (5, 5), "smoke": (1, 2)}
# ManagedProcess (flops.runtime_env.process_env) sets SuperExec's task poll to 0.25 s; plain Flower gets its default.
FLOWER_DEFAULTS = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"}


def plain_run(work: Path, data: Path, rounds: int) -> dict[str, Any]:
    """One plain Flower run; each round from the end of the one before (round 1: from the strategy's start)."""
    app = work / "plain-app"
    shutil.copytree(ROOT / "bench" / "plain_flower", app)
    for source in EXAMPLE.glob("*.py"):
        shutil.copy(source, app / source.name)
    port = free_port()
    round_log = work / "rounds.log"
    env = {**flower_home(work / "flwr-home", "bench", port), "BENCH_ROUND_LOG": str(round_log), **FLOWER_DEFAULTS}
    superlink = start_superlink(port, work / "superlink.log", env)
    nodes: list[ManagedProcess] = []
    try:
        if not wait_until(lambda: port_open("127.0.0.1", port), 60, 0.2):
            raise RuntimeError(f"the SuperLink did not start:\n{superlink.log_tail()}")
        for i in range(1, LEARNERS + 1):
            nodes.append(ManagedProcess(
                f"node-{i}",
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--port", str(free_port()), "--node-config", f'data-dir="{data / f"node-{i}"}"'],
                work / f"node-{i}.log", env=env,
            ))  # fmt: skip

        def registered() -> bool:  # else FedAvg's first sampling waits for them inside round 1
            return superlink.log_path.read_text(errors="replace").count("[Fleet.ActivateNode] Activated") >= LEARNERS

        if not wait_until(registered, 120, 0.2):
            raise RuntimeError(f"the SuperNodes did not register:\n{superlink.log_tail()}")
        started = subprocess.run(
            flwr_run_command(app, "bench", f"num-rounds={rounds}"),
            env={**os.environ, **env}, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        if started.returncode != 0:
            raise RuntimeError(f"flwr run failed:\n{started.stdout[-2000:]}{started.stderr[-2000:]}")

        def finished() -> bool:
            return round_log.is_file() and len(round_log.read_text().splitlines()) > rounds

        if not wait_until(finished, 900, 0.5):
            raise RuntimeError(f"the plain run did not finish {rounds} rounds:\n{superlink.log_tail(40)}")
    finally:
        for process in [*nodes, superlink]:
            process.stop()
    marks = [float(line.split()[1]) for line in round_log.read_text().splitlines()]
    return {"round_s": [b - a for a, b in itertools.pairwise(marks)], "total_s": marks[-1] - marks[0]}


def flops_run(home: Path, data: Path, rounds: int, tracking: str) -> dict[str, Any]:
    """One `flops train`; its rounds' `duration_s` (from configure_train of a round to its aggregation)."""
    result = subprocess.run(
        [str(BIN / "flops"), "train", str(EXAMPLE), "--data-dir", str(data), "--learners", str(LEARNERS),
         "--rounds", str(rounds), "--tracking-uri", tracking, "--json"],
        capture_output=True, text=True, env={**os.environ, "FLOPS_HOME": str(home)}, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    durations = [float(r["duration_s"]) for r in summary["rounds"]]
    return {"round_s": durations, "total_s": sum(durations), "summary_duration_s": summary["duration_s"]}


def projects(work: Path, rounds: int) -> list[dict[str, Any]]:
    """A cold and a warm project of examples/digits-sklearn through the manager (bench/e2e.py's `one_project`)."""
    home = work / "home"
    # A local repository must be under FLOPS_HOME/sources (the manager's default FLOPS_REPO_LOCAL_ROOTS).
    repo = make_git_repo(EXAMPLE, home / SOURCES_FOLDER / "digits-sklearn")
    runs: list[dict[str, Any]] = []
    with EmbeddedStack(home) as stack:
        nodes = stack.client.mocks("digits", LEARNERS, "digits")
        print(f"stack up in {stack.up_s:.1f} s, node data {nodes}", flush=True)
        # A warm project whose environments were built again (their key includes FLOps's source:
        # an edit to the checkout in between) is tried once more.
        for kind in ("cold", "warm", "warm"):
            if kind == "warm" and runs[-1]["kind"] == "warm" and environments_reused(runs[-1]):
                break
            run = one_project(stack, repo, rounds, kind)
            runs.append(run)
            print(f"  {kind}: POST to completed {run['post_to_completed_s']:.1f} s, building "
                  f"{run['stages_s'].get('building', 0):.1f} s (environments reused: {environments_reused(run)})",
                  flush=True)  # fmt: skip
    return runs


def ratio_of(ours: float | None, plain: float | None) -> float | None:
    return ours / plain if ours and plain else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "2 repetitions x 3 rounds, 1 cold + 1 warm project", "5 repetitions x 5 rounds")
    args = parser.parse_args()
    mode = mode_of(args)
    reps, rounds = PLANS[mode]
    offline_env()
    began = time.monotonic()
    plain: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    error: str | None = None
    with tempfile.TemporaryDirectory(prefix="flops-bench-overhead-") as tmp:
        work = Path(tmp)
        data = work / "data"
        partition("digits", LEARNERS, "digits", data)
        with observatory(work) as tracking:
            # One FLOPS_HOME for every `flops train`: the first builds, the others reuse the build.
            for rep in range(reps):  # interleaved, and alternating who goes first: drift hits both alike
                for side in ("plain", "flops") if rep % 2 == 0 else ("flops", "plain"):
                    if side == "plain":
                        plain.append(plain_run(work / f"plain-{rep}", data, rounds))
                    else:
                        ours.append(flops_run(work / "flops-home", data, rounds, tracking))
                print(f"rep {rep + 1}/{reps}: plain {[round(d, 2) for d in plain[-1]['round_s']]} "
                      f"flops {[round(d, 2) for d in ours[-1]['round_s']]}", flush=True)  # fmt: skip
        overhead_s = time.monotonic() - began
        try:
            runs = projects(work, rounds)
        except Exception as failure:  # the round figures above still count
            error = f"{type(failure).__name__}: {failure}"
            print(f"projects failed: {error}", flush=True)
    bench_s = time.monotonic() - began
    plain_rounds = [d for run in plain for d in run["round_s"]]
    our_rounds = [d for run in ours for d in run["round_s"]]
    plain_median, ours_median = median(plain_rounds), median(our_rounds)
    plain_mean = sum(run["total_s"] for run in plain) / (reps * rounds)
    ours_mean = sum(run["total_s"] for run in ours) / (reps * rounds)
    ratio, mean_ratio = ratio_of(ours_median, plain_median), ratio_of(ours_mean, plain_mean)
    cold = next((r for r in runs if r["kind"] == "cold"), None)
    warm = next((r for r in reversed(runs) if r["kind"] == "warm"), None)
    rows: list[list[Any]] = [
        ["median round (s)", plain_median, ours_median, ratio],
        ["training time / rounds (s)", plain_mean, ours_mean, mean_ratio],
        ["warm project, POST to completed (s)", None, warm["post_to_completed_s"] if warm else None, None],
        ["cold project, POST to completed (s)", None, cold["post_to_completed_s"] if cold else None, None],
    ]
    print(f"\n{LEARNERS} learners, {reps} repetitions x {rounds} rounds each way ({mode})")
    print(table(["", "plain Flower", "FLOps", "FLOps / plain"], rows))
    if warm is not None and not environments_reused(warm):
        print("warning: the warm project built its environments again (an edit to the checkout during the run?)")
    print(f"bench took {bench_s:.0f} s (rounds {overhead_s:.0f} s, projects {bench_s - overhead_s:.0f} s)")
    path = write_result(
        "overhead",
        {"mode": mode, "repetitions": reps, "rounds": rounds, "learners": LEARNERS,
         "plain_round_s": plain_rounds, "flops_round_s": our_rounds,
         "plain_total_s": [run["total_s"] for run in plain], "flops_total_s": [run["total_s"] for run in ours],
         "flops_summary_duration_s": [run["summary_duration_s"] for run in ours],
         "plain_median_s": plain_median, "flops_median_s": ours_median, "ratio": ratio,
         "plain_mean_round_s": plain_mean, "flops_mean_round_s": ours_mean, "mean_ratio": mean_ratio,
         "warm_post_to_completed_s": warm["post_to_completed_s"] if warm else None,
         "cold_post_to_completed_s": cold["post_to_completed_s"] if cold else None,
         "projects": runs, "projects_error": error, "bench_s": bench_s},
    )  # fmt: skip
    print(f"results: {path}")
    if error:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
