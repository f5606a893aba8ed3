"""`hearth login / whoami / token / logout`, and `hearth keys` over the gateway with your login.

Parsing and printing only; the work is in :mod:`gateway.client`. Every failure is one line on
stderr and a non-zero exit (2 when there is no login to use); tokens and keys are printed only
by `hearth token` and, once, by `hearth keys create`.
"""

from __future__ import annotations

import json
import socket
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from gateway.client.api import GatewayClient, GatewayError, gateway_root
from gateway.client.login import (
    LoginError,
    NotLoggedIn,
    Session,
    can_open_browser,
    logout,
    start_login,
)
from gateway.client.tokens import LoginFile, TokenFileError, default_config_dir

__all__ = ["ConfigDirOpt", "keys_create_remote", "keys_list_remote", "keys_revoke_remote", "register"]

out = Console()
err = Console(stderr=True)

ConfigDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        envvar="HEARTH_CONFIG_DIR",
        help="Where your login is kept (default: $XDG_CONFIG_HOME/hearth or ~/.config/hearth).",
        file_okay=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add the sign-in commands to the `hearth` app."""
    app.command("login")(login_command)
    app.command("whoami")(whoami_command)
    app.command("token")(token_command)
    app.command("logout")(logout_command)


def login_command(
    gateway: Annotated[
        str,
        typer.Option(
            help="The gateway's URL (its root, or the OpenAI base URL ending in /v1).", envvar="HEARTH_URL"
        ),
    ],
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the sign-in URL; do not open a browser.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Sign in to Globus again even if your session is recent.")
    ] = False,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Sign in with Globus Auth; your tokens are kept in your config directory (mode 0600)."""
    store = _store(config_dir)
    with _failures():
        try:
            root = gateway_root(gateway)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--gateway") from None
        with GatewayClient(root) as api:
            config = api.auth_config()
        if config is None:
            _fail(f"{root} does not use Globus Auth; ask its administrators for an API key")
        flow = start_login(root, config, label=socket.gethostname(), force=force)
        print(f"Sign in to Globus for {root} at this URL:\n\n{flow.url}\n", flush=True)
        if not no_browser and can_open_browser():
            webbrowser.open(flow.url)
            print("(It has been opened in your browser.)", flush=True)
        try:
            code = input("Paste the authorization code: ")
        except EOFError:
            _fail("no authorization code given")
        store.save(flow.finish(code))
        session = Session(store)
        with GatewayClient(root, auth=session.auth()) as api:
            who = api.whoami()
    out.print(f"Signed in to {escape(root)} as {_person(who)}.", highlight=False)


def whoami_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's answer as JSON.")] = False,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Who the gateway thinks you are: identities, groups, the models and clusters you may use."""
    with _failures():
        session = Session(_store(config_dir))
        with GatewayClient(session.gateway, auth=session.auth()) as api:
            who = api.whoami()
    if as_json:
        print(json.dumps(who, indent=2))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    linked = [
        f"{i.get('username')} ({i.get('identity_provider') or 'unknown provider'})"
        for i in who.get("linked_identities") or []
    ]
    rows = [
        ("gateway", session.gateway),
        ("identity", f"{who.get('username')} ({who.get('id')})"),
        ("name", who.get("name")),
        ("email", who.get("email")),
        ("identity provider", who.get("identity_provider")),
        ("signed in with", who.get("auth")),
        ("admin", "yes" if who.get("is_admin") else "no"),
        ("linked identities", ", ".join(linked)),
        ("groups", ", ".join(str(g.get("name") or g.get("id")) for g in who.get("groups") or [])),
        ("models", ", ".join(str(m) for m in who.get("models") or [])),
        ("clusters", ", ".join(str(c) for c in who.get("clusters") or [])),
    ]
    for label, value in rows:
        grid.add_row(label, Text(str(value) if value not in (None, "") else "-"))
    out.print(grid)


def token_command(config_dir: ConfigDirOpt = None) -> None:
    """Print a valid access token (refreshed if needed) and nothing else: OPENAI_API_KEY=$(hearth token)."""
    with _failures():
        token = Session(_store(config_dir)).access_token()
    print(token)


def logout_command(config_dir: ConfigDirOpt = None) -> None:
    """Revoke your tokens with Globus and delete them from this machine."""
    store = _store(config_dir)
    with _failures():
        try:
            gateway, problems = logout(store)
        except NotLoggedIn:
            err.print("Not logged in; nothing to do.")
            return
    for problem in problems:
        err.print(
            f"[yellow]warning:[/yellow] {escape(problem)}; it stays valid until it expires.", soft_wrap=True
        )
    out.print(f"Signed out of {escape(gateway)}; the tokens on this machine are deleted.", highlight=False)


# --- hearth keys, over the gateway ---------------------------------------------------------


def keys_create_remote(name: str, expires_at: datetime | None, config_dir: Path | None) -> None:
    """`hearth keys create` without --config: a key of your own, made by the gateway."""
    when = int(expires_at.timestamp()) if expires_at else None
    with _failures(), _gateway(config_dir) as api:
        key = api.create_key(name, when)
    expiry = f", expires {_when(key.get('expires_at'))} UTC" if key.get("expires_at") else ""
    out.print(f"Created key {escape(str(key.get('id')))} ({escape(str(key.get('name')))}){expiry}.")
    out.print("[yellow]Store it now; it cannot be shown again:[/yellow]")
    print(key.get("key"))


def keys_list_remote(everyone: bool, owner: str | None, config_dir: Path | None) -> None:
    """`hearth keys list` without --config: your keys (everyone's with --all, for admins)."""
    with _failures(), _gateway(config_dir) as api:
        keys = api.list_keys(everyone=everyone)
    now = datetime.now(UTC).timestamp()
    table = Table("name", "owner", "created", "expires", "last used", "state")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=12))  # revoke needs the whole id
    for k in keys:
        who = str(k.get("owner_username") or k.get("owner") or "-")
        if owner is not None and owner not in (k.get("owner"), k.get("owner_username")):
            continue
        expires = k.get("expires_at")
        state = "revoked" if k.get("revoked_at") else ("expired" if expires and expires <= now else "active")
        dates = (_when(k.get("created_at")), _when(expires), _when(k.get("last_used_at")))
        table.add_row(str(k.get("id")), Text(str(k.get("name"))), Text(who), *dates, state)
    out.print(table)


def keys_revoke_remote(key_id: str, config_dir: Path | None) -> None:
    """`hearth keys revoke` without --config."""
    with _failures(), _gateway(config_dir) as api:
        api.revoke_key(key_id)
    out.print(f"Revoked {key_id}.", markup=False, highlight=False)


@contextmanager
def _gateway(config_dir: Path | None) -> Iterator[GatewayClient]:
    try:
        session = Session(_store(config_dir))
    except NotLoggedIn:
        _fail(
            "no --config and not logged in: run `hearth login --gateway URL`, "
            "or give --config hearth.yaml on the gateway host",
            2,
        )
    with GatewayClient(session.gateway, auth=session.auth()) as api:
        yield api


# --- helpers --------------------------------------------------------------------------------


def _store(config_dir: Path | None) -> LoginFile:
    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    return LoginFile(config_dir or default_config_dir(), warn=warn)


@contextmanager
def _failures() -> Iterator[None]:
    """Turn the client's errors into one line on stderr and an exit status."""
    try:
        yield
    except NotLoggedIn as exc:
        _fail(str(exc), 2)
    except (LoginError, TokenFileError) as exc:
        _fail(str(exc))
    except GatewayError as exc:
        message = exc.message
        if exc.reauthenticate:
            message += " (run `hearth login --force` to sign in again)"
        elif exc.status == 401:
            message += " (run `hearth login` to sign in again)"
        _fail(message)


def _fail(message: str, status: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(status)


def _person(who: dict[str, Any]) -> str:
    name = who.get("name")
    return escape(f"{who.get('username')}" + (f" ({name})" if name else ""))


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")
