"""Sealing secrets the gateway must keep (a Groups refresh token per Globus-made API key).

Fernet (AES-128-CBC + HMAC-SHA256, https://github.com/fernet/spec) with the configured key, or
a key derived with HKDF-SHA256 from the gateway's Globus client secret, so a copy of the
database alone does not yield usable credentials.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealError", "Sealer"]

_INFO = b"hearth api-key groups credential v1"


class SealError(Exception):
    """A sealed value cannot be opened (another key, or corrupted)."""


class Sealer:
    def __init__(self, *, key: str | None = None, derive_from: str | None = None) -> None:
        if key is None:
            if not derive_from:
                raise ValueError("give a Fernet key or a secret to derive one from")
            raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
                derive_from.encode()
            )
            key = base64.urlsafe_b64encode(raw).decode()
        self._fernet = Fernet(key)

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SealError("the sealed credential cannot be opened with this gateway's key") from None
