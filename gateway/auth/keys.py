"""Hearth API keys: how they look, how they are made, and how one is checked.

A key reads ``hth_<key_id>_<secret>``:

- ``hth_`` marks it as a Hearth key (secret scanners can match on it);
- ``key_id`` is 12 characters of lowercase RFC 4648 base32 (``a-z2-7``, 60 random bits). It is
  not secret: it names the key in listings and is the primary key used to find the stored digest;
- ``secret`` is ``secrets.token_urlsafe(32)``: 43 characters, 256 random bits.

Only ``sha256(plaintext)`` is stored. A slow password hash (bcrypt, argon2) exists to make
guessing low-entropy human secrets expensive; these keys carry 256 bits of randomness, so
there is nothing to guess and a fast hash is both sufficient and cheap enough to check on
every request (the same reasoning GitHub and Stripe apply to their tokens).

No I/O happens here; the store (``gateway.store.keys``) persists digests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = [
    "KEY_ID_LENGTH",
    "KEY_LENGTH",
    "KEY_PREFIX",
    "digest_key",
    "digest_matches",
    "generate_key",
    "parse_key",
]

KEY_PREFIX = "hth_"
KEY_ID_LENGTH = 12
_SECRET_BYTES = 32
_SECRET_LENGTH = 43  # len(secrets.token_urlsafe(32)): 32 bytes of base64url without padding
KEY_LENGTH = len(KEY_PREFIX) + KEY_ID_LENGTH + 1 + _SECRET_LENGTH

_KEY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_SECRET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_SEPARATOR_AT = len(KEY_PREFIX) + KEY_ID_LENGTH


def generate_key() -> tuple[str, str, str]:
    """Make a new key and return ``(key_id, plaintext, digest)``.

    Show the plaintext to its owner once and store only the digest.
    """
    key_id = base64.b32encode(secrets.token_bytes(8)).decode("ascii").lower()[:KEY_ID_LENGTH]
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    plaintext = f"{KEY_PREFIX}{key_id}_{secret}"
    return key_id, plaintext, digest_key(plaintext)


def digest_key(plaintext: str) -> str:
    """The stored form of a key: the hex SHA-256 of the whole plaintext (64 characters)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def parse_key(plaintext: str) -> str | None:
    """The key id of a well-formed key, or ``None`` if ``plaintext`` is not one.

    Checks the fixed length, prefix, separator and alphabets in linear time (no regex), so a
    caller can reject garbage before touching the database. A well-formed key is not yet a
    valid one: compare its digest with :func:`digest_matches`.
    """
    if len(plaintext) != KEY_LENGTH or not plaintext.startswith(KEY_PREFIX):
        return None
    if plaintext[_SEPARATOR_AT] != "_":
        return None
    key_id = plaintext[len(KEY_PREFIX) : _SEPARATOR_AT]
    secret = plaintext[_SEPARATOR_AT + 1 :]
    if not _KEY_ID_CHARS.issuperset(key_id) or not _SECRET_CHARS.issuperset(secret):
        return None
    return key_id


def digest_matches(plaintext: str, digest: str) -> bool:
    """Whether ``plaintext`` hashes to ``digest``, compared in constant time."""
    return hmac.compare_digest(digest_key(plaintext).encode("ascii"), digest.encode("utf-8"))
