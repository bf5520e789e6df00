"""Node metadata (`node.yaml`): a node's cluster for hierarchical training, written and read back."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flops.cli.main import app
from flops.data.node_meta import (
    DEFAULT_CLUSTER,
    NODE_META_FILE,
    NodeMeta,
    NodeMetaError,
    assign_clusters,
    clusters_of,
    read_node_meta,
    write_node_meta,
)
from flops.data.partition import partition


def test_a_node_without_the_file_is_in_the_default_cluster(tmp_path: Path) -> None:
    assert read_node_meta(tmp_path).cluster == DEFAULT_CLUSTER
    write_node_meta(tmp_path, NodeMeta(cluster="site-a"))
    assert read_node_meta(tmp_path).cluster == "site-a"
    assert (tmp_path / NODE_META_FILE).read_text() == "cluster: site-a\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("cluster: Site A\n", "cluster"), ("clusters: a\n", "clusters"), ("cluster: [a\n", "not valid")],
)
def test_a_bad_file_is_an_error_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / NODE_META_FILE).write_text(text)
    with pytest.raises(NodeMetaError, match=problem) as error:
        read_node_meta(tmp_path)
    assert str(tmp_path / NODE_META_FILE) in str(error.value)


def test_clusters_are_contiguous_near_equal_blocks() -> None:
    assert assign_clusters(5, 2) == ["cluster-1"] * 3 + ["cluster-2"] * 2
    assert assign_clusters(4, 4) == [f"cluster-{i}" for i in range(1, 5)]
    with pytest.raises(ValueError, match="every cluster needs a node"):
        assign_clusters(2, 3)


def test_partition_with_clusters_writes_each_nodes_cluster_and_without_keeps_them(tmp_path: Path) -> None:
    partition("iris", 4, "iris", tmp_path, clusters=2)
    assert clusters_of(tmp_path) == {"cluster-1": ["node-1", "node-2"], "cluster-2": ["node-3", "node-4"]}
    partition("wine", 4, "wine", tmp_path)  # another tag on the same nodes: their clusters stay
    assert clusters_of(tmp_path) == {"cluster-1": ["node-1", "node-2"], "cluster-2": ["node-3", "node-4"]}
    with pytest.raises(ValueError, match="every cluster needs a node"):
        partition("iris", 2, "iris", tmp_path / "other", clusters=3)


def test_cli_partition_shows_the_clusters(tmp_path: Path) -> None:
    args = ["data", "partition", "iris", "--nodes", "3", "--tag", "t", "--out", str(tmp_path), "--clusters", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cluster-3" in result.output
    assert read_node_meta(tmp_path / "node-3").cluster == "cluster-3"
