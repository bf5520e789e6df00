"""OCI target of the image builder: learner, aggregator and inference-server images.

    flops-image-builder --target oci --registry HOST:PORT --project-id P --repo-url URL
        [--platforms linux/amd64,linux/arm64] [--base-image IMAGE] [--ca-bundle FILE]
        [--pip-index-url URL] [--pip-find-links DIR] [--tls-verify/--no-tls-verify]
        [--registry-auth-file FILE] [--engine buildah|docker]

Images are tagged `<registry>/<customer>/<repo>/{learner,aggregator}:<commit12>-<config12>`:
the commit of the ML repository and a digest of everything else that decides the images
(base image, platforms, requirements, constraints, platform source, template). A build
whose two tags the registry already has is skipped. Otherwise the builder renders a
Containerfile (see `image_builder.containerfiles`) into a private build context and builds
every platform into one manifest list with `buildah bud --isolation chroot --layers`
(unprivileged: no container runtime, no privileged container), then pushes it with
`buildah manifest push --all`. Non-native platforms (linux/arm64 on amd64) build under
QEMU user emulation (qemu-user-static with binfmt-support).

The base image is `python:3.11-slim` unless told otherwise; an air-gapped site makes its
own with `make_base_image` (debootstrap, `python -m image_builder.oci base-image`). A base
image name may contain `{arch}` (`localhost/flops/python:3.11-{arch}`) to use one local image
per architecture.

`build_inference_image` turns a registered MLflow model into
`<registry>/<customer>/<project>/inference:<model version>`, serving MLflow's scoring
protocol (`/ping`, `/invocations`) on port 8080; `python -m image_builder.inference`.
"""

import argparse
import base64
import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from image_builder import containerfiles
from image_builder.environments import (
    Installer,
    Log,
    Platform,
    ensure_platform_wheel,
    prepare_platform,
    summarize,
)
from image_builder.files import copy_repository, remove_tree, text_digest

OCI_FORMAT = 2
SLIM_SCRIPT = Path(__file__).with_name("slim.py")
DEFAULT_BASE_IMAGE = "docker.io/library/python:3.11-slim"  # `python:3.11-slim`, fully qualified
LOCAL_BASE_IMAGE = "localhost/flops/python:3.11"
FL_ROLES = ("learner", "aggregator")
SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64")
ENGINES = ("buildah", "docker")
# None: storage.conf decides (overlay where the kernel allows it; vfs works everywhere).
DEFAULT_STORAGE_DRIVER = os.environ.get("FLOPS_BUILDAH_STORAGE_DRIVER") or None
INSTALLERS = ("auto", "pip")
# Packages an ML model's MLflow environment lists that the serving image replaces.
_MLFLOW_PACKAGES = frozenset({"mlflow", "mlflow-skinny", "mlflow-tracing"})


class OciBuildError(RuntimeError):
    """An image could not be built, pushed or looked up; the message says why."""


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
    storage_driver: str | None = DEFAULT_STORAGE_DRIVER
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


def fl_image_refs(options: OciOptions, customer: str, name: str, tag: str) -> dict[str, str]:
    prefix = f"{options.registry}/{image_component(customer)}/{image_component(name)}"
    return {role: f"{prefix}/{role}:{tag}" for role in FL_ROLES}


# --- requirements ------------------------------------------------------------------------


def platform_requirements(platform: Platform) -> tuple[list[str], list[str]]:
    """The platform's own requirements: (base, tracking extra), from its pyproject.toml."""
    project = tomllib.loads((platform.source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = [str(item) for item in project.get("dependencies", [])]
    tracking = [str(item) for item in project.get("optional-dependencies", {}).get("tracking", [])]
    return base, tracking


def _names(requirements: Sequence[str]) -> set[str]:
    names = set()
    for line in requirements:
        with contextlib.suppress(InvalidRequirement):
            names.add(str(canonicalize_name(Requirement(line).name)))
    return names


def builder_constraints(requirements: Sequence[str], exclude: set[str]) -> list[str]:
    """`name==version` for the dependency closure of `requirements` as installed here.

    Images then get the versions the platform was tested with (and pip has nothing to
    search for). Packages the user pinned (`exclude`) and ones not installed here are left
    to pip; local version labels (`+cpu`) are dropped so that a matching wheel satisfies them.
    """
    pending: list[tuple[str, frozenset[str]]] = []
    for line in requirements:
        with contextlib.suppress(InvalidRequirement):
            req = Requirement(line)
            pending.append((str(canonicalize_name(req.name)), frozenset(req.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    pins: dict[str, str] = {}
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name not in exclude and name != "flops" and dist.read_text("direct_url.json") is None:
            pins[name] = dist.version.split("+", 1)[0]
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in (extras or {""}) | {""}
            ):
                continue
            pending.append((str(canonicalize_name(req.name)), frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def constraints_for(options: OciOptions, requirements: Sequence[str], user_requirements: Sequence[str]) -> list[str]:
    if options.pip_constraints == "none":
        return []
    if options.pip_constraints == "auto":
        return builder_constraints(requirements, _names(user_requirements))
    path = Path(options.pip_constraints)
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise OciBuildError(f"cannot read --pip-constraints {path}: {error}") from error


# --- build settings mounted into RUN steps ----------------------------------------------


def host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def builder_uv() -> Path | None:
    """The uv next to this interpreter (as the local target uses it), if any."""
    import sys

    uv = Path(sys.executable).parent / "uv"
    return uv if uv.is_file() and os.access(uv, os.X_OK) else None


def installer_uv(options: OciOptions, platform: str = "") -> Path | None:
    """The uv that RUN steps for `platform` install with (native platforms), or None: pip."""
    uv = builder_uv() if options.installer == "auto" else None
    return uv if uv is not None and (not platform or arch_of(platform) == host_arch()) else None


def host_strip(platform: str = "") -> Path | None:
    """This machine's `strip` (binutils), usable in RUN steps of native platforms, or None."""
    strip = shutil.which("strip")
    if strip is None or shutil.which("ldd") is None or (platform and arch_of(platform) != host_arch()):
        return None
    return Path(strip).resolve()


def strip_bundle(strip: Path, dest: Path) -> None:
    """`strip` with its shared libraries and loader, runnable in any root file system of this arch.

    Run as `dest/ld.so --library-path dest dest/strip`: the host's loader and libraries come
    along, so the base image's C library does not matter and nothing is installed in it.
    """
    dest.mkdir(parents=True)
    shutil.copy2(strip, dest / "strip")
    listed = subprocess.run(["ldd", str(strip)], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            library = Path(parts[parts.index("=>") + 1])
            shutil.copy2(library.resolve(), dest / library.name)
        elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
            shutil.copy2(Path(parts[0]).resolve(), dest / "ld.so")
    if not (dest / "ld.so").is_file():
        raise OciBuildError(f"cannot find the dynamic loader of {strip} in `ldd` output")


@contextlib.contextmanager
def build_settings(options: OciOptions, platform: str = "") -> Iterator[list[tuple[str, str]]]:
    """Volumes (host, container) giving RUN steps the installer settings; removed afterwards.

    A generated pip.conf (and the same as uv arguments) names the index, the extra CA bundle
    and the find-links folders as they appear inside the build; for a native `platform` the
    builder's uv is mounted too. Nothing of it is written into a layer.
    """
    folder = Path(tempfile.mkdtemp(prefix="flops-build-settings-"))
    try:
        mount = containerfiles.BUILD_MOUNT
        lines = ["[global]"]
        volumes = [(str(folder), mount)]
        mounted: list[str] = []

        def index(url: str) -> str:
            """A file:// index is mounted (its parent too, for relative links to ../files)."""
            if not url.startswith("file://"):
                return url
            path = Path(url.removeprefix("file://"))
            if not path.is_dir():
                raise OciBuildError(f"package index {url} is not a folder here")
            inside = f"{mount}/index/{len(mounted)}"
            (folder / "index" / str(len(mounted))).mkdir(parents=True)
            volumes.append((str(path.parent.resolve()), inside))
            mounted.append(url)
            return f"file://{inside}/{path.name}"

        if options.pip_index_url:
            lines.append(f"index-url = {index(options.pip_index_url)}")
        if options.pip_extra_index_urls:
            lines.append("extra-index-url = " + " ".join(index(url) for url in options.pip_extra_index_urls))
        if options.ca_bundle:
            if not options.ca_bundle.is_file():
                raise OciBuildError(f"--ca-bundle {options.ca_bundle} is not a file")
            (folder / "ca.crt").touch()
            volumes.append((str(options.ca_bundle.resolve()), f"{mount}/ca.crt"))
            lines.append(f"cert = {mount}/ca.crt")
        links = []
        for number, source in enumerate(options.pip_find_links):
            if not source.is_dir():
                raise OciBuildError(f"--pip-find-links {source} is not a folder")
            (folder / "find-links" / str(number)).mkdir(parents=True)
            volumes.append((str(source.resolve()), f"{mount}/find-links/{number}"))
            links.append(f"{mount}/find-links/{number}")
        if links:
            lines.append("find-links = " + " ".join(links))
        (folder / "pip.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        strip = host_strip(platform)
        if strip is not None:
            strip_bundle(strip, folder / "strip")
        uv = installer_uv(options, platform)
        if uv is not None:
            (folder / "uv").touch()
            volumes.append((str(uv.resolve()), f"{mount}/uv"))
            uv_args: list[str] = []
            for line in lines[1:]:
                key, _, value = line.partition(" = ")
                if key == "index-url":
                    uv_args += ["--index-url", value]
                elif key == "extra-index-url":
                    for url in value.split():
                        uv_args += ["--extra-index-url", url]
                elif key == "find-links":
                    for link in value.split():
                        uv_args += ["--find-links", link]
            if len(uv_args) > 2 or "--find-links" in uv_args:
                uv_args += ["--index-strategy", "unsafe-best-match"]  # pip's rule: best version of all
            (folder / "uv-args").write_text(" ".join(uv_args) + "\n", encoding="utf-8")
            env = ["UV_PYTHON_DOWNLOADS=never", "UV_NO_PROGRESS=1", "UV_LINK_MODE=copy"]
            if options.ca_bundle:
                env.append(f"SSL_CERT_FILE={mount}/ca.crt")
            (folder / "uv.env").write_text("".join(f"{item}\n" for item in env), encoding="utf-8")
        folder.chmod(0o755)
        yield volumes
    finally:
        remove_tree(folder)


def pip_settings_from_host(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """This machine's pip settings (pip.conf, PIP_*) as OciOptions fields, for pass-through."""
    from image_builder.environments import IndexSettings

    environ = dict(os.environ if environ is None else environ)
    index = IndexSettings.from_pip(environ)
    ca = environ.get("PIP_CERT") or _pip_cert_from_config(environ)
    return {
        "pip_index_url": index.index_url,
        "pip_extra_index_urls": index.extra_index_urls,
        "pip_find_links": tuple(Path(link) for link in index.find_links if Path(link).is_dir()),
        "ca_bundle": Path(ca) if ca and Path(ca).is_file() else None,
    }


def _pip_cert_from_config(environ: dict[str, str]) -> str | None:
    import configparser

    from image_builder.environments import _pip_config_files

    parser = configparser.RawConfigParser()
    parser.read([str(path) for path in _pip_config_files(environ)], encoding="utf-8")
    for section in ("install", "global"):
        if parser.has_option(section, "cert"):
            return parser.get(section, "cert").strip() or None
    return None


# --- engines ---------------------------------------------------------------------------


class BuildahEngine:
    """buildah CLI: chroot isolation, layer cache, manifest lists; no daemon, no privileges."""

    name = "buildah"

    def __init__(self, options: OciOptions, log: Log) -> None:
        if shutil.which("buildah") is None:
            raise OciBuildError("buildah is not installed (apt-get install buildah), or use --engine docker")
        self.options = options
        self.log = log

    def _cmd(self, *arguments: str) -> list[str]:
        base = ["buildah"]
        if self.options.storage_driver:
            base += ["--storage-driver", self.options.storage_driver]
        return [*base, *arguments]

    def _registry_flags(self) -> list[str]:
        flags = [f"--tls-verify={'true' if self.options.tls_verify else 'false'}"]
        if self.options.registry_auth_file:
            flags += ["--authfile", str(self.options.registry_auth_file)]
        return flags

    def build(
        self,
        context: Path,
        containerfile: Path,
        target: str,
        platform: str,
        manifest: str,
        volumes: list[tuple[str, str]],
    ) -> list[str]:
        cmd = self._cmd(
            "bud", "--isolation", "chroot", "--layers", "--platform", platform, "--manifest", manifest,
            "--target", target, "-f", str(containerfile), "--network", "host",
        )  # fmt: skip
        if self.options.registry_auth_file:
            cmd += ["--authfile", str(self.options.registry_auth_file)]
        for host, inside in volumes:
            cmd += ["-v", f"{host}:{inside}:ro"]
        return run_all([*cmd, str(context)], self.log, f"building the {target} image for {platform}")

    def push(self, manifest: str, ref: str) -> None:
        cmd = self._cmd("manifest", "push", "--all", "--quiet", *self._registry_flags(), manifest, f"docker://{ref}")
        run_all(cmd, self.log, f"pushing {ref}")

    def remove_manifest(self, manifest: str) -> None:
        subprocess.run(self._cmd("manifest", "rm", manifest), capture_output=True, check=False, env=_env())


class DockerEngine:
    """A Docker Engine (or Podman's Docker-compatible API) through the `docker` package.

    The classic build API has no build volumes and no manifest lists: one platform per
    build, the package index passed as pip options, no extra CA bundle or find-links
    folders (the engine must reach the index itself).
    """

    name = "docker"

    def __init__(self, options: OciOptions, log: Log, base_url: str | None = None) -> None:
        if len(options.platforms) != 1:
            raise OciBuildError("--engine docker builds one platform at a time; use buildah for manifest lists")
        if options.ca_bundle or options.pip_find_links:
            raise OciBuildError("--ca-bundle and --pip-find-links need --engine buildah (build volumes)")
        from docker.client import DockerClient, from_env

        self.options = options
        self.log = log
        self.client = DockerClient(base_url=base_url) if base_url else from_env()

    def build(
        self,
        context: Path,
        containerfile: Path,
        target: str,
        platform: str,
        manifest: str,
        volumes: list[tuple[str, str]],
    ) -> list[str]:
        import docker.errors

        lines: list[str] = []
        try:
            stream = self.client.api.build(
                path=str(context), dockerfile=containerfile.name, target=target, tag=manifest,
                platform=platform, rm=True, forcerm=True, decode=True, network_mode="host",
            )  # fmt: skip
            for chunk in stream:
                if "error" in chunk:
                    raise OciBuildError(f"building the {target} image failed: {chunk['error'].strip()}")
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    lines.append(text)
                    self.log("    " + text)
        except docker.errors.APIError as error:
            raise OciBuildError(f"building the {target} image failed: {error}") from error
        return lines

    def push(self, manifest: str, ref: str) -> None:
        import docker.errors

        repository, tag = ref.rsplit(":", 1)
        try:
            self.client.images.get(manifest).tag(repository, tag)
            for chunk in self.client.images.push(repository, tag, stream=True, decode=True, auth_config=_auth_for(
                ref, self.options.registry_auth_file)):  # fmt: skip
                if "error" in chunk:
                    raise OciBuildError(f"pushing {ref} failed: {chunk['error']}")
        except docker.errors.APIError as error:
            raise OciBuildError(f"pushing {ref} failed: {error}") from error

    def remove_manifest(self, manifest: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.APIError):
            self.client.images.remove(manifest, noprune=True)


Engine = BuildahEngine | DockerEngine


def _settings(
    engine: Engine, options: OciOptions, platform: str
) -> contextlib.AbstractContextManager[list[tuple[str, str]]]:
    """Build volumes for buildah; none for the Docker engine (its classic builder has none)."""
    return build_settings(options, platform) if engine.name == "buildah" else contextlib.nullcontext([])


def make_engine(options: OciOptions, log: Log) -> Engine:
    return BuildahEngine(options, log) if options.engine == "buildah" else DockerEngine(options, log)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BUILDAH_ISOLATION", "chroot")
    return env


def run_all(cmd: list[str], log: Log, what: str) -> list[str]:
    """Run `cmd`, logging and returning every output line; a one-line error if it fails."""
    log("  $ " + shlex.join(cmd))
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), stdin=subprocess.DEVNULL
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            lines.append(line)
            log("    " + line)
        code = process.wait()
    if code:
        raise OciBuildError(f"{what} failed (exit {code}): {summarize(lines[-80:])}")
    return lines


# --- registry --------------------------------------------------------------------------


def _auth_for(ref: str, auth_file: Path | None) -> dict[str, str] | None:
    """Username and password for `ref`'s registry from a containers auth.json, if any."""
    if auth_file is None:
        return None
    try:
        auths = json.loads(auth_file.read_text(encoding="utf-8")).get("auths", {})
    except (OSError, ValueError) as error:
        raise OciBuildError(f"cannot read --registry-auth-file {auth_file}: {error}") from error
    host = ref.split("/", 1)[0]
    entry = auths.get(host) or auths.get(f"https://{host}")
    if not entry or "auth" not in entry:
        return None
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": user, "password": password}


def registry_has(ref: str, tls_verify: bool = True, auth_file: Path | None = None, timeout: float = 30) -> bool:
    """Whether the registry holds `ref` (skopeo when installed, else the Registry v2 API)."""
    if shutil.which("skopeo"):
        cmd = ["skopeo", "inspect", "--raw", f"--tls-verify={'true' if tls_verify else 'false'}"]
        if auth_file:
            cmd += ["--authfile", str(auth_file)]
        result = subprocess.run([*cmd, f"docker://{ref}"], capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode == 0:
            return True
        if re.search(r"manifest unknown|not found|name unknown|404", result.stderr, re.IGNORECASE):
            return False
        raise OciBuildError(f"cannot ask the registry about {ref}: {' '.join(result.stderr.split())[-300:]}")
    return _registry_has_http(ref, tls_verify, auth_file, timeout)


def _registry_has_http(ref: str, tls_verify: bool, auth_file: Path | None, timeout: float) -> bool:
    import requests

    host, _, rest = ref.partition("/")
    name, _, tag = rest.rpartition(":")
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
    auth = _auth_for(ref, auth_file)
    basic = (auth["username"], auth["password"]) if auth else None
    for scheme in ("https", "http") if not tls_verify else ("https",):
        url = f"{scheme}://{host}/v2/{name}/manifests/{tag}"
        try:
            response = requests.head(url, headers={"Accept": accept}, auth=basic, verify=tls_verify, timeout=timeout)
        except requests.exceptions.SSLError:
            continue
        except requests.RequestException as error:
            raise OciBuildError(f"cannot reach the registry {host}: {error}") from error
        if response.status_code == 401 and "bearer" in response.headers.get("WWW-Authenticate", "").lower():
            token = _bearer_token(response.headers["WWW-Authenticate"], basic, tls_verify, timeout)
            response = requests.head(
                url, headers={"Accept": accept, "Authorization": f"Bearer {token}"}, verify=tls_verify, timeout=timeout
            )
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise OciBuildError(f"registry {host} answered {response.status_code} for {name}:{tag}")
    raise OciBuildError(f"cannot reach the registry {host}")


def _bearer_token(challenge: str, basic: tuple[str, str] | None, tls_verify: bool, timeout: float) -> str:
    import requests

    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = fields.pop("realm", "")
    response = requests.get(realm, params=fields, auth=basic, verify=tls_verify, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    return str(body.get("token") or body.get("access_token") or "")


# --- FL-actor images -------------------------------------------------------------------


@dataclass
class FlBuild:
    """What `build_fl_images` made or found."""

    commit: str
    tag: str
    config_digest: str
    images: dict[str, str]
    reused: bool
    durations: dict[str, float] = field(default_factory=dict)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)


def fl_build_config(
    options: OciOptions, platform: Platform, base: list[str], tracking: list[str], user: list[str], pins: list[str]
) -> tuple[str, dict[str, Any]]:
    """The build-configuration digest (12 hex) and what it covers."""
    config = {
        "format": OCI_FORMAT,
        "template": containerfiles.FL_ACTORS,
        "slim": text_digest(SLIM_SCRIPT.read_text(encoding="utf-8")),
        "base_image": options.base_image,
        "platforms": sorted(options.platforms),
        "requirements": sorted(set(base) | set(user)),
        "tracking": sorted(tracking),
        "constraints": pins,
        "platform_digest": platform.digest,
        "build_packages": list(options.build_packages),
    }
    return text_digest(config)[:12], config


def _add_slimming(requirements: Path, user_requirements: Sequence[str]) -> None:
    """slim.py and the requirements whose modules it compiles in full, for the deps step."""
    shutil.copy2(SLIM_SCRIPT, requirements / "slim.py")
    (requirements / "requirements-user.txt").write_text(_lines(user_requirements))


def count_cached_steps(lines: list[str]) -> dict[str, int]:
    steps = sum(1 for line in lines if re.search(r"STEP \d+/\d+|^\s*Step \d+/\d+", line))
    cached = sum(1 for line in lines if "Using cache" in line)
    return {"steps": steps, "cached": cached}


def dependency_step_cached(lines: list[str]) -> bool:
    """Whether the step installing requirements-base.txt came from the layer cache."""
    for index, line in enumerate(lines):
        if "requirements-base.txt" in line and re.search(r"STEP \d+/\d+|Step \d+/\d+", line):
            return any("Using cache" in later for later in lines[index + 1 : index + 8])
    return False


def build_fl_images(
    repo: Path,
    commit: str,
    user_requirements: list[str],
    options: OciOptions,
    customer: str,
    name: str,
    cache_dir: Path,
    log: Log = print,
    source_url: str = "",
    engine: Engine | None = None,
) -> FlBuild:
    """Build (or find in the registry) the learner and aggregator images of `repo` at `commit`."""
    durations: dict[str, float] = {}
    started = time.monotonic()
    platform = prepare_platform(cache_dir)
    base, tracking = platform_requirements(platform)
    pins = constraints_for(options, [*base, *tracking, *user_requirements], user_requirements)
    digest, _config = fl_build_config(options, platform, base, tracking, user_requirements, pins)
    commit12 = (commit or "nogit")[:12]
    tag = f"{commit12}-{digest}"
    refs = fl_image_refs(options, customer, name, tag)
    durations["plan"] = round(time.monotonic() - started, 3)
    log(f"images: {refs['learner']}, {refs['aggregator']}")
    started = time.monotonic()
    if all(registry_has(ref, options.tls_verify, options.registry_auth_file) for ref in refs.values()):
        durations["registry_check"] = round(time.monotonic() - started, 3)
        log("the registry has both images: build skipped")
        return FlBuild(commit, tag, digest, refs, reused=True, durations=durations)
    durations["registry_check"] = round(time.monotonic() - started, 3)
    engine = engine or make_engine(options, log)
    wheel = ensure_platform_wheel(platform, cache_dir, Installer.detect(), log)
    work = cache_dir / "oci-work"
    work.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(dir=work, prefix="context-"))
    cache: dict[str, dict[str, int]] = {}
    try:
        started = time.monotonic()
        requirements = context / "requirements"
        requirements.mkdir()
        (requirements / "requirements-base.txt").write_text(_lines(sorted(set(base) | set(user_requirements))))
        (requirements / "requirements-tracking.txt").write_text(_lines(tracking))
        (requirements / "constraints.txt").write_text(_lines(pins))
        _add_slimming(requirements, user_requirements)
        (context / "wheel").mkdir()
        shutil.copy2(wheel, context / "wheel" / wheel.name)
        copy_repository(repo, context / "repo")
        _normalise_modes(context)
        for platform_name in options.platforms:
            text = containerfiles.render_fl_actors(
                options.base_for(platform_name), wheel.name, options.build_packages_text, OCI_FORMAT,
                with_pip=installer_uv(options, platform_name) is None, strip=host_strip(platform_name) is not None,
            )  # fmt: skip
            (context / f"Containerfile.{arch_of(platform_name)}").write_text(text, encoding="utf-8")
        durations["context"] = round(time.monotonic() - started, 3)
        # Each image is pushed (compressed: CPU-bound) while the next one builds.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="push") as pusher:
            pushes: list[Future[None]] = []
            for role in FL_ROLES:
                manifest = f"localhost/flops-build/{image_component(customer)}/{image_component(name)}/{role}:{tag}"
                engine.remove_manifest(manifest)
                lines: list[str] = []
                for platform_name in options.platforms:
                    started = time.monotonic()
                    log(f"building the {role} image for {platform_name}")
                    with _settings(engine, options, platform_name) as volumes:
                        lines += engine.build(
                            context, context / f"Containerfile.{arch_of(platform_name)}", role, platform_name,
                            manifest, volumes,
                        )  # fmt: skip
                    durations[f"{role}_image_{arch_of(platform_name)}"] = round(time.monotonic() - started, 3)
                cache[role] = count_cached_steps(lines)
                cache[role]["dependencies_cached"] = int(dependency_step_cached(lines))
                pushes.append(pusher.submit(_push, engine, manifest, refs[role], durations, f"{role}_push", log))
            for push in pushes:
                push.result()
    finally:
        remove_tree(context)
    return FlBuild(commit, tag, digest, refs, reused=False, durations=durations, cache=cache)


def _push(engine: Engine, manifest: str, ref: str, durations: dict[str, float], key: str, log: Log) -> None:
    started = time.monotonic()
    engine.push(manifest, ref)
    engine.remove_manifest(manifest)
    durations[key] = round(time.monotonic() - started, 3)
    log(f"pushed {ref}")


def _lines(items: Sequence[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def _normalise_modes(root: Path) -> None:
    """Files world-readable, folders world-searchable: the image user owns none of the code."""
    for current, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o755)
        for name in files:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


# --- the builder behind `flops-image-builder --target oci` ------------------------------


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
        "--storage-driver", default=DEFAULT_STORAGE_DRIVER, help="buildah storage driver ('' for storage.conf's)"
    )
    group.add_argument("--build-packages", default="", help="Debian packages to compile sdists (purged after)")
    group.add_argument("--customer", default="admin", help="customer, the first part of image names")
    group.add_argument("--image-name", default=None, help="second part of image names (default: the repo's name)")


def options_from_args(args: argparse.Namespace) -> OciOptions:
    if not args.registry:
        raise ValueError("--target oci needs --registry HOST:PORT")
    host = pip_settings_from_host() if args.host_pip_settings else {}
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
        storage_driver=args.storage_driver or None,
        build_packages=tuple(args.build_packages.split()),
    )


def make_oci_builder(args: argparse.Namespace) -> Any:
    """The Builder subclass for `--target oci` (same stages, events and result file)."""
    from flops.ml_repo.contract import validate_repository
    from flops.ml_repo.source import fetch_repository
    from image_builder.dependencies import read_dependencies
    from image_builder.files import file_lock, tree_digest
    from image_builder.main import (
        Builder,
        RepositoryRefused,
        _source_digest,
        check_tree,
        log_line,
        progress,
    )

    options = options_from_args(args)

    class OciBuilder(Builder):
        def _build(self, repo: Path) -> dict[str, Any]:
            refusal: RepositoryRefused | None = None
            with self.timed("fetch"):
                lock = self.cache / "repos" / ".locks" / f"{_source_digest(args.repo_url)}.lock"
                with file_lock(lock):
                    fetched = fetch_repository(args.repo_url, args.ref, self.cache / "repos")
                    try:
                        check_tree(fetched.path, int(args.max_repo_mb * 2**20))
                        copy_repository(fetched.path, repo)
                    except RepositoryRefused as error:
                        refusal = error
                progress(f"fetched {fetched.url}" + (f" at {fetched.commit}" if fetched.commit else " (no git)"))
            with self.timed("validate"):
                if refusal is not None:
                    raise refusal
                validate_repository(repo)
            with self.timed("dependencies"):
                deps = read_dependencies(repo)
                progress(f"dependencies from {deps.source.name}: {', '.join(deps.requirements) or 'none'}")
                for warning in deps.warnings:
                    progress(f"warning: {warning}")
            commit = fetched.commit or "content-" + tree_digest(repo)[:12]
            with self.timed("images"):
                build = build_fl_images(
                    repo, commit, deps.requirements, options, args.customer,
                    args.image_name or repo_image_name(fetched.url), self.cache, log=log_line, source_url=fetched.url,
                )  # fmt: skip
            self.durations.update({f"images.{key}": value for key, value in build.durations.items()})
            record = {
                "commit": fetched.commit,
                "repo_dir": containerfiles.APP_DIR,
                "learner_python": f"{containerfiles.VENV}/bin/python",
                "aggregator_python": f"{containerfiles.VENV}/bin/python",
                "images": build.images,
                "build_key": build.tag,
            }
            result = self.result(record, reused=build.reused)
            result["oci"] = {
                "tag": build.tag,
                "config_digest": build.config_digest,
                "platforms": list(options.platforms),
                "base_image": options.base_image,
                "engine": options.engine,
                "cache": build.cache,
            }
            return result

    return OciBuilder(args)


# --- inference-server images ------------------------------------------------------------


def resolve_model_version(tracking_uri: str, model_uri: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    from mlflow.tracking import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", model_uri)
    if not match:
        raise ValueError(f"expected models:/NAME/VERSION or models:/NAME@ALIAS, not {model_uri!r}")
    name, version, alias = match.groups()
    if alias:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version
    return name, str(version)


@contextlib.contextmanager
def _mlflow_uris(uri: str) -> Iterator[None]:
    """MLflow's tracking and registry URIs set to `uri` for the block (models:/ URIs need both)."""
    import mlflow

    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def inference_requirements(model_dir: Path) -> list[str]:
    """The model's own requirements with MLflow replaced by the serving-only mlflow-skinny."""
    mlflow_version = importlib.metadata.version("mlflow")
    requirements = [f"mlflow-skinny=={mlflow_version}", "pandas"]
    path = model_dir / "requirements.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if str(canonicalize_name(req.name)) in _MLFLOW_PACKAGES:
            mlflow_version = next((s.version for s in req.specifier if s.operator == "=="), mlflow_version)
            requirements[0] = f"mlflow-skinny=={mlflow_version}"
            continue
        requirements.append(text)
    # What the flavour loads with but MLflow does not always list (skops-serialised sklearn).
    names = _names(requirements)
    for package in _flavor_packages(model_dir / "MLmodel"):
        if package not in names:
            requirements.append(package)
    return requirements


def _flavor_packages(mlmodel: Path) -> list[str]:
    import yaml

    try:
        flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors", {})
    except (OSError, yaml.YAMLError):
        return []
    packages = []
    for flavor in flavors.values():
        if isinstance(flavor, dict) and flavor.get("serialization_format") in ("skops", "cloudpickle"):
            packages.append(str(flavor["serialization_format"]))
    return packages


def build_inference_image(
    tracking_uri: str,
    model_uri: str,
    registry: str,
    customer: str,
    project: str,
    options: OciOptions | None = None,
    cache_dir: Path | None = None,
    log: Log = print,
    force: bool = False,
) -> str:
    """Build and push `<registry>/<customer>/<project>/inference:<model version>`; its reference.

    The model's artefacts are downloaded from the tracking server into the build context and
    copied into the last layer; MLflow (skinny) and the model's requirements sit in a cached
    layer below, shared by every model with the same requirements.
    """
    import mlflow.artifacts

    options = replace(options, registry=registry) if options else OciOptions(registry=registry)
    name, version = resolve_model_version(tracking_uri, model_uri)
    ref = f"{registry}/{image_component(customer)}/{image_component(project)}/inference:{version}"
    if not force and registry_has(ref, options.tls_verify, options.registry_auth_file):
        log(f"the registry has {ref}: build skipped")
        return ref
    engine = make_engine(options, log)
    work = (cache_dir or Path(tempfile.gettempdir())) / "oci-work"
    work.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(dir=work, prefix="inference-"))
    try:
        log(f"downloading models:/{name}/{version} from {tracking_uri}")
        with _mlflow_uris(tracking_uri):
            downloaded = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version}", dst_path=str(context / "download")
                )
            )
        os.rename(downloaded, context / "model")
        remove_tree(context / "download")
        requirements = inference_requirements(context / "model")
        pins = constraints_for(options, requirements, requirements[2:])
        folder = context / "requirements"
        folder.mkdir()
        (folder / "requirements-inference.txt").write_text(_lines(requirements))
        (folder / "constraints.txt").write_text(_lines(pins))
        _add_slimming(folder, requirements[2:])
        _normalise_modes(context)
        manifest = f"localhost/flops-build/{image_component(customer)}/{image_component(project)}/inference:{version}"
        engine.remove_manifest(manifest)
        for platform_name in options.platforms:
            containerfile = context / f"Containerfile.{arch_of(platform_name)}"
            containerfile.write_text(
                containerfiles.render_inference(
                    options.base_for(platform_name),
                    options.build_packages_text,
                    OCI_FORMAT,
                    with_pip=installer_uv(options, platform_name) is None,
                    strip=host_strip(platform_name) is not None,
                ),
                encoding="utf-8",
            )
            with _settings(engine, options, platform_name) as volumes:
                engine.build(context, containerfile, "inference", platform_name, manifest, volumes)
        engine.push(manifest, ref)
        engine.remove_manifest(manifest)
        log(f"pushed {ref}")
    finally:
        remove_tree(context)
    return ref


# --- local base image (air-gapped sites) ------------------------------------------------


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
    storage_driver: str | None = DEFAULT_STORAGE_DRIVER,
) -> str:
    """Make `tag` (Debian bookworm + Python 3.11) locally with debootstrap; no pulls."""
    folder = cache_dir or Path(tempfile.mkdtemp(prefix="flops-base-"))
    tarball = make_base_rootfs(folder / f"debian-bookworm-python3-{arch}.tar", arch=arch, mirror=mirror)
    try:
        return import_base_image(tarball, tag, arch, storage_driver)
    finally:
        if cache_dir is None:
            remove_tree(folder)


def image_size(ref: str, storage_driver: str | None = DEFAULT_STORAGE_DRIVER) -> int:
    """Uncompressed size in bytes of a local image."""
    cmd = ["podman"] + (["--storage-driver", storage_driver] if storage_driver else [])
    result = subprocess.run(
        [*cmd, "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise OciBuildError(f"cannot inspect {ref}: {result.stderr.strip()}")
    return int(result.stdout.strip().splitlines()[0])


def compressed_sizes(ref: str, tls_verify: bool = True, auth_file: Path | None = None) -> dict[str, int]:
    """Bytes a pull transfers, per platform of `ref` (layers + config, as the registry holds them)."""

    def raw(reference: str) -> dict[str, Any]:
        cmd = ["skopeo", "inspect", "--raw", f"--tls-verify={'true' if tls_verify else 'false'}"]
        if auth_file:
            cmd += ["--authfile", str(auth_file)]
        result = subprocess.run([*cmd, f"docker://{reference}"], capture_output=True, text=True, check=False)
        if result.returncode:
            raise OciBuildError(f"cannot inspect {reference}: {result.stderr.strip()[-300:]}")
        return dict(json.loads(result.stdout))

    index = raw(ref)
    name = ref.rsplit(":", 1)[0]
    entries = index.get("manifests") or [{"digest": "", "platform": {"os": "linux", "architecture": "?"}}]
    sizes = {}
    for entry in entries:
        manifest = raw(f"{name}@{entry['digest']}") if entry["digest"] else index
        platform = f"{entry['platform']['os']}/{entry['platform']['architecture']}"
        sizes[platform] = sum(int(layer["size"]) for layer in manifest["layers"]) + int(manifest["config"]["size"])
    return sizes


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """`python -m image_builder.oci base-image [--tag T] [--arch A] [--cache-dir D]`."""
    parser = argparse.ArgumentParser(prog="python -m image_builder.oci")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base-image", help="make a local Debian + Python 3.11 base image with debootstrap")
    base.add_argument("--tag", default=LOCAL_BASE_IMAGE)
    base.add_argument("--arch", default="amd64", choices=["amd64", "arm64"])
    base.add_argument("--cache-dir", type=Path, default=None, help="keep the root file system tar here")
    base.add_argument("--mirror", default=None)
    base.add_argument("--storage-driver", default=DEFAULT_STORAGE_DRIVER)
    args = parser.parse_args(argv)
    started = time.monotonic()
    tag = make_base_image(args.tag, args.arch, args.cache_dir, args.mirror, args.storage_driver or None)
    print(f"made {tag} ({args.arch}) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
