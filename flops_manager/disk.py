"""Disk the manager's builds take: per-customer quotas and removing builds nobody uses.

A local build is `FLOPS_HOME/builds/<build_key>/` (the code snapshot, named by the commit, the
requirements and the platform) plus two environments under `builds/envs/` shared by every
build with the same requirements. Clones never outlive their build (the builder clones into
its private work folder). What stays:

- `sweep_builds` removes the build folders of projects that are over (failed, cancelled,
  completed and no longer serving), unless a live project uses the same build. It runs
  before each new build starts, and only while no other build runs (a running build may be
  about to reuse a folder no record names yet). Folders the store never recorded (made by
  `flops train`) are left alone; environments hold only public packages and are kept as the
  shared, content-addressed cache they are.
- `check_quota` refuses a submission (429) when the customer's live builds (their folders and
  environments, each counted once) plus an estimate for each of their builds still running
  and the new one would exceed `ApiLimits.customer_disk_quota_mb`.
"""

import logging
import os
import shutil
import threading
from pathlib import Path

from flops_manager.models import Project, ProjectStatus
from flops_manager.settings import ManagerSettings
from flops_manager.store import ProjectStore

log = logging.getLogger("flops.manager")
BUILDING = (ProjectStatus.SUBMITTED, ProjectStatus.BUILDING)
MB = 2**20

_sizes: dict[Path, int] = {}  # finished builds and environments do not change: sized once
_sizes_lock = threading.Lock()


class QuotaExceeded(Exception):
    def __init__(self, message: str, details: dict[str, float]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def live(project: Project) -> bool:
    """Whether the project may still run from its build: active, or serving a model."""
    return project.active or any(handle.active for handle in project.deployment)


def build_paths(project: Project, settings: ManagerSettings) -> list[Path]:
    """The folders on this machine the project's build takes (none for an OCI build)."""
    build = project.build
    if build is None or not build.build_key:
        return []
    paths = [settings.builds_dir / build.build_key]
    for python in (build.learner_python, build.aggregator_python):
        if python and Path(python).is_relative_to(settings.builds_dir):
            paths.append(Path(python).parents[1])
    return [path for path in paths if path.is_dir()]


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (not following links), cached per path."""
    with _sizes_lock:
        if path in _sizes:
            return _sizes[path]
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += stat.st_size
    with _sizes_lock:
        _sizes[path] = total
    return total


def customer_usage(store: ProjectStore, settings: ManagerSettings, customer: str) -> tuple[int, int]:
    """Bytes the customer's live builds hold, and how many of their builds are still running."""
    paths: set[Path] = set()
    running = 0
    for project in store.list(customer):
        if project.status in BUILDING and project.build is None:
            running += 1
        elif live(project):
            paths.update(build_paths(project, settings))
    return sum(tree_size(path) for path in paths), running


def check_quota(store: ProjectStore, settings: ManagerSettings, customer: str) -> None:
    """Raise `QuotaExceeded` when one more build would take the customer over the disk quota."""
    limits = settings.limits
    quota = limits.customer_disk_quota_mb
    if quota <= 0:
        return
    used, running = customer_usage(store, settings, customer)
    used_mb = used / MB
    needed_mb = used_mb + (running + 1) * limits.build_estimate_mb
    if needed_mb > quota:
        raise QuotaExceeded(
            f"customer {customer} would exceed the disk quota of {quota:g} MB: builds in use take "
            f"{used_mb:.0f} MB and {running + 1} build(s) (running, and this one) are counted at "
            f"{limits.build_estimate_mb:g} MB each; wait for running projects to end, or cancel some",
            {"quota_mb": quota, "used_mb": round(used_mb, 1), "running_builds": running,
             "build_estimate_mb": limits.build_estimate_mb},
        )  # fmt: skip


def sweep_builds(store: ProjectStore, settings: ManagerSettings, starting: str | None = None) -> list[Path]:
    """Remove the build folders only ended projects use; none while a build other than `starting` runs."""
    projects = store.list()
    if any(p.status in BUILDING and p.project_id != starting for p in projects):
        return []
    in_use: set[str] = set()
    recorded: set[str] = set()
    for project in projects:
        key = project.build.build_key if project.build is not None else ""
        if not key:
            continue
        recorded.add(key)
        if live(project):
            in_use.add(key)
    removed = []
    for key in sorted(recorded - in_use):
        folder = settings.builds_dir / key
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            with _sizes_lock:
                _sizes.pop(folder, None)
            removed.append(folder)
    if removed:
        log.info("removed %d build folder(s) no live project uses", len(removed))
    return removed
