"""KeyStore against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from gateway.store.database import Database
from gateway.store.keys import ApiKeyInfo, KeyStore
from gateway.store.models import ApiKey


class Clock:
    """A settable clock for expiry tests."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(database: Database, clock: Clock) -> KeyStore:
    return KeyStore(database, clock=clock)


async def test_create_then_verify(keys: KeyStore, database: Database, clock: Clock) -> None:
    info, plaintext = await keys.create("alice", "laptop")
    assert plaintext.startswith(f"hth_{info.id}_")
    assert (info.owner, info.name, info.created_at) == ("alice", "laptop", clock.now)
    assert info.revoked_at is None
    assert info.expires_at is None
    assert info.last_used_at is None

    verified = await keys.verify(plaintext)
    assert verified == info

    async with database.session() as session:
        row = (await session.scalars(select(ApiKey))).one()
    assert row.digest == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in {row.id, row.digest, row.name, row.owner}


async def test_timestamps_round_trip_as_aware_utc(keys: KeyStore, clock: Clock) -> None:
    clock.now = datetime(2030, 6, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    info, _ = await keys.create("alice", "k", expires_at=clock.now + timedelta(days=1))
    stored = await keys.get(info.id)
    assert stored is not None
    assert stored.created_at == clock.now
    assert stored.created_at.tzinfo == UTC
    assert stored.expires_at is not None
    assert stored.expires_at.tzinfo == UTC
    assert stored.created_at.hour == 12


async def test_info_and_list_do_not_expose_digests(keys: KeyStore) -> None:
    await keys.create("alice", "one")
    names = {field.name for field in dataclasses.fields(ApiKeyInfo)}
    assert names == {
        "id",
        "name",
        "owner",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "owner_username",
    }
    listed = await keys.list()
    assert len(listed) == 1
    assert all(not hasattr(info, "digest") for info in listed)


MALFORMED = [
    "",
    "hth_",
    "not-a-key",
    "Bearer hth_abcdefghijkl_" + "a" * 43,
    "sk-" + "a" * 48,
    "hth_ABCDEFGHIJKL_" + "a" * 43,
    "hth_abcdefghijkl_" + "a" * 42,
    "hth_abcdefghijkl_" + "a" * 44,
    "hth_abcdefghijkl_" + "a" * 42 + "!",
    "hth_abcdefghijkl_" + "a" * 42 + "\u00e9",
    "hth_abcdefghijkl_" + "a" * 10_000,
]


async def test_malformed_keys_are_rejected(keys: KeyStore) -> None:
    _, plaintext = await keys.create("alice", "real")
    for garbage in [*MALFORMED, plaintext.upper(), plaintext + " ", " " + plaintext]:
        assert await keys.verify(garbage) is None, garbage


async def test_wrong_secret_for_a_real_id_is_rejected(keys: KeyStore) -> None:
    info, plaintext = await keys.create("alice", "real")
    forged = f"hth_{info.id}_{secrets.token_urlsafe(32)}"
    assert forged != plaintext
    assert await keys.verify(forged) is None
    # one flipped character of the secret
    last = plaintext[-1]
    flipped = plaintext[:-1] + ("A" if last != "A" else "B")
    assert await keys.verify(flipped) is None
    assert await keys.verify(plaintext) == info


async def test_unknown_id_is_rejected(keys: KeyStore) -> None:
    await keys.create("alice", "real")
    assert await keys.verify("hth_abcdefghijkl_" + secrets.token_urlsafe(32)) is None


async def test_revoke(keys: KeyStore, clock: Clock) -> None:
    info, plaintext = await keys.create("alice", "k")
    revoked_at = clock.now + timedelta(minutes=5)
    clock.now = revoked_at
    assert await keys.revoke(info.id)
    assert await keys.verify(plaintext) is None

    clock.now += timedelta(hours=1)
    assert await keys.revoke(info.id)  # again: harmless, keeps the first time
    stored = await keys.get(info.id)
    assert stored is not None
    assert stored.revoked_at == revoked_at

    assert await keys.list() == []
    assert [k.id for k in await keys.list(include_revoked=True)] == [info.id]
    assert not await keys.revoke("nosuchkeyid0")


async def test_revoke_scoped_to_owner(keys: KeyStore) -> None:
    info, plaintext = await keys.create("alice", "k")
    assert not await keys.revoke(info.id, owner="mallory")
    assert await keys.verify(plaintext) == info
    assert await keys.revoke(info.id, owner="alice")
    assert await keys.verify(plaintext) is None


async def test_expiry(keys: KeyStore, clock: Clock) -> None:
    info, plaintext = await keys.create("alice", "short", expires_at=clock.now + timedelta(hours=1))
    assert await keys.verify(plaintext) == info
    clock.now += timedelta(minutes=59)
    assert await keys.verify(plaintext) == info
    clock.now += timedelta(minutes=1)
    assert await keys.verify(plaintext) is None
    assert [k.id for k in await keys.list("alice")] == [info.id]  # still listed, marked expired


async def test_create_rejects_bad_input(keys: KeyStore, clock: Clock) -> None:
    with pytest.raises(ValueError, match="past"):
        await keys.create("alice", "k", expires_at=clock.now - timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone"):
        await keys.create("alice", "k", expires_at=datetime(2031, 1, 1))
    with pytest.raises(ValueError, match="owner"):
        await keys.create(" ", "k")
    with pytest.raises(ValueError, match="name"):
        await keys.create("alice", "x" * 256)
    assert await keys.list(include_revoked=True) == []


async def test_list_filters_by_owner_oldest_first(keys: KeyStore, clock: Clock) -> None:
    a1, _ = await keys.create("alice", "first")
    clock.now += timedelta(seconds=1)
    b1, _ = await keys.create("bob", "bob's")
    clock.now += timedelta(seconds=1)
    a2, _ = await keys.create("alice", "second")
    assert [k.id for k in await keys.list("alice")] == [a1.id, a2.id]
    assert [k.id for k in await keys.list("bob")] == [b1.id]
    assert [k.id for k in await keys.list()] == [a1.id, b1.id, a2.id]
    assert await keys.list("carol") == []


async def test_touch_sets_last_used(keys: KeyStore, clock: Clock) -> None:
    info, plaintext = await keys.create("alice", "k")
    clock.now += timedelta(minutes=3)
    await keys.touch(info.id)
    verified = await keys.verify(plaintext)
    assert verified is not None
    assert verified.last_used_at == clock.now


async def test_plaintext_and_digest_never_logged(keys: KeyStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # SQL statement log
    info, plaintext = await keys.create("alice", "k")
    await keys.verify(plaintext)
    await keys.verify(f"hth_{info.id}_{secrets.token_urlsafe(32)}")
    await keys.revoke(info.id)
    await keys.verify(plaintext)
    secret = plaintext[len(f"hth_{info.id}_") :]
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    assert info.id in caplog.text  # the id is fine to log
    assert secret not in caplog.text  # the plaintext never leaves the process, on any logger
    # The digest does go to the database; our code and SQLAlchemy (hide_parameters) keep it
    # out of the log. (aiosqlite's own DEBUG log prints every parameter: keep it at INFO.)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("gateway", "sqlalchemy")))
    assert "SELECT" in ours  # SQLAlchemy's statement log was on
    assert digest not in ours
