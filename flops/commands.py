"""Command lines of the FL actors, one place for every launcher (CLI, local backend).

Each actor is a console script of this installation; using the interpreter's own bin
folder means the right environment runs even when PATH points elsewhere.
"""

import sys
from pathlib import Path


def script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def observatory_command(host: str, port: int, home: Path) -> list[str]:
    return [script("flops-observatory"), "--host", host, "--port", str(port), "--home", str(home)]


def aggregator_command(
    spec_file: Path,
    repo: Path,
    state_dir: Path,
    port: int,
    tracking_uri: str,
    host: str = "127.0.0.1",
) -> list[str]:
    return [
        script("flops-aggregator"),
        "--spec", str(spec_file),
        "--repo", str(repo),
        "--state-dir", str(state_dir),
        "--host", host,
        "--port", str(port),
        "--tracking-uri", tracking_uri,
        "--insecure",
    ]  # fmt: skip


def learner_command(superlink: str, data_dir: Path, data_tags: list[str], node_name: str) -> list[str]:
    return [
        script("flops-learner"),
        "--superlink", superlink,
        "--data-dir", str(data_dir),
        "--data-tags", ",".join(data_tags),
        "--node-name", node_name,
        "--insecure",
    ]  # fmt: skip
