"""The local target: a code snapshot and two cached Python environments, no images.

After the shared source stage, `plan` names the build by a key over the commit (or the
tree's content), the requirements and the platform; a build with that key that is still
complete is reused at once. Otherwise `snapshot` moves the private copy to
`<cache>/<key>/repo`, and `learner_env` and `aggregator_env` build (or reuse) the two
environments (`image_builder.environments`). `<cache>/<key>/build.json` records the build,
written last, so a crashed build is never taken for a finished one.
"""

import os
import time
from pathlib import Path

from flops.build import BuildResult
from image_builder.environments import Installer, Platform, ensure_environment, prepare_platform
from image_builder.files import file_lock, read_json, remove_tree, text_digest, tree_digest, write_json_atomic
from image_builder.settings import BuilderSettings
from image_builder.source import BuildRequest, Source
from image_builder.stages import Stages, log_line, progress

BUILD_FILE = "build.json"
BUILD_KEY_FORMAT = 1


def snapshot(copy: Path, dest: Path) -> None:
    """Move this build's private copy of the code to `dest`, replacing what is there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_tree(dest)  # left by a builder that crashed before writing build.json
    os.rename(copy, dest)


def load_build(build_dir: Path) -> BuildResult | None:
    """A finished build's result, if its code and environments are all still there."""
    record = read_json(build_dir / BUILD_FILE)
    if not isinstance(record, dict):
        return None
    paths = [record.get("repo_dir"), record.get("learner_python"), record.get("aggregator_python")]
    if not all(isinstance(path, str) and Path(path).exists() for path in paths):
        return None
    return BuildResult.model_validate(record)


class LocalBuilder:
    """`--target local`: environments on this machine, shared by every build of the same key."""

    def __init__(self, request: BuildRequest, settings: BuilderSettings, stages: Stages) -> None:
        self.request = request
        self.settings = settings
        self.stages = stages

    def build(self, source: Source) -> BuildResult:
        cache = self.request.cache
        requirements = source.dependencies.requirements
        with self.stages.timed("plan"):
            platform = prepare_platform(cache)
            build_key = text_digest(
                {
                    "format": BUILD_KEY_FORMAT,
                    "source": source.commit or "content:" + tree_digest(source.repo),
                    "requirements": requirements,
                    "platform_digest": platform.digest,
                    "platform_version": platform.version,
                    "python": platform.python,
                }
            )[:32]
            progress(f"build key {build_key}")
        build_dir = cache / build_key
        built = load_build(build_dir)
        if built is None:
            with file_lock(cache / ".locks" / f"{build_key}.lock"):
                built = load_build(build_dir)  # a concurrent builder may have finished it
                if built is None:
                    return self._build(source, build_key, build_dir, platform)
        progress(f"reusing build {build_key}")
        return built.model_copy(update={"reused": True, "stage_durations": dict(self.stages.durations)})

    def _build(self, source: Source, build_key: str, build_dir: Path, platform: Platform) -> BuildResult:
        deps = source.dependencies
        installer = Installer.detect(self.settings.index, self.settings.force_pip)
        with self.stages.timed("snapshot"):
            snapshot(source.repo, build_dir / "repo")  # moves the private copy
        environments = {}
        for role in ("learner", "aggregator"):
            with self.stages.timed(f"{role}_env"):
                environments[role] = ensure_environment(
                    platform, role, deps.requirements, self.request.cache, installer, log=log_line
                )
                progress(f"{role} environment {'reused' if environments[role].reused else 'built'}")
        result = BuildResult(
            commit=source.commit,
            repo_dir=str(build_dir / "repo"),
            learner_python=str(environments["learner"].python),
            aggregator_python=str(environments["aggregator"].python),
            build_key=build_key,
            stage_durations=dict(self.stages.durations),
        )
        record = {
            **result.model_dump(mode="json"),
            "repo_url": source.url,
            "ref": self.request.ref,
            "dependency_file": deps.source.name,
            "requirements": deps.requirements,
            "warnings": deps.warnings,
            "platform_digest": platform.digest,
            "created_at": time.time(),
        }
        write_json_atomic(build_dir / BUILD_FILE, record)
        return result
