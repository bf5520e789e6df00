"""Which backends this manager enables, read once from the environment: `OrchestrationSettings`.

`build_orchestrators` turns the settings into the backends the controller dispatches to: `local`
always, `docker` when DOCKER_HOST names an engine, `oakestra` when FLOPS_OAKESTRA_* configure a
system manager. `ENABLE_HINTS` says, per backend that may be off, how an operator turns it on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from flops_manager.auth import IdentityProvider
from flops_manager.orchestration.base import Orchestrator, OrchestratorError
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.orchestration.oakestra import OakestraOrchestrator, OakestraSettings
from flops_manager.orchestration.oakestra.identity import OakestraIdentity
from flops_manager.store import ProjectStore

# backend name -> how to enable it on a manager that has not ("local" is always enabled).
ENABLE_HINTS: dict[str, str] = {
    "docker": (
        "set DOCKER_HOST to the engine's socket (Docker's, or Podman's API socket, e.g. "
        "unix:///var/run/docker.sock) and FLOPS_REGISTRY to a registry it pulls from, then restart the manager"
    ),
    "oakestra": (
        "set FLOPS_OAKESTRA_URL (the system manager, e.g. https://oakestra.example:10000), "
        "FLOPS_OAKESTRA_USERNAME and FLOPS_OAKESTRA_PASSWORD (or FLOPS_OAKESTRA_PASSWORD_FILE), "
        "then restart the manager (see docs/oakestra.md)"
    ),
}


class OrchestrationSettings(BaseModel):
    """The optional backends' configuration; None: that backend is off."""

    # The Docker Engine API (Docker's or Podman's socket, or tcp://HOST:PORT), from DOCKER_HOST.
    docker_host: str | None = None
    # TLS for a tcp:// engine, as Docker's own DOCKER_TLS_VERIFY and DOCKER_CERT_PATH mean it.
    docker_tls_verify: bool = False
    docker_cert_path: Path | None = None
    oakestra: OakestraSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OrchestrationSettings:
        """The settings in `env`; `OakestraConfigError` when FLOPS_OAKESTRA_* are set but incomplete."""
        cert_path = env.get("DOCKER_CERT_PATH", "").strip()
        return cls(
            docker_host=env.get("DOCKER_HOST", "").strip() or None,
            # Docker's rule: any non-empty value turns verification on.
            docker_tls_verify=bool(env.get("DOCKER_TLS_VERIFY", "").strip()),
            docker_cert_path=Path(cert_path) if cert_path else None,
            oakestra=OakestraSettings.from_env(env) if OakestraSettings.wanted(env) else None,
        )

    @property
    def enabled(self) -> list[str]:
        """The backends these settings turn on, `local` first."""
        optional = [("docker", self.docker_host is not None), ("oakestra", self.oakestra is not None)]
        return ["local", *(name for name, on in optional if on)]


def build_orchestrators(
    settings: OrchestrationSettings, runs_dir: Path, store: ProjectStore
) -> dict[str, Orchestrator]:
    """The enabled backends by name: `local` (running under `runs_dir`) always, then docker and oakestra.

    Start-up fails with `SystemExit` naming the engine when DOCKER_HOST is set and unreachable:
    a manager that would refuse every docker project should not start.
    """
    orchestrators: dict[str, Orchestrator] = {"local": LocalOrchestrator(runs_dir)}
    if settings.docker_host is not None:
        from flops_manager.orchestration.docker import DockerOrchestrator, tls_config

        try:
            tls = tls_config(settings.docker_tls_verify, settings.docker_cert_path)
        except OrchestratorError as error:
            raise SystemExit(f"flops-manager: {error}") from error
        try:
            orchestrators["docker"] = DockerOrchestrator(settings.docker_host, tls=tls)
        except OrchestratorError as error:
            raise SystemExit(f"flops-manager: {error}; start the engine or unset DOCKER_HOST") from error
    if settings.oakestra is not None:
        orchestrators["oakestra"] = OakestraOrchestrator.for_store(settings.oakestra, store)
    return orchestrators


def identity_provider(settings: OrchestrationSettings) -> IdentityProvider | None:
    """Who vouches for bearer tokens FLOps did not issue: Oakestra, when FLOPS_OAKESTRA_USER_TOKENS=1."""
    if settings.oakestra is None or not settings.oakestra.accept_user_tokens:
        return None
    return OakestraIdentity(settings.oakestra)
