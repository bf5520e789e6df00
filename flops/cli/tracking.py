"""`flops tracking`: where the MLflow UI is and how this token's customer logs in to it."""

import os

import typer
from rich.console import Console

from flops.client import ManagerClient, ManagerError

console = Console(soft_wrap=True)


def login_hint(login: dict[str, object], show_password: bool = False) -> str:
    """One line on how to log in to the MLflow UI; the password only when asked for."""
    url = login.get("tracking_server_url")
    if not login.get("username"):
        return f"MLflow UI: {url} (no login)"
    where = f"password in {login['credentials_file']}" if login.get("credentials_file") else "password: "
    if not login.get("credentials_file"):
        where += str(login.get("password")) if show_password else "hidden (`flops tracking --show-password`)"
    return f"MLflow UI: {url} (user {login.get('username')}, {where})"


def tracking_command(
    show_password: bool = typer.Option(False, "--show-password", help="print the MLflow password too"),
) -> None:
    """Show the MLflow UI's address and your login (your projects' runs and models, read-only)."""
    try:
        login = ManagerClient.from_env(os.environ).tracking_login()
    except ManagerError as error:
        console.print(f"[red]error:[/red] {error.message}")
        raise typer.Exit(1) from error
    console.print(login_hint(login, show_password), markup=False, highlight=False)
