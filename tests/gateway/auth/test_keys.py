"""API key primitives: format, parsing, digests."""

from __future__ import annotations

import hashlib
import string
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.keys import KEY_LENGTH, digest_matches, generate_key, parse_key

BASE32 = set(string.ascii_lowercase + "234567")
URLSAFE = set(string.ascii_letters + string.digits + "-_")


def test_generated_key_format() -> None:
    key_id, plaintext, digest = generate_key()
    prefix, kid, secret = plaintext[:4], plaintext[4:16], plaintext[17:]
    assert prefix == "hth_"
    assert plaintext[16] == "_"
    assert kid == key_id
    assert len(key_id) == 12
    assert set(key_id) <= BASE32
    assert len(secret) == 43
    assert set(secret) <= URLSAFE
    assert len(plaintext) == KEY_LENGTH == 60
    assert digest == hashlib.sha256(plaintext.encode()).hexdigest()
    assert parse_key(plaintext) == key_id


def test_generated_keys_are_unique() -> None:
    keys = [generate_key() for _ in range(2000)]
    assert len({k[0] for k in keys}) == len(keys)
    assert len({k[1] for k in keys}) == len(keys)


def test_digest_matches() -> None:
    _, plaintext, digest = generate_key()
    assert digest_matches(plaintext, digest)
    assert not digest_matches(plaintext + "x", digest)
    assert not digest_matches(plaintext, digest.upper())
    assert not digest_matches(plaintext, "")
    assert not digest_matches(plaintext, "é" * 64)
    _, other, _ = generate_key()
    assert not digest_matches(other, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hth_",
        "hth_abcdefghijkl",
        "HTH_abcdefghijkl_" + "a" * 43,
        "hth-abcdefghijkl_" + "a" * 43,
        "hth_abcdefghijkl-" + "a" * 43,
        "hth_abcdefghijk1_" + "a" * 43,  # 1 is not base32
        "hth_Abcdefghijkl_" + "a" * 43,
        "hth_abcdefghijkl_" + "a" * 42,
        "hth_abcdefghijkl_" + "a" * 44,
        "hth_abcdefghijkl_" + "a" * 42 + "=",
        "hth_abcdefghijkl_" + "a" * 42 + "\n",
        " hth_abcdefghijkl_" + "a" * 42,
        "hth_abcdefghijkl_" + "a" * 42 + "ä",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    assert parse_key(text) is None


def test_parse_accepts_dash_and_underscore_in_secret() -> None:
    assert parse_key("hth_abcdefghijkl_" + "-_" * 21 + "a") == "abcdefghijkl"


def test_parse_is_cheap_on_huge_input() -> None:
    started = time.perf_counter()
    for _ in range(100):
        assert parse_key("hth_" + "a" * 1_000_000) is None
        assert parse_key("hth_abcdefghijkl_" + "a" * 42 + "!" * 1_000_000) is None
    assert time.perf_counter() - started < 1.0


@given(st.text())
def test_parse_never_raises(text: str) -> None:
    key_id = parse_key(text)
    assert key_id is None or (len(key_id) == 12 and set(key_id) <= BASE32)


@given(st.integers(min_value=0, max_value=42), st.sampled_from(sorted(set(string.printable))))
def test_any_single_character_change_is_caught(position: int, char: str) -> None:
    _, plaintext, digest = generate_key()
    i = 17 + position
    changed = plaintext[:i] + char + plaintext[i + 1 :]
    assert digest_matches(changed, digest) == (changed == plaintext)
