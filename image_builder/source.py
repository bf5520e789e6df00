"""The source stage every target shares: fetch, check, read dependencies.

`fetch_source` runs three timed stages and returns a `Source`:

- fetch: clone the ref into a scratch folder beside the build's private copy (no clone is
  shared between builds or outlives its build: a refused or failed build leaves none), refuse
  a tree larger than the limit or with a symlink leaving it, copy the tree to the build's
  private folder and remove the clone;
- validate: the ML-repository contract (`flops.ml_repo.contract`) on the private copy;
- dependencies: the one dependency file, fitted to the platform; given a resolver, the
  platform's requirements and the user's are resolved together and exactly the user pins
  the resolver blames are relaxed (`image_builder.dependencies.fit_by_resolution`), its
  answers cached under `<cache>/resolutions`. Each change is a warning, in the build log and
  in `BuildResult.dependency_warnings`.

A refusal found while copying is reported at `validate`, as the contract is. The local and
OCI targets build from `Source.repo`; `--check-only` stops here. A builder killed mid-build
(a dry run past its time limit) leaves its work folder; the next builder removes it once the
process that made it is gone.
"""

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flops.build import BuildResult
from flops.ml_repo.contract import validate_repository
from flops.ml_repo.source import fetch_repository
from image_builder.dependencies import (
    Dependencies,
    PlatformPins,
    Resolution,
    Resolve,
    cached,
    fit_by_resolution,
    read_dependencies,
)
from image_builder.files import copy_repository, remove_tree, walk_repository
from image_builder.stages import Stages, progress

STALE_WORK_S = 24 * 3600
# A work folder whose builder is gone is removed after this long (its pid is in OWNER_FILE).
ORPHANED_WORK_S = 60
OWNER_FILE = "builder.pid"


class RepositoryRefused(ValueError):
    """The repository is too large or links outside itself."""


@dataclass(frozen=True)
class BuildRequest:
    """What to build, whatever the target: the repository, its ref and the builder's cache."""

    project_id: str
    repo_url: str
    ref: str | None
    cache: Path  # absolute
    max_repo_bytes: int


@dataclass(frozen=True)
class Source:
    """One fetched and checked repository, copied to a private folder of this build."""

    url: str  # as fetched: a local path resolved, a URL as given
    commit: str  # "" for a local folder without git
    checkout: Path  # the clone the copy was taken from (removed once copied; a local folder stays)
    repo: Path  # this build's private copy
    size: int  # bytes of regular files
    dependencies: Dependencies


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


class Resolver(Protocol):
    """What resolves requirements before anything is installed (`environments.Installer`)."""

    @property
    def identity(self) -> str: ...

    def resolve(self, requirements: list[str]) -> Resolution: ...


def fetch_source(
    repo_url: str,
    ref: str | None,
    cache: Path,
    dest: Path,
    max_bytes: int,
    stages: Stages,
    resolver: Resolver | None = None,
) -> Source:
    """Fetch `repo_url` at `ref`, check it and copy it to `dest` (absent); its dependencies.

    With a `resolver`, the dependencies are fitted to the platform by resolution too.
    """
    refusal: RepositoryRefused | None = None
    size = 0
    scratch = dest.with_name(dest.name + ".clone")
    with stages.timed("fetch"):
        try:
            fetched = fetch_repository(repo_url, ref, scratch)
            try:
                size = check_tree(fetched.path, max_bytes)
                copy_repository(fetched.path, dest)
            except RepositoryRefused as error:
                refusal = error
        finally:
            remove_tree(scratch)  # the clone, also of a refused or unreachable repository
        progress(f"fetched {fetched.url}" + (f" at {fetched.commit}" if fetched.commit else " (no git)"))
    with stages.timed("validate"):
        if refusal is not None:
            raise refusal
        validate_repository(dest)
        progress(f"repository keeps the contract ({size / 2**20:.1f} MB)")
    with stages.timed("dependencies"):
        pins = PlatformPins.current()
        deps = read_dependencies(dest, pins)
        if resolver is not None:
            resolve: Resolve = cached(resolver.resolve, cache / "resolutions", resolver.identity)
            deps = fit_by_resolution(deps, pins, resolve, log=lambda line: progress(f"resolving: {line}"))
        progress(f"dependencies from {deps.source.name}: {', '.join(deps.requirements) or 'none'}")
        for warning in deps.warnings:
            progress(f"warning: {warning}")
    return Source(
        url=fetched.url, commit=fetched.commit, checkout=fetched.path, repo=dest, size=size, dependencies=deps
    )


@contextmanager
def private_source(request: BuildRequest, stages: Stages, resolver: Resolver | None = None) -> Iterator[Source]:
    """The checked source in a private work folder of this build, removed afterwards."""
    work = Path(tempfile.mkdtemp(dir=_work_dir(request.cache), prefix="build-"))
    try:
        (work / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
        yield fetch_source(
            request.repo_url, request.ref, request.cache, work / "repo", request.max_repo_bytes, stages, resolver
        )
    finally:
        remove_tree(work)


def _work_dir(cache: Path) -> Path:
    """Scratch space for builds; leftovers of builders that died are removed."""
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for stale in work.glob("build-*"):
        try:
            age = now - stale.stat().st_mtime
            if age > STALE_WORK_S or (age > ORPHANED_WORK_S and not _owner_alive(stale)):
                remove_tree(stale)
        except OSError:
            continue
    return work


def _owner_alive(work: Path) -> bool:
    """Whether the builder that made `work` still runs (unknown owners count as alive)."""
    try:
        pid = int((work / OWNER_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Target(Protocol):
    """A build target: turns a checked `Source` into a `BuildResult`, timing its own stages."""

    def build(self, source: Source) -> BuildResult: ...
