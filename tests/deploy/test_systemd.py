"""deploy/systemd: the gateway's units (one replica, and a template for one replica per port),
their secrets file and the bare-metal nginx site. The units must start `hearth serve` from the
venv under /opt/hearth, be hardened, stop gracefully, and pass systemd's own checks where the
machine has systemd-analyze; the nginx site must proxy exactly as the compose one does."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import load_settings
from gateway.store.writer import BatchWriter
from tests.support.nginx import nginx_test

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
SINGLE = SYSTEMD / "hearth-gateway.service"
TEMPLATE = SYSTEMD / "hearth-gateway@.service"
UNITS = (SINGLE, TEMPLATE)
ENV_EXAMPLE = SYSTEMD / "hearth.env.example"
NGINX_SITE = SYSTEMD / "nginx-hearth.conf"
NGINX_COMPOSE = ROOT / "deploy" / "compose" / "nginx" / "hearth.conf"

VENV_HEARTH = "/opt/hearth/.venv/bin/hearth"
CONFIG = "/etc/hearth/hearth.yaml"

Unit = dict[str, dict[str, list[str]]]


def _unit(path: Path) -> Unit:
    """A unit file as section -> key -> values, in order. systemd allows a key more than once
    (each adds to a list, an empty value resets it), which configparser does not."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", path.read_text())  # continuation lines
    for n, raw in enumerate(logical.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if m := re.fullmatch(r"\[([A-Za-z]+)\]", line):
            assert m[1] not in sections, f"{path.name}:{n}: [{m[1]}] twice"
            current = sections[m[1]] = {}
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{n}: not Key=Value: {raw!r}"
        assert current is not None, f"{path.name}:{n}: outside a section: {raw!r}"
        assert re.fullmatch(r"[A-Z][A-Za-z]+", key.strip()), f"{path.name}:{n}: bad key {key!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert len(values or []) == 1, f"[{section}] {key}= should be set once, is {values}"
    return (values or [""])[0]


def _seconds(text: str) -> float:
    """A systemd time span (120, 90s, 2min, 1min 30s) in seconds."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    scale = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|sec|s|min|m|h)\b", text)
    assert parts, f"not a time span: {text!r}"
    return sum(int(n) * scale[u] for n, u in parts)


def _env_lines(path: Path, *, commented: bool) -> dict[str, str]:
    """KEY=VALUE lines of an EnvironmentFile; with `commented`, also the `#KEY=VALUE` ones."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if commented:
            line = re.sub(r"^#\s*(?=HEARTH_)", "", line)
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {raw!r}"
        assert re.fullmatch(r"HEARTH_[A-Z0-9_]+", key), f"{path.name}: not a HEARTH_ variable: {raw!r}"
        env[key] = value.strip().strip("'\"")
    return env


def _proxy_settings(path: Path) -> str:
    """The part of an nginx site between the "proxy settings" markers, without comments."""
    text = path.read_text()
    m = re.search(r"# --- proxy settings[^\n]*\n(.*)# --- end of proxy settings", text, re.S)
    assert m, f"{path.name}: no proxy settings markers"
    return re.sub(r"#[^\n]*", "", m[1])


# ---------------------------------------------------------------- the units


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_starts_hearth_serve_from_the_venv(path: Path) -> None:
    unit = _unit(path)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    argv = _one(unit, "Service", "ExecStart").split()
    expected = [VENV_HEARTH, "serve", "--config", CONFIG]
    assert argv == ([*expected, "--port", "%i"] if path == TEMPLATE else expected)
    assert _one(unit, "Service", "ExecStartPre").split() == [VENV_HEARTH, "config", "check", CONFIG]
    assert _one(unit, "Service", "Type") == "exec"
    assert (_one(unit, "Service", "User"), _one(unit, "Service", "Group")) == ("hearth", "hearth")
    # A missing secrets file is an error ("-/etc/..." would ignore it).
    assert service["EnvironmentFile"] == ["/etc/hearth/hearth.env"]
    assert "network-online.target" in _one(unit, "Unit", "Wants")
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened(path: Path) -> None:
    unit = _unit(path)
    service = unit["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
    }.items():
        assert service.get(key) == [value], f"{path.name}: {key}={value} (is {service.get(key)})"
    families = set(_one(unit, "Service", "RestrictAddressFamilies").split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "@system-service" in service["SystemCallFilter"]
    # With ProtectSystem=strict only the state directory is writable: the working directory
    # (where a relative SQLite path or compute.run_dir lands) must be it.
    state = "/var/lib/" + _one(unit, "Service", "StateDirectory")
    assert state in _one(unit, "Service", "ReadWritePaths").split()
    assert _one(unit, "Service", "WorkingDirectory") == state


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_restarts_on_failure_and_stops_gracefully(path: Path) -> None:
    unit = _unit(path)
    assert _one(unit, "Service", "Restart") == "on-failure"
    assert _one(unit, "Service", "KillSignal") == "SIGTERM"
    assert _one(unit, "Service", "KillMode") == "mixed"
    # On SIGTERM the usage writer, then the audit writer, each get this long to flush.
    flush = inspect.signature(BatchWriter.stop).parameters["timeout_s"].default
    assert isinstance(flush, float)
    assert _seconds(_one(unit, "Service", "TimeoutStopSec")) > 2 * flush
    assert _one(unit, "Service", "RestartPreventExitStatus") == "2"


def test_exit_status_2_means_a_bad_config(tmp_path: Path) -> None:
    """RestartPreventExitStatus=2 relies on `hearth serve` exiting 2 for what a restart cannot fix."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  portt: 1\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("server:\n  port: 8000\n")
    runner = CliRunner(env={k: None for k in os.environ if k.startswith("HEARTH_")})
    assert runner.invoke(app, ["serve", "--config", str(bad)]).exit_code == 2
    assert runner.invoke(app, ["serve", "--config", str(empty)]).exit_code == 2  # no clusters


def test_template_is_the_single_unit_with_a_port() -> None:
    single, template = _unit(SINGLE), _unit(TEMPLATE)
    assert "%i" in _one(template, "Unit", "Description")
    differs = {
        key
        for section in ("Unit", "Service", "Install")
        for key in set(single[section]) | set(template[section])
        if single[section].get(key) != template[section].get(key)
    }
    assert differs == {"Description", "ExecStart"}, f"the units drifted apart in {sorted(differs)}"


def _analyzable_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at a stand-in executable (systemd-analyze checks that
    it exists), the template as instance @8001."""
    fake = tmp_path / "bin" / "hearth"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    copies = []
    for path, name in ((SINGLE, SINGLE.name), (TEMPLATE, "hearth-gateway@8001.service")):
        copy = tmp_path / name
        copy.write_text(path.read_text().replace(VENV_HEARTH, str(fake)))
        copies.append(copy)
    return copies


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed: units checked by the parser above only")
    for copy in _analyzable_copies(tmp_path):
        run = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, check=False)
        output = (run.stdout + run.stderr).strip()
        assert run.returncode == 0, f"{copy.name}: {output}"
        assert copy.name not in output, f"warnings about {copy.name}: {output}"


def test_systemd_analyze_security(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed")
    probe = subprocess.run([tool, "security", "--help"], capture_output=True, text=True, check=False)
    if "--offline" not in probe.stdout:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (needs systemd >= 250)")
    for copy in _analyzable_copies(tmp_path):
        run = subprocess.run(
            # The threshold is on systemd's internal 0-100 scale: 30 is the 3.0 it prints.
            [tool, "security", "--offline=yes", "--threshold=30", str(copy)],
            capture_output=True,
            text=True,
            check=False,
        )
        overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", run.stdout)
        assert overall, run.stdout + run.stderr
        # 0 is locked down, 10 unprotected; systemd calls up to 4.9 "OK".
        assert float(overall[1]) <= 3, f"{copy.name}: exposure {overall[1]}"
        assert run.returncode == 0, run.stdout


# ---------------------------------------------------------------- the secrets file


@pytest.mark.parametrize("commented", [False, True], ids=["as shipped", "with the optional lines"])
def test_env_example_applies_to_the_example_config(monkeypatch: pytest.MonkeyPatch, commented: bool) -> None:
    for name in list(os.environ):
        if name.upper().startswith("HEARTH_"):
            monkeypatch.delenv(name)
    env = _env_lines(ENV_EXAMPLE, commented=commented)
    assert {"HEARTH_STORE__URL", "HEARTH_REDIS__URL"} <= set(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(ROOT / "deploy" / "hearth.example.yaml")
    assert settings.store.url == env["HEARTH_STORE__URL"]
    assert settings.store.url.startswith("postgresql://")
    assert settings.redis.url == env["HEARTH_REDIS__URL"]
    if "HEARTH_AUTH__GLOBUS__CLIENT_SECRET" in env:
        assert settings.auth.globus is not None
        assert (
            settings.auth.globus.client_secret.get_secret_value() == env["HEARTH_AUTH__GLOBUS__CLIENT_SECRET"]
        )
    secrets = [v for k, v in env.items() if "SECRET" in k or "STORE__URL" in k]
    assert all("CHANGE-ME" in v for v in secrets), "the example holds placeholders, not secrets"


# ---------------------------------------------------------------- nginx


def test_nginx_site_proxies_exactly_as_the_compose_one() -> None:
    assert _proxy_settings(NGINX_SITE) == _proxy_settings(NGINX_COMPOSE)


def test_nginx_site_upstream_is_the_template_instances() -> None:
    text = re.sub(r"#[^\n]*", "", NGINX_SITE.read_text())
    upstream = re.search(r"upstream hearth_gateway\s*\{([^{}]*)\}", text)
    assert upstream
    servers = re.findall(r"^\s*server\s+(\S+)", upstream[1], re.M)
    assert servers == ["127.0.0.1:8001", "127.0.0.1:8002"], "one line per hearth-gateway@PORT"
    assert re.search(r"^\s*keepalive \d+;", upstream[1], re.M)
    guide = (ROOT / "docs" / "admin" / "deploy.md").read_text()
    for server in servers:
        assert f"hearth-gateway@{server.rsplit(':', 1)[1]}" in guide


def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not nginx:
        pytest.skip("nginx is not installed: `nginx -t` not run")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: no certificate for `nginx -t`")
    check = nginx_test(nginx, NGINX_SITE.read_text(), "/etc/nginx/certs/hearth/", tmp_path)
    assert check.returncode == 0, check.stderr
