"""Database tables of the gateway (SQLAlchemy 2 declarative models).

The schema is created and changed only by the Alembic migrations in ``migrations/versions``;
each migration is written by hand to match these models, and a test compares the two.

Prompts and completions are never stored: usage events carry counts and timings only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, MetaData, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["ApiKey", "AuditEvent", "Base", "UTCDateTime", "UsageEvent", "utcnow"]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones and hands back naive values,
    which are UTC because that is all this type ever writes. Naive input is rejected rather
    than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """A hearth API key. ``id`` is the key id embedded in the key; only its digest is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    owner_username: Mapped[str | None] = mapped_column(String(255))  # the owner's Globus username
    # The owner's Globus Groups refresh token, sealed (Fernet) with the gateway's key: lets the
    # key follow its owner's group memberships. Never logged, never returned by the API.
    groups_credential: Mapped[str | None] = mapped_column(Text())

    def __repr__(self) -> str:  # never show the digest
        return f"ApiKey(id={self.id!r}, owner={self.owner!r}, name={self.name!r})"


class UsageEvent(Base):
    """One relayed request: who, which model where, how it went, how many tokens, how fast."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(255), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(255), index=True)
    cluster: Mapped[str] = mapped_column(String(128))
    upstream: Mapped[str] = mapped_column(String(255))
    endpoint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer())
    prompt_tokens: Mapped[int] = mapped_column(Integer())
    completion_tokens: Mapped[int] = mapped_column(Integer())
    latency_ms: Mapped[float] = mapped_column(Float())
    ttft_ms: Mapped[float | None] = mapped_column(Float())
    stream: Mapped[bool] = mapped_column(Boolean())


class AuditEvent(Base):
    """An auth decision, a key created or revoked, an admin action. Never a token or a key."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)  # identity id, key owner, or "cli"
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. auth.token, key.create
    outcome: Mapped[str] = mapped_column(String(32))  # allow, deny, ok, error
    target: Mapped[str | None] = mapped_column(String(255))  # the key id, user, model acted on
    detail: Mapped[str | None] = mapped_column(Text())  # a reason, as a person would say it
    request_id: Mapped[str | None] = mapped_column(String(64))
