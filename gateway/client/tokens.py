"""The user's sign-in on this machine: one JSON file that only its owner can read.

Where: ``login.json`` in the config directory — ``--config-dir`` / ``$HEARTH_CONFIG_DIR`` when
given, else ``$XDG_CONFIG_HOME/hearth``, else ``~/.config/hearth`` (the XDG Base Directory
specification, https://specifications.freedesktop.org/basedir-spec/latest/).

What: the gateway's URL, the native app's client id, and the tokens Globus Auth issued for the
gateway's resource server, kept as globus_sdk's own record of a stored token
(:class:`globus_sdk.token_storage.TokenStorageData`: access_token, refresh_token,
expires_at_seconds, scope, resource_server, …;
https://globus-sdk-python.readthedocs.io/en/stable/authorization/token_caching/).

How, safely:

- the directory is made (or tightened to) 0700 and the file is 0600; a write goes to a
  temporary file created 0600 in the same directory, is fsynced, then ``os.replace``\\ d over
  the old one, so a crash never leaves half a file and the tokens are never briefly readable;
- a file that group or others may read is **fixed and used, with a warning**, rather than
  refused: refusing would leave it readable while locking its owner out, and the warning says
  how to replace tokens that may have been seen (``hearth logout`` then ``hearth login``);
- a file (or directory) that belongs to another user, or a symbolic link in place of the
  file, is refused: someone else could have planted tokens there.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from globus_sdk.token_storage import TokenStorageData

__all__ = ["FILE_NAME", "Login", "LoginFile", "TokenFileError", "default_config_dir"]

FILE_NAME = "login.json"
_FORMAT = "hearth-login/1"


class TokenFileError(Exception):
    """The login file cannot be used (unreadable, not ours, not a Hearth login file)."""


@dataclass(frozen=True)
class Login:
    """A sign-in: which gateway, through which native app, with which tokens."""

    gateway: str  # the gateway's root URL, without /v1
    client_id: str  # the native app's client id (from GET /v1/auth/config)
    tokens: TokenStorageData


def default_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$HEARTH_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/hearth``, else ``~/.config/hearth``."""
    env = os.environ if environ is None else environ
    if env.get("HEARTH_CONFIG_DIR"):
        return Path(env["HEARTH_CONFIG_DIR"]).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():  # the spec says to ignore a relative value
        return Path(xdg) / "hearth"
    return Path.home() / ".config" / "hearth"


class LoginFile:
    """Read, write and delete the login file in `directory`; `warn` hears about fixed modes."""

    def __init__(self, directory: Path, warn: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._warn = warn or (lambda message: None)

    def load(self) -> Login | None:
        """The stored login, or None when there is none."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise TokenFileError(f"{self.path} is not a regular file")
            if info.st_uid != os.getuid():
                raise TokenFileError(f"{self.path} belongs to another user; refusing to use it")
            if info.st_mode & 0o077:
                os.fchmod(f.fileno(), 0o600)
                self._warn(
                    f"{self.path} was readable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                    "it is now 0600. If someone may have read it, run `hearth logout` and sign in again."
                )
            raw = f.read()
        return self._parse(raw)

    def save(self, login: Login) -> None:
        """Write `login` atomically, readable by its owner only."""
        self._private_dir()
        body = {
            "format": _FORMAT,
            "gateway": login.gateway,
            "client_id": login.client_id,
            "tokens": login.tokens.to_dict(),
        }
        write_private(self.path, json.dumps(body, indent=2).encode() + b"\n")

    def delete(self) -> bool:
        """Remove the login file; False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _private_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.stat()
        if info.st_uid != os.getuid():
            raise TokenFileError(f"{self.directory} belongs to another user; refusing to write there")
        if stat.S_IMODE(info.st_mode) != 0o700:
            self.directory.chmod(0o700)

    def _parse(self, raw: bytes) -> Login:
        bad = TokenFileError(f"{self.path} is not a Hearth login file; run `hearth login` to replace it")
        try:
            data: Any = json.loads(raw)
        except ValueError:
            raise bad from None
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(data.get("tokens"), dict)
        ):
            raise bad
        try:
            tokens = TokenStorageData.from_dict(data["tokens"])
            login = Login(gateway=data["gateway"], client_id=data["client_id"], tokens=tokens)
        except (KeyError, TypeError, ValueError):
            raise bad from None
        if not isinstance(login.gateway, str) or not isinstance(login.client_id, str):
            raise bad
        return login


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically; the new file is 0600 from its first byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not all filesystems can
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
