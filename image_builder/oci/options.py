"""The `--target oci` options: where images go and how they are built.

`OciOptions` is the validated set (registry, platforms, base image, package index, TLS,
engine, storage driver, build packages, installer); `add_oci_arguments` declares them on a
parser and `options_from_args` turns parsed arguments plus the builder's settings (this
machine's pip configuration, the storage driver) into `OciOptions`, raising ValueError with
the option to fix. Image names are built here too (`image_component`, `repo_image_name`).
"""

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from image_builder.settings import BuilderSettings

DEFAULT_BASE_IMAGE = "docker.io/library/python:3.11-slim"  # `python:3.11-slim`, fully qualified
FL_ROLES = ("learner", "aggregator")
SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64")
ENGINES = ("buildah", "docker")
INSTALLERS = ("auto", "pip")


@dataclass(frozen=True)
class OciOptions:
    """Where images go and how they are built (the `--target oci` options)."""

    registry: str
    platforms: tuple[str, ...] = ("linux/amd64",)
    base_image: str = DEFAULT_BASE_IMAGE
    ca_bundle: Path | None = None
    pip_index_url: str | None = None
    pip_extra_index_urls: tuple[str, ...] = ()
    pip_find_links: tuple[Path, ...] = ()
    pip_constraints: str = "auto"  # "auto" (the builder's own versions), "none", or a file
    tls_verify: bool = True
    registry_auth_file: Path | None = None
    engine: str = "buildah"
    storage_driver: str | None = None  # None: storage.conf decides (overlay where possible; vfs anywhere)
    build_packages: tuple[str, ...] = ()  # Debian packages needed only to compile sdists
    installer: str = "auto"  # "auto": the builder's uv on native platforms, else pip

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._/-]+)?", self.registry):
            raise ValueError(f"--registry must look like HOST[:PORT][/PATH], not {self.registry!r}")
        for platform in self.platforms:
            if platform not in SUPPORTED_PLATFORMS:
                raise ValueError(f"unsupported platform {platform!r}; use {', '.join(SUPPORTED_PLATFORMS)}")
        if not self.platforms:
            raise ValueError("give at least one platform")
        if self.installer not in INSTALLERS:
            raise ValueError(f"unknown installer {self.installer!r}; use {' or '.join(INSTALLERS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; use {' or '.join(ENGINES)}")
        for name in self.build_packages:
            if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", name):
                raise ValueError(f"not a Debian package name: {name!r}")

    def base_for(self, platform: str) -> str:
        return self.base_image.replace("{arch}", arch_of(platform))

    @property
    def build_packages_text(self) -> str:
        return " ".join(self.build_packages)


def arch_of(platform: str) -> str:
    return platform.split("/")[1]


def image_component(text: str) -> str:
    """`text` as one path component of an image name (lowercase, [a-z0-9._-])."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("._-")
    cleaned = re.sub(r"[._-]{2,}", "-", cleaned)
    if not cleaned:
        raise ValueError(f"{text!r} gives an empty image name component")
    return cleaned[:64]


def repo_image_name(repo_url: str) -> str:
    """The repository's name as an image name component (`.../digits-sklearn.git` -> `digits-sklearn`)."""
    tail = repo_url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return image_component(tail.removesuffix(".git") or "repo")


def add_oci_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("OCI target (--target oci)")
    group.add_argument("--registry", help="HOST:PORT[/PATH] the images are pushed to")
    group.add_argument("--platforms", default="linux/amd64", help="comma-separated: linux/amd64,linux/arm64")
    group.add_argument("--base-image", default=DEFAULT_BASE_IMAGE, help="base image ({arch} is replaced per platform)")
    group.add_argument("--ca-bundle", type=Path, help="extra CA bundle for HTTPS inside RUN steps (not stored)")
    group.add_argument("--pip-index-url", help="package index for RUN steps (default: this machine's pip settings)")
    group.add_argument("--pip-extra-index-url", action="append", default=[], help="additional index (repeatable)")
    group.add_argument("--pip-find-links", action="append", type=Path, default=[], help="wheel folder (repeatable)")
    group.add_argument(
        "--pip-constraints", default="auto", help="'auto' (the builder's own versions), 'none', or a constraints file"
    )
    group.add_argument(
        "--no-host-pip-settings",
        dest="host_pip_settings",
        action="store_false",
        help="do not pass this machine's pip settings (pip.conf, PIP_*) into the build",
    )
    group.add_argument("--tls-verify", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--registry-auth-file", type=Path, help="containers auth.json for the registry")
    group.add_argument("--engine", choices=ENGINES, default="buildah")
    group.add_argument(
        "--storage-driver",
        default=None,
        help="buildah storage driver (default: FLOPS_BUILDAH_STORAGE_DRIVER; '' for storage.conf's)",
    )
    group.add_argument("--build-packages", default="", help="Debian packages to compile sdists (purged after)")
    group.add_argument("--customer", default="admin", help="customer, the first part of image names")
    group.add_argument("--image-name", default=None, help="second part of image names (default: the repo's name)")


def options_from_args(args: argparse.Namespace, settings: BuilderSettings | None = None) -> OciOptions:
    """The options `args` name; `settings` default to this process's environment (CLI callers)."""
    if not args.registry:
        raise ValueError("--target oci needs --registry HOST:PORT")
    settings = settings or BuilderSettings.from_env()
    host = settings.host_pip_options() if args.host_pip_settings else {}
    storage_driver = settings.storage_driver if args.storage_driver is None else args.storage_driver
    return OciOptions(
        registry=args.registry,
        platforms=tuple(p.strip() for p in args.platforms.split(",") if p.strip()),
        base_image=args.base_image,
        ca_bundle=args.ca_bundle or host.get("ca_bundle"),
        pip_index_url=args.pip_index_url or host.get("pip_index_url"),
        pip_extra_index_urls=tuple(args.pip_extra_index_url) or host.get("pip_extra_index_urls", ()),
        pip_find_links=tuple(args.pip_find_links) or host.get("pip_find_links", ()),
        pip_constraints=args.pip_constraints,
        tls_verify=args.tls_verify,
        registry_auth_file=args.registry_auth_file,
        engine=args.engine,
        storage_driver=storage_driver or None,
        build_packages=tuple(args.build_packages.split()),
    )
