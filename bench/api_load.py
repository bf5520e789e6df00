"""The manager's API under load: N client threads against one manager for a fixed time.

Starts the embedded stack (as `flops up`, temporary FLOPS_HOME, free loopback ports), submits
one digits-sklearn project and cancels it at once (a real project record that nothing keeps
busy; `--completed-project` waits for a finished 3-round project instead, a larger answer),
then for each concurrency level runs N threads, each with its own requests.Session and the
admin bearer token, as fast as they can for the case's duration:

- get:      GET /api/flops/projects/ID (authentication, store read, the full project view)
- validate: POST /api/flops/projects with an SLA whose training_rounds is not a number,
            refused with 422 before anything is fetched or deployed (the API has no
            validate-only route; this is its pure validation path)

Reports throughput (requests/s) and p50/p99 latency. The load generator shares the
machine (and, on 2 cores, the CPUs) with the manager: the numbers are a floor.

    python bench/api_load.py --quick   # 10 s per case, concurrency 1 and 8
    python bench/api_load.py --full    # 30 s per case, concurrency 1, 8 and 32
"""

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    EXAMPLES,
    EmbeddedStack,
    add_mode_arguments,
    make_git_repo,
    median,
    mode_of,
    offline_env,
    percentile,
    project_sla,
    table,
    write_result,
)
from flops.config import SOURCES_FOLDER  # noqa: E402

# (seconds per case, concurrency levels)
PLANS = {"quick": (10.0, [1, 8]), "full": (30.0, [1, 8, 32]), "smoke": (2.0, [1, 4])}
WARMUP_S = 1.0


def worker(
    call: Callable[[requests.Session], int],
    expected: int,
    token: str,
    start: float,
    stop: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    try:
        while (now := time.perf_counter()) < stop:
            try:
                status = call(session)
            except requests.RequestException as error:
                errors.append(type(error).__name__)
                continue
            elapsed = time.perf_counter() - now
            if now < start:  # warming up: connections, caches
                continue
            if status == expected:
                latencies.append(elapsed)
            else:
                errors.append(str(status))
    finally:
        session.close()


def run_case(call: Callable[[requests.Session], int], expected: int, token: str, threads: int,
             seconds: float) -> dict[str, Any]:  # fmt: skip
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[list[str]] = [[] for _ in range(threads)]
    start = time.perf_counter() + WARMUP_S
    stop = start + seconds
    pool = [
        threading.Thread(target=worker, args=(call, expected, token, start, stop, latencies[i], errors[i]))
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    done = [x for part in latencies for x in part]
    failed = [x for part in errors for x in part]
    return {
        "concurrency": threads,
        "seconds": seconds,
        "requests": len(done),
        "errors": len(failed),
        "error_kinds": sorted(set(failed))[:5],
        "throughput_rps": len(done) / seconds,
        "p50_ms": _ms(percentile(done, 50)),
        "p99_ms": _ms(percentile(done, 99)),
        "mean_ms": _ms(sum(done) / len(done)) if done else None,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "10 s per case, concurrency 1 and 8", "30 s per case, concurrency 1, 8 and 32")
    parser.add_argument(
        "--completed-project", action="store_true", help="load a completed 3-round project (waits for it to train)"
    )
    args = parser.parse_args()
    mode = mode_of(args)
    seconds, levels = PLANS[mode]
    offline_env()
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flops-bench-api-") as tmp:
        work = Path(tmp)
        repo = make_git_repo(EXAMPLES / "digits-sklearn", work / "home" / SOURCES_FOLDER / "digits-sklearn")
        with EmbeddedStack(work / "home") as stack:
            stack.client.mocks("digits", 2, "digits")
            project_id = stack.client.submit(project_sla(repo))["project_id"]
            if not args.completed_project:
                stack.client.cancel(project_id)
            project = stack.wait_for(project_id)
            print(f"manager {stack.url} up in {stack.up_s:.1f} s; project {project_id} {project['status']}", flush=True)
            url = f"{stack.url}/api/flops/projects"
            invalid = project_sla(repo)
            invalid["training_configuration"]["training_rounds"] = "many"
            probe = requests.post(url, json=invalid, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30)
            assert probe.status_code == 422, probe.text
            view = requests.get(f"{url}/{project_id}", headers={"Authorization": f"Bearer {stack.token}"}, timeout=30)
            endpoints: dict[str, tuple[Callable[[requests.Session], int], int]] = {
                "get": (lambda s: s.get(f"{url}/{project_id}", timeout=30).status_code, 200),
                "validate": (lambda s: s.post(url, json=invalid, timeout=30).status_code, 422),
            }
            for name, (call, expected) in endpoints.items():
                for threads in levels:
                    case = {"endpoint": name, **run_case(call, expected, stack.token, threads, seconds)}
                    cases.append(case)
                    print(
                        f"  {name:9} x{threads:<3} {case['throughput_rps']:8.1f} req/s  p50 {case['p50_ms'] or 0:.1f}"
                        f" ms  p99 {case['p99_ms'] or 0:.1f} ms  errors {case['errors']}",
                        flush=True,
                    )
            still = len(stack.client.projects())
    rows = [
        [c["endpoint"], c["concurrency"], c["requests"], c["throughput_rps"], c["p50_ms"], c["p99_ms"], c["errors"]]
        for c in cases
    ]
    print(f"\nmanager API, {seconds:.0f} s per case ({mode}); project answer {len(view.content)} bytes")
    print(table(["endpoint", "threads", "requests", "req/s", "p50 ms", "p99 ms", "errors"], rows))
    by_endpoint = {
        name: {
            "throughput_rps": {c["concurrency"]: c["throughput_rps"] for c in cases if c["endpoint"] == name},
            "scaling": _scaling([c for c in cases if c["endpoint"] == name]),
        }
        for name in ("get", "validate")
    }
    path = write_result(
        "api_load",
        {"mode": mode, "seconds_per_case": seconds, "concurrency": levels, "project_status": project["status"],
         "project_answer_bytes": len(view.content), "projects_after": still, "cases": cases,
         "summary": by_endpoint, "median_p50_ms": median([c["p50_ms"] for c in cases if c["p50_ms"] is not None])},
    )  # fmt: skip
    print(f"results: {path}")


def _scaling(cases: list[dict[str, Any]]) -> float | None:
    """Throughput at the highest concurrency over throughput with one thread (the baseline)."""
    if len(cases) < 2 or not cases[0]["throughput_rps"]:
        return None
    return float(cases[-1]["throughput_rps"] / cases[0]["throughput_rps"])


if __name__ == "__main__":
    main()
