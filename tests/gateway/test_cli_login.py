"""`hearth login / whoami / token / logout` and the keys commands' choice of mode, without network.

Against Globus (the stand-in) and a gateway: tests/integration/test_login_cli.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from globus_sdk.token_storage import TokenStorageData
from typer.testing import CliRunner, Result

from gateway.cli import app
from gateway.client.tokens import Login, LoginFile


def hearth(config_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    environ = {"COLUMNS": "250", "HEARTH_CONFIG_DIR": str(config_dir), "HEARTH_STORE__URL": "", **(env or {})}
    return CliRunner().invoke(app, list(args), env=environ)


def save_login(config_dir: Path, *, expires_in: int = 3600, refresh: str | None = "refresh-1") -> LoginFile:
    store = LoginFile(config_dir)
    tokens = TokenStorageData(
        resource_server="rs",
        identity_id=None,
        scope="https://auth.globus.org/scopes/rs/inference",
        access_token="the-access-token",
        refresh_token=refresh,
        expires_at_seconds=int(time.time()) + expires_in,
        token_type="Bearer",
    )
    store.save(Login("http://127.0.0.1:9", "native", tokens))
    return store


@pytest.mark.parametrize("command", [["token"], ["whoami"], ["whoami", "--json"]])
def test_not_logged_in(tmp_path: Path, command: list[str]) -> None:
    result = hearth(tmp_path, *command)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "error: not logged in: run `hearth login --gateway URL`\n"


def test_logout_when_not_logged_in(tmp_path: Path) -> None:
    result = hearth(tmp_path, "logout")
    assert result.exit_code == 0
    assert "Not logged in; nothing to do." in result.stderr


def test_token_prints_the_token_only(tmp_path: Path) -> None:
    save_login(tmp_path)
    result = hearth(tmp_path, "token")
    assert result.exit_code == 0, result.output
    assert result.stdout == "the-access-token\n"
    assert result.stderr == ""


def test_token_fixes_a_readable_file_and_says_so_on_stderr(tmp_path: Path) -> None:
    store = save_login(tmp_path)
    store.path.chmod(0o640)
    result = hearth(tmp_path, "token")
    assert result.exit_code == 0
    assert result.stdout == "the-access-token\n"  # still usable in $(hearth token)
    assert "readable by other users (mode 0640)" in result.stderr
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_expired_without_refresh_token(tmp_path: Path) -> None:
    save_login(tmp_path, expires_in=-10, refresh=None)
    result = hearth(tmp_path, "token")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: session expired: run `hearth login`\n"


def test_a_broken_login_file(tmp_path: Path) -> None:
    (tmp_path / "login.json").write_text("{")
    (tmp_path / "login.json").chmod(0o600)
    result = hearth(tmp_path, "token")
    assert result.exit_code == 1
    assert "is not a Hearth login file; run `hearth login` to replace it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_gateway_unreachable_is_one_line(tmp_path: Path) -> None:
    save_login(tmp_path)  # the gateway is http://127.0.0.1:9 (discard): nothing listens
    result = hearth(tmp_path, "whoami")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:9: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "the-access-token" not in result.output


def test_login_needs_an_http_url(tmp_path: Path) -> None:
    result = hearth(tmp_path, "login", "--gateway", "hearth.example.org")
    assert result.exit_code == 2
    assert "not an http(s) URL" in result.output


def test_login_gateway_unreachable(tmp_path: Path) -> None:
    result = hearth(tmp_path, "login", "--gateway", "http://127.0.0.1:9", "--no-browser")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:9: ")
    assert not (tmp_path / "login.json").exists()


# --- keys: the store (--config) or the gateway (a login) --------------------------------------


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "create"], ["keys", "revoke", "abc"]])
def test_keys_with_neither_config_nor_login(tmp_path: Path, command: list[str]) -> None:
    result = hearth(tmp_path, *command)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: no --config and not logged in: run `hearth login --gateway URL`, "
        "or give --config hearth.yaml on the gateway host\n"
    )


def test_keys_create_owner_is_for_the_store(tmp_path: Path) -> None:
    save_login(tmp_path)
    result = hearth(tmp_path, "keys", "create", "--owner", "bob")
    assert result.exit_code == 2
    assert "only with --config" in result.output


def test_keys_create_with_config_needs_an_owner(tmp_path: Path) -> None:
    config = tmp_path / "hearth.yaml"
    config.write_text(f"store: {{url: 'sqlite:///{tmp_path / 'hearth.db'}'}}\n")
    result = hearth(tmp_path, "keys", "create", "--config", str(config))
    assert result.exit_code == 2
    assert "--owner is required with --config" in result.output


def test_keys_use_the_store_named_by_the_environment(tmp_path: Path) -> None:
    """`HEARTH_STORE__URL` (documented for admins) still means the store, not the gateway."""
    env = {"HEARTH_STORE__URL": f"sqlite:///{tmp_path / 'hearth.db'}"}
    result = hearth(tmp_path, "keys", "create", "--owner", "alice", env=env)
    assert result.exit_code == 0, result.output
    assert "Created key" in result.stdout
    assert "for alice" in result.stdout
