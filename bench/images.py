"""OCI images: build times and sizes of the FL-actor images, next to FLOps's published figures.

Needs buildah (and podman, skopeo, docker-registry as the container tests do); without
buildah it prints "skipped: buildah not installed" and writes a result saying so. Uses the
container tests' private world (tests/containers_env.py: own storage and configuration,
a loopback Registry v2) and runs the image builder as they do
(`python -m image_builder.main --target oci ...`, digits-sklearn as a git repository):

- cold: the learner and aggregator images (linux/amd64) with an empty builder cache;
- warm: the same commit again (the build is found and skipped);
- code-only: a commit that changes only code (the dependency layer comes from the cache);
- sizes: each image's uncompressed size (podman) and what a pull transfers (registry);
- --full only: a linux/amd64 + linux/arm64 build with arm64 emulated by QEMU.

    python bench/images.py --quick   # cold, warm, code-only, sizes
    python bench/images.py --full    # the same plus the amd64 + arm64 build
"""

import argparse
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
    EXAMPLES,
    add_mode_arguments,
    git,
    make_git_repo,
    mode_of,
    offline_env,
    table,
    write_result,
)
from bench.image_sizes import compressed_sizes, image_size  # noqa: E402
from flops.build import BuildOutcome  # noqa: E402

CUSTOMER = "bench"
MB = 1_000_000
# FLOps's published numbers (thesis, 8-core desktop).
REFERENCE = {
    "build_s": 6 * 60 + 20,
    "base_image_build_s": 3 * 60 + 53,
    "base_image_mb": 2790,
    "learner_image_mb": 2790,
    "aggregator_image_mb": 3550,
    "builder_image_mb": 3000,
    "multi_arch_fl_build_s": 27 * 60,
}


def run_builder(registry: str, base_image: str, repo: Path, cache: Path, *extra: str) -> dict[str, Any]:
    """One build as the manager would start it; the result file plus wall time and the log's tail."""
    result_file = cache.parent / f"{cache.name}-result.json"
    result_file.unlink(missing_ok=True)
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable, "-m", "image_builder.main", "--target", "oci", "--project-id", "bench-images",
            "--repo-url", str(repo), "--cache-dir", str(cache), "--result-file", str(result_file),
            "--registry", registry, "--no-tls-verify", "--base-image", base_image, "--customer", CUSTOMER, *extra,
        ],
        capture_output=True, text=True, timeout=3600, check=False, cwd=ROOT,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise RuntimeError(f"the image builder failed ({completed.returncode}):\n{output[-4000:]}")
    result = BuildOutcome.model_validate_json(result_file.read_text(encoding="utf-8")).result
    if result is None:
        raise RuntimeError(f"the image builder wrote no result:\n{output[-4000:]}")
    return {
        "wall_s": elapsed,
        "reused": result.reused,
        "images": result.images,
        "stage_durations": result.stage_durations,
        "oci": result.oci.model_dump(mode="json") if result.oci else {},
    }


def measure(mode: str, work: Path) -> dict[str, Any]:
    from tests.containers_env import BASE_IMAGE, ContainerWorld, enable_arm64_emulation

    data: dict[str, Any] = {}
    world = ContainerWorld.start(work / "containers")
    try:
        data["storage_driver"] = world.driver
        started = time.monotonic()
        world.import_base_image()
        data["base_image_s"] = time.monotonic() - started
        repo = make_git_repo(EXAMPLES / "digits-sklearn", work / "repos" / "digits-sklearn")
        cache = work / "builder-cache"
        cold = run_builder(world.registry, BASE_IMAGE, repo, cache)
        print(f"cold build: {cold['wall_s']:.1f} s", flush=True)
        warm = run_builder(world.registry, BASE_IMAGE, repo, cache)
        print(f"warm build (same commit): {warm['wall_s']:.1f} s, reused {warm['reused']}", flush=True)
        model_manager = repo / "model_manager.py"
        model_manager.write_text("# a comment that changes nothing\n" + model_manager.read_text(encoding="utf-8"))
        git(repo, "commit", "-q", "-am", "comment only")
        code_only = run_builder(world.registry, BASE_IMAGE, repo, cache)
        print(f"code-only rebuild: {code_only['wall_s']:.1f} s", flush=True)
        data.update({"cold": cold, "warm": warm, "code_only": code_only})
        sizes: dict[str, dict[str, float]] = {}
        for role, ref in cold["images"].items():
            pulled = world.podman("pull", "-q", ref)
            if pulled.returncode != 0:
                raise RuntimeError(f"cannot pull {ref}: {pulled.stderr[-500:]}")
            sizes[role] = {
                "image_mb": image_size(ref, world.driver) / MB,
                "compressed_mb": compressed_sizes(ref, tls_verify=False)["linux/amd64"] / MB,
            }
        data["sizes"] = sizes
        if mode == "full":
            data["multi_arch"] = multi_arch(world, repo, work, BASE_IMAGE, enable_arm64_emulation)
    finally:
        world.stop()
    return data


def multi_arch(world: Any, repo: Path, work: Path, base_image: str, enable: Any) -> dict[str, Any]:
    """linux/amd64 + linux/arm64 in one build, arm64 emulated by QEMU (slow)."""
    problem = enable()
    if problem:
        print(f"multi-arch build skipped: {problem}")
        return {"skipped": problem}
    started = time.monotonic()
    world.import_base_image("arm64", f"{base_image}-arm64")
    world.run("podman", "tag", base_image, f"{base_image}-amd64")
    base_s = time.monotonic() - started
    build = run_builder(
        world.registry, f"{base_image}-{{arch}}", repo, work / "builder-cache-arm64",
        "--platforms", "linux/amd64,linux/arm64",
    )  # fmt: skip
    print(f"amd64 + arm64 build: {build['wall_s']:.1f} s", flush=True)
    build["arm64_base_image_s"] = base_s
    build["compressed_mb"] = {
        role: {platform: size / MB for platform, size in compressed_sizes(ref, tls_verify=False).items()}
        for role, ref in build["images"].items()
    }
    return build


def skip(mode: str, reason: str) -> None:
    print(f"skipped: {reason}")
    path = write_result("images", {"mode": mode, "skipped": reason})
    print(f"results: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(parser, "cold, warm and code-only builds, sizes", "also an amd64 + arm64 (QEMU) build")
    args = parser.parse_args()
    mode = mode_of(args)
    offline_env()
    if shutil.which("buildah") is None:
        skip(mode, "buildah not installed")
        return
    from tests.containers_env import PACKAGES, missing_tools

    missing = missing_tools(PACKAGES)
    if missing:  # the container tests install them; a benchmark does not
        skip(mode, f"missing container tools: {', '.join(missing)}")
        return
    with tempfile.TemporaryDirectory(prefix="flops-bench-images-") as tmp:
        data = measure(mode, Path(tmp))
    sizes = data["sizes"]
    rows: list[list[Any]] = [
        ["base image import (s)", data["base_image_s"], REFERENCE["base_image_build_s"]],
        ["cold build, amd64 (s)", data["cold"]["wall_s"], REFERENCE["build_s"]],
        ["warm build, same commit (s)", data["warm"]["wall_s"], None],
        ["code-only rebuild (s)", data["code_only"]["wall_s"], None],
        *([f"{role} image (MB)", sizes[role]["image_mb"], REFERENCE.get(f"{role}_image_mb")] for role in sorted(sizes)),
        *([f"{role} pull (MB, compressed)", sizes[role]["compressed_mb"], None] for role in sorted(sizes)),
    ]
    multi = data.get("multi_arch")
    if multi and not multi.get("skipped"):
        rows.append(["amd64 + arm64 build (s)", multi["wall_s"], REFERENCE["multi_arch_fl_build_s"]])
    print(f"\nFL-actor images of digits-sklearn ({mode}, storage {data['storage_driver']})")
    print(table(["", "FLOps now", "FLOps thesis"], rows))
    print("FLOps thesis: one sklearn build 6 min 20 s; images 2.8-3.5 GB (base 2.79, learner 2.79, aggregator 3.55 GB)")
    ratio = data["cold"]["wall_s"] / REFERENCE["build_s"]
    path = write_result("images", {"mode": mode, **data, "cold_over_reference": ratio, "reference": REFERENCE})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
