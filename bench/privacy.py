"""What differential privacy costs on digits: final accuracy and epsilon per DP setting.

digits is split over the learners' node folders; `flops train examples/digits-sklearn` runs the
same learners and rounds without DP, then with each setting below (`--dp ...`). Reported per
setting: the final accuracy of the global model on the learners' test data, the drop against the
run without DP, the epsilon at delta 1e-5 the training spent (`flops.differential_privacy`),
the largest averaged update norm of the last round and the wall time of `flops train`.

    python bench/privacy.py --quick   # 5 learners x 5 rounds, five settings (about 8 min)
    python bench/privacy.py --full    # 10 learners x 10 rounds, the same settings
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
    mode_of,
    observatory,
    offline_env,
    table,
    write_result,
)
from flops.data.partition import partition  # noqa: E402

EXAMPLE = EXAMPLES / "digits-sklearn"
# (learners, rounds)
PLANS = {"quick": (5, 5), "full": (10, 10), "smoke": (2, 1)}
# name -> flops train options; the first is the baseline.
SETTINGS: dict[str, list[str]] = {
    "no DP": [],
    "server, z=0.1, C=1": ["--dp", "server", "--noise-multiplier", "0.1", "--clipping-norm", "1"],
    "server, z=0.5, C=1": ["--dp", "server", "--noise-multiplier", "0.5", "--clipping-norm", "1"],
    "client adaptive, z=0.5": [
        "--dp",
        "client",
        "--adaptive-clipping",
        "--noise-multiplier",
        "0.5",
        "--clipping-norm",
        "1",
    ],
    "local, z=0.05, C=1": ["--dp", "local", "--noise-multiplier", "0.05", "--clipping-norm", "1"],
}


def train(data: Path, tracking: str, project: str, learners: int, rounds: int, options: list[str]) -> dict[str, Any]:
    summary, wall = flops_train(
        EXAMPLE, data, tracking, project, "--learners", str(learners), "--rounds", str(rounds),
        "--model-name", "bench-privacy", *options,
    )  # fmt: skip
    privacy = summary.get("privacy") or {}
    last = (summary["rounds"][-1].get("privacy") or {}) if summary["rounds"] else {}
    return {
        "accuracy": summary["final_accuracy"],
        "loss": summary["final_loss"],
        "epsilon": privacy.get("epsilon"),
        "max_update_norm": last.get("max_update_norm"),
        "clipping_norm": last.get("clipping_norm"),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "5 learners x 5 rounds", "10 learners x 10 rounds")
    args = parser.parse_args()
    learners, rounds = PLANS[mode_of(args)]
    offline_env()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="flops-bench-privacy-") as folder:
        work = Path(folder)
        os.environ["FLOPS_HOME"] = str(work / "flops-home")
        data = work / "nodes"
        partition("digits", learners, "digits", data)
        with observatory(work) as tracking:
            for index, (name, options) in enumerate(SETTINGS.items()):
                results[name] = train(data, tracking, f"privacy-{index}", learners, rounds, options)
                print(f"{name}: {json.dumps(results[name])}", flush=True)
    baseline = results["no DP"]["accuracy"]
    for result in results.values():
        result["accuracy_drop"] = baseline - result["accuracy"]

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [
        [name, shown(r["accuracy"]), shown(r["accuracy_drop"]), shown(r["epsilon"]), shown(r["max_update_norm"])]
        for name, r in results.items()
    ]
    print(table(["setting", "accuracy", "drop", "epsilon (delta 1e-5)", "largest update"], rows))
    path = write_result(
        "privacy", {"mode": mode_of(args), "learners": learners, "rounds": rounds, "delta": 1e-5, "results": results}
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
