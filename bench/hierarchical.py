"""Hierarchical against classic FL on the same data and learners: time, final accuracy, root traffic.

digits is split over four node folders, node-1/node-2 in cluster-1 and node-3/node-4 in cluster-2
(`node.yaml`). Both ways train the same learners on the same split with `flops train`, as many
learner rounds each: classic 4 learners x (cycles x rounds) rounds against one aggregator;
hierarchical `--clusters 2 --cycles C --rounds R`, each cluster aggregator training its two
learners R rounds per cycle. Runs alternate which way goes first. Reported per way: the median
wall time of `flops train` (environments are built before the first measured run), the training's
own duration, the final accuracy of the global model on all nodes, and what crosses the root's
link: the model transfers between the root aggregator and its SuperNodes (learners in classic,
cluster aggregators in hierarchical), each a copy of the parameters down or up, and their bytes.

    python bench/hierarchical.py --quick   # 2 cycles x 2 rounds, 1 repetition each way (about 5 min)
    python bench/hierarchical.py --full    # 3 cycles x 3 rounds, 3 repetitions each way
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    EXAMPLES,
    add_mode_arguments,
    flops_train,
    median,
    mode_of,
    observatory,
    offline_env,
    table,
    write_result,
)
from flops.data.partition import partition  # noqa: E402

EXAMPLE = EXAMPLES / "digits-sklearn"
LEARNERS, CLUSTERS = 4, 2
# (cycles, rounds per cycle, repetitions)
PLANS = {"quick": (2, 2, 1), "full": (3, 3, 3), "smoke": (1, 1, 1)}


def train(data: Path, tracking: str, project: str, hierarchical: bool, cycles: int, rounds: int) -> dict[str, Any]:
    """One `flops train`; its summary, wall time and the root link's model transfers."""
    shape = ["--clusters", str(CLUSTERS), "--cycles", str(cycles), "--rounds", str(rounds)]
    summary, wall = flops_train(
        EXAMPLE, data, tracking, project, "--learners", str(LEARNERS), "--model-name", "bench-hierarchical",
        *(shape if hierarchical else ["--rounds", str(cycles * rounds)]),
    )  # fmt: skip
    home = Path(os.environ["FLOPS_HOME"])
    model_bytes = (home / "runs" / project / "checkpoints" / "best.npz").stat().st_size
    # Each training round: the model down to every root SuperNode and back up; the last evaluation: down only.
    nodes = CLUSTERS if hierarchical else LEARNERS
    root_rounds = cycles if hierarchical else cycles * rounds
    transfers = root_rounds * nodes * 2 + nodes
    return {
        "wall_s": wall,
        "training_s": summary["duration_s"],
        "accuracy": summary["final_accuracy"],
        "loss": summary["final_loss"],
        "root_transfers": transfers,
        "root_bytes": transfers * model_bytes,
        "learner_rounds": cycles * rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "2 cycles x 2 rounds, 1 repetition", "3 cycles x 3 rounds, 3 repetitions")
    args = parser.parse_args()
    cycles, rounds, repetitions = PLANS[mode_of(args)]
    offline_env()
    with tempfile.TemporaryDirectory(prefix="flops-bench-hfl-") as folder:
        work = Path(folder)
        os.environ["FLOPS_HOME"] = str(work / "flops-home")
        data = work / "nodes"
        partition("digits", LEARNERS, "digits", data, clusters=CLUSTERS)
        runs: dict[str, list[dict[str, Any]]] = {"classic": [], "hierarchical": []}
        with observatory(work) as tracking:
            train(data, tracking, "warm-up", False, 1, 1)  # builds the environments once
            for repetition in range(repetitions):
                order = ["classic", "hierarchical"] if repetition % 2 == 0 else ["hierarchical", "classic"]
                for way in order:
                    project = f"{way}-{repetition}"
                    runs[way].append(train(data, tracking, project, way == "hierarchical", cycles, rounds))
                    print(f"{project}: {json.dumps(runs[way][-1])}", flush=True)
    summary = {
        way: {
            key: median([run[key] for run in results])
            for key in ("wall_s", "training_s", "accuracy", "root_transfers", "root_bytes")
        }
        for way, results in runs.items()
    }
    rows = [[way, *(summary[way][key] for key in ("wall_s", "training_s", "accuracy", "root_transfers"))]
            for way in summary]  # fmt: skip
    print(table(["way", "wall s", "training s", "final accuracy", "root transfers"], rows))
    path = write_result(
        "hierarchical",
        {"mode": mode_of(args), "cycles": cycles, "rounds": rounds, "learners": LEARNERS, "clusters": CLUSTERS,
         "runs": runs, "median": summary,
         "time_ratio": summary["hierarchical"]["training_s"] / summary["classic"]["training_s"],
         "root_traffic_ratio": summary["hierarchical"]["root_bytes"] / summary["classic"]["root_bytes"]},
    )  # fmt: skip
    print(f"result: {path}")


if __name__ == "__main__":
    main()
