"""End to end through the real manager: SLA in, trained, registered and served model out.

Starts the embedded stack as `flops up` does (broker, observatory, manager on free loopback
ports, a temporary FLOPS_HOME), makes node data with POST /api/flops/mocks, and submits an
SLA for examples/digits-sklearn (a git repository, 2 learners x 3 rounds, model served at the
end as `make demo` does). Records POST to completed, each stage's duration, each round's
duration and POST to the first round. Cold: a fresh FLOPS_HOME, so the builder starts with an
empty cache. Warm: another submit of the same commit on the same stack (the build is reused).

    python bench/e2e.py --quick   # 1 cold + 1 warm
    python bench/e2e.py --full    # 2 cold + 5 warm (two stacks)
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    EXAMPLES,
    EmbeddedStack,
    add_mode_arguments,
    environments_reused,
    make_git_repo,
    median,
    mode_of,
    offline_env,
    project_sla,
    table,
    write_result,
)
from flops.config import SOURCES_FOLDER  # noqa: E402

STAGES = ("building", "deploying", "training", "post_training")
LEARNERS = 2
# (runs per stack: cold first, then warm; rounds per project)
PLANS = {"quick": ([2], 3), "full": ([4, 3], 3), "smoke": ([2], 1)}


def one_project(stack: EmbeddedStack, repo: Path, rounds: int, kind: str) -> dict[str, Any]:
    sla = project_sla(repo, LEARNERS, rounds, post_training_steps=["deploy_trained_model_image"])
    posted = time.time()
    project_id = stack.client.submit(sla)["project_id"]
    project = stack.wait_for(project_id)
    seen = time.time()
    if project["status"] != "completed":
        raise RuntimeError(f"{kind} project {project_id} {project['status']}: {project['error']}\n{stack.log_tail()}")
    events = stack.client.events(project_id)
    aggregator = [e for e in events if e["component"] == "aggregator"]
    rounds_at = sorted(e["time"] for e in aggregator if e["event"] == "round")
    joined_at = min((e["time"] for e in aggregator if e["event"] == "started"), default=None)
    stages = project["stages"]
    completed_at = stages.get("completed", {}).get("started_at") or seen
    build = project.get("build") or {}
    stack.client.cancel(project_id)  # stops the served model; the next run starts from the same state
    return {
        "kind": kind,
        "project_id": project_id,
        "post_to_completed_s": completed_at - posted,
        "post_to_learners_joined_s": joined_at - posted if joined_at else None,
        "post_to_first_round_s": rounds_at[0] - posted if rounds_at else None,
        "stages_s": {name: stages[name]["duration_s"] for name in STAGES if name in stages},
        "round_s": [r.get("duration_s") for r in project["rounds"]],
        "build_reused": build.get("reused"),
        "build_stage_s": build.get("stage_durations"),
        "accuracy": project["rounds"][-1].get("accuracy") if project["rounds"] else None,
    }


def summarise(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    chosen = [r for r in runs if r["kind"] == kind]
    stage_sets = [r["stages_s"] for r in chosen]

    def mid(key: str) -> float | None:
        return median([r[key] for r in chosen if r[key] is not None])

    return {
        "runs": len(chosen),
        "post_to_completed_s": mid("post_to_completed_s"),
        "post_to_learners_joined_s": mid("post_to_learners_joined_s"),
        "post_to_first_round_s": mid("post_to_first_round_s"),
        "stages_s": {name: median([s[name] for s in stage_sets if s.get(name) is not None]) for name in STAGES},
        "round_s": median([d for r in chosen for d in r["round_s"] if d]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "1 cold + 2 warm projects", "2 cold + 5 warm projects")
    args = parser.parse_args()
    mode = mode_of(args)
    per_stack, rounds = PLANS[mode]
    offline_env()
    runs: list[dict[str, Any]] = []
    stack_up_s: list[float] = []
    for index, count in enumerate(per_stack):
        with tempfile.TemporaryDirectory(prefix="flops-bench-e2e-") as tmp:
            work = Path(tmp)
            # A local repository must be under FLOPS_HOME/sources (the manager's default FLOPS_REPO_LOCAL_ROOTS).
            repo = make_git_repo(EXAMPLES / "digits-sklearn", work / "home" / SOURCES_FOLDER / "digits-sklearn")
            with EmbeddedStack(work / "home") as stack:
                stack_up_s.append(stack.up_s)
                nodes = stack.client.mocks("digits", LEARNERS, "digits")
                print(f"stack {index + 1}: up in {stack.up_s:.1f} s, node data {nodes}", flush=True)
                for run in range(count):
                    kind = "cold" if run == 0 else "warm"
                    result = one_project(stack, repo, rounds, kind)
                    runs.append(result)
                    stages = "  ".join(f"{k} {v:.1f}" for k, v in result["stages_s"].items() if v is not None)
                    print(
                        f"  {kind}: POST to completed {result['post_to_completed_s']:.1f} s "
                        f"(reused build: {result['build_reused']}); {stages}",
                        flush=True,
                    )
    cold, warm = summarise(runs, "cold"), summarise(runs, "warm")
    rows: list[list[Any]] = [
        ["POST to completed (s)", cold["post_to_completed_s"], warm["post_to_completed_s"]],
        ["POST to learners joined (s)", cold["post_to_learners_joined_s"], warm["post_to_learners_joined_s"]],
        ["POST to first round (s)", cold["post_to_first_round_s"], warm["post_to_first_round_s"]],
        *([f"  {name} (s)", cold["stages_s"][name], warm["stages_s"][name]] for name in STAGES),
        ["round (s)", cold["round_s"], warm["round_s"]],
    ]
    ratio = (
        warm["post_to_completed_s"] / cold["post_to_completed_s"]
        if warm["post_to_completed_s"] and cold["post_to_completed_s"]
        else None
    )
    print(f"\n{LEARNERS} learners x {rounds} rounds, medians ({mode})")
    print(table(["", f"cold (n={cold['runs']})", f"warm (n={warm['runs']})"], rows))
    if ratio:
        print(f"warm / cold POST to completed: {ratio:.2f}")
    rebuilt = [r["project_id"] for r in runs if r["kind"] == "warm" and not environments_reused(r)]
    if rebuilt:
        print(f"warning: warm project(s) {', '.join(rebuilt)} built their environments again: they are keyed "
              "by FLOps's own source too, so an edit to the checkout during the run invalidates them")  # fmt: skip
    print("FLOps (thesis, 8-core desktop): about 12 min end to end (about 8 min with prebuilt base images)")
    path = write_result(
        "e2e",
        {"mode": mode, "learners": LEARNERS, "rounds": rounds, "stack_up_s": stack_up_s, "runs": runs,
         "cold": cold, "warm": warm, "warm_over_cold": ratio, "warm_not_reused": rebuilt,
         "reference": {"flops_base_case_s": 12 * 60, "flops_prebuilt_base_images_s": 8 * 60}},
    )  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
