"""Debootstrap bases: a local Debian + Python 3.11 base image for air-gapped sites.

    python -m image_builder.oci base-image [--tag T] [--arch A] [--cache-dir D] [--mirror URL]

`make_base_image` builds a slim Debian bookworm root file system with Python 3 and venv
(debootstrap minbase, no pulls), keeps its tar in a cache folder when given one, and imports
it into local container storage with podman. Use it with `--base-image`; a base image name
with `{arch}` names one such image per architecture.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from image_builder.files import remove_tree
from image_builder.oci.errors import OciBuildError
from image_builder.settings import BuilderSettings

LOCAL_BASE_IMAGE = "localhost/flops/python:3.11"


def debian_mirror(default: str = "http://deb.debian.org/debian") -> str:
    """The Debian mirror this machine's apt uses (deb822 `URIs:` or sources.list)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text(encoding="utf-8").splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split(":", 1)[1].strip().split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return default


_SLIM_PATHS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)


def make_base_rootfs(tarball: Path, arch: str = "amd64", suite: str = "bookworm", mirror: str | None = None) -> Path:
    """A slim Debian root file system with Python 3 and venv, as a tar file (debootstrap)."""
    if tarball.is_file():
        return tarball
    if shutil.which("debootstrap") is None:
        raise OciBuildError("debootstrap is not installed (apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tarball.parent, prefix=".rootfs-"))
    try:
        rootfs = staging / "rootfs"
        subprocess.run(
            [
                "debootstrap", "--variant=minbase", f"--arch={arch}",
                "--include=python3,python3-venv,ca-certificates", suite, str(rootfs), mirror or debian_mirror(),
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        for relative in _SLIM_PATHS:
            target = rootfs / relative
            if target.is_dir():
                for child in target.iterdir():
                    remove_tree(child)
        partial = staging / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
        os.rename(partial, tarball)
    except subprocess.CalledProcessError as error:
        raise OciBuildError(f"debootstrap failed: {(error.stderr or '')[-500:]}") from error
    finally:
        remove_tree(staging)
    return tarball


def import_base_image(tarball: Path, tag: str, arch: str = "amd64", storage_driver: str | None = None) -> str:
    """Import a root file system tar as image `tag` into local container storage."""
    cmd = ["podman"]
    if storage_driver:
        cmd += ["--storage-driver", storage_driver]
    cmd += [
        "import", "--arch", arch, "--os", "linux",
        "--change", "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV=LANG=C.UTF-8", "--change", 'CMD=["python3"]', str(tarball), tag,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise OciBuildError(f"podman import failed: {result.stderr.strip()[-500:]}")
    return tag


def make_base_image(
    tag: str = LOCAL_BASE_IMAGE,
    arch: str = "amd64",
    cache_dir: Path | None = None,
    mirror: str | None = None,
    storage_driver: str | None = None,
) -> str:
    """Make `tag` (Debian bookworm + Python 3.11) locally with debootstrap; no pulls."""
    folder = cache_dir or Path(tempfile.mkdtemp(prefix="flops-base-"))
    tarball = make_base_rootfs(folder / f"debian-bookworm-python3-{arch}.tar", arch=arch, mirror=mirror)
    try:
        return import_base_image(tarball, tag, arch, storage_driver)
    finally:
        if cache_dir is None:
            remove_tree(folder)


def main(argv: list[str] | None = None) -> int:
    """`python -m image_builder.oci base-image [--tag T] [--arch A] [--cache-dir D]`."""
    parser = argparse.ArgumentParser(prog="python -m image_builder.oci")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base-image", help="make a local Debian + Python 3.11 base image with debootstrap")
    base.add_argument("--tag", default=LOCAL_BASE_IMAGE)
    base.add_argument("--arch", default="amd64", choices=["amd64", "arm64"])
    base.add_argument("--cache-dir", type=Path, default=None, help="keep the root file system tar here")
    base.add_argument("--mirror", default=None)
    base.add_argument(
        "--storage-driver", default=None, help="default: FLOPS_BUILDAH_STORAGE_DRIVER, else storage.conf's"
    )
    args = parser.parse_args(argv)
    settings = BuilderSettings.from_env()
    driver = settings.storage_driver if args.storage_driver is None else args.storage_driver
    started = time.monotonic()
    tag = make_base_image(args.tag, args.arch, args.cache_dir, args.mirror, driver or None)
    print(f"made {tag} ({args.arch}) in {time.monotonic() - started:.0f} s")
    return 0
