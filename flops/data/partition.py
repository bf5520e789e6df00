"""Split a data set into per-node data folders, the way real federations are skewed.

Bundled scikit-learn data sets (they ship inside the package, so this works offline) or a
local CSV/Parquet file are cut with flwr-datasets partitioners and written as
`OUT/<node>/<tag>/part-0.parquet`.
"""

from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

BUNDLED_DATASETS = ("digits", "breast_cancer", "iris", "wine")
LABEL_COLUMN = "label"


class Scheme(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"
    PATHOLOGICAL = "pathological"


def node_name(index: int) -> str:
    """Name of the `index`-th node folder (1-based), as learners look for it."""
    return f"node-{index}"


def load_source(source: str, label_column: str = LABEL_COLUMN) -> datasets.Dataset:
    """A bundled scikit-learn data set by name, or a local CSV/Parquet file.

    Digits keep their shape as an 8x8 `image` column; tabular sets get one column per
    feature. Every set has an integer `label` column.
    """
    if source in BUNDLED_DATASETS:
        return _bundled(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(
            f"unknown data set '{source}': name one of {', '.join(BUNDLED_DATASETS)} "
            "or give the path of a .csv or .parquet file"
        )
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: only .csv and .parquet files can be partitioned")
    if label_column not in frame.columns:
        raise ValueError(
            f"{path} has no column '{label_column}' (columns: {', '.join(map(str, frame.columns))}); "
            "name the label column with --label-column"
        )
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _bundled(name: str) -> datasets.Dataset:
    from sklearn import datasets as sk_datasets

    loader = getattr(sk_datasets, f"load_{name}")
    bunch = loader()
    labels = np.asarray(bunch.target, dtype=np.int64)
    if name == "digits":
        images = np.asarray(bunch.images, dtype=np.float32)
        return datasets.Dataset.from_dict({"image": images.tolist(), LABEL_COLUMN: labels})
    columns: dict[str, np.ndarray] = {
        _column_name(feature): np.asarray(bunch.data[:, i], dtype=np.float64)
        for i, feature in enumerate(bunch.feature_names)
    }
    columns[LABEL_COLUMN] = labels
    return datasets.Dataset.from_dict(columns)


def _column_name(feature: str) -> str:
    return "_".join(feature.replace("(", " ").replace(")", " ").split()).lower()


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
) -> dict[str, Counter[int]]:
    """Write one partition per node to `out/<node>/<tag>/`; return each node's label counts."""
    if nodes < 1:
        raise ValueError("--nodes must be at least 1")
    if not tag or "/" in tag or tag.startswith("."):
        raise ValueError(f"invalid data tag '{tag}': use a plain folder name such as 'digits'")
    scheme = Scheme(scheme)
    dataset = load_source(source, label_column).shuffle(seed=seed)
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
        pq.write_table(part.with_format("arrow")[:], folder / "part-0.parquet")
        histogram[node_name(index + 1)] = Counter(int(v) for v in part[label_column])
    return histogram
