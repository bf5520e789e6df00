"""Scale on one machine: N learners on the local backend with `flops train`.

For each N, digits is partitioned over N node folders and `flops train examples/digits-sklearn
--learners N --rounds 3 --json` runs against one shared observatory. From the aggregator's
progress file (FLOPS_HOME/runs/ID/progress.jsonl) come the time from start until all N learners
joined (its `started` event) and until the first round ended; round durations from the summary.
Every second psutil samples the process trees under `flops train`: each learner (flops-learner,
its SuperNode with the SuperExec thread, the run's warm ClientApp worker) and the aggregator
(SuperLink, ServerApp). Peaks are of the summed RSS (a shared page counts once per process that
maps it, so RSS totals overstate) and of the summed PSS (shared pages split between the
processes that map them: what the learners really take together), with the RSS of each part.

    python bench/scale.py --quick   # N = 20 learners x 3 rounds
    python bench/scale.py --full    # N = 5, 20, 50 (larger N skipped when memory would not suffice)
    python bench/scale.py --learners 50   # only N = 50, 3 rounds
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BIN,
    EXAMPLES,
    add_mode_arguments,
    median,
    mode_of,
    observatory,
    offline_env,
    table,
    write_result,
)
from flops.data.partition import partition  # noqa: E402
from flops.processes import stop_group  # noqa: E402

EXAMPLE = EXAMPLES / "digits-sklearn"
# (learner counts, rounds)
PLANS = {"quick": ([20], 3), "full": ([5, 20, 50], 3), "smoke": ([2], 1)}
SAMPLE_S = 1.0
MB = 2**20
# What each process of a learner is, by its command line: learner.main is `flops-learner`.
# The first part whose mark is in a command line (paths in arguments may hold "flops-learner").
LEARNER_PARTS = {
    "supernode": ("warm_clientapp supernode", "flower-supernode"),
    "superexec": ("flower-superexec",),
    "clientapp": ("warm_clientapp worker", "flwr-clientapp"),
    "wrapper": ("learner.main", "bin/flops-learner"),
}
AGGREGATOR_MARKS = ("aggregator.main", "flops-aggregator")


def command_of(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def role_of(process: psutil.Process) -> str | None:
    """'learner' or 'aggregator' for a direct child of `flops train`."""
    command = command_of(process)
    if any(mark in command for mark in AGGREGATOR_MARKS):
        return "aggregator"
    if any(mark in command for marks in LEARNER_PARTS.values() for mark in marks):
        return "learner"
    return None


def part_of(process: psutil.Process) -> str:
    command = command_of(process)
    return next((part for part, marks in LEARNER_PARTS.items() if any(m in command for m in marks)), "other")


def tree_memory(process: psutil.Process) -> tuple[int, int, dict[str, int]]:
    """(summed RSS, summed PSS, RSS by learner part) of `process` and its descendants.

    RSS counts a shared page (Python, NumPy, Flower's libraries) once per process that maps it;
    PSS splits it between them, so PSS sums to what the tree really takes.
    """
    rss = pss = 0
    parts: dict[str, int] = {}
    with contextlib.suppress(psutil.Error):
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                info = member.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                part = part_of(member)
                parts[part] = parts.get(part, 0) + info.rss
    return rss, pss, parts


class RssSampler(threading.Thread):
    """Samples the memory of the learner and aggregator trees under `root_pid` until stopped."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.halt = threading.Event()
        self.learner_peak: dict[int, int] = {}  # per learner (its root pid): peak tree RSS
        self.learner_pss_peak: dict[int, int] = {}  # the same, PSS
        self.part_peak: dict[str, int] = {}  # per learner part: the largest RSS one learner's part had
        self.learners_total_peak = 0
        self.learners_pss_total_peak = 0
        self.aggregator_peak = 0
        self.total_peak = 0
        self.samples = 0

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self.halt.is_set():
            with contextlib.suppress(psutil.Error):
                learners = learners_pss = aggregator = 0
                for child in root.children():
                    role = role_of(child)
                    if role is None:
                        continue
                    rss, pss, parts = tree_memory(child)
                    if role == "aggregator":
                        aggregator += rss
                        continue
                    learners += rss
                    learners_pss += pss
                    self.learner_peak[child.pid] = max(self.learner_peak.get(child.pid, 0), rss)
                    self.learner_pss_peak[child.pid] = max(self.learner_pss_peak.get(child.pid, 0), pss)
                    for part, part_rss in parts.items():
                        self.part_peak[part] = max(self.part_peak.get(part, 0), part_rss)
                self.learners_total_peak = max(self.learners_total_peak, learners)
                self.learners_pss_total_peak = max(self.learners_pss_total_peak, learners_pss)
                self.aggregator_peak = max(self.aggregator_peak, aggregator)
                self.total_peak = max(self.total_peak, learners + aggregator + root.memory_info().rss)
                self.samples += 1
            self.halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def progress_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def one_scale(work: Path, learners: int, rounds: int, tracking: str) -> dict[str, Any]:
    data = work / "data"
    partition("digits", learners, "digits", data)
    home = work / "flops-home"
    project_id = f"scale-{learners}"
    command = [
        str(BIN / "flops"), "train", str(EXAMPLE), "--data-dir", str(data), "--learners", str(learners),
        "--rounds", str(rounds), "--tracking-uri", tracking, "--project-id", project_id,
        "--learner-timeout", str(max(120, 6 * learners)), "--json",
    ]  # fmt: skip
    started = time.time()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FLOPS_HOME": str(home)}, start_new_session=True,
    )  # fmt: skip
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=3600)
    finally:
        sampler.stop()
        if process.poll() is None:
            stop_group(process.pid, grace=10)  # `flops train` and everything under it
            process.wait(10)
    ended = time.time()
    if process.returncode != 0:
        raise RuntimeError(f"flops train with {learners} learners failed:\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    events = progress_events(home / "runs" / project_id / "progress.jsonl")
    joined = next((e for e in events if e["kind"] == "started"), None)
    first_round = next((e for e in events if e["kind"] == "round"), None)
    waiting = [
        {"after_s": e["time"] - started, "joined": e["data"].get("joined")} for e in events if e["kind"] == "waiting"
    ]
    rounds_s = [r["duration_s"] for r in summary["rounds"]]
    per_learner = [rss / MB for rss in sampler.learner_peak.values()]
    per_learner_pss = [pss / MB for pss in sampler.learner_pss_peak.values()]
    return {
        "learners": learners,
        "rounds": rounds,
        "wall_s": ended - started,
        "all_joined_s": joined["time"] - started if joined else None,
        "first_round_end_s": first_round["time"] - started if first_round else None,
        "join_progress": waiting,
        "round_s": rounds_s,
        "round_median_s": median(rounds_s),
        "accuracy": summary.get("final_accuracy"),
        "peak_rss_per_learner_mb": median(per_learner),
        "peak_rss_per_learner_max_mb": max(per_learner, default=None),
        "peak_pss_per_learner_mb": median(per_learner_pss),
        "peak_rss_per_learner_part_mb": {part: rss / MB for part, rss in sorted(sampler.part_peak.items())},
        "peak_rss_learners_total_mb": sampler.learners_total_peak / MB,
        "peak_pss_learners_total_mb": sampler.learners_pss_total_peak / MB,
        "peak_rss_aggregator_mb": sampler.aggregator_peak / MB,
        "peak_rss_total_mb": sampler.total_peak / MB,
        "learner_trees_seen": len(per_learner),
        "rss_samples": sampler.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "N = 20 learners x 3 rounds", "N = 5, 20, 50 learners x 3 rounds")
    parser.add_argument("--learners", type=int, nargs="+", help="these learner counts instead of the mode's")
    parser.add_argument("--keep", type=Path, help="work (and keep every log) in this folder instead of a temporary one")
    args = parser.parse_args()
    mode = mode_of(args)
    counts, rounds = PLANS[mode]
    counts = args.learners or counts
    offline_env()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with contextlib.ExitStack() as cleanup:
        work = args.keep or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="flops-bench-scale-")))
        with observatory(work) as tracking:
            for learners in counts:
                needed = _memory_needed_mb(results, learners)
                available = psutil.virtual_memory().available / MB
                if needed and needed > available:
                    print(f"N={learners}: skipped, needs about {needed:.0f} MB, {available:.0f} MB available")
                    skipped.append({"learners": learners, "needed_mb": needed, "available_mb": available})
                    continue
                try:
                    result = one_scale(work / f"n{learners}", learners, rounds, tracking)
                except RuntimeError as error:  # an overloaded machine: record it, go on with the next N
                    reason = str(error).strip().splitlines()[-1]
                    print(f"N={learners}: failed: {reason}", flush=True)
                    failed.append({"learners": learners, "error": reason})
                    continue
                results.append(result)
                parts = {part: round(mb) for part, mb in result["peak_rss_per_learner_part_mb"].items()}
                print(
                    f"N={learners}: all joined after {result['all_joined_s'] or 0:.1f} s, round median "
                    f"{result['round_median_s'] or 0:.1f} s, peak RSS {result['peak_rss_per_learner_mb'] or 0:.0f} MB "
                    f"(PSS {result['peak_pss_per_learner_mb'] or 0:.0f} MB) per learner, parts "
                    f"{parts}, {result['peak_rss_total_mb']:.0f} MB in all",
                    flush=True,
                )
    base = results[0] if results else None
    rows = [
        [r["learners"], r["all_joined_s"], r["first_round_end_s"], r["round_median_s"],
         r["round_median_s"] / base["round_median_s"] if base and base["round_median_s"] else None,
         r["peak_rss_per_learner_mb"], r["peak_rss_learners_total_mb"], r["peak_rss_aggregator_mb"],
         r["peak_rss_total_mb"]]
        for r in results
    ]  # fmt: skip
    print(f"\n{rounds} rounds per N ({mode}); round ratio against N={base['learners'] if base else '-'}")
    print(
        table(["N", "joined s", "1st round s", "round s", "ratio", "MB/learner", "MB learners", "MB aggr.",
               "MB total"], rows)
    )  # fmt: skip
    path = write_result(
        "scale", {"mode": mode, "rounds": rounds, "results": results, "skipped": skipped, "failed": failed}
    )
    print(f"results: {path}")


def _memory_needed_mb(results: list[dict[str, Any]], learners: int) -> float | None:
    """Estimated peak for `learners` from the largest run so far (its PSS: the learners share their
    environment's pages, which RSS counts once per process), with a margin of a quarter."""
    if not results or not results[-1]["peak_pss_learners_total_mb"]:
        return None
    last = results[-1]
    per_learner = last["peak_pss_learners_total_mb"] / last["learners"]
    return float(1.25 * (per_learner * learners + last["peak_rss_aggregator_mb"]))


if __name__ == "__main__":
    main()
