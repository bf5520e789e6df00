"""Plots and tables from the newest result of each benchmark.

Reads bench/results/<name>-<time>.json (the newest per benchmark), writes PNGs into
docs/performance/ and rewrites the generated section of docs/performance.md (between its
`bench:results` markers). Benchmarks without a result, or skipped, get a line saying so.

    python bench/plots.py              # plots and the tables in docs/performance.md
    python bench/plots.py --no-docs    # plots only
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, environments_reused  # noqa: E402

DOCS = ROOT / "docs" / "performance.md"
FIGURES = ROOT / "docs" / "performance"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
STAGES = ("building", "deploying", "training", "post_training")
COLOURS = {"building": "#4c72b0", "deploying": "#dd8452", "training": "#55a868", "post_training": "#c44e52"}
FLOWER_FLOOR_S = (11.0, 12.0)  # Flower's deployment engine, trivial model, 2 SuperNodes, this machine
FLOPS_BASE_CASE_S = 12 * 60


def newest(name: str) -> dict[str, Any] | None:
    files = sorted(RESULTS.glob(f"{name}-[0-9]*.json"))
    return json.loads(files[-1].read_text(encoding="utf-8")) if files else None


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"_{result['time']} UTC, `--{result.get('mode', 'quick')}`, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['cpu']}, Python {m['python']}, Flower {m['flwr']}, MLflow {m['mlflow']}_"
    )


def save(figure: Any, name: str) -> str:
    FIGURES.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(FIGURES / name, dpi=110)
    plt.close(figure)
    return f"![{name}](performance/{name})"


# ------------------------------------------------------------------------------------- e2e
def e2e(result: dict[str, Any]) -> str:
    cold, warm = result["cold"], result["warm"]
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [f"cold (n={cold['runs']})", f"warm (n={warm['runs']})"]
    bottoms = [0.0, 0.0]
    for stage in STAGES:
        values = [cold["stages_s"].get(stage) or 0.0, warm["stages_s"].get(stage) or 0.0]
        axis.bar(labels, values, bottom=bottoms, label=stage, color=COLOURS[stage])
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    axis.bar(["FLOps thesis\n(8 cores)"], [FLOPS_BASE_CASE_S], color="#999999", label="FLOps base case (total)")
    for index, total in enumerate([cold["post_to_completed_s"], warm["post_to_completed_s"]]):
        if total:
            axis.text(index, bottoms[index] + 8, f"{total:.0f} s", ha="center")
    axis.text(2, FLOPS_BASE_CASE_S + 8, "about 12 min", ha="center")
    axis.set_ylabel("seconds (medians)")
    axis.set_title(f"POST to completed, {result['learners']} learners x {result['rounds']} rounds")
    axis.legend(fontsize=8)
    image = save(figure, "e2e-stages.png")
    rows = [
        ["POST to completed", cold["post_to_completed_s"], warm["post_to_completed_s"], FLOPS_BASE_CASE_S],
        ["POST to learners joined", cold["post_to_learners_joined_s"], warm["post_to_learners_joined_s"], None],
        ["POST to first round", cold["post_to_first_round_s"], warm["post_to_first_round_s"], None],
        *([f"stage {s}", cold["stages_s"].get(s), warm["stages_s"].get(s), None] for s in STAGES),
        ["round (median)", cold["round_s"], warm["round_s"], None],
    ]
    notes = ""
    if any(r["kind"] == "warm" and not environments_reused(r) for r in result["runs"]):
        notes = (
            "\n\nIn this run, warm projects built their environments again: the cached environments are keyed by "
            "FLOps's own source too, and the checkout was edited during the run; their building stage is a rebuild."
        )
    return (
        f"### End to end (`bench/e2e.py`)\n\n{provenance(result)}\n\n"
        + md_table(["seconds (median)", "cold", "warm", "FLOps thesis"], rows)
        + f"\n\nwarm / cold POST to completed: {fmt(result.get('warm_over_cold'), 2)}{notes}\n\n{image}\n"
    )


# -------------------------------------------------------------------------------- overhead
def overhead(result: dict[str, Any]) -> str:
    figure, axis = plt.subplots(figsize=(6, 4))
    data = [result["plain_round_s"], result["flops_round_s"]]
    axis.boxplot(data)
    axis.set_xticks([1, 2], ["plain Flower", "FLOps"])
    for index, values in enumerate(data, start=1):
        axis.scatter([index] * len(values), values, alpha=0.6, s=14)
    axis.axhspan(*FLOWER_FLOOR_S, color="#cccccc", alpha=0.5, label="Flower floor, idle machine (11-12 s)")
    axis.set_ylabel("seconds per round")
    axis.set_ylim(bottom=0)
    axis.set_title(f"round time, {result['repetitions']} repetitions x {result['rounds']} rounds")
    axis.legend(fontsize=8, loc="lower right")
    image = save(figure, "overhead.png")
    rows = [["median round (s)", result["plain_median_s"], result["flops_median_s"]]]
    return (
        f"### Overhead over plain Flower (`bench/overhead.py`)\n\n{provenance(result)}\n\n"
        + md_table(["", "plain Flower", "FLOps"], rows)
        + f"\n\nFLOps / plain: {fmt(result['ratio'], 2)} ({fmt((result['ratio'] - 1) * 100)} %)\n\n{image}\n"
    )


# -------------------------------------------------------------------------------- api_load
def api_load(result: dict[str, Any]) -> str:
    cases = result["cases"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    levels = sorted({c["concurrency"] for c in cases})
    for endpoint, marker, colour in (("get", "o", "#4c72b0"), ("validate", "s", "#dd8452")):
        chosen = [c for c in cases if c["endpoint"] == endpoint]
        x = [c["concurrency"] for c in chosen]
        left.plot(x, [c["throughput_rps"] for c in chosen], marker=marker, color=colour, label=endpoint)
        right.plot(x, [c["p50_ms"] for c in chosen], marker=marker, color=colour, label=f"{endpoint} p50")
        right.plot(x, [c["p99_ms"] for c in chosen], marker=marker, color=colour, linestyle="--",
                   label=f"{endpoint} p99")  # fmt: skip
    left.set(xlabel="client threads", ylabel="requests/s", title="throughput")
    left.set_ylim(bottom=0)
    right.set(xlabel="client threads", ylabel="ms", title="latency")
    right.set_yscale("log")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.legend(fontsize=8)
    image = save(figure, "api-load.png")
    rows = [
        [c["endpoint"], c["concurrency"], c["requests"], c["throughput_rps"], c["p50_ms"], c["p99_ms"], c["errors"]]
        for c in cases
    ]
    return (
        f"### Manager API under load (`bench/api_load.py`)\n\n{provenance(result)}; "
        f"{fmt(result['seconds_per_case'], 0)} s per case, project {result['project_status']} "
        f"({result['project_answer_bytes']} bytes)\n\n"
        + md_table(["endpoint", "threads", "requests", "req/s", "p50 ms", "p99 ms", "errors"], rows)
        + f"\n\n{image}\n"
    )


# ----------------------------------------------------------------------------------- scale
SCALE_HEADERS = ["N", "all joined s", "1st round end s", "round s", "MiB/learner", "MiB aggregator", "MiB total"]


def scale(result: dict[str, Any]) -> str:
    runs = result["results"]
    counts = [r["learners"] for r in runs]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot(counts, [r["all_joined_s"] for r in runs], marker="o", label="start to all joined")
    left.plot(counts, [r["round_median_s"] for r in runs], marker="s", label="round (median)")
    left.set(xlabel="learners", ylabel="seconds", title="time")
    right.plot(counts, [r["peak_rss_per_learner_mb"] for r in runs], marker="o", label="per learner")
    right.plot(counts, [r["peak_rss_total_mb"] for r in runs], marker="s", label="everything")
    right.set(xlabel="learners", ylabel="MiB (peak RSS)", title="memory")
    for axis in (left, right):
        axis.set_ylim(bottom=0)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.legend(fontsize=8)
    image = save(figure, "scale.png")
    rows = [
        [r["learners"], r["all_joined_s"], r["first_round_end_s"], r["round_median_s"],
         r["peak_rss_per_learner_mb"], r["peak_rss_aggregator_mb"], r["peak_rss_total_mb"]]
        for r in runs
    ]  # fmt: skip
    skipped = "".join(
        f"\n\nN={s['learners']} skipped: about {s['needed_mb']:.0f} MiB needed, {s['available_mb']:.0f} available."
        for s in result.get("skipped", [])
    )
    return (
        f"### Learners on one machine (`bench/scale.py`)\n\n{provenance(result)}; {result['rounds']} rounds per N\n\n"
        + md_table(SCALE_HEADERS, rows)
        + f"{skipped}\n\n{image}\n"
    )


# ---------------------------------------------------------------------------------- images
def images(result: dict[str, Any]) -> str:
    reference = result["reference"]
    sizes = result["sizes"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.bar(["cold", "warm", "code-only", "FLOps thesis"],
             [result["cold"]["wall_s"], result["warm"]["wall_s"], result["code_only"]["wall_s"],
              reference["build_s"]], color=["#4c72b0"] * 3 + ["#999999"])  # fmt: skip
    left.set(ylabel="seconds", title="FL-actor image build (amd64)")
    roles = sorted(sizes)
    width = 0.4
    positions = range(len(roles))
    right.bar([p - width / 2 for p in positions], [sizes[r]["image_mb"] for r in roles], width, label="FLOps now")
    right.bar([p + width / 2 for p in positions], [reference.get(f"{r}_image_mb") or 0 for r in roles], width,
              label="FLOps thesis", color="#999999")  # fmt: skip
    right.set_xticks(list(positions), roles)
    right.set(ylabel="MB", title="image size")
    right.legend(fontsize=8)
    image = save(figure, "images.png")
    rows = [
        ["cold build (s)", result["cold"]["wall_s"], reference["build_s"]],
        ["warm, same commit (s)", result["warm"]["wall_s"], None],
        ["code-only rebuild (s)", result["code_only"]["wall_s"], None],
        *([f"{r} image (MB)", sizes[r]["image_mb"], reference.get(f"{r}_image_mb")] for r in roles),
        *([f"{r} pull (MB)", sizes[r]["compressed_mb"], None] for r in roles),
    ]
    multi = result.get("multi_arch") or {}
    if multi.get("wall_s"):
        rows.append(["amd64 + arm64 build (s)", multi["wall_s"], reference["multi_arch_fl_build_s"]])
    return (
        f"### OCI images (`bench/images.py`)\n\n{provenance(result)}\n\n"
        + md_table(["", "FLOps now", "FLOps thesis"], rows)
        + f"\n\n{image}\n"
    )


# ------------------------------------------------------------------------------------- gpu
def gpu(result: dict[str, Any]) -> str:
    local, rounds = result["local_median_s"], result["round_median_s"]
    accelerator = result["accelerator"]
    figure, axis = plt.subplots(figsize=(6, 3.8))
    labels = [f"local training\n{result['local_epochs']} epochs", f"round\n{result['round_local_epochs']} epochs"]
    width = 0.35
    axis.bar([-width / 2, 1 - width / 2], [local["cpu"], rounds["cpu"]], width, label="CPU")
    axis.bar([width / 2, 1 + width / 2], [local["accelerator"], rounds["accelerator"]], width, label=accelerator)
    axis.set_xticks([0, 1], labels)
    axis.set(ylabel="seconds (median)", title=f"digits-pytorch on {result['gpu']}")
    axis.legend(fontsize=8)
    image = save(figure, "gpu.png")
    rows = [
        ["local training (s)", local["cpu"], local["accelerator"], result["speedup_local"]],
        ["federated round (s)", rounds["cpu"], rounds["accelerator"], result["speedup_round"]],
    ]
    return (
        f"### PyTorch on a GPU (`bench/gpu.py`)\n\n{provenance(result)}; {result['gpu']}\n\n"
        + md_table(["", "CPU", accelerator, "speed-up"], rows)
        + f"\n\n{image}\n"
    )


# --------------------------------------------------------------------------------- privacy
def privacy(result: dict[str, Any]) -> str:
    rows = [
        [name, fmt(r["accuracy"], 3), fmt(r["accuracy_drop"], 3), fmt(r["epsilon"]), fmt(r["max_update_norm"], 3)]
        for name, r in result["results"].items()
    ]
    return (
        f"### Differential privacy (`bench/privacy.py`)\n\n{provenance(result)}; {result['learners']} learners x "
        f"{result['rounds']} rounds of digits-sklearn, epsilon at delta {result['delta']:g}\n\n"
        + md_table(["setting", "accuracy", "drop", "epsilon", "largest update"], rows)
        + "\n"
    )


SECTIONS = {
    "e2e": ("End to end", e2e),
    "overhead": ("Overhead over plain Flower", overhead),
    "api_load": ("Manager API under load", api_load),
    "scale": ("Learners on one machine", scale),
    "privacy": ("Differential privacy", privacy),
    "images": ("OCI images", images),
    "gpu": ("PyTorch on a GPU", gpu),
}


def generated() -> str:
    parts = []
    for name, (title, render) in SECTIONS.items():
        result = newest(name)
        if result is None:
            parts.append(f"### {title} (`bench/{name}.py`)\n\nNo result yet: `python bench/{name}.py`.\n")
        elif result.get("skipped"):
            parts.append(f"### {title} (`bench/{name}.py`)\n\n{provenance(result)}\n\nSkipped: {result['skipped']}.\n")
        else:
            parts.append(render(result))
            print(f"{name}: {result['time']} ({result.get('mode', 'quick')})")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-docs", action="store_true", help="write the plots only")
    args = parser.parse_args()
    section = generated()
    if args.no_docs:
        return
    text = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Latest results\n\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    text = pattern.sub(lambda _m: f"{BEGIN}\n<!-- written by bench/plots.py; edits here are lost -->\n\n"
                       f"{section}\n{END}", text)  # fmt: skip
    DOCS.write_text(text, encoding="utf-8")
    print(f"wrote {DOCS.relative_to(ROOT)} and {FIGURES.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
