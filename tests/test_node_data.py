"""Node-local data: loading by tag, clear errors, and FLOps's import paths."""

from pathlib import Path

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


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown data set"):
        load_source("mnist")
