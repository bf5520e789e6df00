"""Split a data set into per-node data folders, the way real federations are skewed.

A data set by name (scikit-learn's bundled sets, which work offline, or a Hugging Face data
set: see `flops.data.catalog`) or a local CSV/Parquet file is cut with flwr-datasets
partitioners and written as `OUT/<node>/<tag>/part-0.parquet` (`flops.data.node_files`).
Feature types survive: an `Image` column of the source is an `Image` column on every node.
"""

import shutil
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import pandas as pd
import pyarrow.parquet as pq

from flops.data.catalog import BUNDLED_DATASETS, LABEL_COLUMN, named_dataset
from flops.data.node_files import write_node_file
from flops.data.node_meta import NodeMeta, assign_clusters, write_node_meta
from flops.data.ownership import TAG_META_FILE, TagOwnership, write_ownership

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

__all__ = ["BUNDLED_DATASETS", "LABEL_COLUMN", "Scheme", "load_source", "node_name", "partition"]

FILE_SUFFIXES = (".csv", ".parquet")
# Columns pandas adds for a non-default index; they are no data.
PANDAS_INDEX_PREFIX = "__index_level_"


class Scheme(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"
    PATHOLOGICAL = "pathological"


def node_name(index: int) -> str:
    """Name of the `index`-th node folder (1-based), as learners look for it."""
    return f"node-{index}"


def load_source(source: str, label_column: str = LABEL_COLUMN, allow_files: bool = True) -> datasets.Dataset:
    """A data set by name (bundled or Hugging Face, see `named_dataset`), or a local CSV/Parquet file.

    A Parquet file keeps the feature types recorded in it (an `Image` column stays one). With
    `allow_files=False` (names from the network) `source` is only ever a data set name.
    """
    path = Path(source)
    if not allow_files or source in BUNDLED_DATASETS or (path.suffix not in FILE_SUFFIXES and not path.is_file()):
        dataset = named_dataset(source)
        origin = f"data set '{source}'"
    elif not path.is_file():
        raise ValueError(f"{path}: no such file; give the path of a .csv or .parquet file or a data set name")
    elif path.suffix == ".csv":
        dataset = datasets.Dataset.from_pandas(pd.read_csv(path), preserve_index=False)
        origin = str(path)
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        table = table.drop_columns([name for name in table.column_names if name.startswith(PANDAS_INDEX_PREFIX)])
        # Straight from Arrow, so the `huggingface` schema metadata gives the features.
        dataset = datasets.Dataset(table)
        origin = str(path)
    else:
        raise ValueError(f"{path}: only .csv and .parquet files can be partitioned")
    if label_column not in dataset.column_names:
        raise ValueError(
            f"{origin} has no column '{label_column}' (columns: {', '.join(dataset.column_names)}); "
            "name the label column with --label-column"
        )
    return dataset


def make_partitioner(scheme: Scheme, nodes: int, alpha: float, seed: int, label_column: str) -> "Partitioner":
    # flwr-datasets (and the plotting stack it brings) is the `data` extra: learners never partition.
    try:
        from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner
    except ImportError as error:
        raise ValueError(
            "partitioning needs flwr-datasets: pip install 'flops[data]' (the manager and `all` include it)"
        ) from error
    if scheme is Scheme.IID:
        return IidPartitioner(num_partitions=nodes)
    if scheme is Scheme.DIRICHLET:
        return DirichletPartitioner(
            num_partitions=nodes,
            partition_by=label_column,
            alpha=alpha,
            min_partition_size=2,
            self_balancing=True,
            seed=seed,
        )
    return PathologicalPartitioner(
        num_partitions=nodes,
        partition_by=label_column,
        num_classes_per_partition=2,
        class_assignment_mode="first-deterministic",
        seed=seed,
    )


def partition(
    source: str,
    nodes: int,
    tag: str,
    out: Path,
    scheme: Scheme = Scheme.IID,
    alpha: float = 0.5,
    seed: int = 42,
    label_column: str = LABEL_COLUMN,
    allow_files: bool = True,
    ownership: TagOwnership | None = None,
    clusters: int | None = None,
) -> dict[str, Counter[int]]:
    """Write one partition per node to `out/<node>/<tag>/`; return each node's label counts.

    `source` is a data set name or (unless `allow_files` is False) a CSV/Parquet file. The tag
    is replaced: its folders on nodes beyond `nodes` (left by an earlier, larger partition) are
    removed. With `ownership`, each tag folder records it (`flops.data.ownership`); without,
    the tag is the operator's. With `clusters`, each node folder's `node.yaml` records its cluster
    (`flops.data.node_meta.assign_clusters`: contiguous blocks); without, the files are left as
    they are.
    """
    if nodes < 1:
        raise ValueError("--nodes must be at least 1")
    node_clusters = assign_clusters(nodes, clusters) if clusters is not None else None
    if not tag or "/" in tag or tag.startswith("."):
        raise ValueError(f"invalid data tag '{tag}': use a plain folder name such as 'digits'")
    scheme = Scheme(scheme)
    dataset = load_source(source, label_column, allow_files).shuffle(seed=seed)
    if nodes > len(dataset):
        raise ValueError(f"cannot split {len(dataset)} rows over {nodes} nodes")
    partitioner = make_partitioner(scheme, nodes, alpha, seed, label_column)
    partitioner.dataset = dataset
    histogram: dict[str, Counter[int]] = {}
    for index in range(nodes):
        part = partitioner.load_partition(index)
        folder = out / node_name(index + 1) / tag
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.parquet"):
            stale.unlink()
        write_node_file(part, folder / "part-0.parquet")
        if ownership is not None:
            write_ownership(folder, ownership)
        else:
            (folder / TAG_META_FILE).unlink(missing_ok=True)
        if node_clusters is not None:
            write_node_meta(out / node_name(index + 1), NodeMeta(cluster=node_clusters[index]))
        histogram[node_name(index + 1)] = Counter(int(v) for v in part[label_column])
    _remove_beyond(out, tag, nodes)
    return histogram


def _remove_beyond(out: Path, tag: str, nodes: int) -> None:
    """Remove `tag` from node folders numbered above `nodes`, so no stale partition trains."""
    kept = {node_name(index + 1) for index in range(nodes)}
    for node in out.iterdir() if out.is_dir() else []:
        folder = node / tag
        if node.name.startswith("node-") and node.name not in kept and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
