"""File-system helpers: locks, atomic writes, repository walks, copies and digests."""

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Folders that are never part of a repository's code: VCS data, local environments, caches
# and FLOps's own run state.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".venv",
        "venv",
        "__pycache__",
        ".flwr",
        ".flops",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
    }
)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (fcntl) on `path` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def walk_repository(root: Path) -> Iterator[Path]:
    """Every file, symlink and folder under `root` (sorted), skipping SKIPPED_DIRS."""
    for current, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        base = Path(current)
        for name in dirs:
            yield base / name
        for name in sorted(files):
            yield base / name


def copy_repository(source: Path, dest: Path) -> None:
    """Copy the repository's tree into `dest` (which must not exist), without SKIPPED_DIRS.

    Symlinks are copied as links; callers check beforehand that they stay inside the tree.
    """
    shutil.copytree(
        source,
        dest,
        symlinks=True,
        ignore=lambda _dir, names: [name for name in names if name in SKIPPED_DIRS],
    )


def tree_digest(root: Path) -> str:
    """SHA-256 over the relative paths, kinds and contents of everything under `root`."""
    digest = hashlib.sha256()
    for path in walk_repository(root):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} -> {os.readlink(path)}\0".encode())
        elif path.is_dir():
            digest.update(f"D {relative}\0".encode())
        elif path.is_file():
            if path.suffix in {".pyc", ".pyo"}:
                continue
            digest.update(f"F {relative} {oct(path.stat().st_mode & 0o111)}\0".encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


def text_digest(*parts: Any) -> str:
    """SHA-256 of a JSON rendering of `parts` (stable key order)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def remove_tree(path: Path) -> None:
    """Remove a folder (or a stray file or link) if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
