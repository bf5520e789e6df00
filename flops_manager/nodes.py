"""Local nodes of the embedded default: folders of node-local data, one per node.

A node is a subfolder of the nodes directory; its data tags are the subfolders that hold
Parquet files, each owned by a customer (`flops.data.ownership`). Learners go to the nodes
that hold every data tag a project names, counting only tags the project's customer may use;
what a customer is told about nodes never names another customer's tags.
"""

from pathlib import Path

from pydantic import BaseModel, Field

from flops.data.node_data import DATA_FILE_PATTERN
from flops.data.ownership import TagOwnership, read_ownership


class PlacementError(ValueError):
    """Not enough nodes hold the project's data."""


class LocalNode(BaseModel):
    name: str
    data_dir: Path
    tags: list[str]
    ownership: dict[str, TagOwnership] = Field(default_factory=dict)

    def usable_tags(self, customer: str | None) -> list[str]:
        """The tags `customer` may train on here (all of them for None: no tenancy filter)."""
        if customer is None:
            return list(self.tags)
        return [tag for tag in self.tags if self.ownership.get(tag, TagOwnership()).usable_by(customer)]


def discover_nodes(nodes_dir: Path) -> list[LocalNode]:
    if not nodes_dir.is_dir():
        return []
    nodes = []
    for folder in sorted(p for p in nodes_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        tags = sorted(
            t.name for t in folder.iterdir() if t.is_dir() and not t.is_symlink() and any(t.glob(DATA_FILE_PATTERN))
        )
        ownership = {tag: read_ownership(folder / tag) for tag in tags}
        nodes.append(LocalNode(name=folder.name, data_dir=folder, tags=tags, ownership=ownership))
    return nodes


def place_learners(
    nodes: list[LocalNode], tags: list[str], minimum: int, customer: str | None = None
) -> list[LocalNode]:
    """The nodes holding all `tags` (that `customer` may use); refuse when fewer than `minimum` do.

    `customer` None places on every node holding the tags (no tenancy filter: only for callers
    that checked ownership already).
    """
    eligible = [node for node in nodes if set(tags) <= set(node.usable_tags(customer))]
    if len(eligible) < minimum:
        visible = [(n.name, n.usable_tags(customer)) for n in nodes]
        held = ", ".join(f"{name}: {usable}" for name, usable in visible if usable) or "none of your data"
        raise PlacementError(
            f"{len(eligible)} local node(s) hold data tag(s) {tags} you may use, but min_available_clients is "
            f"{minimum} ({held}); create node data with POST /api/flops/mocks or `flops data partition --owner`"
        )
    return eligible


def tag_listing(nodes: list[LocalNode], customer: str | None) -> list[dict[str, object]]:
    """The data tags `customer` may use (every tag for None: the admin), with owner and nodes."""
    found: dict[str, dict[str, object]] = {}
    for node in nodes:
        for tag in node.usable_tags(customer):
            ownership = node.ownership.get(tag, TagOwnership())
            entry = found.setdefault(tag, {"data_tag": tag, "owners": set(), "shared": False, "nodes": []})
            entry["owners"].add(ownership.owner)  # type: ignore[attr-defined]
            entry["shared"] = bool(entry["shared"]) or ownership.shared
            entry["nodes"].append(node.name)  # type: ignore[attr-defined]
    return [{**entry, "owners": sorted(entry["owners"])} for _, entry in sorted(found.items())]  # type: ignore[call-overload]


def tag_owners(nodes: list[LocalNode], tag: str) -> set[str]:
    """Everyone who owns `tag` on some node (the operator for unmarked folders)."""
    return {node.ownership.get(tag, TagOwnership()).owner for node in nodes if tag in node.tags}


def tags_owned(nodes: list[LocalNode], customer: str) -> set[str]:
    """The tags `customer` owns on some node."""
    return {tag for node in nodes for tag, ownership in node.ownership.items() if ownership.owner == customer}
