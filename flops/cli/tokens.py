"""`flops token`: the manager's customer tokens (admin): issue, list, revoke.

Rotation: issue the customer a new token, hand it over, then revoke the old one.
"""

import os

import typer
from rich.console import Console
from rich.table import Table

from flops.client import ManagerClient, ManagerError

app = typer.Typer(help="Customer tokens of the manager (admin token needed).", no_args_is_help=True)
console = Console(soft_wrap=True)


def _client() -> ManagerClient:
    return ManagerClient.from_env(os.environ)


def _fail(error: ManagerError) -> typer.Exit:
    console.print(f"[red]error:[/red] {error.message}")
    return typer.Exit(1)


@app.command("create")
def create_command(customer_id: str = typer.Argument(..., help="the customer the token acts for")) -> None:
    """Issue a token for CUSTOMER_ID; it is printed once and stored only as a hash."""
    try:
        issued = _client().issue_token(customer_id)
    except ManagerError as error:
        raise _fail(error) from error
    console.print(f"token {issued['token_id']} for {issued['customer_id']} (shown once):", highlight=False)
    console.print(issued["token"], markup=False, highlight=False)


@app.command("list")
def list_command() -> None:
    """Every token's id, customer and role (never the tokens)."""
    try:
        records = _client().tokens()
    except ManagerError as error:
        raise _fail(error) from error
    table = Table("token id", "customer", "role")
    for record in records:
        table.add_row(str(record.get("token_id")), str(record.get("customer_id")), str(record.get("role")))
    console.print(table)


@app.command("revoke")
def revoke_command(token_id: str = typer.Argument(..., help="the id `flops token list` shows")) -> None:
    """Revoke TOKEN_ID at once: requests with it answer 401 from now on."""
    try:
        revoked = _client().revoke_token(token_id)
    except ManagerError as error:
        raise _fail(error) from error
    console.print(f"revoked {revoked['revoked']} ({revoked.get('customer_id')})", highlight=False)
