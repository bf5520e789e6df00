"""Command lines and environments of every FLOps actor: the one place that builds them.

Launchers (the `flops` CLI, the embedded stack, the manager's stages) ask here how to
start the observatory, the image builder, the aggregator, a learner or a model server;
nobody else assembles an actor's argv. An actor is either a console script of this
installation (`script`) or `python -m <module>` of a given environment's interpreter, so
the right environment runs even when PATH points elsewhere. No secret is ever put in an
argv: credentials travel in files or in the environment the caller adds.
"""

import sys
from collections.abc import Sequence
from pathlib import Path

AGGREGATOR_MODULE = "aggregator.main"
LEARNER_MODULE = "learner.main"
BUILDER_MODULE = "image_builder.main"
INFERENCE_BUILDER_MODULE = "image_builder.inference"


def script(name: str) -> str:
    """The console script `name` of this installation, else `name` on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def launcher(module: str, console_script: str, python: str | None) -> list[str]:
    """`python -m module` of a given environment, else this installation's console script."""
    return [python, "-m", module] if python else [script(console_script)]


def observatory_command(host: str, port: int, home: Path) -> list[str]:
    return [script("flops-observatory"), "--host", host, "--port", str(port), "--home", str(home)]


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
) -> list[str]:
    """The aggregator (SuperLink + ServerApp) of one training; the spec as a file or as JSON text."""
    if (spec_file is None) == (spec_json is None):
        raise ValueError("give the training spec as spec_file or spec_json, not both")
    spec = ["--spec", str(spec_file)] if spec_file is not None else ["--spec-json", str(spec_json)]
    return [
        *launcher(AGGREGATOR_MODULE, "flops-aggregator", python),
        *spec,
        "--repo", str(repo),
        "--state-dir", str(state_dir),
        "--host", host,
        "--port", str(port),
        "--tracking-uri", tracking_uri,
        "--insecure",
    ]  # fmt: skip


def learner_command(
    superlink: str, data_dir: Path | str, data_tags: Sequence[str], node_name: str, *, python: str | None = None
) -> list[str]:
    """One learner (SuperNode + ClientApp) on one node's data folder."""
    return [
        *launcher(LEARNER_MODULE, "flops-learner", python),
        "--superlink", superlink,
        "--data-dir", str(data_dir),
        "--data-tags", ",".join(data_tags),
        "--node-name", node_name,
        "--insecure",
    ]  # fmt: skip
