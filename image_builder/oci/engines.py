"""Build engines, side by side behind one interface (`Engine`): buildah and Docker Engine.

An engine builds one platform of one target of a Containerfile into a local manifest
(`build`, returning its output lines for cache statistics), pushes a manifest to a
reference (`push`) and forgets a manifest (`remove_manifest`). Failures raise
`OciBuildError` with the tool's own error lines. `make_engine` picks one by `--engine`;
`engine_mounts` gives buildah its build mounts (the Docker engine takes none).
"""

import contextlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from image_builder.environments import Log, summarize
from image_builder.oci.errors import OciBuildError
from image_builder.oci.mounts import build_settings
from image_builder.oci.options import OciOptions
from image_builder.oci.registry import auth_for, registry_error


@dataclass(frozen=True)
class BuildStep:
    """One platform of one target of a Containerfile, built into a local manifest."""

    context: Path
    containerfile: Path
    target: str
    platform: str
    manifest: str
    volumes: list[tuple[str, str]] = field(default_factory=list)  # (host, inside), read-only


class Engine(Protocol):
    """What builds an image: buildah or a Docker Engine."""

    name: str

    def build(self, step: BuildStep) -> list[str]:
        """Build `step` into its manifest; the build's output lines. Raises OciBuildError."""
        ...

    def push(self, manifest: str, ref: str) -> None:
        """Push the manifest (every platform in it) to `ref`. Raises OciBuildError."""
        ...

    def remove_manifest(self, manifest: str) -> None:
        """Forget a local manifest, if there is one."""
        ...


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

    def build(self, step: BuildStep) -> list[str]:
        cmd = self._cmd(
            "bud", "--isolation", "chroot", "--layers", "--platform", step.platform, "--manifest", step.manifest,
            "--target", step.target, "-f", str(step.containerfile), "--network", "host",
        )  # fmt: skip
        if self.options.registry_auth_file:
            cmd += ["--authfile", str(self.options.registry_auth_file)]
        for host, inside in step.volumes:
            cmd += ["-v", f"{host}:{inside}:ro"]
        return run_all([*cmd, str(step.context)], self.log, f"building the {step.target} image for {step.platform}")

    def push(self, manifest: str, ref: str) -> None:
        cmd = self._cmd("manifest", "push", "--all", "--quiet", *self._registry_flags(), manifest, f"docker://{ref}")
        try:
            run_all(cmd, self.log, f"pushing {ref}")
        except OciBuildError as error:
            raise registry_error(str(error)) from error

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

    def build(self, step: BuildStep) -> list[str]:
        import docker.errors

        lines: list[str] = []
        try:
            stream = self.client.api.build(
                path=str(step.context), dockerfile=step.containerfile.name, target=step.target, tag=step.manifest,
                platform=step.platform, rm=True, forcerm=True, decode=True, network_mode="host",
            )  # fmt: skip
            for chunk in stream:
                if "error" in chunk:
                    raise OciBuildError(f"building the {step.target} image failed: {chunk['error'].strip()}")
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    lines.append(text)
                    self.log("    " + text)
        except docker.errors.APIError as error:
            raise OciBuildError(f"building the {step.target} image failed: {error}") from error
        return lines

    def push(self, manifest: str, ref: str) -> None:
        import docker.errors

        repository, tag = ref.rsplit(":", 1)
        try:
            self.client.images.get(manifest).tag(repository, tag)
            for chunk in self.client.images.push(repository, tag, stream=True, decode=True, auth_config=auth_for(
                ref, self.options.registry_auth_file)):  # fmt: skip
                if "error" in chunk:
                    raise registry_error(f"pushing {ref} failed: {chunk['error']}")
        except docker.errors.APIError as error:
            raise registry_error(f"pushing {ref} failed: {error}") from error

    def remove_manifest(self, manifest: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.APIError):
            self.client.images.remove(manifest, noprune=True)


def engine_mounts(
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
