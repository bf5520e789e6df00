"""`flops-image-builder`: one build of an ML repository for the local target, then exit.

    flops-image-builder --project-id P --repo-url URL [--ref REF] [--cache-dir DIR]
                        [--result-file PATH] [--max-repo-mb 200]
                        [--target local|oci --registry HOST:PORT ...]  (OCI: see image_builder.oci)

Stages (each timed): fetch the repository at the ref, validate it (size, symlinks, the
ML-repository contract), read its dependencies, snapshot the code, and build or reuse the
learner and aggregator environments. A build whose key (commit or content, requirements,
platform) was built before is reused at once. Events go to MQTT when FLOPS_MQTT_HOST is
set: builder/started, then builder/succeeded with the BuildResult as payload, or
builder/failed with a one-line error and the failed stage. The result (or the failure) is
also written to --result-file. Exit status: 0 built or reused, 1 failed.
"""

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import git

from flops.config import flops_home
from flops.events import Component, Event, EventName
from flops.ml_repo.contract import ContractError, validate_repository
from flops.ml_repo.source import RepositoryError, fetch_repository
from flops.mqtt import publish_once
from image_builder.dependencies import read_dependencies
from image_builder.environments import ensure_environment, prepare_platform
from image_builder.files import (
    copy_repository,
    file_lock,
    read_json,
    remove_tree,
    text_digest,
    tree_digest,
    walk_repository,
    write_json_atomic,
)

BUILD_FILE = "build.json"
BUILD_KEY_FORMAT = 1
STALE_WORK_S = 24 * 3600
RESULT_FIELDS = (
    "commit",
    "repo_dir",
    "learner_python",
    "aggregator_python",
    "images",
    "build_key",
    "reused",
    "stage_durations",
)


class BuildFailure(Exception):
    """A build stage failed; `message` is one line."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


class RepositoryRefused(ValueError):
    """The repository is too large or links outside itself."""


def progress(message: str) -> None:
    print(f"[builder] {message}", flush=True)


def log_line(message: str) -> None:
    print(message, flush=True)


def one_line(error: BaseException) -> str:
    if isinstance(error, ContractError):
        return "the repository is not a valid FLOps ML repository: " + "; ".join(error.problems)
    text = " ".join(str(error).split())
    git_error = error.__cause__
    if isinstance(git_error, git.GitCommandError) and isinstance(error, RepositoryError):
        # GitPython's stderr ends in a quote; the line that says what went wrong is git's own.
        found = re.findall(r"(?:fatal|error): .*", str(git_error.stderr or ""))
        if found:
            reason = found[-1].strip(" '")
            text = f"{text.split(': ', 1)[0]}: {reason}"
    known = (ValueError, RuntimeError, OSError)
    return text if text and isinstance(error, known) else f"{type(error).__name__}: {text}".rstrip(": ")


def check_tree(repo: Path, max_bytes: int) -> int:
    """Refuse a repository larger than `max_bytes` or with a symlink leaving it; its size."""
    root = repo.resolve()
    total = 0
    for path in walk_repository(repo):
        relative = path.relative_to(repo).as_posix()
        if path.is_symlink():
            try:
                target = path.resolve(strict=False)
            except (RuntimeError, OSError) as error:
                raise RepositoryRefused(f"symlink {relative} cannot be resolved: {error}") from error
            if not target.is_relative_to(root):
                raise RepositoryRefused(f"symlink {relative} points outside the repository (to {os.readlink(path)})")
            continue
        if path.is_file():
            total += path.stat().st_size
            if total > max_bytes:
                raise RepositoryRefused(
                    f"repository is larger than the limit of {max_bytes / 2**20:g} MB (--max-repo-mb)"
                )
    return total


def snapshot(copy: Path, dest: Path) -> None:
    """Move this build's private copy of the code to `dest`, replacing what is there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_tree(dest)  # left by a builder that crashed before writing build.json
    os.rename(copy, dest)


def _source_digest(url: str) -> str:
    """The name fetch_repository gives the checkout of `url`."""
    local = Path(url).expanduser()
    source = str(local.resolve()) if local.is_dir() else url
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def load_build(build_dir: Path) -> dict[str, Any] | None:
    """A finished build's record, if its code and environments are all still there."""
    record = read_json(build_dir / BUILD_FILE)
    if not isinstance(record, dict):
        return None
    paths = [record.get("repo_dir"), record.get("learner_python"), record.get("aggregator_python")]
    if not all(isinstance(path, str) and Path(path).exists() for path in paths):
        return None
    return record


class Builder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache = Path(args.cache_dir).expanduser().resolve()
        self.stage = "fetch"
        self.durations: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        self.stage = stage
        started = time.monotonic()
        progress(f"{stage}: started")
        try:
            yield
        except BuildFailure:
            raise
        except Exception as error:
            raise BuildFailure(stage, one_line(error)) from error
        finally:
            self.durations[stage] = round(time.monotonic() - started, 3)
        progress(f"{stage}: done in {self.durations[stage]:.1f} s")

    def result(self, record: dict[str, Any], reused: bool) -> dict[str, Any]:
        result = {name: record.get(name) for name in RESULT_FIELDS}
        result["images"] = record.get("images") or {}
        result["reused"] = reused
        result["stage_durations"] = dict(self.durations)
        return result

    def build(self) -> dict[str, Any]:
        work = Path(tempfile.mkdtemp(dir=self._work_dir(), prefix="build-"))
        try:
            return self._build(work / "repo")
        finally:
            remove_tree(work)

    def _work_dir(self) -> Path:
        """Private scratch space for one build; leftovers of crashed builders are removed."""
        work = self.cache / "work"
        work.mkdir(parents=True, exist_ok=True)
        for stale in work.glob("build-*"):
            try:
                if time.time() - stale.stat().st_mtime > STALE_WORK_S:
                    remove_tree(stale)
            except OSError:
                continue
        return work

    def _build(self, repo: Path) -> dict[str, Any]:
        args = self.args
        refusal: RepositoryRefused | None = None
        size = 0
        with self.timed("fetch"):
            # The checkout is shared by every build of this URL: hold it only while copying
            # this build's tree out of it, so a concurrent fetch of another ref cannot mix in.
            with file_lock(self.cache / "repos" / ".locks" / f"{_source_digest(args.repo_url)}.lock"):
                fetched = fetch_repository(args.repo_url, args.ref, self.cache / "repos")
                try:
                    size = check_tree(fetched.path, int(args.max_repo_mb * 2**20))
                    copy_repository(fetched.path, repo)
                except RepositoryRefused as error:
                    refusal = error
            progress(f"fetched {fetched.url}" + (f" at {fetched.commit}" if fetched.commit else " (no git)"))
        with self.timed("validate"):
            if refusal is not None:
                raise refusal
            validate_repository(repo)
            progress(f"repository keeps the contract ({size / 2**20:.1f} MB)")
        with self.timed("dependencies"):
            deps = read_dependencies(repo)
            progress(f"dependencies from {deps.source.name}: {', '.join(deps.requirements) or 'none'}")
            for warning in deps.warnings:
                progress(f"warning: {warning}")
            platform = prepare_platform(self.cache)
            source = fetched.commit or "content:" + tree_digest(repo)
            build_key = text_digest(
                {
                    "format": BUILD_KEY_FORMAT,
                    "source": source,
                    "requirements": deps.requirements,
                    "platform_digest": platform.digest,
                    "platform_version": platform.version,
                    "python": platform.python,
                }
            )[:32]
            progress(f"build key {build_key}")
        build_dir = self.cache / build_key
        record = load_build(build_dir)
        if record is None:
            with file_lock(self.cache / ".locks" / f"{build_key}.lock"):
                record = load_build(build_dir)  # a concurrent builder may have finished it
                if record is None:
                    with self.timed("snapshot"):
                        snapshot(repo, build_dir / "repo")  # moves the private copy
                    with self.timed("learner_env"):
                        learner = ensure_environment(platform, "learner", deps.requirements, self.cache, log=log_line)
                        progress(f"learner environment {'reused' if learner.reused else 'built'}")
                    with self.timed("aggregator_env"):
                        aggregator = ensure_environment(
                            platform, "aggregator", deps.requirements, self.cache, log=log_line
                        )
                        progress(f"aggregator environment {'reused' if aggregator.reused else 'built'}")
                    record = {
                        "commit": fetched.commit,
                        "repo_dir": str(build_dir / "repo"),
                        "learner_python": str(learner.python),
                        "aggregator_python": str(aggregator.python),
                        "images": {},
                        "build_key": build_key,
                        "reused": False,
                        "stage_durations": dict(self.durations),
                        "repo_url": fetched.url,
                        "ref": args.ref,
                        "dependency_file": deps.source.name,
                        "requirements": deps.requirements,
                        "warnings": deps.warnings,
                        "platform_digest": platform.digest,
                        "created_at": time.time(),
                    }
                    write_json_atomic(build_dir / BUILD_FILE, record)
                    return self.result(record, reused=False)
        progress(f"reusing build {build_key}")
        return self.result(record, reused=True)


def publish(project_id: str, event: EventName, error: str | None = None, payload: dict[str, Any] | None = None) -> None:
    """Publish a builder event when a broker is configured; a broker problem only warns."""
    try:
        publish_once(
            Event(
                project_id=project_id,
                component=Component.BUILDER,
                event=event,
                error=error,
                payload=payload or {},
            )
        )
    except Exception as failure:
        progress(f"warning: could not publish builder/{event}: {one_line(failure)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="flops-image-builder",
        description="Build (or reuse) the code snapshot and Python environments of an ML repository.",
    )
    parser.add_argument("--project-id", required=True, help="project the build belongs to (event topics)")
    parser.add_argument("--repo-url", required=True, help="git URL or local path of the ML repository")
    parser.add_argument("--ref", default=None, help="branch, tag or commit (default: the default branch)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="build cache (default: FLOPS_HOME/builds)")
    parser.add_argument("--result-file", type=Path, default=None, help="write the BuildResult JSON here")
    parser.add_argument("--max-repo-mb", type=float, default=200.0, help="largest repository accepted (MB)")
    parser.add_argument(
        "--target", choices=["local", "oci"], default="local", help="local environments, or OCI images in a registry"
    )
    from image_builder.oci import add_oci_arguments

    add_oci_arguments(parser)
    args = parser.parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = flops_home() / "builds"
    if args.max_repo_mb <= 0:
        parser.error("--max-repo-mb must be positive")
    if args.target == "oci":
        from image_builder.oci import options_from_args

        try:
            options_from_args(args)
        except ValueError as error:
            parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    progress(f"project {args.project_id}: building {args.repo_url}" + (f" at {args.ref}" if args.ref else ""))
    publish(args.project_id, EventName.STARTED, payload={"repo_url": args.repo_url, "ref": args.ref})
    if args.target == "oci":
        from image_builder.oci import make_oci_builder

        builder = make_oci_builder(args)
    else:
        builder = Builder(args)
    try:
        result = builder.build()
    except Exception as error:
        failure = error if isinstance(error, BuildFailure) else BuildFailure(builder.stage, one_line(error))
        progress(f"FAILED at {failure.stage}: {failure.message}")
        if args.result_file:
            write_json_atomic(args.result_file, {"error": failure.message, "stage": failure.stage})
        publish(args.project_id, EventName.FAILED, error=failure.message, payload={"stage": failure.stage})
        return 1
    if args.result_file:
        write_json_atomic(args.result_file, result)
    verb = "reused" if result["reused"] else "built"
    if args.target == "oci":
        made = ", ".join(f"{role} {ref}" for role, ref in result["images"].items())
    else:
        made = f"learner {result['learner_python']}, aggregator {result['aggregator_python']}"
    progress(f"{verb} {result['build_key']} in {time.monotonic() - started:.1f} s: {made}")
    publish(args.project_id, EventName.SUCCEEDED, payload=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
