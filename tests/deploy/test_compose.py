"""deploy/compose (two gateways, nginx, PostgreSQL, Redis, Prometheus, Grafana), the Grafana
dashboard and the alert rules must fit together: every file they name exists, the names and
ports they share agree, the gateway config validates with the variables of .env.example, and
every query uses only the gateway's metrics and their labels. No container is started."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import ServerSettings, load_settings
from gateway.metrics import GatewayMetrics
from tests.support.dashboard_metrics import DASHBOARD_METRICS
from tests.support.nginx import nginx_test

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
NGINX_CONF = COMPOSE_DIR / "nginx" / "hearth.conf"
DASHBOARD = DEPLOY / "grafana" / "hearth-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "hearth-alerts.yml"
GUIDE = ROOT / "docs" / "admin" / "deploy.md"

GATEWAYS = ("gateway-1", "gateway-2")
SERVE = ["hearth", "serve", "--config", "/etc/hearth/hearth.yaml"]
PLACEHOLDER = "CHANGE-ME"

# The gateway's metrics and their labels: what the dashboard and the alerts may query; `up` is
# Prometheus's own.
METRICS: dict[str, set[str]] = {name: set(labels) for name, labels in DASHBOARD_METRICS.items()}
PROMETHEUS_OWN: dict[str, set[str]] = {"up": set()}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


# ---------------------------------------------------------------- helpers


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads a .env file (comments and blank lines skipped)."""
    env = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{n}: not KEY=VALUE: {raw!r}"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}:{n}: bad variable name {key!r}"
        assert key not in env, f"{path.name}:{n}: {key} given twice"
        env[key] = value.strip().strip("'\"")
    return env


_VAR = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


def _strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML document (compose interpolates values, not keys)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _variables(node: Any) -> dict[str, str]:
    """The variables compose would read, each with its operator ("" plain, ":-", ":?" ...)."""
    found = {}
    for text in _strings(node):
        for m in _VAR.finditer(text):
            if m.group(0) != "$$":
                found[m["braced"] or m["plain"]] = m["op"] or ""
    return found


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}, $$."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["braced"] or m["plain"], m["op"] or "", m["arg"] or ""
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if unset and op.endswith("-"):
            return arg
        if unset and op.endswith("?"):
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        return value or ""

    if isinstance(node, str):
        return _VAR.sub(one, node)
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    return node


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _bind_mounts(service: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Container path -> (host path, options) of the service's bind mounts (not named volumes)."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *opts = spec.split(":")
        if source.startswith((".", "/")):
            mounts[target] = ((COMPOSE_DIR / source).resolve(), ",".join(opts))
    return mounts


def _seconds(text: str) -> float:
    """A compose duration (90s, 2m, 1m30s) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _promql(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The series selectors of a PromQL expression (metric name, label names matched) and the
    label names of its grouping clauses (by, without, on, ignoring, group_left/right).

    A small lexer, enough for the queries of the dashboard and the alert rules."""
    token = re.compile(
        r'\s+|(?P<str>"(?:\\.|[^"\\])*")|(?P<range>\[[^\]]*\])|(?P<brace>\{[^}]*\})'
        r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<op>.)"
    )
    tokens = [(m.lastgroup, m.group()) for m in token.finditer(expr) if m.lastgroup]
    grouping = {"by", "without", "on", "ignoring", "group_left", "group_right"}
    operators = {"and", "or", "unless", "bool", "offset", "sum", "min", "max", "avg", "count", "group"}
    selectors: list[tuple[str, set[str]]] = []
    grouped: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in grouping and after == "(":
            close = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
            grouped |= {t for k, t in tokens[i + 2 : close] if k == "ident"}
            i = close
        elif kind == "ident" and text not in operators and after != "(":
            labels = set()
            if after.startswith("{"):
                labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", after))
            selectors.append((text, labels))
        i += 1
    return selectors, grouped


def _check_query(expr: str, where: str) -> set[str]:
    """Assert `expr` only selects known metrics with their own labels; return the metrics."""
    known = METRICS | PROMETHEUS_OWN
    selectors, grouped = _promql(expr)
    assert selectors, f"{where}: no metric in {expr!r}"
    names = {name for name, _ in selectors}
    assert names <= set(known), f"{where}: unknown metric(s) {sorted(names - set(known))} in {expr!r}"
    histogram = any(n.endswith("_bucket") for n in names)
    for name, labels in selectors:
        allowed = known[name] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        assert labels <= allowed, f"{where}: {name} has no label(s) {sorted(labels - allowed)}"
    allowed = set().union(*(known[n] for n in names)) | TARGET_LABELS | ({"le"} if histogram else set())
    assert grouped <= allowed, f"{where}: grouping by unknown label(s) {sorted(grouped - allowed)}"
    return names


def _nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return tuple(int(p) for p in m.groups())


# ---------------------------------------------------------------- the compose file


def test_compose_has_the_services() -> None:
    services = _services()
    assert set(services) == {*GATEWAYS, "nginx", "postgres", "redis", "prometheus", "grafana"}
    for name, svc in services.items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: pin the image tag ({image})"
        assert not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    # Only nginx faces the network; Prometheus and Grafana are bound to the loopback interface.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if name != "nginx":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def test_gateway_replicas_run_hearth_serve() -> None:
    services = _services()
    for name in GATEWAYS:
        svc = services[name]
        assert svc["command"] == SERVE, name
        assert svc["build"]["dockerfile"] == "deploy/compose/Dockerfile"
        assert (COMPOSE_DIR / svc["build"]["context"]).resolve() == ROOT
        mounts = _bind_mounts(svc)
        assert mounts["/etc/hearth/hearth.yaml"] == (COMPOSE_DIR / "hearth.yaml", "ro")
        # SIGTERM: open requests finish, then the usage records are written (30 s at most).
        assert _seconds(svc["stop_grace_period"]) >= 60, f"{name}: Docker's 10 s would cut the flush"
        probe = " ".join(svc["healthcheck"]["test"])
        assert "http://127.0.0.1:8000/health" in probe, probe
        assert svc.get("user") in (None, "hearth"), "the image runs as hearth"
    # The two replicas are the same service twice (one YAML anchor), not two drifting copies.
    assert services[GATEWAYS[0]] == services[GATEWAYS[1]]


def test_every_service_is_health_checked_and_waits_for_what_it_needs() -> None:
    services = _services()
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test") or [None]
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert how == {"condition": "service_healthy"}, f"{name} -> {dep}: wait until it is healthy"
    needs = {name: set(svc.get("depends_on", {})) for name, svc in services.items()}
    for name in GATEWAYS:
        assert needs[name] == {"postgres", "redis"}
    assert needs["nginx"] == set(GATEWAYS)
    assert needs["grafana"] == {"prometheus"}


def test_env_example_lists_exactly_the_variables_compose_reads() -> None:
    used = _variables(_compose())
    listed = _env_file(ENV_EXAMPLE)
    assert set(used) == set(listed), (
        f"read by compose.yaml but not in .env.example: {sorted(set(used) - set(listed))}; "
        f"in .env.example but never read: {sorted(set(listed) - set(used))}"
    )
    # Secrets have no default in compose.yaml (":?" stops compose when unset) and only a
    # placeholder in the example.
    for name in ("POSTGRES_PASSWORD", "HEARTH_STORE__URL", "GRAFANA_ADMIN_PASSWORD"):
        assert used[name] == ":?", f"{name} must be required (${{{name}:?...}})"
        assert PLACEHOLDER in listed[name], f"{name} in .env.example should be a {PLACEHOLDER} placeholder"


def test_compose_file_interpolates_with_the_example_env() -> None:
    resolved = _interpolate(_compose(), _env_file(ENV_EXAMPLE))
    assert "$" not in json.dumps(resolved).replace("$$", "")
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        _interpolate(
            _compose(), {k: v for k, v in _env_file(ENV_EXAMPLE).items() if k != "POSTGRES_PASSWORD"}
        )


def test_no_secrets_outside_the_example_files() -> None:
    userinfo_password = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
    admins_own = {COMPOSE_DIR / ".env", COMPOSE_DIR / "certs"}  # git ignores them (checked below)
    files = [
        p
        for d in ("compose", "systemd", "grafana", "prometheus")
        for p in (DEPLOY / d).rglob("*")
        if p.is_file() and not p.name.endswith(".example") and not admins_own & {p, *p.parents}
    ]
    assert COMPOSE in files
    for path in files:
        text = path.read_text()
        assert PLACEHOLDER not in text, f"{path.relative_to(ROOT)}: placeholders belong in *.example files"
        assert not userinfo_password.search(text), f"{path.relative_to(ROOT)}: a password in a URL"
    ignored = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert {".env", "certs/"} <= set(ignored), "git must ignore the admin's .env and keys"


def test_bind_mounts_exist() -> None:
    for name, svc in _services().items():
        for target, (source, opts) in _bind_mounts(svc).items():
            assert "ro" in opts.split(","), f"{name}: mount {target} read-only"
            if source == COMPOSE_DIR / "certs":
                continue  # made by make-self-signed-cert.sh or the admin (git ignores it)
            assert source.exists(), f"{name}: {source.relative_to(ROOT)} (mounted at {target}) is missing"


# ---------------------------------------------------------------- the gateway's config


@pytest.fixture
def gateway_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a gateway container built from .env.example, applied to this process."""
    for name in list(os.environ):
        if name.upper().startswith("HEARTH_"):
            monkeypatch.delenv(name)
    service = _interpolate(_services()[GATEWAYS[0]], _env_file(ENV_EXAMPLE))
    env = _environment(service)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_gateway_config_validates_with_the_compose_environment(gateway_env: dict[str, str]) -> None:
    settings = load_settings(COMPOSE_DIR / "hearth.yaml")
    assert settings.store.url == gateway_env["HEARTH_STORE__URL"], "the env URL (with password) wins"
    assert settings.store.migrate_on_start, "upgrades rely on migrations at start"
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8000
    assert settings.server.max_body_bytes == ServerSettings().max_body_bytes
    assert (settings.server.callback_url or "").startswith("https://")
    assert urlsplit(settings.redis.url or "").hostname in _services()
    assert settings.clusters, "hearth serve refuses to start without a cluster"


def test_database_url_matches_the_postgres_service(gateway_env: dict[str, str]) -> None:
    env = _env_file(ENV_EXAMPLE)
    url = urlsplit(gateway_env["HEARTH_STORE__URL"])
    postgres = _environment(_interpolate(_services()["postgres"], env))
    assert url.scheme.startswith("postgresql")
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]


# ---------------------------------------------------------------- the image


def _dockerfile() -> list[tuple[str, str]]:
    text = (COMPOSE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [(w.upper(), rest) for w, _, rest in (ln.partition(" ") for ln in lines if ln and ln[0] != "#")]


def _dockerignored(path: str) -> bool:
    """Whether Dockerfile.dockerignore leaves `path` out of the build context (last match wins;
    a pattern also matches the path's parent folders, as Docker's matcher does)."""

    def glob(pattern: str) -> re.Pattern[str]:
        rx = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.compile(rx)

    ignored = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!")
        if any(glob(pattern).fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_installs_from_the_lock_and_runs_unprivileged() -> None:
    steps = _dockerfile()
    bases = [rest.split()[0] for op, rest in steps if op == "FROM"]
    lock = (ROOT / "requirements" / "runtime.lock").read_text()
    python = re.search(r"--python-version (\d+\.\d+)", lock)
    assert python, "the lock says which Python it was compiled for"
    assert bases, "no FROM"
    assert all(b.startswith(f"python:{python[1]}-") for b in bases), bases
    runs = " ".join(rest for op, rest in steps if op == "RUN")
    assert re.search(r"pip install --require-hashes -r \S*runtime\.lock", runs)
    assert "pip install --no-deps" in runs
    users = [rest for op, rest in steps if op == "USER"]
    assert users, "no USER: the gateway would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), "the gateway must not run as root"
    health = next(rest for op, rest in steps if op == "HEALTHCHECK")
    assert "/health" in health
    assert json.loads(next(rest for op, rest in steps if op == "CMD")) == SERVE


def test_dockerfile_copies_only_what_exists_and_is_in_the_context() -> None:
    copies = [rest.split() for op, rest in _dockerfile() if op == "COPY" and "--from=" not in rest]
    sources = [src for args in copies for src in args[:-1]]
    assert {"requirements/runtime.lock", "gateway"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
        assert not _dockerignored(src), f"COPY {src}: left out of the build context by the .dockerignore"
    for heavy in (".venv", ".git", "tests", "var/hearth.db", "gateway/__pycache__"):
        assert _dockerignored(heavy), f"{heavy} should stay out of the build context"


# ---------------------------------------------------------------- nginx and certificates


def _nginx_block(text: str, head: str) -> str:
    """The body of the first `head { ... }` block (no nested braces inside)."""
    m = re.search(re.escape(head) + r"\s*\{([^{}]*)\}", text)
    assert m, f"no `{head}` block"
    return m.group(1)


def _directives(body: str) -> list[list[str]]:
    body = re.sub(r"#[^\n]*", "", body)
    return [stmt.split() for stmt in body.split(";") if stmt.strip()]


def test_nginx_balances_both_replicas_and_streams() -> None:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    upstream = _directives(_nginx_block(text, "upstream hearth_gateway"))
    servers = {d[1] for d in upstream if d[0] == "server"}
    assert servers == {f"{g}:8000" for g in GATEWAYS}
    assert any(d[0] == "keepalive" for d in upstream)
    stmts = {" ".join(d) for d in _directives(text.replace("{", ";").replace("}", ";"))}
    for needed in (
        "proxy_pass http://hearth_gateway",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_buffering off",
        "proxy_read_timeout 3600s",
        "proxy_set_header X-Request-ID $hearth_request_id",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
        "ssl_protocols TLSv1.2 TLSv1.3",
        "return 301 https://$host$request_uri",
        "ssl_certificate /etc/nginx/certs/fullchain.pem",
        "ssl_certificate_key /etc/nginx/certs/privkey.pem",
    ):
        assert needed in stmts, f"nginx/hearth.conf lacks `{needed};`"
    # X-Request-ID: the client's, else nginx's own $request_id.
    request_id = _directives(_nginx_block(text, "map $http_x_request_id $hearth_request_id"))
    assert ['""', "$request_id"] in request_id
    body = re.search(r"client_max_body_size (\d+)([km]?);", text)
    assert body, "client_max_body_size is not set"
    size = int(body[1]) * {"": 1, "k": 1024, "m": 1024**2}[body[2]]
    assert size == ServerSettings().max_body_bytes, "nginx must accept what the gateway accepts"
    # The certificates are mounted where the config reads them.
    assert _bind_mounts(_services()["nginx"])["/etc/nginx/certs"][0] == COMPOSE_DIR / "certs"


def test_self_signed_certificate_script(tmp_path: Path) -> None:
    script = COMPOSE_DIR / "make-self-signed-cert.sh"
    assert script.stat().st_mode & stat.S_IXUSR, "the script must be executable"
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: the script was not run")
    copy = tmp_path / script.name
    shutil.copy2(script, copy)
    run = subprocess.run([str(copy), "hearth.test"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    key, cert = tmp_path / "certs" / "privkey.pem", tmp_path / "certs" / "fullchain.pem"
    assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0, "the private key must be private"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:hearth.test" in text
    assert "127.0.0.1" in text
    again = subprocess.run([str(copy)], capture_output=True, text=True, check=False)
    assert again.returncode != 0, "an existing key must not be overwritten"
    assert "FORCE=1" in again.stderr


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not nginx:
        pytest.skip("nginx is not installed: `nginx -t` not run")
    if _nginx_version(nginx) < (1, 27, 3):
        pytest.skip("the local nginx predates 1.27.3, which the config's `server ... resolve` needs")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: no certificate for `nginx -t`")
    check = nginx_test(nginx, NGINX_CONF.read_text(), "/etc/nginx/certs/", tmp_path)
    assert check.returncode == 0, check.stderr


# ---------------------------------------------------------------- Prometheus and Grafana


def _prometheus() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_prometheus_scrapes_both_replicas_and_loads_the_alerts() -> None:
    services, prom = _services(), _prometheus()
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    gateway = jobs["hearth-gateway"]
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in gateway["static_configs"] for t in sc["targets"]}
    assert targets == {
        f"{g}:{svc['expose'][0]}" for g, svc in services.items() if svc.get("command") == SERVE
    }
    for job in jobs.values():
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                assert target.split(":")[0] in {*services, "localhost"}, f"{target}: not a compose service"
    mounts = _bind_mounts(services["prometheus"])
    rules = [t for t, (src, _) in mounts.items() if src == ALERTS]
    assert rules, "deploy/prometheus/hearth-alerts.yml is not mounted into Prometheus"
    assert any(PurePosixPath(rules[0]).match(pattern) for pattern in prom["rule_files"])
    assert mounts["/etc/prometheus/prometheus.yml"][0] == COMPOSE_DIR / "prometheus" / "prometheus.yml"


def test_grafana_is_provisioned_and_closed_to_anonymous_users() -> None:
    grafana = _services()["grafana"]
    env = _environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert _variables(env["GF_SECURITY_ADMIN_PASSWORD"]) == {"GRAFANA_ADMIN_PASSWORD": ":?"}
    mounts = _bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"][0]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(source["url"])
    prometheus_port = _services()["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert (url.hostname, str(url.port)) == ("prometheus", prometheus_port)
    assert source["type"] == "prometheus"
    assert source["isDefault"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "hearth.yml").read_text())["providers"]
    dashboards = [t for t, (src, _) in mounts.items() if src == DASHBOARD]
    assert dashboards, "the dashboard is not mounted into Grafana"
    assert PurePosixPath(dashboards[0]).parent == PurePosixPath(provider["options"]["path"])


# ---------------------------------------------------------------- the dashboard


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels() -> list[dict[str, Any]]:
    out = []
    for panel in _dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows hold their panels
    return out


def test_dashboard_structure() -> None:
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"]
    assert dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("model", "cluster"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${DS_PROMETHEUS}"
        query = variables[name]["query"]
        assert variables[name].get("definition", query) == query
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert m, query
        assert m[2] == name, query
        _check_query(m[1], f"variable {name}")
        assert name in METRICS[_promql(m[1])[0][0][0]]
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0, f"{p['title']}: outside the 24-column grid"
        assert g["x"] + g["w"] <= 24, f"{p['title']}: outside the 24-column grid"
        cells = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_dashboard_queries_use_exactly_the_gateway_metrics() -> None:
    used: set[str] = set()
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            used |= _check_query(target["expr"], panel["title"])
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                grouped = _promql(target["expr"])[1]
                assert label in grouped, f"{panel['title']}: legend {{{{{label}}}}} is not a grouped label"
    assert set(METRICS) <= used, f"metrics without a panel: {sorted(set(METRICS) - used)}"


def test_gateway_metrics_are_on_the_dashboard() -> None:
    """Every metric the gateway registers has its series in METRICS (so on the dashboard)."""
    suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}
    exported = {f.name + suffix[f.type] for f in GatewayMetrics().registry.collect()}
    assert exported, "the gateway registers no metrics?"
    assert exported <= set(METRICS), f"not on the dashboard: {sorted(exported - set(METRICS))}"


# ---------------------------------------------------------------- alert rules


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed_and_use_the_gateway_metrics() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    used: dict[str, set[str]] = {}
    for rule in rules:
        assert re.fullmatch(r"Hearth[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            _seconds(rule["for"])
        used[rule["alert"]] = _check_query(rule["expr"], rule["alert"])
    every = set().union(*used.values())
    for needed in (
        "up",
        "hearth_requests_total",
        "hearth_limiter_degraded",
        "hearth_usage_records_dropped",
        "hearth_time_to_first_token_seconds_bucket",
    ):
        assert needed in every, f"no alert on {needed}"
    # job="hearth-gateway" in the rules is the scrape job of prometheus.yml.
    jobs = {job["job_name"] for job in _prometheus()["scrape_configs"]}
    for rule in rules:
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']}: no scrape job {job}"
    errors = next(r for r in rules if 'status=~"5.."' in r["expr"])
    assert "0.05" in errors["expr"]
    assert _seconds(errors["for"]) == 600


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed: the rules were parsed here but not by Prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


# ---------------------------------------------------------------- the guide


def test_guide_names_only_files_that_exist() -> None:
    text = GUIDE.read_text()
    named = set(re.findall(r"(?<![\w/.])((?:deploy|scripts|requirements|docs)/[\w./@-]*\w)", text))
    linked = {
        (GUIDE.parent / target.split("#")[0]).resolve().relative_to(ROOT).as_posix()
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not target.startswith(("http:", "https:", "#"))
    }
    assert {"deploy/compose/compose.yaml", "deploy/grafana/hearth-dashboard.json"} <= linked
    assert {"deploy/systemd/hearth-gateway@.service", "deploy/systemd/nginx-hearth.conf"} <= named
    for path in sorted(named | linked):
        assert (ROOT / path).exists(), f"docs/admin/deploy.md names {path}, which does not exist"
    # Links to a section: the heading must exist (GitHub's anchors: lower case, punctuation
    # dropped, spaces to hyphens).
    for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", text):
        page, anchor = target.split("#")
        headings = re.findall(r"^#+ (.+)$", (GUIDE.parent / page).read_text() if page else text, re.M)
        slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
        assert anchor in slugs, f"docs/admin/deploy.md links to {target}: no such section"
