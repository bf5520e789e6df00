"""Node-local data: loading by tag, clear errors, and FLOps's import paths."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flops.data.node_data import NodeDataError, load_dataset, missing_tags
from flops.data.partition import Scheme, load_source, partition


def test_load_dataset_reads_configured_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partition("iris", 2, "flowers", tmp_path, Scheme.IID)
    partition("wine", 2, "wine", tmp_path, Scheme.IID)
    monkeypatch.setenv("FLOPS_DATA_DIR", str(tmp_path / "node-1"))
    monkeypatch.setenv("FLOPS_DATA_TAGS", "flowers")
    dataset = load_dataset()
    assert len(dataset) == 75
    assert "label" in dataset.column_names and "sepal_length_cm" in dataset.column_names


def test_flops_import_paths_give_the_same_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flops.ml_repo import templates
    from flops_utils.ml_repo_building_blocks import load_dataset as flops_load
    from flops_utils.ml_repo_templates import DataManagerTemplate, ModelManagerTemplate

    assert ModelManagerTemplate is templates.ModelManagerTemplate
    assert DataManagerTemplate is templates.DataManagerTemplate
    partition("digits", 1, "digits", tmp_path)
    monkeypatch.setenv("FLOPS_DATA_DIR", str(tmp_path / "node-1"))
    monkeypatch.setenv("FLOPS_DATA_TAGS", "digits")
    data = flops_load()
    data.set_format("numpy")
    assert data["image"][:].shape == (1797, 8, 8)


def test_missing_tag_names_tag_and_what_exists(tmp_path: Path) -> None:
    partition("iris", 1, "flowers", tmp_path)
    with pytest.raises(NodeDataError) as caught:
        load_dataset(["mnist"], tmp_path / "node-1")
    assert "'mnist'" in str(caught.value) and "flowers" in str(caught.value)
    assert missing_tags(tmp_path / "node-1", ["flowers", "mnist"]) == ["mnist"]


def test_without_configuration_load_dataset_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOPS_DATA_DIR", raising=False)
    with pytest.raises(NodeDataError, match="FLOPS_DATA_DIR"):
        load_dataset(["x"])


def test_several_tags_are_concatenated(tmp_path: Path) -> None:
    partition("iris", 1, "a", tmp_path)
    partition("iris", 1, "b", tmp_path)
    assert len(load_dataset(["a", "b"], tmp_path / "node-1")) == 300


def test_unknown_source_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown data set"):
        load_source("mnist")


@pytest.fixture(scope="module")
def digits_node(module_tmp: Callable[[str], Path]) -> Path:
    out = module_tmp("digits-nodes")
    partition("digits", 1, "digits", out)
    return out / "node-1"


def test_numpy_column_is_one_array_as_in_datasets_2(digits_node: Path) -> None:
    """FLOps's data managers: set_format("numpy"), then reshape the image column."""
    dataset = load_dataset(["digits"], digits_node)
    dataset.set_format("numpy")
    x = dataset["image"].reshape(len(dataset), -1)
    y = dataset["label"]
    assert x.shape == (1797, 64) and isinstance(y, np.ndarray) and y.shape == (1797,)
    assert np.allclose(x[0], dataset[0]["image"].ravel())


def test_derived_datasets_keep_numpy_columns(digits_node: Path) -> None:
    dataset = load_dataset(["digits"], digits_node)
    dataset.set_format("numpy")
    splits = dataset.train_test_split(test_size=0.2, seed=0)
    assert splits["train"]["image"].shape == (1437, 8, 8) and splits["test"]["label"].shape == (360,)
    few = dataset.select(range(200))
    derived = {
        "select": few,
        "shuffle": dataset.shuffle(seed=1),
        "filter": few.filter(lambda rows: rows["label"] < 5, batched=True),
        "map": few.map(lambda rows: {"double": rows["label"] * 2}, batched=True),
        "with_format": load_dataset(["digits"], digits_node).with_format("numpy"),
        "chained": splits["train"].shuffle(seed=2).select(range(100)),
    }
    for name, part in derived.items():
        assert isinstance(part["image"], np.ndarray), name
        assert part["image"].shape == (len(part), 8, 8), name
    assert np.array_equal(derived["map"]["double"], few["label"] * 2)
    assert set(derived["filter"]["label"]) <= {0, 1, 2, 3, 4}
    python_rows = load_dataset(["digits"], digits_node).select(range(3))
    assert isinstance(python_rows["label"], list)  # unformatted: a list, as datasets 2.x gave


def test_plain_datasets_elsewhere_are_untouched(digits_node: Path) -> None:
    import datasets

    load_dataset(["digits"], digits_node)
    plain = datasets.Dataset.from_dict({"a": [1, 2, 3]}).with_format("numpy")
    assert type(plain.select([0, 1])) is datasets.Dataset
    if int(datasets.__version__.split(".")[0]) >= 4:
        assert type(plain["a"]).__name__ == "Column"
