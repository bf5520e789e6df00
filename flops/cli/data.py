"""`flops data`: make node data folders from a data set."""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from flops.data.node_meta import read_node_meta
from flops.data.ownership import OPERATOR, TagOwnership
from flops.data.partition import Scheme, partition

app = typer.Typer(help="Prepare node-local data.", no_args_is_help=True)
console = Console()


@app.command("partition")
def partition_command(
    dataset: str = typer.Argument(
        ...,
        help="digits, breast_cancer, iris, wine, a Hugging Face data set (mnist, owner/name) or a .csv/.parquet file",
    ),
    nodes: int = typer.Option(..., "--nodes", "-n", min=1, help="number of node folders"),
    tag: str = typer.Option(..., "--tag", "-t", help="data tag (folder name) to write"),
    out: Path = typer.Option(..., "--out", "-o", help="root folder for the node folders"),
    scheme: Scheme = typer.Option(Scheme.IID, "--scheme", help="how labels spread over nodes"),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0001, help="Dirichlet concentration"),
    seed: int = typer.Option(42, "--seed"),
    label_column: str = typer.Option("label", "--label-column", help="label column of a file"),
    owner: str = typer.Option(
        OPERATOR, "--owner", help="the customer whose projects may train on this tag (default: the operator's Admin)"
    ),
    shared: bool = typer.Option(False, "--shared", help="let every customer's projects train on this tag"),
    clusters: int | None = typer.Option(
        None, "--clusters", min=1, help="assign the nodes to K clusters cluster-1..cluster-K (node.yaml), for HFL"
    ),
) -> None:
    """Split DATASET into per-node folders OUT/node-i/TAG/ and show each node's labels.

    Each tag folder records its owner (`--owner`, `--shared`): only that customer's projects
    train on it (see docs/security.md). `--clusters K` writes each node's cluster to
    OUT/node-i/node.yaml (contiguous blocks cluster-1..cluster-K) for hierarchical training.

    Hugging Face data sets come from the hub when it answers, else from the local Hugging Face
    cache (HF_HOME); HF_HUB_OFFLINE=1 skips the hub.
    """
    try:
        ownership = TagOwnership(owner=owner, shared=shared)
        histogram = partition(
            dataset, nodes, tag, out, scheme, alpha, seed, label_column, ownership=ownership, clusters=clusters
        )
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    labels = sorted({label for counts in histogram.values() for label in counts})
    table = Table(title=f"{dataset} -> {out} (tag '{tag}', {scheme.value})")
    table.add_column("node")
    if clusters is not None:
        table.add_column("cluster")
    for label in labels:
        table.add_column(str(label), justify="right")
    table.add_column("rows", justify="right")
    for node, counts in histogram.items():
        cluster = [read_node_meta(out / node).cluster] if clusters is not None else []
        table.add_row(node, *cluster, *(str(counts.get(label, 0)) for label in labels), str(sum(counts.values())))
    console.print(table)
