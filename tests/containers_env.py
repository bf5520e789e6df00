"""A private container world for the container tests: tools, storage, registry, Podman API.

Everything the tests start lives under one temporary folder and is stopped at the end:
container storage (vfs) with its own containers.conf, storage.conf and registries.conf
(given to buildah, podman and skopeo through CONTAINERS_* variables, so /etc stays as it
is), a loopback Registry v2 (`docker-registry`) on a free port, and Podman's
Docker-compatible API socket. Missing Debian packages are installed once (root only). The
local base image's root file system is made once per machine with debootstrap and kept
under CACHE_DIR; each session imports it.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flops.net import free_port, port_open, wait_until
from flops.processes import ManagedProcess

CACHE_DIR = Path(os.environ.get("FLOPS_TEST_CACHE", "/var/cache/flops-test"))
BASE_IMAGE = "localhost/flops/python:3.11"
PACKAGES = {
    "buildah": "buildah",
    "podman": "podman",
    "catatonit": "catatonit",  # podman's --init (the docker backend's `init: True`); Debian only recommends it
    "runc": "runc",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
}
ARM64_PACKAGES = {"qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support"}

CONTAINERS_CONF = """\
[containers]
default_ulimits = []
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""


def storage_driver(scratch: Path) -> str:
    """overlay when this kernel lets us mount it (fast layers), else vfs (works everywhere)."""
    forced = os.environ.get("FLOPS_TEST_STORAGE_DRIVER")
    if forced:
        return forced
    probe = scratch / "overlay-probe"
    for name in ("lower", "upper", "work", "merged"):
        (probe / name).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={probe / 'lower'},upperdir={probe / 'upper'},workdir={probe / 'work'}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")], capture_output=True, check=False
    )
    if mounted.returncode == 0:
        subprocess.run(["umount", str(probe / "merged")], capture_output=True, check=False)
    shutil.rmtree(probe, ignore_errors=True)
    return "overlay" if mounted.returncode == 0 else "vfs"


def missing_tools(tools: dict[str, str]) -> list[str]:
    return sorted({package for binary, package in tools.items() if shutil.which(binary) is None})


def install_packages(packages: Sequence[str]) -> str | None:
    """apt-get install `packages` (after one apt-get update); None, or why it could not."""
    if not packages:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"missing {', '.join(packages)} and not root with apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=1200)
        if result.returncode:
            return f"{' '.join(cmd[:2])} failed: {result.stderr.strip()[-400:]}"
    return None


def enable_arm64_emulation() -> str | None:
    """Register qemu-aarch64 with binfmt_misc; None when arm64 binaries can run."""
    problem = install_packages(missing_tools(ARM64_PACKAGES))
    if problem:
        return problem
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_file():
        return "binfmt_misc has no qemu-aarch64 entry (no permission to register it?)"
    return None


@dataclass
class ContainerWorld:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    registry: str = ""
    socket: str = ""
    driver: str = ""
    _processes: list[ManagedProcess] = field(default_factory=list)

    @classmethod
    def start(cls, root: Path) -> "ContainerWorld":
        world = cls(root=root)
        try:
            world._configure()
            world._start_registry()
            world._start_podman_service()
        except BaseException:
            world.stop()
            raise
        return world

    def _configure(self) -> None:
        conf = self.root / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        storage = self.root / "storage"
        self.driver = storage_driver(self.root)
        (conf / "containers.conf").write_text(CONTAINERS_CONF, encoding="utf-8")
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "{self.driver}"\nrunroot = "{storage}/run"\ngraphroot = "{storage}/graph"\n',
            encoding="utf-8",
        )
        self.registry = f"127.0.0.1:{free_port()}"
        (conf / "registries.conf").write_text(
            'unqualified-search-registries = []\nshort-name-mode = "permissive"\n\n'
            f'[[registry]]\nlocation = "{self.registry}"\ninsecure = true\n',
            encoding="utf-8",
        )
        self.env = {
            "CONTAINERS_CONF": str(conf / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
            "BUILDAH_ISOLATION": "chroot",
            "FLOPS_BUILDAH_STORAGE_DRIVER": self.driver,
        }
        os.environ.update(self.env)

    def _start_registry(self) -> None:
        folder = self.root / "registry"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.registry}\n",
            encoding="utf-8",
        )
        process = ManagedProcess("registry", ["docker-registry", "serve", str(config)], folder / "registry.log")
        self._processes.append(process)
        host, port = self.registry.split(":")
        if not wait_until(lambda: port_open(host, int(port)) or not process.running(), 30, 0.2):
            raise RuntimeError(f"the registry did not start: {process.log_tail()}")
        if not process.running():
            raise RuntimeError(f"the registry failed: {process.log_tail()}")

    def _start_podman_service(self) -> None:
        path = self.root / "podman.sock"
        self.socket = f"unix://{path}"
        process = ManagedProcess(
            "podman-service",
            ["podman", "system", "service", "--time=0", self.socket],
            self.root / "podman-service.log",
        )
        self._processes.append(process)
        if not wait_until(lambda: path.exists() or not process.running(), 30, 0.2):
            raise RuntimeError(f"the Podman API did not start: {process.log_tail()}")

    def stop(self) -> None:
        """Stop the registry and the API, remove containers, storage and the CONTAINERS_* variables."""
        if self.env:
            self.run("podman", "rm", "--all", "--force", "--time", "0", timeout=120)
            self.run("buildah", "rm", "--all", timeout=120)
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        storage = self.root / "storage"
        if storage.is_dir():
            mounts = self.run("findmnt", "-rn", "-o", "TARGET").stdout.split()
            for target in sorted((m for m in mounts if m.startswith(str(storage))), key=len, reverse=True):
                self.run("umount", "-l", target)
            shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(self.root / "registry" / "data", ignore_errors=True)
        for key in self.env:
            os.environ.pop(key, None)

    def run(self, *cmd: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check)

    def podman(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args, timeout=timeout)

    def import_base_image(self, arch: str = "amd64", tag: str = BASE_IMAGE) -> str:
        """The debootstrap base image in this world's storage (root file system cached per machine)."""
        from image_builder.oci.base_image import import_base_image, make_base_rootfs

        tarball = make_base_rootfs(CACHE_DIR / f"debian-bookworm-python3-{arch}.tar", arch=arch)
        return import_base_image(tarball, tag, arch)


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)
