"""The login file: where it lives, its modes, atomic writes, and what it refuses to read."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from globus_sdk.token_storage import TokenStorageData

from gateway.client.tokens import FILE_NAME, Login, LoginFile, TokenFileError, default_config_dir


def make_login(access: str = "access-1", refresh: str | None = "refresh-1") -> Login:
    tokens = TokenStorageData(
        resource_server="rs-client-id",
        identity_id=None,
        scope="https://auth.globus.org/scopes/rs-client-id/inference",
        access_token=access,
        refresh_token=refresh,
        expires_at_seconds=2_000_000_000,
        token_type="Bearer",
    )
    return Login(gateway="https://hearth.example.org", client_id="native-client-id", tokens=tokens)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def store(tmp_path: Path, warnings: list[str]) -> LoginFile:
    return LoginFile(tmp_path / "config" / "hearth", warn=warnings.append)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read new files: the modes must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


# --- where ----------------------------------------------------------------------------------


def test_config_dir_override() -> None:
    env = {"HEARTH_CONFIG_DIR": "/tmp/elsewhere", "XDG_CONFIG_HOME": "/xdg"}
    assert default_config_dir(env) == Path("/tmp/elsewhere")


def test_config_dir_xdg() -> None:
    assert default_config_dir({"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/hearth")


def test_config_dir_relative_xdg_is_ignored() -> None:
    """The XDG spec: a relative $XDG_CONFIG_HOME is invalid and must be ignored."""
    assert default_config_dir({"XDG_CONFIG_HOME": "relative"}) == Path.home() / ".config" / "hearth"


def test_config_dir_default() -> None:
    assert default_config_dir({}) == Path.home() / ".config" / "hearth"


# --- writing --------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_save_is_private(store: LoginFile) -> None:
    store.save(make_login())
    assert store.path == store.directory / FILE_NAME
    assert mode(store.directory) == 0o700
    assert mode(store.path) == 0o600
    assert os.listdir(store.directory) == [FILE_NAME]  # no temporary file left behind


def test_round_trip(store: LoginFile) -> None:
    store.save(make_login())
    login = store.load()
    assert login is not None
    assert (login.gateway, login.client_id) == ("https://hearth.example.org", "native-client-id")
    assert login.tokens.to_dict() == make_login().tokens.to_dict()


def test_save_tightens_an_existing_directory(store: LoginFile) -> None:
    store.directory.mkdir(parents=True, mode=0o755)
    store.directory.chmod(0o755)
    store.save(make_login())
    assert mode(store.directory) == 0o700


def test_save_replaces_the_file(store: LoginFile) -> None:
    store.save(make_login("first"))
    inode = store.path.stat().st_ino
    store.save(make_login("second"))
    login = store.load()
    assert login is not None
    assert login.tokens.access_token == "second"
    assert store.path.stat().st_ino != inode  # a new file renamed over the old one
    assert mode(store.path) == 0o600


def test_a_failed_write_keeps_the_old_file(store: LoginFile, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(make_login("first"))

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        store.save(make_login("second"))
    monkeypatch.undo()
    login = store.load()
    assert login is not None
    assert login.tokens.access_token == "first"
    assert os.listdir(store.directory) == [FILE_NAME]


@pytest.mark.usefixtures("open_umask")
def test_the_temporary_file_is_private_from_the_start(
    store: LoginFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the rename, the tokens are already in a 0600 file: never readable by others."""
    seen: list[int] = []
    real_replace = os.replace

    def check(src: str, dst: str) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", check)
    store.save(make_login())
    assert seen == [0o600]


def test_delete(store: LoginFile) -> None:
    assert store.delete() is False
    store.save(make_login())
    assert store.delete() is True
    assert store.load() is None


# --- reading --------------------------------------------------------------------------------


def test_no_file_is_no_login(store: LoginFile) -> None:
    assert store.load() is None


def test_a_readable_file_is_fixed_with_a_warning(store: LoginFile, warnings: list[str]) -> None:
    store.save(make_login())
    store.path.chmod(0o644)
    assert store.load() is not None
    assert mode(store.path) == 0o600
    (warning,) = warnings
    assert "readable by other users (mode 0644)" in warning
    assert "hearth logout" in warning
    assert "access-1" not in warning


def test_a_private_file_gives_no_warning(store: LoginFile, warnings: list[str]) -> None:
    store.save(make_login())
    store.load()
    assert warnings == []


def test_a_symlink_is_refused(store: LoginFile, tmp_path: Path) -> None:
    elsewhere = LoginFile(tmp_path / "elsewhere")
    elsewhere.save(make_login())
    store.directory.mkdir(parents=True)
    store.path.symlink_to(elsewhere.path)
    with pytest.raises(TokenFileError, match="cannot read"):
        store.load()


def test_another_users_file_is_refused(store: LoginFile, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(make_login())
    monkeypatch.setattr(os, "getuid", lambda: os.stat(store.path).st_uid + 1)
    with pytest.raises(TokenFileError, match="belongs to another user"):
        store.load()
    with pytest.raises(TokenFileError, match="belongs to another user"):
        store.save(make_login())


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"format": "something-else/1"}',
        json.dumps({"format": "hearth-login/1", "gateway": "g", "client_id": "c"}).encode(),
        json.dumps({"format": "hearth-login/1", "gateway": "g", "client_id": "c", "tokens": {}}).encode(),
        json.dumps({"format": "hearth-login/1", "gateway": 5, "client_id": "c", "tokens": None}).encode(),
    ],
)
def test_a_foreign_file_is_refused(store: LoginFile, content: bytes) -> None:
    store.directory.mkdir(parents=True)
    store.path.write_bytes(content)
    store.path.chmod(0o600)
    with pytest.raises(TokenFileError, match="not a Hearth login file; run `hearth login`"):
        store.load()
