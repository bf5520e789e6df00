"""Every benchmark in turn (`make bench`), then the plots and the tables of docs/performance.md.

Each script runs in its own process with the same size flag; one that fails does not stop
the others (the exit status says so at the end). images.py skips itself without buildah,
gpu.py without a CUDA device.

    python bench/run_all.py --quick               # the quick set, what `make bench` runs
    python bench/run_all.py --full                # every script with --full (hours)
    python bench/run_all.py --only e2e scale      # some of them
    python bench/run_all.py --skip images --no-plots
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_mode_arguments, mode_of, table, write_result  # noqa: E402
from flops.runtime_env import FLOWER_OFFLINE_ENV  # noqa: E402

SCRIPTS = ["e2e", "overhead", "api_load", "scale", "hierarchical", "privacy", "images", "gpu"]
NO_SMOKE = {"overhead"}  # has only --quick and --full
QUICK_BUDGET_S = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "every script with --quick", "every script with --full")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[], help="leave these out")
    parser.add_argument("--no-plots", action="store_true", help="do not run bench/plots.py at the end")
    args = parser.parse_args()
    mode = mode_of(args)
    chosen = [name for name in SCRIPTS if (not args.only or name in args.only) and name not in args.skip]
    env = {**os.environ, **FLOWER_OFFLINE_ENV}
    rows: list[list[object]] = []
    runs: list[dict[str, object]] = []
    started = time.monotonic()
    for name in chosen:
        if mode == "smoke" and name in NO_SMOKE:
            rows.append([name, "not run (no smoke size)", None])
            continue
        print(f"\n=== {name} --{mode} ===", flush=True)
        clock = time.monotonic()
        code = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), f"--{mode}"], env=env, check=False)
        elapsed = time.monotonic() - clock
        status = "ok" if code.returncode == 0 else f"failed ({code.returncode})"
        rows.append([name, status, elapsed])
        runs.append({"script": name, "status": status, "seconds": elapsed})
    if not args.no_plots:
        print("\n=== plots ===", flush=True)
        plots = subprocess.run([sys.executable, str(ROOT / "bench" / "plots.py")], env=env, check=False)
        rows.append(["plots", "ok" if plots.returncode == 0 else f"failed ({plots.returncode})", None])
    total = time.monotonic() - started
    rows.append(["total", "", total])
    print(f"\nbenchmarks ({mode})")
    print(table(["script", "status", "seconds"], rows))
    if mode == "quick" and total > QUICK_BUDGET_S:
        print(f"note: the quick set took longer than its {QUICK_BUDGET_S // 60} min budget (a busy machine?)")
    path = write_result("run_all", {"mode": mode, "runs": runs, "total_s": total})
    print(f"results: {path}")
    if any(str(r[1]).startswith("failed") for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
