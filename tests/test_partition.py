"""`flops data partition`: schemes, files, and the CLI."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flops.cli.main import app
from flops.data.partition import Scheme, partition


def test_iid_split_covers_every_row_once(tmp_path: Path) -> None:
    histogram = partition("digits", 3, "digits", tmp_path, Scheme.IID)
    assert sum(sum(c.values()) for c in histogram.values()) == 1797
    assert all(len(counts) == 10 for counts in histogram.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-1", "node-2", "node-3"]
    assert (tmp_path / "node-2" / "digits" / "part-0.parquet").is_file()


def test_pathological_gives_each_node_two_classes(tmp_path: Path) -> None:
    histogram = partition("digits", 5, "digits", tmp_path, Scheme.PATHOLOGICAL)
    assert all(len(counts) == 2 for counts in histogram.values())


def test_dirichlet_skews_labels_and_is_repeatable(tmp_path: Path) -> None:
    first = partition("digits", 3, "d", tmp_path / "a", Scheme.DIRICHLET, alpha=0.1, seed=1)
    second = partition("digits", 3, "d", tmp_path / "b", Scheme.DIRICHLET, alpha=0.1, seed=1)
    assert first == second
    shares = [max(c.values()) / sum(c.values()) for c in first.values()]
    assert max(shares) > 0.25  # IID would give about 0.1 per class


def test_csv_file_with_label_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(40), "y": [i % 2 for i in range(40)]})
    frame.to_csv(tmp_path / "data.csv", index=False)
    histogram = partition(str(tmp_path / "data.csv"), 2, "t", tmp_path / "out", Scheme.IID, label_column="y")
    assert sum(sum(c.values()) for c in histogram.values()) == 40
    with pytest.raises(ValueError, match="--label-column"):
        partition(str(tmp_path / "data.csv"), 2, "t", tmp_path / "out")


def test_cli_prints_histogram_and_rejects_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "partition", "wine", "--nodes", "2", "--tag", "wine", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "node-1" in result.output and "node-2" in result.output
    bad = runner.invoke(app, ["data", "partition", "nope", "--nodes", "2", "--tag", "t", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown data set" in bad.output


def test_parquet_file_keeps_its_columns_not_pandas_index(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [0.5] * 30, "label": [i % 3 for i in range(30)]}, index=[f"r{i}" for i in range(30)])
    frame.to_parquet(tmp_path / "data.parquet")  # the string index becomes a column `__index_level_0__`
    partition(str(tmp_path / "data.parquet"), 3, "t", tmp_path / "out")
    node = pd.read_parquet(tmp_path / "out" / "node-1" / "t" / "part-0.parquet")
    assert list(node.columns) == ["x", "label"] and len(node) == 10


def test_cli_partition_records_the_tags_owner(tmp_path: Path) -> None:
    from flops.data.ownership import read_ownership

    args = ["data", "partition", "iris", "--nodes", "2", "--tag", "t", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--owner", "alice"])
    assert result.exit_code == 0, result.output
    for node in ("node-1", "node-2"):
        ownership = read_ownership(tmp_path / node / "t")
        assert ownership.owner == "alice" and ownership.usable_by("alice") and not ownership.usable_by("bob")
    assert CliRunner().invoke(app, [*args, "--shared"]).exit_code == 0
    assert read_ownership(tmp_path / "node-1" / "t").usable_by("bob")
