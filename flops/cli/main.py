"""`flops`: federated learning from a git repository, on this machine or a fleet."""

import typer

from flops.cli import data, train

app = typer.Typer(
    help="FLOps: federated learning as easy to run as a container.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train_command)


if __name__ == "__main__":
    app()
