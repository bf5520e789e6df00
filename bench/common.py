"""What every benchmark shares: the machine description, medians, and result files."""

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"name": name, "time": stamp, "machine": machine(), **data}, indent=2))
    return path
