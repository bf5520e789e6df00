"""Slim an image's virtual environment, run inside the build right after an install step.

    python slim.py --venv /opt/flops [--dedupe] [--import MODULE ...] [--compile-dists-from FILE]
                   [--owner UID]

It runs in the same RUN step as the install, so what it removes never reaches a layer:

1. Prune what no FL actor or model server runs: test suites, C headers and Cython sources,
   pyarrow's Flight and S3 libraries (learners read local Parquet files), optional
   accelerators (uvloop, watchfiles, hf_xet) whose absence their users handle, and the `uv`
   binary Flower depends on for runtime installs, which FLOps images switch off.
2. `--strip-bundle`: strip symbol tables and debug sections from shared libraries, with the
   build machine's binutils (mounted for the step; nothing is installed in the image).
3. `--dedupe`: hard-link identical files (wheels cannot hold symlinks, so some ship several
   copies of one shared library). Only in the first layer: linking files of a lower layer
   would copy them up.
4. Compile bytecode for what the actors import, and nothing else: the `--import` modules
   (and everything they import), and every module of the distributions named in the
   `--compile-dists-from` requirements file (the ML repository's own dependencies) and of
   what they require. The
   bytecode goes to PYTHONPYCACHEPREFIX, handed to `--owner`, so a module nobody thought
   of is compiled once per container rather than at every process start. Compiling all of
   site-packages instead would add about 120 MB to a learner image.

Standard library only: it runs with the image's interpreter before FLOps is installed.
"""

import argparse
import compileall
import hashlib
import importlib
import importlib.metadata
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

PRUNED_DIRS = ("tests",)
PRUNED_GLOBS = (
    "pyarrow/include",
    "pyarrow/*.pyx",
    "pyarrow/*.pxd",
    "pyarrow/*.pxi",
    "pyarrow/libarrow_flight.so*",
    "pyarrow/libarrow_python_flight.so*",
    "pyarrow/_flight.*.so",
    "pyarrow/libarrow_s3.so*",
    "pyarrow/_s3fs.*.so",
    # Optional accelerators FLOps never uses: uvicorn falls back to asyncio without uvloop and
    # reloads nothing; huggingface_hub downloads without hf_xet, and FLOps downloads nothing.
    # Their metadata stays, so that installers in later layers count them as installed.
    "uvloop",
    "watchfiles",
    "hf_xet",
)
PRUNED_SCRIPTS = ("uv", "uvx")
DEDUPE_MIN_BYTES = 64 * 1024


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"slim: no site-packages under {venv}")
    return found[0]


def remove(path: Path) -> int:
    """Remove a file or folder; the bytes it held."""
    if path.is_dir() and not path.is_symlink():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        shutil.rmtree(path)
        return size
    size = path.stat().st_size if path.is_file() else 0
    path.unlink(missing_ok=True)
    return size


def prune(venv: Path) -> int:
    site = site_packages(venv)
    freed = 0
    for package in site.iterdir():
        if package.is_dir():
            for name in PRUNED_DIRS:
                for found in sorted(package.rglob(name), key=lambda p: len(p.parts)):
                    if found.is_dir():
                        freed += remove(found)
    for pattern in PRUNED_GLOBS:
        for found in site.glob(pattern):
            freed += remove(found)
    for script in PRUNED_SCRIPTS:
        freed += remove(venv / "bin" / script)
    return freed


def has_symbols(path: Path) -> bool:
    """Whether `path` is a 64-bit little-endian ELF file with a symbol table or debug sections."""
    with path.open("rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        (shoff,) = struct.unpack_from("<Q", header, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
        if not shoff or not shnum or shstrndx >= shnum:
            return False
        handle.seek(shoff)
        table = handle.read(shentsize * shnum)
        if len(table) < shentsize * shnum:
            return False
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _name, _type, _flags, _addr, names_offset, names_size = sections[shstrndx]
        handle.seek(names_offset)
        names = handle.read(names_size)
    for section in sections:
        name = names[section[0] : names.find(b"\0", section[0])]
        if name == b".symtab" or name.startswith(b".debug"):
            return True
    return False


def strip_libraries(venv: Path, bundle: Path) -> int:
    """Drop symbol tables and debug sections of the shared libraries; the bytes saved.

    Libraries auditwheel vendored (`*.libs/`) stay as they are: their patched headers break
    when stripped. `bundle` holds the build machine's strip with its libraries and loader.
    """
    command = [str(bundle / "ld.so"), "--library-path", str(bundle), str(bundle / "strip"), "--strip-unneeded"]
    saved = 0
    for path in site_packages(venv).rglob("*.so*"):
        if not path.is_file() or path.is_symlink() or any(part.endswith(".libs") for part in path.parts):
            continue
        if not has_symbols(path):
            continue  # not ELF, or stripped already (in a lower layer: touching it would copy it up)
        before = path.stat().st_size
        if subprocess.run([*command, str(path)], capture_output=True, check=False).returncode == 0:
            saved += before - path.stat().st_size
    return saved


def dedupe(venv: Path) -> int:
    """Replace identical files by hard links to one of them; the bytes saved."""
    by_size: dict[int, list[Path]] = {}
    for path in site_packages(venv).rglob("*"):
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            if size >= DEDUPE_MIN_BYTES:
                by_size.setdefault(size, []).append(path)
    saved = 0
    for size, paths in by_size.items():
        if len(paths) < 2:
            continue
        first_of: dict[str, Path] = {}
        for path in sorted(paths):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            original = first_of.setdefault(digest, path)
            if original is not path and not original.samefile(path):
                path.unlink()
                os.link(original, path)
                saved += size
    return saved


def requirement_names(file: Path) -> list[str]:
    names = []
    for line in file.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if match and not line.lstrip().startswith("-"):
            names.append(match.group(1))
    return names


def with_dependencies(names: list[str]) -> list[str]:
    """`names` and every installed distribution they require, transitively (extras left out)."""
    pending, seen = list(names), set()
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending += [match.group(1) for line in requires if "extra ==" not in line
                    for match in [re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)] if match]  # fmt: skip
    return sorted(seen)


def compile_distribution(name: str) -> int:
    """Compile every module of an installed distribution; how many files."""
    try:
        files = importlib.metadata.distribution(name).files or []
    except importlib.metadata.PackageNotFoundError:
        print(f"slim: {name} is not installed; nothing to compile", file=sys.stderr)
        return 0
    count = 0
    for file in files:
        if file.suffix == ".py":
            path = Path(str(file.locate()))
            if path.is_file() and compileall.compile_file(str(path), quiet=2):
                count += 1
    return count


def warm_up(modules: list[str]) -> None:
    """Import `modules` so that Python writes their bytecode (and that of what they import)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # a module that needs a runtime context still compiled its imports
            print(f"slim: importing {module}: {type(error).__name__}: {error}", file=sys.stderr)


def hand_over(folder: Path, owner: int) -> None:
    """Give `folder` to `owner`, touching only what this layer made (lower ones stay where they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        if path.lstat().st_uid != owner:
            os.lchown(path, owner, owner)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slim.py", description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--dedupe", action="store_true")
    parser.add_argument("--import", dest="modules", action="append", default=[])
    parser.add_argument("--compile-dists-from", type=Path, default=None)
    parser.add_argument("--owner", type=int, default=None, help="user id that gets the bytecode folder")
    parser.add_argument("--strip-bundle", type=Path, default=None, help="strip, its libraries and ld.so")
    args = parser.parse_args(argv)
    freed = prune(args.venv)
    if args.strip_bundle is not None and (args.strip_bundle / "strip").is_file():
        freed += strip_libraries(args.venv, args.strip_bundle)
    if args.dedupe:
        freed += dedupe(args.venv)
    compiled = 0
    if args.compile_dists_from:
        for name in with_dependencies(requirement_names(args.compile_dists_from)):
            compiled += compile_distribution(name)
    warm_up(args.modules)
    prefix = sys.pycache_prefix
    if prefix and args.owner is not None:
        hand_over(Path(prefix), args.owner)
    print(f"slim: freed {freed / 1e6:.0f} MB; compiled {compiled} modules of the listed distributions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
