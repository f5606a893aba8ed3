"""`hearth batch submit | list | status | results | cancel | make`: the OpenAI Batch API from a shell.

Parsing and printing only; the work is in :mod:`gateway.client.batch`. The credential is your
`hearth login` (its gateway), or an API key from ``--api-key`` / ``HEARTH_API_KEY`` (with the
gateway from ``--gateway`` / ``HEARTH_URL``, else your login's). A failure is one line on stderr
and a non-zero exit (2 when there is no credential to use).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.table import Column, Table
from rich.text import Text

from gateway.cli_login import ConfigDirOpt, _failures, _store
from gateway.client.api import gateway_root
from gateway.client.batch import (
    DEFAULT_MAX_FILE_BYTES,
    ENDPOINTS,
    TERMINAL,
    BatchClient,
    BatchInputError,
    BearerKey,
    Progress,
    looks_like_prompts,
    make_jsonl_from,
    parse_metadata,
    prepare_input,
    write_lines,
)
from gateway.client.login import NotLoggedIn, Session

__all__ = ["register"]

batch_app = typer.Typer(
    no_args_is_help=True, help="Run many requests as one OpenAI batch: submit, follow, fetch the results."
)
out = Console(soft_wrap=True)  # messages stay whole lines (ids and commands are copied from them)
err = Console(stderr=True, soft_wrap=True)
POLL_S = (1.0, 5.0)  # --wait polls after 1 s, then up to every 5 s while nothing changes

GatewayOpt = Annotated[
    str | None,
    typer.Option(
        "--gateway", envvar="HEARTH_URL", help="The gateway's URL (default: the one you logged in to)."
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="HEARTH_API_KEY", help="An API key (default: your `hearth login`)."),
]
EndpointOpt = Annotated[
    str, typer.Option(help=f"What every line calls: {', '.join(ENDPOINTS)}.")
]  # fmt: skip
ModelOpt = Annotated[str | None, typer.Option(help="The model every line asks for.")]
ColumnOpt = Annotated[
    str | None, typer.Option(help="CSV/TSV: the column of prompts (default: 'prompt', or the only one).")
]
IdColumnOpt = Annotated[
    str | None,
    typer.Option(
        help="CSV/TSV: the column of unique ids (default: 'custom_id' or 'id' if present, else row-N)."
    ),
]
SystemOpt = Annotated[str | None, typer.Option(help="A system prompt for every request (chat only).")]
MaxTokensOpt = Annotated[int | None, typer.Option(min=1, help="max_tokens of every request.")]
BatchIdArg = Annotated[str, typer.Argument(help="The batch id (batch_…), as `hearth batch list` shows it.")]


def register(app: typer.Typer) -> None:
    """Add `hearth batch …` to the `hearth` app."""
    app.add_typer(batch_app, name="batch")


@batch_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="Batch input (JSONL); with --make, prompts (.txt/.csv/.tsv).")],
    model: Annotated[
        str | None, typer.Option(help="Run every line on this model (replaces the model the lines name).")
    ] = None,
    endpoint: EndpointOpt = "/v1/chat/completions",
    metadata: Annotated[
        list[str] | None, typer.Option(help="key=value to label the batch with; repeatable (up to 16).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it with a progress bar until it ends.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="With --wait: download the results into this directory.", file_okay=False),
    ] = None,
    make: Annotated[
        bool,
        typer.Option("--make", help="FILE is prompts: turn it into batch JSONL first (as `batch make`)."),
    ] = False,
    column: ColumnOpt = None,
    id_column: IdColumnOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = None,
    max_file_mib: Annotated[
        int, typer.Option(min=1, help="Refuse larger files before uploading (the gateway's own limit rules).")
    ] = DEFAULT_MAX_FILE_BYTES // 2**20,
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Upload a batch input file and start a batch; with --wait, follow it to the end."""
    if endpoint not in ENDPOINTS:
        raise typer.BadParameter(f"one of {', '.join(ENDPOINTS)}", param_hint="--endpoint")
    if output is not None and not wait:
        raise typer.BadParameter(
            "only with --wait (later: `hearth batch results ID --output DIR`)", param_hint="--output"
        )
    if make and model is None:
        raise typer.BadParameter("--make needs --model", param_hint="--model")
    try:
        labels = parse_metadata(metadata or [])
    except BatchInputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metadata") from None
    if not make and looks_like_prompts(file):
        _fail(
            f"{file} looks like prompts, not batch JSONL: run `hearth batch make {file} --model M -o "
            f"{file.with_suffix('.jsonl')}` first, or add --make to convert it on the fly",
            2,
        )
    options = {"system": system, "max_tokens": max_tokens, "column": column, "id_column": id_column}
    with (
        _failures(),
        _inputs(),
        _client(gateway, api_key, config_dir) as api,
        tempfile.TemporaryDirectory() as tmp,
    ):
        prepared = prepare_input(file, Path(tmp), endpoint, model=model, make=options if make else None)
        check, path = prepared.check, prepared.path
        if check.problems:
            for problem in check.problems:
                err.print(f"  {escape(problem)}", highlight=False)
            hint = ""
            if check.problems[0] == "line 1 is not JSON":
                hint = (
                    "; if it holds prompts, `hearth batch make` turns them into batch JSONL (or add --make)"
                )
            _fail(f"{file} is not a batch input file{hint}")
        with err.status(f"Uploading {escape(file.name)}…"):
            uploaded = api.upload_file(path, filename=prepared.filename, max_bytes=max_file_mib * 2**20)
        size = _size(int(uploaded.get("bytes") or path.stat().st_size))
        out.print(f"Uploaded {escape(file.name)} ({check.lines:,} requests, {size}) as {uploaded['id']}.")
        batch = api.create_batch(str(uploaded["id"]), endpoint, metadata=labels or None)
        batch_id = str(batch["id"])
        out.print(f"Created batch [bold]{escape(batch_id)}[/bold] ({escape(str(batch.get('status')))}).")
        if not wait:
            out.print(
                f"Follow it with `hearth batch status {batch_id}`; when it ends, "
                f"`hearth batch results {batch_id}` downloads the results.",
                markup=False, highlight=False
            )  # fmt: skip
            return
        final = _follow(api, batch_id)
        _finish(api, final, output)


@batch_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Your batches, newest first."""
    with _failures(), _client(gateway, api_key, config_dir) as api:
        batches = list(api.list_batches(limit=limit))
    if not batches:
        out.print("No batches yet.")
        return
    ids, states = [str(b.get("id")) for b in batches], [str(b.get("status")) for b in batches]
    table = Table(
        Column("id", no_wrap=True, min_width=max(map(len, ids), default=2)),  # never cut: it is copied
        Column("status", no_wrap=True, min_width=max(map(len, states), default=6)),
        *(Column(name, justify="right", no_wrap=True, min_width=len(name)) for name in _COUNTS),
        Column("created (UTC)", no_wrap=True, min_width=16), Column("metadata", overflow="fold"),
        box=None, padding=(0, 1), pad_edge=False,  # like `squeue`: columns only
    )  # fmt: skip
    for b, batch_id, state in zip(batches, ids, states, strict=True):
        counts = b.get("request_counts") or {}
        labels = ", ".join(f"{k}={v}" for k, v in (b.get("metadata") or {}).items())
        table.add_row(
            batch_id, state, *(f"{counts.get(k, 0):,}" for k in _COUNTS), _when(b.get("created_at"))[:16],
            Text(labels),
        )  # fmt: skip
    out.print(table)


@batch_app.command("status")
def status(
    batch_id: BatchIdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object as JSON.")] = False,
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """One batch: its status, request counts, times, files and errors."""
    with _failures(), _client(gateway, api_key, config_dir) as api:
        batch = api.get_batch(batch_id)
    if as_json:
        print(json.dumps(batch, indent=2))
        return
    counts = batch.get("request_counts") or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [
        ("id", batch.get("id")),
        ("status", batch.get("status")),
        ("endpoint", batch.get("endpoint")),
        *([("model", batch["model"])] if batch.get("model") else []),  # newer OpenAI batches name it
        ("input file", batch.get("input_file_id")),
        ("requests", f"{counts.get('completed', 0):,} completed, {counts.get('failed', 0):,} failed "
                     f"of {counts.get('total', 0):,}"),
        *((label, _when(batch.get(f"{key}_at"))) for key, label in _TIMES if batch.get(f"{key}_at")),
        ("output file", batch.get("output_file_id")),
        ("error file", batch.get("error_file_id")),
        ("metadata", ", ".join(f"{k}={v}" for k, v in (batch.get("metadata") or {}).items())),
    ]  # fmt: skip
    for label, value in rows:
        grid.add_row(label, Text(str(value) if value not in (None, "") else "-"))
    out.print(grid)
    _print_errors(batch)


@batch_app.command("results")
def results(
    batch_id: BatchIdArg,
    output: Annotated[
        Path, typer.Option(help="Directory to write the files into.", file_okay=False)
    ] = Path(),
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Download a batch's output and error files: <id>.output.jsonl and <id>.errors.jsonl."""
    with _failures(), _inputs(), _client(gateway, api_key, config_dir) as api:
        batch = api.get_batch(batch_id)
        state = str(batch.get("status"))
        if state not in TERMINAL and not (batch.get("output_file_id") or batch.get("error_file_id")):
            _fail(
                f"batch {batch_id} is {state}: its results are written when it ends "
                f"(`hearth batch status {batch_id}`)"
            )
        if not _download(api, batch, output):
            _print_errors(batch)
            _fail(f"batch {batch_id} is {state} and has no result files")


@batch_app.command("cancel")
def cancel(
    batch_id: BatchIdArg,
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Cancel a batch: lines already finished are kept, the rest go to its error file (batch_cancelled)."""
    with _failures(), _client(gateway, api_key, config_dir) as api:
        batch = api.cancel_batch(batch_id)
    state = batch.get("status")
    if state not in ("cancelling", "cancelled"):  # it had ended already; the gateway changed nothing
        out.print(
            f"Batch {batch_id} is already {state}; there is nothing to cancel.", markup=False, highlight=False
        )
        return
    out.print(
        f"Batch {batch_id} is {state}: lines already finished are kept; the others end in its error file "
        f"as batch_cancelled. `hearth batch results {batch_id}` once it is cancelled.",
        markup=False, highlight=False,
    )  # fmt: skip


@batch_app.command("make")
def make(
    source: Annotated[
        Path, typer.Argument(help="Prompts: one a line (.txt), or a CSV/TSV with a header row.")
    ],
    model: ModelOpt = None,
    endpoint: EndpointOpt = "/v1/chat/completions",
    column: ColumnOpt = None,
    id_column: IdColumnOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSONL here (default: standard output).")
    ] = None,
) -> None:
    """Turn a text or CSV file of prompts into batch JSONL, one request a prompt."""
    with _inputs():
        lines = make_jsonl_from(
            source, model, endpoint=endpoint, system=system, max_tokens=max_tokens, column=column,
            id_column=id_column,
        )  # fmt: skip
        first = next(lines, None)
        if first is None:
            _fail(f"{source} has no prompts")
        lines = itertools.chain([first], lines)
        if output is not None:
            count = write_lines(lines, output)
        else:
            count = 0
            for line in lines:
                sys.stdout.write(line + "\n")
                count += 1
    where = f" in {output}" if output is not None else ""
    err.print(f"{count:,} requests for {endpoint}{escape(where)}.", highlight=False)
    if model is None:
        err.print(
            "The lines name no model: give --model to `hearth batch submit`.", markup=False, highlight=False
        )


# --- following a batch -------------------------------------------------------------------------

_COUNTS = ("completed", "failed", "total")
_TIMES = (
    ("created", "created"), ("in_progress", "started"), ("finalizing", "finalizing"),
    ("completed", "completed"), ("failed", "failed"), ("expired", "expired"),
    ("cancelling", "cancelling"), ("cancelled", "cancelled"), ("expires", "expires"),
)  # fmt: skip


def _follow(api: BatchClient, batch_id: str) -> dict[str, Any]:
    """Poll with a live progress bar; Ctrl-C stops following, not the batch."""
    bar = Bar(
        TextColumn("{task.description:<11}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[speed]}"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        console=err,
    )
    task = bar.add_task("validating", total=None, counts="", speed="", eta="")

    def show(p: Progress) -> None:
        bar.update(
            task, description=p.status, total=p.total or None, completed=p.done,
            counts=f"{p.completed:,} completed, {p.failed:,} failed of {p.total:,}",
            speed=f"{p.rate:,.1f} lines/s" if p.rate is not None else "",
            eta=f"ETA {_duration(p.eta)}" if p.eta is not None else "",
        )  # fmt: skip

    try:
        with bar:
            return api.wait(batch_id, show, interval=POLL_S[0], max_interval=POLL_S[1])
    except KeyboardInterrupt:
        err.print(
            f"Stopped waiting; batch {batch_id} keeps running. "
            f"Check it with `hearth batch status {batch_id}`, stop it with `hearth batch cancel {batch_id}`.",
            markup=False, highlight=False
        )  # fmt: skip
        raise typer.Exit(130) from None


def _finish(api: BatchClient, batch: dict[str, Any], output: Path | None) -> None:
    """The final status; the results downloaded (--output) or how to download them."""
    batch_id, state = str(batch.get("id")), str(batch.get("status"))
    counts = batch.get("request_counts") or {}
    took = ""
    if isinstance(batch.get("created_at"), int) and isinstance(batch.get(f"{state}_at"), int):
        took = f" in {_duration(batch[f'{state}_at'] - batch['created_at'])}"
    out.print(
        f"Batch {batch_id} {state}{took}: {counts.get('completed', 0):,} completed, "
        f"{counts.get('failed', 0):,} failed of {counts.get('total', 0):,}.",
        markup=False, highlight=False
    )  # fmt: skip
    _print_errors(batch)
    if output is not None:
        _download(api, batch, output)
    elif batch.get("output_file_id") or batch.get("error_file_id"):
        out.print(
            f"Download the results with `hearth batch results {batch_id}`.", markup=False, highlight=False
        )
    if state != "completed":
        raise typer.Exit(1)


def _download(api: BatchClient, batch: dict[str, Any], directory: Path) -> int:
    """The batch's output and error files into `directory`; how many there were."""
    directory.mkdir(parents=True, exist_ok=True)
    files = [(batch.get("output_file_id"), "output"), (batch.get("error_file_id"), "errors")]
    count = 0
    for file_id, kind in files:
        if not file_id:
            continue
        dest = directory / f"{batch.get('id')}.{kind}.jsonl"
        size = api.download_file(str(file_id), dest)
        out.print(f"Wrote {escape(str(dest))} ({_size(size)}).", highlight=False)
        count += 1
    return count


def _print_errors(batch: dict[str, Any]) -> None:
    """The batch's own errors (why it failed validation), not those of its lines."""
    errors = (batch.get("errors") or {}).get("data") or []
    for e in errors[:20]:
        where = f"line {e['line']}: " if e.get("line") else ""
        err.print(
            f"  {escape(where)}{escape(str(e.get('message')))} ({escape(str(e.get('code')))})",
            highlight=False,
        )
    if len(errors) > 20:
        err.print(
            f"  … and {len(errors) - 20:,} more (`hearth batch status {batch.get('id')} --json`)",
            markup=False,
        )


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def _client(gateway: str | None, api_key: str | None, config_dir: Path | None) -> Iterator[BatchClient]:
    """A client with the API key, or else the stored login (only ever sent to its own gateway)."""
    root = None
    if gateway is not None:
        try:
            root = gateway_root(gateway)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--gateway") from None
    if api_key:
        if root is None:
            login = _store(config_dir).load()
            if login is None:
                _fail("give --gateway URL (or HEARTH_URL) with --api-key", 2)
            root = login.gateway
        with BatchClient(root, auth=BearerKey(api_key)) as api:
            yield api
        return
    try:
        session = Session(_store(config_dir))
    except NotLoggedIn:
        _fail("not logged in: run `hearth login --gateway URL`, or give --api-key (or HEARTH_API_KEY)", 2)
    if root is not None and root != gateway_root(session.gateway):
        _fail(
            f"you are logged in to {session.gateway}, not {root}: give --api-key for {root}, "
            f"or run `hearth login --gateway {root}`",
            2,
        )
    with BatchClient(session.gateway, auth=session.auth()) as api:
        yield api


@contextmanager
def _inputs() -> Iterator[None]:
    """Problems with the user's files as one line on stderr."""
    try:
        yield
    except BatchInputError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")


def _fail(message: str, status: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(status)


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    """42s, 3m 05s, 2h 07m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"
