"""Node files: feature metadata that datasets 3.x and 4.x both read, and Image columns kept."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from packaging.version import Version
from PIL import Image as PILImage

from flops.data.node_data import load_dataset
from flops.data.node_files import HF_METADATA_KEY, PORTABLE_FEATURE_TYPES, write_node_file
from flops.data.partition import Scheme, partition
from tests.data_images import digit_images

# A Python with datasets 3.x (e.g. `uv venv /tmp/ds36 && uv pip install --python /tmp/ds36
# 'datasets==3.6.0' pillow`) runs the real-reader test: FLOPS_TEST_DATASETS3_PYTHON=/tmp/ds36/bin/python.
DATASETS3_PYTHON = os.environ.get("FLOPS_TEST_DATASETS3_PYTHON")


def feature_types(metadata: Any) -> set[str]:
    if isinstance(metadata, dict):
        found = {metadata["_type"]} if isinstance(metadata.get("_type"), str) else set()
        return found.union(*(feature_types(value) for value in metadata.values()))
    if isinstance(metadata, list):
        return set().union(*(feature_types(value) for value in metadata))
    return set()


def nested(count: int = 4) -> datasets.Dataset:
    """Every shape of column whose datasets-4 metadata 3.x cannot read."""
    images = digit_images(count)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "frames": datasets.List(datasets.Image()),
            "points": datasets.List({"x": datasets.Value("int32"), "tag": datasets.ClassLabel(names=["a", "b"])}),
            "pair": datasets.List(datasets.Value("float32"), length=2),
            "grid": datasets.List(datasets.List(datasets.Value("float32"))),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    rows = images.with_format("arrow")[:].to_pydict()
    return datasets.Dataset.from_dict(
        {
            "image": rows["image"],
            "frames": [[image, image] for image in rows["image"]],
            "points": [[{"x": i, "tag": i % 2}] for i in range(count)],
            "pair": [[float(i), 1.0] for i in range(count)],
            "grid": [[[1.0, 2.0], [3.0, 4.0]]] * count,
            "label": rows["label"],
        },
        features=features,
    )


def test_metadata_uses_only_feature_types_datasets_3_knows(tmp_path: Path) -> None:
    dataset = nested()
    write_node_file(dataset, tmp_path / "part-0.parquet")
    metadata = json.loads(pq.read_schema(tmp_path / "part-0.parquet").metadata[HF_METADATA_KEY])
    types = feature_types(metadata)
    assert types <= PORTABLE_FEATURE_TYPES, types - PORTABLE_FEATURE_TYPES
    assert {"Image", "ClassLabel", "Sequence"} <= types
    # and datasets 4 reads back exactly the features written
    assert datasets.Dataset(pq.read_table(tmp_path / "part-0.parquet")).features == dataset.features
    # the whole reason: datasets' own metadata names types 3.x refuses
    if Version(datasets.__version__).major >= 4:
        assert "List" in feature_types(json.loads(dataset.data.schema.metadata[HF_METADATA_KEY]))


def test_plain_columns_carry_no_hf_metadata(tmp_path: Path) -> None:
    partition("digits", 1, "digits", tmp_path)
    schema = pq.read_schema(tmp_path / "node-1" / "digits" / "part-0.parquet")
    assert schema.metadata is None or HF_METADATA_KEY not in schema.metadata


def test_image_parquet_source_keeps_image_through_partition(tmp_path: Path) -> None:
    source = tmp_path / "digits-png.parquet"
    digit_images(300).to_parquet(str(source))  # datasets' own writer: Image in its metadata
    histogram = partition(str(source), 2, "png", tmp_path / "out", Scheme.IID)
    assert sum(sum(counts.values()) for counts in histogram.values()) == 300
    node = load_dataset(["png"], tmp_path / "out" / "node-1")
    assert isinstance(node.features["image"], datasets.Image)
    assert isinstance(node[0]["image"], PILImage.Image)  # PIL images by default
    node.set_format("numpy")
    images = node["image"]
    assert isinstance(images, np.ndarray) and images.shape == (150, 8, 8)
    assert images.reshape(len(node), -1).shape == (150, 64)


@pytest.mark.skipif(not DATASETS3_PYTHON, reason="set FLOPS_TEST_DATASETS3_PYTHON to a Python with datasets 3.x")
def test_real_datasets_3_reads_node_files(tmp_path: Path) -> None:
    partition("digits", 1, "digits", tmp_path)
    write_node_file(nested(), tmp_path / "nested.parquet")
    script = """
import sys, datasets, pyarrow.parquet as pq
assert datasets.__version__.startswith("3."), datasets.__version__
digits = datasets.Dataset(pq.read_table(sys.argv[1])).with_format("numpy")
assert digits["image"].shape == (1797, 8, 8), digits["image"].shape
rows = datasets.load_dataset("parquet", data_files=sys.argv[2], split="train", cache_dir=sys.argv[3])
assert isinstance(rows.features["image"], datasets.Image), rows.features
assert isinstance(rows.features["frames"], datasets.Sequence), rows.features
assert rows[0]["points"][0]["tag"] == 0 and rows[0]["pair"] == [0.0, 1.0]
assert rows.with_format("numpy")["image"].shape == (4, 8, 8)
print("ok", datasets.__version__)
"""
    assert DATASETS3_PYTHON is not None
    result = subprocess.run(
        [DATASETS3_PYTHON, "-c", script, str(tmp_path / "node-1" / "digits" / "part-0.parquet"),
         str(tmp_path / "nested.parquet"), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok 3.")
