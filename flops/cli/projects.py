"""`flops up/down/status/submit/projects/watch/logs/cancel/demo`: the manager from a terminal."""

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from flops import stack
from flops.broker import BrokerError
from flops.cli.tracking import login_hint
from flops.client import ManagerClient, ManagerError
from flops.config import SOURCES_FOLDER, flops_home
from flops.learner_records import OutlierFlag
from flops.sandbox import SandboxSettings, SandboxUnavailable
from flops.tracking_server import TrackingServerError

console = Console(soft_wrap=True)
FINAL = ("completed", "failed", "cancelled")
STAGE_ORDER = ["submitted", "building", "deploying", "training", "post_training", "completed", "failed", "cancelled"]


def manager_client(base_url: str | None = None) -> ManagerClient:
    """The manager this command talks to, with the token the environment names."""
    return ManagerClient.from_env(os.environ, base_url)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def up_command() -> None:
    """Start the embedded stack in the background: broker, observatory, manager."""
    try:
        # Before anything starts: the local backend runs every project's code in this sandbox.
        SandboxSettings.from_env().check()
    except (SandboxUnavailable, ValueError) as error:
        raise fail(f"cannot start the stack: {error}") from error
    try:
        state = stack.up(stack.StackSettings.from_env(os.environ))
    except (BrokerError, TrackingServerError, RuntimeError) as error:
        raise fail(str(error)) from error
    console.print(f"manager:     {state['manager_url']}")
    console.print(f"dashboard:   {state['manager_url']}/ui (sign in with the admin token)")
    credentials = state.get("tracking_credentials_file")
    login = f" (user flops-admin, password in {credentials})" if credentials else ""
    console.print(f"MLflow UI:   {state['tracking_url']}{login}")
    console.print(f"MQTT broker: {state['mqtt']}, {state.get('broker', 'Mosquitto')} (password-protected)")
    console.print(f"admin token: {state['admin_token_file']} (or set FLOPS_TOKEN)")


def down_command() -> None:
    """Cancel active projects and stop the embedded stack."""
    state = stack.read_state()
    if state:
        client = manager_client(state["manager_url"])
        try:
            projects = client.projects()
            for project in projects:  # cancels active ones, stops served models of the rest
                client.cancel(project["project_id"])
            active = [p for p in projects if p["status"] not in FINAL]
            deadline = time.monotonic() + 60
            while active and time.monotonic() < deadline:
                active = [p for p in client.projects() if p["status"] not in FINAL]
                time.sleep(0.5)
        except ManagerError:
            pass
    stopped = stack.down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def status_command(
    project_id: str = typer.Argument("", help="a project: its stages, rounds, model and images"),
) -> None:
    """Show whether the embedded stack runs and where, or one project's state."""
    if project_id:
        try:
            project = manager_client().project(project_id)
        except ManagerError as error:
            raise fail(error.message) from error
        console.print(_project_table(project))
        print_summary(project)
        return
    state = stack.read_state()
    if not state:
        raise fail("the stack is not running: `flops up`")
    table = Table(title="FLOps stack")
    table.add_column("service")
    table.add_column("state")
    table.add_column("where")
    running = stack.running_services()
    broker = f"{state['mqtt']} ({state['broker']})" if state.get("broker") else state["mqtt"]
    where = {"manager": state["manager_url"], "observatory": state["tracking_url"], "broker": broker}
    for name, alive in running.items():
        table.add_row(name, "[green]running[/green]" if alive else "[red]stopped[/red]", where.get(name, ""))
    console.print(table)
    console.print(f"admin token: {state['admin_token_file']}")


def submit_command(
    sla_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="SLA as JSON or YAML"),
    wait: bool = typer.Option(False, "--wait", help="watch the project until it ends"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="only check the SLA and fetch and check the repository; start nothing"
    ),
) -> None:
    """Submit a project SLA to the manager (or, with --dry-run, only check it)."""
    client = manager_client()
    try:
        answer = client.submit(sla_file.read_text(encoding="utf-8"), dry_run=dry_run)
    except ManagerError as error:
        console.print("[red]refused:[/red]", end=" ")
        console.print(error.message, markup=False, highlight=False)  # git's and the checker's text as is
        if error.details:
            console.print_json(json.dumps(error.details))
        raise typer.Exit(2) from error
    if dry_run:
        ref = f" at {answer['ref']}" if answer.get("ref") else ""
        console.print(f"[green]valid[/green]: {answer['repo_url']}{ref} is commit {answer['commit']}; nothing started")
        return
    console.print(f"project [bold]{answer['project_id']}[/bold] submitted")
    if wait:
        raise typer.Exit(watch(client, answer["project_id"]))


def projects_command(
    status: str = typer.Option("", "--status", help="filter, e.g. training,completed"),
) -> None:
    """List projects."""
    try:
        projects = manager_client().projects(status or None)
    except ManagerError as error:
        raise fail(error.message) from error
    table = Table(title="projects")
    for column in ("id", "customer", "status", "rounds", "model", "created"):
        table.add_column(column)
    for project in projects:
        model = project["model"]
        table.add_row(
            project["project_id"], project["customer_id"], project["status"], str(project["rounds_done"]),
            f"{model['name']} v{model['version']}" if model.get("version") else model.get("name") or "",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(project["created_at"])),
        )  # fmt: skip
    console.print(table)


def _project_table(project: dict[str, Any]) -> Table:
    table = Table(title=f"project {project['project_id']}: {project['status']}")
    table.add_column("stage")
    table.add_column("duration", justify="right")
    stages = project.get("stages", {})
    for name in sorted(stages, key=lambda stage: STAGE_ORDER.index(stage) if stage in STAGE_ORDER else 99):
        timing = stages[name]
        duration = timing.get("duration_s")
        shown = f"{duration:.1f} s" if duration is not None else f"{time.time() - timing['started_at']:.0f} s…"
        table.add_row(name, shown)
    for report in project.get("rounds", []):
        clusters = report.get("clusters") or []
        word = "cycle" if clusters else "round"
        table.add_row(f"  {word} {report['round']}", _figures(report))
        for record in report.get("per_learner") or []:  # the learners whose figures stood out
            if record.get("flags"):
                reasons = "; ".join(OutlierFlag.model_validate(flag).describe() for flag in record["flags"])
                table.add_row(f"    [yellow]outlier[/yellow] {record['learner']}", reasons)
        # Hierarchical FL: each cluster's part of the cycle, its learners and its rounds.
        for cluster in clusters:
            learners = ", ".join(cluster.get("learners") or []) or "-"
            figures = f"failed: {cluster['error']}" if cluster.get("error") else _figures(cluster)
            table.add_row(f"    {cluster['cluster']} ({learners})", figures)
            for inner in cluster.get("rounds") or []:
                table.add_row(f"      round {inner['round']}", _figures(inner))
    return table


def _figures(report: dict[str, Any]) -> str:
    accuracy, loss = report.get("accuracy"), report.get("loss")
    shown = f"acc {accuracy:.4f}  loss {loss:.4f}" if accuracy is not None and loss is not None else "-"
    privacy = report.get("privacy")
    return f"{shown}  epsilon {privacy['epsilon']:.3f}" if privacy else shown


def watch(client: ManagerClient, project_id: str, poll_s: float = 1.0) -> int:
    """Show a project live until it ends; 0 when it completed."""
    project = client.project(project_id)
    shown_warnings = False
    with Live(_project_table(project), console=console, refresh_per_second=4) as live:
        while project["status"] not in FINAL:
            time.sleep(poll_s)
            project = client.project(project_id)
            live.update(_project_table(project))
            shown_warnings = shown_warnings or _print_dependency_warnings(live.console, project)
    if not shown_warnings:
        _print_dependency_warnings(console, project)
    console.print()
    print_summary(project)
    return 0 if project["status"] == "completed" else 1


def _print_dependency_warnings(out: Console, project: dict[str, Any]) -> bool:
    """The pins the builder relaxed (once the build is recorded); whether there was a build to show."""
    build = project.get("build")
    if not build:
        return False
    for warning in build.get("dependency_warnings", []):
        out.print(f"[yellow]dependency warning:[/yellow] {warning}")
    return True


# A request body with up to this many numbers is printed whole, ready to paste.
HINT_MAX_VALUES = 64


def serving_hint(url: str, model_input: dict[str, Any] | None) -> str:
    """How to call the served model, shaped by its signature (one zero row of its input)."""
    command = f"serving: curl -s {url} -H 'Content-Type: application/json' -d "
    if not model_input or not model_input.get("shape"):
        return command + "'{\"inputs\": [...]}' (the model logged no signature: send what it was trained on)"
    row = [max(int(n), 1) for n in model_input["shape"][1:]]
    values = math.prod(row)
    if values > HINT_MAX_VALUES:
        shape = ", ".join(str(n) for n in model_input["shape"]).replace("-1", "n")
        return command + f"'{{\"inputs\": ...}}' with a batch of shape [{shape}] ({model_input['dtype']})"
    zeros: Any = 0.0
    for size in reversed(row):
        zeros = [zeros] * size
    return command + "'" + json.dumps({"inputs": [zeros]}, separators=(",", ":")) + "'"


def print_summary(project: dict[str, Any]) -> None:
    for role, ref in sorted((project.get("image_refs") or {}).items()):
        console.print(f"{role + ' image:':<18} {ref}")
    if project["status"] in ("failed", "cancelled"):
        error = project.get("error") or {}
        console.print(f"[red]{project['status']}[/red] at {error.get('stage', '?')}: {error.get('message', '')}")
        return
    if project["status"] != "completed":
        return
    rounds = project.get("rounds", [])
    last = rounds[-1] if rounds else {}
    console.print(f"[green]completed[/green]: accuracy {last.get('accuracy')}, loss {last.get('loss')}")
    if project.get("privacy"):
        spent = project["privacy"]
        console.print(f"privacy: epsilon {spent['epsilon']:.3f} at delta {spent['delta']:g} ({spent['mode']} DP)")
    model = project.get("model", {})
    if model.get("registered_uri"):
        console.print(f"model:   {model['registered_uri']}")
    tracking = project.get("tracking", {})
    if tracking.get("run_url"):
        console.print(f"MLflow:  {tracking['run_url']}")
    if project.get("inference_url"):
        console.print(serving_hint(project["inference_url"], model.get("input")))


def watch_command(project_id: str = typer.Argument(...)) -> None:
    """Follow a project's stages and rounds live."""
    try:
        raise typer.Exit(watch(manager_client(), project_id))
    except ManagerError as error:
        raise fail(error.message) from error


def logs_command(
    project_id: str = typer.Argument(...), component: str = typer.Argument("", help="e.g. aggregator")
) -> None:
    """Print the logs of a project's components."""
    try:
        logs = manager_client().logs(project_id, component or None)
    except ManagerError as error:
        raise fail(error.message) from error
    for name, text in logs.items():
        console.rule(name)
        console.print(text, markup=False, highlight=False)


def cancel_command(project_id: str = typer.Argument(...)) -> None:
    """Cancel a project and tear down what it deployed."""
    try:
        answer = manager_client().cancel(project_id)
    except ManagerError as error:
        raise fail(error.message) from error
    console.print(answer["message"])


def demo_repository(target: Path) -> Path:
    """A git repository with the digits-sklearn example, as a user would have one."""
    source = Path(__file__).resolve().parents[2] / "examples" / "digits-sklearn"
    if not source.is_dir():
        raise fail(f"the example repository {source} is missing (run the demo from a FLOps checkout)")
    if not (target / ".git").is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        git = ["git", "-C", str(target), "-c", "user.name=FLOps demo", "-c", "user.email=demo@flops.invalid"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "digits-sklearn example"], check=True)
    return target


def demo_command(rounds: int = typer.Option(3, "--rounds"), learners: int = typer.Option(2, "--learners")) -> None:
    """Start the stack, make node data, train digits-sklearn federatedly and serve the model."""
    started = time.monotonic()
    up_command()
    client = manager_client(stack.read_state()["manager_url"])
    try:
        nodes = client.mocks("digits", learners, "digits")
        console.print(f"node data: {nodes}")
        repo = demo_repository(flops_home() / SOURCES_FOLDER / "digits-sklearn")
        sla = {
            "customerID": "Admin",
            "ml_repo_url": str(repo),
            "ml_model_flavor": "sklearn",
            "project_name": "digits-demo",
            "training_configuration": {
                "data_tags": ["digits"], "training_rounds": rounds, "min_available_clients": learners,
                "min_fit_clients": learners, "min_evaluate_clients": learners,
            },
            "post_training_steps": ["deploy_trained_model_image"],
        }  # fmt: skip
        project_id = client.submit(sla)["project_id"]
        console.print(f"project [bold]{project_id}[/bold] submitted")
        console.print(f"dashboard: {client.base_url}/ui/projects/{project_id}", markup=False, highlight=False)
        console.print(login_hint(client.tracking_login()), markup=False, highlight=False)
        code = watch(client, project_id)
    except ManagerError as error:
        raise fail(error.message) from error
    console.print(f"demo wall time: {time.monotonic() - started:.1f} s; stop everything with `flops down`")
    raise typer.Exit(code)
