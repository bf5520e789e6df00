"""The deploy stage's part of the Flower links: the project's certificates and learner keys.

Before the aggregator is deployed, `issue` makes (or reuses) the project's CA, a SuperLink
certificate whose names are every address the learners will dial, and one key pair per placed
learner (`flops.pki`, under `<run folder>/pki`). Each actor is then given only its own folder:
the aggregator its certificate, key and the learners' public keys (it registers them before the
run starts), each learner the CA and its private key.

Where the files go per backend:
- local: the paths themselves, read-only in the actor's sandbox; as root the sandbox runs as
  another uid, so the actor's folder is handed to that uid (0600/0700 stay).
- docker: the folder bind-mounted read-only at the same path (`read_only_mounts`).
- oakestra: the same `read_only_mounts`, which the Oakestra backend turns into an SLA `volumes`
  entry of the CSI driver the manager is configured with (see docs/oakestra.md).

The names in the SuperLink certificate: loopback always (the aggregator's own Control API
calls, learners on its host), the container's name on docker (a named network), and on
Oakestra the round-robin address the backend reserves for the aggregator before it exists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flops.pki import LOOPBACK_HOSTS, PKI_DIR, PKIError, ProjectPKI, SuperLinkCredentials, SuperNodeCredentials, covers
from flops_manager.orchestration.base import Orchestrator
from flops_manager.stages.errors import StageError

log = logging.getLogger("flops.manager")


@dataclass(frozen=True)
class FlowerCredentials:
    superlink: SuperLinkCredentials
    supernodes: dict[str, SuperNodeCredentials]

    def supernode(self, node: str) -> SuperNodeCredentials:
        return self.supernodes[node]


def superlink_hosts(orchestrator: Orchestrator, project_id: str, service: str) -> list[str]:
    """Every host a learner may dial to reach the project's aggregator, known before it is deployed."""
    hosts = list(LOOPBACK_HOSTS)
    reserve = getattr(orchestrator, "reserve_address", None)
    if callable(reserve):  # Oakestra: the rr_ip the aggregator will get
        hosts.insert(0, str(reserve(project_id, service)))
    if orchestrator.name == "docker":
        from flops_manager.orchestration.docker import container_name

        hosts.append(container_name(project_id, service))
    return hosts


def issue(
    orchestrator: Orchestrator,
    project_id: str,
    run_dir: Path,
    service: str,
    nodes: Sequence[str],
    *,
    stage: str,
    cluster: str | None = None,
) -> FlowerCredentials:
    """The project's SuperLink certificate for every address learners dial, and a key per learner in `nodes`.

    `cluster`: the SuperLink of that cluster's aggregator `service` (hierarchical FL), whose
    SuperNodes are its learners; the root's SuperNodes are the cluster aggregators.
    """
    pki = ProjectPKI(run_dir / PKI_DIR, project_id)
    try:
        superlink = pki.superlink(superlink_hosts(orchestrator, project_id, service), nodes, cluster=cluster)
        supernodes = {node: pki.supernode(node) for node in nodes}
    except (OSError, PKIError) as error:
        raise StageError(
            stage, f"cannot make the project's Flower certificates and keys in {pki.root}: {error}"
        ) from error
    for folder in (superlink.folder, *(credentials.folder for credentials in supernodes.values())):
        hand_over(orchestrator, folder)
    return FlowerCredentials(superlink, supernodes)


def hand_over(orchestrator: Orchestrator, folder: Path) -> None:
    """Make `folder` readable by the uid the backend runs user code as, when that is not ours.

    The local backend's sandbox drops to FLOPS_SANDBOX_UID as root: the folder (0700, files 0600)
    becomes that uid's. Every sandbox sees only its own actor's folder, so sharing a uid shares nothing.
    """
    from flops.sandbox import SandboxSettings, give_tree

    sandbox = getattr(orchestrator, "sandbox", None)
    if isinstance(sandbox, SandboxSettings) and sandbox.enabled and sandbox.mode == "uid":
        give_tree(folder, sandbox.uid, sandbox.gid)


def check_dialled(credentials: FlowerCredentials, host: str, *, stage: str) -> None:
    """Refuse to start learners that would dial a name the SuperLink's certificate does not hold."""
    if not covers(credentials.superlink.cert, host):
        raise StageError(
            stage,
            f"the aggregator is reachable at {host}, which its TLS certificate does not name; "
            "the backend gave an address other than the one it reserved",
        )


def container_mounts(backend: str, *folders: Path) -> dict[str, str]:
    """Container backends get the actor's credential folder read-only at the same path."""
    if backend == "local":
        return {}
    return {str(folder): str(folder) for folder in folders}
