"""Where a node keeps its data, and `load_dataset()` for user code.

A node's data directory holds one folder per data tag with Parquet files in it
(`DATA_DIR/<tag>/*.parquet`). The learner tells user code which directory and tags apply
through the environment (`FLOPS_DATA_DIR`, `FLOPS_DATA_TAGS`), because FLOps's
`load_dataset()` takes no arguments and user code calls it from deep inside its own classes.
`NodeDataSettings` is that contract: the learner writes it with `env()`, and
`load_dataset()`, the entry point of user code, reads it once with `from_env`.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from flops.data.node_dataset import NodeDataset

DATA_DIR_ENV = "FLOPS_DATA_DIR"
DATA_TAGS_ENV = "FLOPS_DATA_TAGS"
DATA_FILE_PATTERN = "*.parquet"


class NodeDataError(LookupError):
    """The node has no data for a requested tag, or no data configuration at all."""


def tag_files(data_dir: Path, tag: str) -> list[Path]:
    """The Parquet files of `tag` in `data_dir`; raise `NodeDataError` when there are none."""
    folder = data_dir / tag
    files = sorted(folder.glob(DATA_FILE_PATTERN)) if folder.is_dir() else []
    if not files:
        available = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        raise NodeDataError(
            f"no data for tag '{tag}' in {data_dir} (expected Parquet files in {folder}); "
            f"tags on this node: {available or 'none'}. "
            "Partition data with `flops data partition` or choose another data tag."
        )
    return files


def missing_tags(data_dir: Path, tags: Sequence[str]) -> list[str]:
    """The tags in `tags` that `data_dir` holds no data for."""
    missing = []
    for tag in tags:
        try:
            tag_files(data_dir, tag)
        except NodeDataError:
            missing.append(tag)
    return missing


class NodeDataSettings(BaseModel):
    """The data folder and tags user code on this node reads."""

    data_dir: Path | None = None
    data_tags: list[str] = Field(default_factory=list)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "NodeDataSettings":
        value = env.get(DATA_DIR_ENV)
        tags = [tag for tag in env.get(DATA_TAGS_ENV, "").split(",") if tag]
        return cls(data_dir=Path(value) if value else None, data_tags=tags)

    def env(self) -> dict[str, str]:
        """The environment that gives user code these settings."""
        values = {DATA_TAGS_ENV: ",".join(self.data_tags)}
        if self.data_dir is not None:
            values[DATA_DIR_ENV] = str(self.data_dir)
        return values


def load_dataset(data_tags: Sequence[str] | None = None, data_dir: str | Path | None = None) -> "NodeDataset":
    """The node's data for the project's data tags, as one Hugging Face `Dataset`.

    With no arguments (as FLOps user code calls it) the learner's configuration applies.
    Rows of all tags are concatenated in tag order; columns and feature types are the data
    set's own (an `Image` column gives PIL images). It is a `NodeDataset`: after
    `set_format("numpy")`, `dataset["image"]` is one NumPy array, as with `datasets` 2.x.
    """
    configured = NodeDataSettings.from_env(os.environ)
    directory = Path(data_dir) if data_dir is not None else configured.data_dir
    if directory is None:
        raise NodeDataError(
            f"{DATA_DIR_ENV} is not set: load_dataset() runs inside a FLOps learner, "
            "or pass data_dir= explicitly when testing user code"
        )
    tags = list(data_tags) if data_tags is not None else configured.data_tags
    if not tags:
        raise NodeDataError(f"no data tags configured: set {DATA_TAGS_ENV} or name data_tags in the SLA")
    # Imported here: `datasets` takes a second to import, and Flower starts a fresh process
    # for every message, most of which never load data through this function.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flops.data.node_dataset import NodeDataset

    tables = [pq.read_table(path) for tag in tags for path in tag_files(directory, tag)]
    # In memory, straight from Arrow: no cache files on the node, no hub look-ups. The
    # features come from the files' schema metadata (see flops.data.node_files).
    return NodeDataset(pa.concat_tables(tables, promote_options="default"))
