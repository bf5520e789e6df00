"""Real git repositories for tests and benchmarks: a copy of an example, committed on main."""

import shutil
import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=test@flops.invalid", "-c", "user.name=FLOps tests", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def make_git_repo(source: Path, target: Path) -> Path:
    """A git repository holding a copy of `source` (one commit on main), as a user would have one."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".flops", "__pycache__"))
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "initial")
    return target
