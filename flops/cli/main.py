"""`flops`: federated learning from a git repository, on this machine or a fleet."""

import typer

from flops.cli import data, explain, projects, stats, tokens, tracking, train

app = typer.Typer(
    help="FLOps: federated learning as easy to run as a container.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(tokens.app, name="token")
app.command("train")(train.train_command)
app.command("stats")(stats.stats_command)
app.command("explain")(explain.explain_command)
app.command("up")(projects.up_command)
app.command("down")(projects.down_command)
app.command("status")(projects.status_command)
app.command("submit")(projects.submit_command)
app.command("projects")(projects.projects_command)
app.command("watch")(projects.watch_command)
app.command("logs")(projects.logs_command)
app.command("cancel")(projects.cancel_command)
app.command("demo")(projects.demo_command)
app.command("tracking")(tracking.tracking_command)


if __name__ == "__main__":
    app()
