"""Command lines and environments of every FLOps actor: the one place that builds them.

Launchers (the `flops` CLI, the embedded stack, the manager's stages) ask here how to
start the observatory, the manager, the image builder, the inference-image builder, the
aggregator, a learner or a model server; nobody else assembles an actor's argv. An actor is
a console script of this installation (`script`), `python -m <module>` of a given
environment's interpreter (so the right environment runs even when PATH points elsewhere),
or, inside an FL or inference image (`in_image`), the image's own console script on its
PATH. No secret is ever put in an argv: credentials travel in files or in the environment
the caller adds.

The Flower links are TLS with per-project certificates and per-learner keys (`flops.pki`):
the aggregator is given its SuperLink's files, each learner its own; plain HTTP only when the
caller opts in with `insecure=True` (loopback experiments; the aggregator refuses it elsewhere).
"""

import sys
from collections.abc import Sequence
from pathlib import Path

from flops.pki import SuperLinkCredentials, SuperNodeCredentials

AGGREGATOR_MODULE = "aggregator.main"
LEARNER_MODULE = "learner.main"
BUILDER_MODULE = "image_builder.main"
INFERENCE_BUILDER_MODULE = "image_builder.inference"
MODEL_SERVER_MODULE = "flops.model_server"


def script(name: str) -> str:
    """The console script `name` of this installation, else `name` on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def launcher(module: str, console_script: str, python: str | None, in_image: bool = False) -> list[str]:
    """The image's console script (`in_image`), `python -m module` of a given environment,
    else this installation's console script."""
    if in_image:
        return [console_script]
    return [python, "-m", module] if python else [script(console_script)]


def observatory_command(host: str, port: int, home: Path) -> list[str]:
    return [script("flops-observatory"), "--host", host, "--port", str(port), "--home", str(home)]


def manager_command() -> list[str]:
    """The manager service; it reads its configuration from the environment the caller gives."""
    return [script("flops-manager")]


def builder_command(
    project_id: str,
    repo_url: str,
    ref: str | None,
    cache_dir: Path,
    result_file: Path,
    *,
    check_only: bool = False,
    options: Sequence[str] = (),
) -> list[str]:
    """The image builder for one build (`check_only`: fetch and check, build nothing)."""
    command = [
        sys.executable, "-m", BUILDER_MODULE,
        "--project-id", project_id,
        "--repo-url", repo_url,
        "--cache-dir", str(cache_dir),
        "--result-file", str(result_file),
    ]  # fmt: skip
    if ref:
        command += ["--ref", ref]
    if check_only:
        command.append("--check-only")
    return [*command, *options]


def aggregator_command(
    *,
    repo: Path | str,
    state_dir: Path | str,
    port: int,
    tracking_uri: str,
    spec_file: Path | None = None,
    spec_json: str | None = None,
    host: str = "127.0.0.1",
    python: str | None = None,
    in_image: bool = False,
    tls: SuperLinkCredentials | None = None,
    insecure: bool = False,
    cluster: str = "",
    root_superlink: str = "",
    root_identity: SuperNodeCredentials | None = None,
) -> list[str]:
    """The aggregator (SuperLink + ServerApp) of one training; the spec as a file or as JSON text.

    `tls`: the SuperLink's certificate, key, CA and the learners' public keys to admit. Without
    it only `insecure=True` (plain HTTP, any SuperNode, loopback only) starts an aggregator.

    Hierarchical FL: with `cluster`, the aggregator of that cluster, which joins the root's
    SuperLink at `root_superlink` as a SuperNode with `root_identity` (the project's CA and the
    cluster's own key; None only with `insecure`). The spec is the root's.
    """
    if (spec_file is None) == (spec_json is None):
        raise ValueError("give the training spec as spec_file or spec_json, not both")
    spec = ["--spec", str(spec_file)] if spec_file is not None else ["--spec-json", str(spec_json)]
    role: list[str] = []
    if cluster:
        if not root_superlink or (root_identity is None and not insecure):
            raise ValueError(f"the aggregator of cluster {cluster} needs root_superlink and root_identity")
        role = ["--cluster", cluster, "--root-superlink", root_superlink]
        if root_identity is not None:
            role += ["--root-certificates", str(root_identity.ca_cert), "--root-key", str(root_identity.private_key)]
    return [
        *launcher(AGGREGATOR_MODULE, "flops-aggregator", python, in_image),
        *spec,
        "--repo", str(repo),
        "--state-dir", str(state_dir),
        "--host", host,
        "--port", str(port),
        "--tracking-uri", tracking_uri,
        *superlink_security(tls, insecure),
        *role,
    ]  # fmt: skip


def superlink_security(tls: SuperLinkCredentials | None, insecure: bool) -> list[str]:
    if insecure and tls is None:
        return ["--insecure"]
    if tls is None or insecure:
        raise ValueError("give the SuperLink's TLS credentials, or insecure=True (loopback experiments), not both")
    return [
        "--ssl-certfile", str(tls.cert),
        "--ssl-keyfile", str(tls.key),
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--supernode-keys", str(tls.supernode_keys),
    ]  # fmt: skip


def learner_command(
    superlink: str,
    data_dir: Path | str,
    data_tags: Sequence[str],
    node_name: str,
    *,
    python: str | None = None,
    in_image: bool = False,
    identity: SuperNodeCredentials | None = None,
    insecure: bool = False,
) -> list[str]:
    """One learner (SuperNode + ClientApp) on one node's data folder.

    `identity`: the project's CA and this learner's own key. Without it only `insecure=True`
    (plain HTTP, no identity; loopback experiments) starts a learner.
    """
    if insecure and identity is None:
        security = ["--insecure"]
    elif identity is None or insecure:
        raise ValueError("give the learner's identity (CA and key), or insecure=True (loopback experiments), not both")
    else:
        security = [
            "--root-certificates", str(identity.ca_cert),
            "--auth-supernode-private-key", str(identity.private_key),
        ]  # fmt: skip
    return [
        *launcher(LEARNER_MODULE, "flops-learner", python, in_image),
        "--superlink", superlink,
        "--data-dir", str(data_dir),
        "--data-tags", ",".join(data_tags),
        "--node-name", node_name,
        *security,
    ]  # fmt: skip


def inference_builder_command(
    model_uri: str, tracking_uri: str, cache_dir: Path, result_file: Path, *, options: Sequence[str] = ()
) -> list[str]:
    """The one-shot build of an inference-server image from a registered model (`models:/NAME/VERSION`)."""
    return [
        sys.executable, "-m", INFERENCE_BUILDER_MODULE,
        "--tracking-uri", tracking_uri,
        "--model-uri", model_uri,
        *options,
        "--cache-dir", str(cache_dir),
        "--result-file", str(result_file),
    ]  # fmt: skip


def model_server_command(
    model_uri: str, host: str, port: int, *, python: str | None = None, in_image: bool = False
) -> list[str]:
    """MLflow's scoring server for one model (`/ping`, `/invocations`): in one process of the given
    environment (`flops.model_server`), or `mlflow models serve` in the inference image (no FLOps there)."""
    if in_image:
        return [
            "mlflow", "models", "serve", "-m", model_uri, "-h", host, "-p", str(port),
            "--env-manager", "local", "--workers", "1",
        ]  # fmt: skip
    return [python or sys.executable, "-m", MODEL_SERVER_MODULE, "--model-uri", model_uri, "--host", host,
            "--port", str(port)]  # fmt: skip
