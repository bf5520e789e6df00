"""A node folder's own metadata: which cluster of a hierarchical training the node belongs to.

Each node folder (`<nodes>/<node>/`, beside its tag folders) may hold `node.yaml`:

    cluster: cluster-1

A node without the file is in cluster `default`, so a single-level setup needs nothing. FLOps's
`mode: hierarchical` trains each cluster with an aggregator of its own and the root over the
cluster models (issue 14); the local and docker backends read the cluster from here.
`flops data partition --clusters K` (and `POST /api/flops/mocks` with `number_of_clusters`)
writes the files: nodes in K contiguous, near-equal blocks `cluster-1` .. `cluster-K`.

A file that cannot be read or does not validate is an error that names the file: a node must
not silently land in another cluster than its operator wrote.
"""

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

NODE_META_FILE = "node.yaml"
DEFAULT_CLUSTER = "default"
CLUSTER_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label: it names processes and containers


class NodeMetaError(ValueError):
    """A node's `node.yaml` is unreadable or invalid; the message names the file and what to fix."""


class NodeMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: str = Field(default=DEFAULT_CLUSTER, pattern=CLUSTER_PATTERN)


def read_node_meta(node_dir: Path) -> NodeMeta:
    """The metadata of the node folder `node_dir` (cluster `default` when it has no file)."""
    path = node_dir / NODE_META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NodeMeta()
    except (OSError, UnicodeDecodeError) as error:
        raise NodeMetaError(f"{path}: cannot be read ({error}); fix or remove it") from error
    try:
        loaded = yaml.safe_load(text)
        return NodeMeta.model_validate({} if loaded is None else loaded)
    except (yaml.YAMLError, ValidationError) as error:
        raise NodeMetaError(
            f"{path}: not valid node metadata ({_first_problem(error)}); write e.g. 'cluster: cluster-1' "
            "(lower-case letters, digits and '-'), or remove it for cluster 'default'"
        ) from error


def write_node_meta(node_dir: Path, meta: NodeMeta) -> None:
    """Record `meta` in the node folder `node_dir` (atomically: a reader never sees half a file)."""
    node_dir.mkdir(parents=True, exist_ok=True)
    temporary = node_dir / f".{NODE_META_FILE}.tmp"
    temporary.write_text(yaml.safe_dump(meta.model_dump(), sort_keys=True), encoding="utf-8")
    os.replace(temporary, node_dir / NODE_META_FILE)


def cluster_name(index: int) -> str:
    """The name of the `index`-th (1-based) cluster `flops data partition --clusters` makes."""
    return f"cluster-{index}"


def assign_clusters(nodes: int, clusters: int) -> list[str]:
    """The cluster of each of `nodes` nodes in order: `clusters` contiguous blocks, sizes differing by one at most."""
    if clusters < 1:
        raise ValueError("--clusters must be at least 1")
    if clusters > nodes:
        raise ValueError(f"cannot make {clusters} clusters of {nodes} nodes: every cluster needs a node")
    base, extra = divmod(nodes, clusters)
    assigned: list[str] = []
    for index in range(clusters):
        assigned += [cluster_name(index + 1)] * (base + (1 if index < extra else 0))
    return assigned


def clusters_of(nodes_dir: Path) -> dict[str, list[str]]:
    """Each cluster's node folders (by name, sorted) under `nodes_dir`."""
    members: dict[str, list[str]] = {}
    for node_dir in sorted(path for path in nodes_dir.iterdir() if path.is_dir() and not path.name.startswith(".")):
        members.setdefault(read_node_meta(node_dir).cluster, []).append(node_dir.name)
    return members


def _first_problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        return f"{where}: {first['msg']}"
    return str(error).splitlines()[0]
