"""PyTorch on a GPU: examples/digits-pytorch with its model on CUDA against the same on the CPU.

The example picks its device from FLOPS_DEVICE (`cuda` or `cpu`), which every FLOps process
passes on to the learners and the aggregator. Two measurements, CPU as the baseline:

- local training: the example's ModelManager in this process, `fit_model` over all of digits
  for E epochs (median of repetitions, CUDA synchronised);
- federated: `flops train examples/digits-pytorch --flavor pytorch`, 2 learners, `--hp
  local_epochs=E`, median round time. A round on digits is mostly Flower's own latency, so
  expect a ratio near 1 here: the GPU shows in the local-training numbers.

Without a CUDA device it prints "skipped: ..." and writes a result that says so.

    python bench/gpu.py --quick   # local: 3 x 20 epochs; federated: 1 run x 3 rounds, 10 local epochs
    python bench/gpu.py --full    # local: 5 x 50 epochs; federated: 3 runs x 5 rounds, 10 local epochs
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

EXAMPLE = EXAMPLES / "digits-pytorch"
# (local repetitions, local epochs, federated runs, rounds, local epochs per round)
PLANS = {"quick": (3, 20, 1, 3, 10), "full": (5, 50, 3, 5, 10), "smoke": (2, 2, 1, 1, 1)}


def local_training(devices: dict[str, str], data_dir: Path, reps: int, epochs: int) -> dict[str, list[float]]:
    """Seconds per `fit_model` of `epochs` epochs, per role; devices interleaved, so drift hits all alike."""
    import torch

    os.environ.update({"FLOPS_DATA_DIR": str(data_dir), "FLOPS_DATA_TAGS": "digits"})
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    from model_manager import ModelManager  # the example's, imported from its folder

    managers = {}
    for role, device in devices.items():
        os.environ["FLOPS_DEVICE"] = device  # read by the example when its ModelManager is made
        manager = ModelManager()
        manager.set_model_data()
        manager.fit_model({"local_epochs": 2})  # warm-up: CUDA context, kernels, allocator, thread pools
        managers[role] = manager
    times: dict[str, list[float]] = {role: [] for role in devices}
    for _ in range(reps):
        for role, manager in managers.items():
            cuda = devices[role].startswith("cuda")
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            manager.fit_model({"local_epochs": epochs})
            if cuda:
                torch.cuda.synchronize()
            times[role].append(time.perf_counter() - started)
    return times


def federated(device: str, work: Path, data: Path, rounds: int, epochs: int, tracking: str) -> list[float]:
    result = subprocess.run(
        [str(BIN / "flops"), "train", str(EXAMPLE), "--flavor", "pytorch", "--data-dir", str(data), "--learners", "2",
         "--rounds", str(rounds), "--hp", f"local_epochs={epochs}", "--tracking-uri", tracking, "--json"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "FLOPS_HOME": str(work / "flops-home"), "FLOPS_DEVICE": device},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"flops train on {device} failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return [r["duration_s"] for r in summary["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "short runs", "more repetitions and rounds")
    # The device measured against the CPU; `cpu` runs the script's paths on a machine without a GPU.
    parser.add_argument("--accelerator", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    mode = mode_of(args)
    offline_env()
    import torch

    if args.accelerator.startswith("cuda") and not torch.cuda.is_available():
        reason = f"no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})"
        print(f"skipped: {reason}")
        path = write_result("gpu", {"mode": mode, "skipped": reason})
        print(f"results: {path}")
        return
    accelerator = args.accelerator
    gpu_name = torch.cuda.get_device_name(0) if accelerator.startswith("cuda") else "(none: CPU against CPU)"
    reps, epochs, runs, rounds, round_epochs = PLANS[mode]
    devices = {"cpu": "cpu", "accelerator": accelerator}  # role: device; CPU is the baseline
    rounds_s: dict[str, list[float]] = {role: [] for role in devices}
    with tempfile.TemporaryDirectory(prefix="flops-bench-gpu-") as tmp:
        work = Path(tmp)
        everything = work / "all"
        partition("digits", 1, "digits", everything)
        local = local_training(devices, everything / "node-1", reps, epochs)
        for role, device in devices.items():
            print(f"local training on {device}: {epochs} epochs in {median(local[role]):.2f} s (median)", flush=True)
        data = work / "data"
        partition("digits", 2, "digits", data)
        with observatory(work) as tracking:
            for run in range(runs):
                order = list(devices) if run % 2 == 0 else list(reversed(devices))  # alternate against drift
                for role in order:
                    device = devices[role]
                    folder = work / f"{role}-{run}"
                    rounds_s[role] += federated(device, folder, data, rounds, round_epochs, tracking)
                    print(f"federated on {device}: rounds {[round(x, 1) for x in rounds_s[role]]}", flush=True)
    local_median = {role: median(v) for role, v in local.items()}
    round_median = {role: median(v) for role, v in rounds_s.items()}
    speedup_local = _ratio(local_median["cpu"], local_median["accelerator"])
    speedup_round = _ratio(round_median["cpu"], round_median["accelerator"])
    print(f"\ndigits-pytorch, {gpu_name} ({mode})")
    print(
        table(
            ["", "CPU", accelerator, f"CPU / {accelerator}"],
            [
                [f"local training, {epochs} epochs (s)", local_median["cpu"], local_median["accelerator"],
                 speedup_local],
                [f"federated round, {round_epochs} epochs (s)", round_median["cpu"], round_median["accelerator"],
                 speedup_round],
            ],
        )
    )  # fmt: skip
    path = write_result(
        "gpu",
        {"mode": mode, "accelerator": accelerator, "gpu": gpu_name, "local_epochs": epochs,
         "local_s": local, "local_median_s": local_median, "round_local_epochs": round_epochs, "rounds": rounds,
         "round_s": rounds_s, "round_median_s": round_median, "speedup_local": speedup_local,
         "speedup_round": speedup_round},
    )  # fmt: skip
    print(f"results: {path}")


def _ratio(baseline: float | None, value: float | None) -> float | None:
    return baseline / value if baseline and value else None


if __name__ == "__main__":
    main()
