"""The `hearth` command. It parses arguments and calls library code; nothing else lives here."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from gateway.cli_admin import register as register_admin
from gateway.cli_batch import register as register_batch
from gateway.cli_login import ConfigDirOpt, keys_create_remote, keys_list_remote, keys_revoke_remote, register
from gateway.config import ConfigError, Settings, StaticKey, load_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Hearth: an OpenAI-compatible inference gateway for HPC."
)
config_app = typer.Typer(no_args_is_help=True, help="Check configuration files.")
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (stored hashed; shown once).")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
slurm_app = typer.Typer(no_args_is_help=True, help="Inspect the Slurm jobs Hearth submits.")
app.add_typer(slurm_app, name="slurm")
endpoint_app = typer.Typer(no_args_is_help=True, help="Set up a site's Globus Compute endpoint for Hearth.")
app.add_typer(endpoint_app, name="endpoint")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="hearth.yaml", exists=True, dir_okay=False)
]


def _load(path: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(path, **overrides)
    except ConfigError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    upstream: Annotated[
        list[str] | None, typer.Option(help="An OpenAI-compatible base URL ending in /v1; repeatable.")
    ] = None,
    upstream_api_key: Annotated[
        str | None,
        typer.Option(
            help="Bearer key the upstreams require (vLLM --api-key).", envvar="HEARTH_UPSTREAM_API_KEY"
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="Accept this key (in addition to stored keys).", envvar="HEARTH_API_KEY"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Run the gateway, from a config file or in front of existing OpenAI-compatible servers."""
    from gateway.server import serve as run

    overrides: dict[str, Any] = {}
    server = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if server:
        overrides["server"] = server
    if upstream:
        entries = [
            {"url": u, **({"api_key": upstream_api_key} if upstream_api_key else {})} for u in upstream
        ]
        overrides["clusters"] = {"upstream": {"upstreams": entries}}
    settings = _load(config, **overrides)
    if api_key:  # in addition to the keys the config file lists
        settings.auth.api_keys.append(StaticKey(owner="local", key=SecretStr(api_key), admin=True))
    if not settings.clusters:
        err.print("[red]No upstreams: give --upstream URL or a --config with clusters.[/red]")
        raise typer.Exit(2)
    run(settings)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Key clients use; one is made if omitted.")] = None,
    model: Annotated[str, typer.Option(help="Name of the simulated model.")] = "sim-model",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    data_dir: Annotated[Path, typer.Option(help="Where the SQLite store lives.")] = Path("var/demo"),
) -> None:
    """Gateway + one local 'cluster' running the simulated engine, on embedded defaults."""
    from endpoints.launcher import LocalProcess, free_port, sim_argv
    from gateway.server import serve as run

    key = api_key or "sk-" + secrets.token_urlsafe(24)
    worker_key = secrets.token_urlsafe(24)  # only the gateway may use the worker
    sim_port = free_port()
    worker = LocalProcess(
        sim_argv(model=model, port=sim_port, api_key=worker_key),
        f"http://127.0.0.1:{sim_port}/health",
    )
    with out.status("Starting the simulated engine…"):
        worker.start()
    settings = _load(
        None,
        server={"host": host, "port": port},
        store={"url": f"sqlite:///{data_dir.resolve() / 'hearth.db'}"},
        clusters={
            "local": {
                "upstreams": [
                    {
                        "name": "sim",
                        "url": f"http://127.0.0.1:{sim_port}/v1",
                        "api_key": worker_key,
                    }
                ]
            }
        },
        auth={"api_keys": [{"owner": "demo", "key": key, "admin": True}]},
    )
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    out.print(
        f"[bold]Hearth demo[/bold] on http://{shown}:{port}/v1 — model [cyan]{escape(model)}[/cyan] is the "
        "[yellow]simulated engine[/yellow] (fake text, real timing), not a language model.\n"
        f"API key: [green]{escape(key)}[/green]\n",
        soft_wrap=True,
    )
    snippet = f"""from openai import OpenAI
client = OpenAI(base_url="http://{shown}:{port}/v1", api_key="{key}")
reply = client.chat.completions.create(
    model="{model}", messages=[{{"role": "user", "content": "Hello!"}}])
print(reply.choices[0].message.content)
"""
    out.print(snippet, markup=False, highlight=False, soft_wrap=True)
    # uvicorn re-raises SIGTERM after its shutdown; turn it into SystemExit so the worker is
    # stopped below instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(settings)
    finally:
        worker.stop()


@app.command()
def models(
    url: Annotated[
        str, typer.Option(help="The gateway's base URL.", envvar="HEARTH_URL")
    ] = "http://127.0.0.1:8000/v1",
    api_key: Annotated[
        str | None,
        typer.Option(help="Your key (or HEARTH_API_KEY / OPENAI_API_KEY).", envvar="HEARTH_API_KEY"),
    ] = None,
) -> None:
    """Models and where they run: hot, starting, queued, cold or offline, per cluster."""
    import json
    import os
    import urllib.error
    import urllib.request

    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        err.print("[red]Give --api-key (or set HEARTH_API_KEY / OPENAI_API_KEY).[/red]")
        raise typer.Exit(2)
    if not url.startswith(("http://", "https://")):
        err.print(f"[red]{escape(url)} is not an http(s) URL.[/red]")
        raise typer.Exit(2)
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        f"{url.rstrip('/')}/status", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - the admin's URL
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        err.print(f"[red]{escape(url)} answered HTTP {exc.code}: {escape(detail)}[/red]")
        raise typer.Exit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        err.print(f"[red]Cannot reach {escape(url)}: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    table = Table(
        "model", "cluster", "state", "ready", "starting", "queued", "in flight", "waiting", "est. wait"
    )
    for model in data.get("models", []):
        for c in model["clusters"]:
            table.add_row(
                Text(model["model"]), Text(c["cluster"]), c["state"], str(c["ready"]), str(c["starting"]),
                str(c["queued"]), str(c["in_flight"]), str(c.get("queue_depth", 0)),
                _wait_text(c.get("estimated_wait_s"), c["state"]),
            )  # fmt: skip
    out.print(table)


def _wait_text(seconds: float | None, state: str) -> str:
    """The estimated wait as a person reads it: "-" when hot, "?" when it cannot be told."""
    if state == "hot":
        return "-"
    if seconds is None:
        return "?"
    return f"~{round(seconds)} s" if seconds < 120 else f"~{round(seconds / 60)} min"


@app.command()
def sim(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    model: Annotated[str, typer.Option(help="Model name to answer to.")] = "sim-model",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    ttft_ms: Annotated[float, typer.Option(help="Delay before the first token.")] = 50.0,
    itl_ms: Annotated[float, typer.Option(help="Delay between tokens.")] = 10.0,
    max_concurrency: Annotated[int, typer.Option(help="Requests run at once; the rest queue.")] = 64,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key on /v1.")] = None,
    max_model_len: Annotated[int, typer.Option(help="Context length it claims.")] = 4096,
    default_max_tokens: Annotated[int, typer.Option(help="Tokens when a request sets no limit.")] = 16,
    embedding_dim: Annotated[int, typer.Option(help="Length of embedding vectors.")] = 64,
    fail_status: Annotated[
        int | None, typer.Option(help="Fault injection: answer every /v1 request with this status.")
    ] = None,
) -> None:
    """Run the simulated engine alone: a vLLM-like OpenAI server producing fake tokens."""
    from endpoints.engines.sim import SimConfig, run_sim

    config = SimConfig(
        model=model, ttft_ms=ttft_ms, itl_ms=itl_ms, max_concurrency=max_concurrency, api_key=api_key,
        max_model_len=max_model_len, default_max_tokens=default_max_tokens, embedding_dim=embedding_dim,
        fail_status=fail_status,
    )  # fmt: skip
    run_sim(config, host=host, port=port)


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The hearth.yaml to validate.")],
) -> None:
    """Validate a config file; name each bad key and the reason."""
    try:
        settings = load_settings(file)
    except ConfigError as exc:
        table = Table("key", "problem", title=f"{exc.source} is not valid", title_style="red")
        for key, reason in exc.problems:
            table.add_row(Text(key), Text(reason))
        out.print(table)
        raise typer.Exit(1) from None
    n_up = sum(len(c.upstreams) for c in settings.clusters.values())
    out.print(
        f"[green]{escape(str(file))} is valid[/green]: {len(settings.clusters)} cluster(s), "
        f"{n_up} upstream(s), {len(settings.models)} model rule(s)."
    )


@keys_app.command("create")
def keys_create(
    owner: Annotated[str | None, typer.Option(help="With --config: the identity the key acts as.")] = None,
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    expires: Annotated[str | None, typer.Option(help="Lifetime (30d, 12h, 90m) or an ISO date.")] = None,
    config: ConfigOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Create a key: your own through the gateway, or (with --config) anyone's in the store.

    The key is printed once and only its hash is kept."""
    expires_at = parse_expiry(expires) if expires else None
    if not _use_store(config):
        if owner is not None:
            raise typer.BadParameter("only with --config: a key made through the gateway is yours")
        return keys_create_remote(name, expires_at, config_dir)
    if owner is None:
        raise typer.BadParameter("--owner is required with --config")
    from gateway.store.keys import KeyStore

    async def create() -> tuple[Any, str]:
        async with _store(config) as db:
            info, plaintext = await KeyStore(db).create(owner, name, expires_at)
            await _audit(db, "key.create", info.id, f"owner={owner!r} name={name!r}")
            return info, plaintext

    info, plaintext = asyncio.run(create())
    out.print(
        f"Created key [bold]{info.id}[/bold] for {escape(info.owner)} ({escape(info.name)})"
        + (f", expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else "")
        + "."
    )
    out.print("Store it now; it cannot be shown again:")
    print(plaintext)


@keys_app.command("list")
def keys_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None,
    all_keys: Annotated[
        bool, typer.Option("--all", help="With --config: include revoked keys; else everyone's (admins).")
    ] = False,
    config: ConfigOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """List keys (never their secrets): yours through the gateway, or (with --config) the store's."""
    if not _use_store(config):
        return keys_list_remote(all_keys, owner, config_dir)
    from gateway.store.keys import KeyStore

    async def fetch() -> list[Any]:
        async with _store(config) as db:
            return await KeyStore(db).list(owner, include_revoked=all_keys)

    table = Table("name", "owner", "created", "expires", "last used", "state")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=12))  # revoke needs the whole id
    for k in asyncio.run(fetch()):
        state = (
            "revoked"
            if k.revoked_at
            else ("expired" if k.expires_at and k.expires_at <= datetime.now(UTC) else "active")
        )
        dates = (_when(k.created_at), _when(k.expires_at), _when(k.last_used_at))
        table.add_row(k.id, Text(k.name), Text(k.owner), *dates, state)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `hearth keys list`.")],
    config: ConfigOpt = None,
    config_dir: ConfigDirOpt = None,
) -> None:
    """Revoke a key; it stops working within the key cache TTL on every gateway."""
    if not _use_store(config):
        return keys_revoke_remote(key_id, config_dir)
    from gateway.store.keys import KeyStore

    async def revoke() -> str:
        async with _store(config) as db:
            keys = KeyStore(db)
            info = await keys.get(key_id)
            if info is None:
                return "missing"
            if info.revoked_at is not None:
                return "already"
            await keys.revoke(key_id)
            await _audit(db, "admin.key.revoke", key_id, f"owner={info.owner!r}")
            return "revoked"

    outcome = asyncio.run(revoke())
    if outcome == "missing":
        err.print(f"[red]No key {escape(key_id)}.[/red]")
        raise typer.Exit(1)
    out.print(
        f"{key_id} was already revoked." if outcome == "already" else f"Revoked {key_id}.", markup=False
    )


@slurm_app.command("render")
def slurm_render(
    template: Annotated[str, typer.Argument(help="Which job: worker.")],
    model: Annotated[str, typer.Option(help="A model of the site config.")],
    site_config: Annotated[
        Path | None,
        typer.Option(help="The site's site.yaml (default: $HEARTH_SITE_CONFIG or ~/.hearth/site.yaml)."),
    ] = None,
    cluster: Annotated[str | None, typer.Option(help="Check that the site config is this cluster's.")] = None,
) -> None:
    """Print the exact batch script Hearth would submit, to read or to `sbatch` by hand."""
    from endpoints.site import SiteConfigError, load_site
    from endpoints.workers import WorkerError, render_worker

    if template != "worker":
        err.print(f"[red]Unknown template {escape(template)!r}: only 'worker' is rendered per model.[/red]")
        raise typer.Exit(2)
    try:
        site = load_site(site_config)
        if cluster is not None and cluster != site.cluster:
            raise SiteConfigError(f"the site config is for cluster {site.cluster!r}, not {cluster!r}")
        script = render_worker(site, model, "wPREVIEW0000", site.keys_dir / "wPREVIEW0000.key")
    except (SiteConfigError, WorkerError) as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    print(script, end="")
    key_file = site.keys_dir / "wPREVIEW0000.key"
    err.print(
        f"To sbatch this by hand, create the worker's key file first: "
        f"(umask 077; openssl rand -hex 32 > {key_file}). Hearth does not track jobs submitted by hand.",
        markup=False,
        highlight=False,
    )


@endpoint_app.command("register-functions")
def endpoint_register_functions(
    endpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Write the endpoint's config.yaml and engine template into this directory."),
    ] = None,
    worker_init: Annotated[str, typer.Option(help="Shell lines that activate Hearth's environment.")] = "",
    access_token: Annotated[
        str | None,
        typer.Option(
            help="A Globus Compute access token; without one you are asked to log in.",
            envvar="HEARTH_COMPUTE_ACCESS_TOKEN",
        ),
    ] = None,
) -> None:
    """Register Hearth's site functions with Globus Compute; print the ids for hearth.yaml."""
    from endpoints.registration import endpoint_files, register, with_compute_client, with_sdk_client

    if access_token:
        import globus_sdk

        compute = globus_sdk.ComputeClientV3(authorizer=globus_sdk.AccessTokenAuthorizer(access_token))
        register_one = with_compute_client(compute)
    else:
        from globus_compute_sdk import Client

        register_one = with_sdk_client(Client())
    with out.status("Registering Hearth's site functions…"):
        ids = register(register_one)
    table = Table("function", "id", title="Registered with Globus Compute")
    for name, fid in ids.items():
        table.add_row(name, fid)
    out.print(table)
    out.print("Put these in hearth.yaml under clusters.<name>.compute:", markup=False)
    print("      function_ids:")
    for name, fid in ids.items():
        print(f"        {name}: {fid}")
    if endpoint_dir is not None:
        endpoint_dir.mkdir(parents=True, exist_ok=True)
        for name, text in endpoint_files(ids, worker_init=worker_init).items():
            (endpoint_dir / name).write_text(text)
        out.print(f"Wrote {escape(str(endpoint_dir))}/config.yaml (allowed_functions: these ids only)")
        out.print(f"and {escape(str(endpoint_dir))}/user_config_template.yaml.j2 (the engine).")


def _use_store(config: Path | None) -> bool:
    """The keys commands work on the store with --config (or HEARTH_STORE__URL), else on the gateway."""
    import os

    return config is not None or bool(os.environ.get("HEARTH_STORE__URL"))


async def _audit(db: Any, action: str, target: str, detail: str) -> None:
    """Record an admin action taken on the store directly (actor: cli:<login name>)."""
    import getpass

    from gateway.store.audit import AuditLog

    audit = AuditLog(db)
    audit.log(f"cli:{getpass.getuser()}", action, "ok", target=target, detail=detail)
    await audit.flush()


class _store:
    """The configured store, migrated, for one CLI command."""

    def __init__(self, config: Path | None) -> None:
        from gateway.store.database import Database

        self.db = Database(_load(config).store.url)

    async def __aenter__(self) -> Any:
        await self.db.migrate()
        return self.db

    async def __aexit__(self, *exc: object) -> None:
        await self.db.close()


_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """'30d' / '12h' / '90m' from now, or an ISO date/time (UTC if no zone)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip().lower())
    if m:
        if int(m.group(1)) == 0:
            raise typer.BadParameter(f"{text!r} would expire at once")
        return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 30d or an ISO date") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= now:
        raise typer.BadParameter(f"{text!r} is in the past")
    return when


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


register(app)  # login, whoami, token, logout (gateway/cli_login.py)
register_admin(app)  # admin usage, audit, limits (gateway/cli_admin.py)
register_batch(app)  # batch submit, list, status, results, cancel, make (gateway/cli_batch.py)


def main() -> None:
    app(prog_name="hearth")


if __name__ == "__main__":
    main()
