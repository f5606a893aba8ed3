"""Authenticator over a real (SQLite) key store: credentials to principals, and its caches."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.auth.authenticator import Authenticator
from gateway.auth.keys import generate_key
from gateway.auth.principal import Principal
from gateway.errors import AuthenticationFailed
from gateway.store.database import Database
from gateway.store.keys import KeyStore
from gateway.store.models import ApiKey

STATIC_KEY = "sk-static-key"
STATIC = {
    hashlib.sha256(STATIC_KEY.encode()).hexdigest(): Principal(
        user="ops", is_admin=True, models=frozenset({"m"})
    )
}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'hearth.db'}")
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
def keys(db: Database) -> KeyStore:
    return KeyStore(db)


def bearer(key: str) -> str:
    return f"Bearer {key}"


async def refused(auth: Authenticator, header: str | None) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(header)
    assert info.value.status == 401
    return info.value


async def test_missing_or_malformed_header(keys: KeyStore) -> None:
    auth = Authenticator(keys, STATIC)
    assert (await refused(auth, None)).error_code == "missing_api_key"
    assert (await refused(auth, "")).error_code == "missing_api_key"
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", STATIC_KEY, "Token " + STATIC_KEY):
        assert (await refused(auth, header)).error_code == "invalid_api_key"


async def test_static_key(keys: KeyStore) -> None:
    auth = Authenticator(keys, STATIC)
    principal = await auth.authenticate(bearer(STATIC_KEY))
    assert principal == Principal(user="ops", is_admin=True, models=frozenset({"m"}))
    assert await auth.authenticate("bearer   " + STATIC_KEY + " ") == principal  # scheme is case-blind
    await refused(auth, bearer(STATIC_KEY + "x"))


async def test_stored_key(keys: KeyStore) -> None:
    auth = Authenticator(keys, {})
    info, plaintext = await keys.create("alice", "laptop")
    principal = await auth.authenticate(bearer(plaintext))
    assert principal == Principal(user="alice", key_id=info.id, auth="api_key")
    stored = await keys.get(info.id)
    assert stored is not None
    assert stored.last_used_at is not None
    await refused(auth, bearer(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")))
    await refused(auth, bearer("not-a-hearth-key"))


async def test_without_a_store_only_static_keys_work(keys: KeyStore) -> None:
    _, plaintext = await keys.create("alice", "laptop")
    auth = Authenticator(None, STATIC)
    await refused(auth, bearer(plaintext))
    assert (await auth.authenticate(bearer(STATIC_KEY))).user == "ops"


async def test_revoked_key_works_until_the_cache_ttl(keys: KeyStore) -> None:
    info, plaintext = await keys.create("alice", "laptop")
    cached = Authenticator(keys, {}, cache_ttl_s=60)
    uncached = Authenticator(keys, {}, cache_ttl_s=0)
    for auth in (cached, uncached):
        await auth.authenticate(bearer(plaintext))

    assert await keys.revoke(info.id)

    assert (await cached.authenticate(bearer(plaintext))).key_id == info.id  # trusted for the TTL
    await refused(uncached, bearer(plaintext))
    cached.forget(info.id)  # what the replica that revoked it does
    await refused(cached, bearer(plaintext))


async def test_negative_cache(db: Database, keys: KeyStore) -> None:
    """A rejected key is remembered as bad for negative_ttl_s (the store is not asked again)."""
    key_id, plaintext, digest = generate_key()
    remembering = Authenticator(keys, {}, negative_ttl_s=60)
    forgetting = Authenticator(keys, {}, negative_ttl_s=0)
    for auth in (remembering, forgetting):
        await refused(auth, bearer(plaintext))

    async with db.session() as session:  # the key appears in the store afterwards
        session.add(ApiKey(id=key_id, digest=digest, name="late", owner="bob", created_at=datetime.now(UTC)))
        await session.commit()

    await refused(remembering, bearer(plaintext))
    assert (await forgetting.authenticate(bearer(plaintext))).user == "bob"


async def test_expired_key(db: Database, keys: KeyStore) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    old = KeyStore(db, clock=lambda: an_hour_ago)
    _, plaintext = await old.create("alice", "old", an_hour_ago + timedelta(minutes=1))
    await refused(Authenticator(keys, {}), bearer(plaintext))


async def test_cache_does_not_outlive_the_key(keys: KeyStore) -> None:
    _, plaintext = await keys.create("alice", "brief", datetime.now(UTC) + timedelta(seconds=0.5))
    auth = Authenticator(keys, {}, cache_ttl_s=60)
    assert (await auth.authenticate(bearer(plaintext))).user == "alice"
    await asyncio.sleep(0.6)
    await refused(auth, bearer(plaintext))
