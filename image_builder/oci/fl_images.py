"""FL-actor images: the learner and aggregator images of one repository at one commit.

`build_fl_images` tags both `<registry>/<customer>/<name>/{learner,aggregator}:<commit12>-<config12>`
(`config12`: a digest of everything else that decides them, `fl_build_config`), skips the
build when the registry has both tags, and otherwise renders the Containerfile per platform
into a private context, builds every platform of each role into one manifest list and
pushes it (each push overlaps the next role's build). It reports what it made or found as
an `FlBuild`, with per-step durations and layer-cache statistics.
"""

import re
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_builder import containerfiles
from image_builder.environments import Installer, Log, Platform, ensure_platform_wheel, prepare_platform
from image_builder.files import copy_repository, remove_tree, text_digest
from image_builder.oci.constraints import constraints_for, platform_requirements
from image_builder.oci.context import OCI_FORMAT, SLIM_SCRIPT, add_slimming, file_lines, normalise_modes
from image_builder.oci.engines import BuildStep, Engine, engine_mounts, make_engine
from image_builder.oci.mounts import host_strip, installer_uv
from image_builder.oci.options import FL_ROLES, OciOptions, arch_of, image_component
from image_builder.oci.registry import registry_has


def fl_image_refs(options: OciOptions, customer: str, name: str, tag: str) -> dict[str, str]:
    prefix = f"{options.registry}/{image_component(customer)}/{image_component(name)}"
    return {role: f"{prefix}/{role}:{tag}" for role in FL_ROLES}


@dataclass
class FlBuild:
    """What `build_fl_images` made or found."""

    commit: str
    tag: str
    config_digest: str
    images: dict[str, str]
    reused: bool
    durations: dict[str, float] = field(default_factory=dict)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)


def fl_build_config(
    options: OciOptions, platform: Platform, base: list[str], tracking: list[str], user: list[str], pins: list[str]
) -> tuple[str, dict[str, Any]]:
    """The build-configuration digest (12 hex) and what it covers."""
    config = {
        "format": OCI_FORMAT,
        "template": containerfiles.FL_ACTORS,
        "slim": text_digest(SLIM_SCRIPT.read_text(encoding="utf-8")),
        "base_image": options.base_image,
        "platforms": sorted(options.platforms),
        "requirements": sorted(set(base) | set(user)),
        "tracking": sorted(tracking),
        "constraints": pins,
        "platform_digest": platform.digest,
        "build_packages": list(options.build_packages),
    }
    return text_digest(config)[:12], config


def count_cached_steps(lines: list[str]) -> dict[str, int]:
    steps = sum(1 for line in lines if re.search(r"STEP \d+/\d+|^\s*Step \d+/\d+", line))
    cached = sum(1 for line in lines if "Using cache" in line)
    return {"steps": steps, "cached": cached}


def dependency_step_cached(lines: list[str]) -> bool:
    """Whether the step installing requirements-base.txt came from the layer cache."""
    for index, line in enumerate(lines):
        if "requirements-base.txt" in line and re.search(r"STEP \d+/\d+|Step \d+/\d+", line):
            return any("Using cache" in later for later in lines[index + 1 : index + 8])
    return False


def build_fl_images(
    repo: Path,
    commit: str,
    user_requirements: list[str],
    options: OciOptions,
    customer: str,
    name: str,
    cache_dir: Path,
    installer: Installer,
    log: Log = print,
    engine: Engine | None = None,
) -> FlBuild:
    """Build (or find in the registry) the learner and aggregator images of `repo` at `commit`.

    `installer` builds the platform wheel the images install (once per platform source).
    """
    durations: dict[str, float] = {}
    started = time.monotonic()
    platform = prepare_platform(cache_dir)
    base, tracking = platform_requirements(platform)
    pins = constraints_for(options, [*base, *tracking, *user_requirements], user_requirements)
    digest, _config = fl_build_config(options, platform, base, tracking, user_requirements, pins)
    commit12 = (commit or "nogit")[:12]
    tag = f"{commit12}-{digest}"
    refs = fl_image_refs(options, customer, name, tag)
    durations["plan"] = round(time.monotonic() - started, 3)
    log(f"images: {refs['learner']}, {refs['aggregator']}")
    started = time.monotonic()
    if all(registry_has(ref, options.tls_verify, options.registry_auth_file) for ref in refs.values()):
        durations["registry_check"] = round(time.monotonic() - started, 3)
        log("the registry has both images: build skipped")
        return FlBuild(commit, tag, digest, refs, reused=True, durations=durations)
    durations["registry_check"] = round(time.monotonic() - started, 3)
    engine = engine or make_engine(options, log)
    wheel = ensure_platform_wheel(platform, cache_dir, installer, log)
    work = cache_dir / "oci-work"
    work.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(dir=work, prefix="context-"))
    cache: dict[str, dict[str, int]] = {}
    try:
        started = time.monotonic()
        requirements = context / "requirements"
        requirements.mkdir()
        (requirements / "requirements-base.txt").write_text(file_lines(sorted(set(base) | set(user_requirements))))
        (requirements / "requirements-tracking.txt").write_text(file_lines(tracking))
        (requirements / "constraints.txt").write_text(file_lines(pins))
        add_slimming(requirements, user_requirements)
        (context / "wheel").mkdir()
        shutil.copy2(wheel, context / "wheel" / wheel.name)
        copy_repository(repo, context / "repo")
        normalise_modes(context)
        for platform_name in options.platforms:
            text = containerfiles.render_fl_actors(
                options.base_for(platform_name), wheel.name, options.build_packages_text, OCI_FORMAT,
                with_pip=installer_uv(options, platform_name) is None, strip=host_strip(platform_name) is not None,
            )  # fmt: skip
            (context / f"Containerfile.{arch_of(platform_name)}").write_text(text, encoding="utf-8")
        durations["context"] = round(time.monotonic() - started, 3)
        # Each image is pushed (compressed: CPU-bound) while the next one builds.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="push") as pusher:
            pushes: list[Future[None]] = []
            for role in FL_ROLES:
                manifest = f"localhost/flops-build/{image_component(customer)}/{image_component(name)}/{role}:{tag}"
                engine.remove_manifest(manifest)
                lines: list[str] = []
                for platform_name in options.platforms:
                    started = time.monotonic()
                    log(f"building the {role} image for {platform_name}")
                    with engine_mounts(engine, options, platform_name) as volumes:
                        containerfile = context / f"Containerfile.{arch_of(platform_name)}"
                        lines += engine.build(BuildStep(context, containerfile, role, platform_name, manifest, volumes))
                    durations[f"{role}_image_{arch_of(platform_name)}"] = round(time.monotonic() - started, 3)
                cache[role] = count_cached_steps(lines)
                cache[role]["dependencies_cached"] = int(dependency_step_cached(lines))
                pushes.append(pusher.submit(_push, engine, manifest, refs[role], durations, f"{role}_push", log))
            for push in pushes:
                push.result()
    finally:
        remove_tree(context)
    return FlBuild(commit, tag, digest, refs, reused=False, durations=durations, cache=cache)


def _push(engine: Engine, manifest: str, ref: str, durations: dict[str, float], key: str, log: Log) -> None:
    started = time.monotonic()
    engine.push(manifest, ref)
    engine.remove_manifest(manifest)
    durations[key] = round(time.monotonic() - started, 3)
    log(f"pushed {ref}")
