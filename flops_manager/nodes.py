"""Local nodes of the embedded default: folders of node-local data, one per node.

A node is a subfolder of the nodes directory; its data tags are the subfolders that hold
Parquet files. Learners go to the nodes that hold every data tag a project names.
"""

from pathlib import Path

from pydantic import BaseModel

from flops.data.node_data import DATA_FILE_PATTERN


class PlacementError(ValueError):
    """Not enough nodes hold the project's data."""


class LocalNode(BaseModel):
    name: str
    data_dir: Path
    tags: list[str]


def discover_nodes(nodes_dir: Path) -> list[LocalNode]:
    if not nodes_dir.is_dir():
        return []
    nodes = []
    for folder in sorted(p for p in nodes_dir.iterdir() if p.is_dir()):
        tags = sorted(t.name for t in folder.iterdir() if t.is_dir() and any(t.glob(DATA_FILE_PATTERN)))
        nodes.append(LocalNode(name=folder.name, data_dir=folder, tags=tags))
    return nodes


def place_learners(nodes: list[LocalNode], tags: list[str], minimum: int) -> list[LocalNode]:
    """The nodes holding all `tags`; refuse when fewer than `minimum` do."""
    eligible = [node for node in nodes if set(tags) <= set(node.tags)]
    if len(eligible) < minimum:
        held = ", ".join(f"{n.name}: {n.tags}" for n in nodes) or "no nodes"
        raise PlacementError(
            f"{len(eligible)} local node(s) hold data tag(s) {tags}, but min_available_clients is "
            f"{minimum} ({held}); create node data with POST /api/flops/mocks or `flops data partition`"
        )
    return eligible
