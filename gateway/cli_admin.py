"""`hearth admin …`: usage reports, the audit log and the configured limits, on the gateway host.

These read the store named by ``--config`` directly (an admin's view); users see their own
usage through the gateway (GET /v1/usage).
"""

from __future__ import annotations

import asyncio
import csv
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.config import ConfigError, LimitSet, Settings, load_settings
from gateway.durations import parse_duration

if TYPE_CHECKING:
    from gateway.store.reports import UsageRow

# The store (SQLAlchemy, Alembic) is imported inside the commands: `hearth` starts fast.
GROUPINGS = ("user", "model", "cluster", "group", "day")  # as gateway.store.reports.GROUPINGS

admin_app = typer.Typer(no_args_is_help=True, help="Admin reports: usage, audit log, limits.")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="hearth.yaml", exists=True, dir_okay=False)
]
SinceOpt = Annotated[str, typer.Option(help="How far back: 24h, 7d, 4w.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of a table.")]


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None


def _since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


async def _with_db(config: Path | None, work: Any) -> Any:
    from gateway.store.database import Database

    db = Database(_settings(config).store.url)
    try:
        await db.migrate()
        return await work(db)
    finally:
        await db.close()


def _print(header: list[str], rows: list[list[Any]], as_csv: bool, title: str | None = None) -> None:
    """Rows as CSV on stdout, or as a table (numbers with thousands separators)."""
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
        return
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*(f"{x:,}" if isinstance(x, int) else escape(str(x)) for x in row))
    out.print(table)


@admin_app.command("usage")
def usage(
    by: Annotated[
        list[str] | None, typer.Option(help=f"Group by (repeatable): {', '.join(GROUPINGS)}.")
    ] = None,
    since: SinceOpt = "7d",
    user: Annotated[str | None, typer.Option(help="Only this user (identity id or key owner).")] = None,
    as_csv: CsvOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Requests and tokens per user, model, cluster, group or day, from the hourly/daily rollups."""
    from gateway.store.reports import GROUPINGS as KNOWN
    from gateway.store.reports import summary
    from gateway.store.rollups import Rollups

    assert KNOWN == GROUPINGS

    groupings = by or ["user"]
    for b in groupings:
        if b not in GROUPINGS:
            raise typer.BadParameter(f"--by must be among {', '.join(GROUPINGS)}, not {b!r}")
    start = _since(since)

    async def work(db: Any) -> list[UsageRow]:
        await Rollups(db).run_once()  # count what has settled since the gateway's last round
        keys = [next(g for g in KNOWN if g == b) for b in groupings]  # as Grouping literals
        return await summary(db, since=start, by=keys, user=user)

    rows: list[UsageRow] = asyncio.run(_with_db(config, work))
    header = [*groupings, "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"]
    values = [
        [*row.key, row.requests, row.errors, row.prompt_tokens, row.completion_tokens, row.total_tokens]
        for row in rows
    ]
    _print(header, values, as_csv, title=f"Usage since {start:%Y-%m-%d %H:%M} UTC")


@admin_app.command("audit")
def audit(
    since: SinceOpt = "1d",
    actor: Annotated[str | None, typer.Option(help="Only this actor (identity id, cli:<login>).")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only actions starting with this, e.g. key. or auth.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    as_csv: CsvOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Auth decisions, keys created and revoked, admin actions: newest first."""
    from gateway.store.audit import AuditLog

    start = _since(since)

    async def work(db: Any) -> list[Any]:
        return await AuditLog(db).query(since=start, actor=actor, action=action, limit=limit)

    events = asyncio.run(_with_db(config, work))
    header = ["time (UTC)", "actor", "action", "outcome", "target", "detail"]
    values = [
        [f"{e.ts:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.outcome, e.target or "", e.detail or ""]
        for e in events
    ]
    _print(header, values, as_csv)


@admin_app.command("limits")
def limits(config: ConfigOpt = None) -> None:
    """The configured quotas and rate limits, per scope."""
    s = _settings(config).limits
    rows: list[tuple[str, LimitSet]] = [("every user (default)", s.user)]
    rows += [(f"user {who}", ls) for who, ls in s.users.items()]
    rows += [(f"group {gid}", ls) for gid, ls in s.groups.items()]
    rows += [(f"model {m}", ls) for m, ls in s.models.items()]
    table = Table("scope", "requests/min", "tokens/min", "concurrent", "tokens/day")
    for scope, ls in rows:
        cells = (ls.requests_per_minute, ls.tokens_per_minute, ls.concurrent_requests, ls.daily_tokens)
        table.add_row(escape(scope), *("-" if c is None else f"{c:,}" for c in cells))
    out.print(table)
    out.print(
        f"When Redis is unreachable: fail {s.redis_failure}. Reserved when max_tokens is absent: "
        f"{s.default_max_tokens}. Admins exempt: {'yes' if s.exempt_admins else 'no'}."
    )
