"""Database tables of the gateway (SQLAlchemy 2 declarative models).

The schema is created and changed only by the Alembic migrations in ``migrations/versions``;
each migration is written by hand to match these models, and a test compares the two.

Prompts and completions are never stored: usage events carry counts and timings only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "Batch",
    "BatchResult",
    "RollupState",
    "StoredFile",
    "UTCDateTime",
    "UsageEvent",
    "UsageRollup",
    "UserGroup",
    "utcnow",
]

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
        return None if value is None else _as_utc(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        # On SQLite the value is stored as text; SQLAlchemy's conversion (this class's
        # `process_bind_param`, then SQLite DATETIME's %-format of a dict) costs 2.6 us, this
        # one the same text in 1.1 us, and every usage row pays it on the event loop's thread.
        # tests/gateway/store/test_models.py holds the two to the same output.
        impl = self.impl_instance.dialect_impl(dialect)
        if dialect.name == "sqlite" and getattr(impl, "_storage_format", None) == _SQLITE_FORMAT:
            return _sqlite_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is refused rather than guessed at."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
    return value.astimezone(UTC)


# SQLAlchemy's default text for a SQLite DATETIME (named fields), and the same text from
# positional ones, which is what `_sqlite_text` formats.
_SQLITE_FORMAT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
_SQLITE_TEXT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = _as_utc(value)
    return _SQLITE_TEXT % (
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
    )  # fmt: skip


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


class UsageRollup(Base):
    """Usage summed per hour or UTC day, user, model and cluster (``group_id`` ""), and again
    per Globus group the user was in (``group_id`` set). Reports read only these."""

    __tablename__ = "usage_rollups"
    __table_args__ = (UniqueConstraint("period", "period_start", "user", "model", "cluster", "group_id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    period: Mapped[str] = mapped_column(String(8))  # hour, day
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    model: Mapped[str] = mapped_column(String(255))
    cluster: Mapped[str] = mapped_column(String(128))
    group_id: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger())
    errors: Mapped[int] = mapped_column(BigInteger())
    prompt_tokens: Mapped[int] = mapped_column(BigInteger())
    completion_tokens: Mapped[int] = mapped_column(BigInteger())
    latency_ms_sum: Mapped[float] = mapped_column(Float())


class RollupState(Base):
    """How far the rollups have read ``usage_events``: ids up to ``done_id`` are counted;
    ``seen_id`` was the newest id at the previous run (rolled up at the next one, once every
    transaction that took a lower id has surely committed)."""

    __tablename__ = "rollup_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    done_id: Mapped[int] = mapped_column(BigInteger())
    seen_id: Mapped[int] = mapped_column(BigInteger())


class UserGroup(Base):
    """The Globus groups (of those the gateway cares about) a user was last seen in."""

    __tablename__ = "user_groups"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(255))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StoredFile(Base):
    """A file of the Files API: its content lives under ``batch.files_dir`` at ``path``."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # file-<hex>
    owner: Mapped[str] = mapped_column(String(255), index=True)
    purpose: Mapped[str] = mapped_column(String(32))  # batch, batch_output
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    path: Mapped[str] = mapped_column(String(512))  # relative to files_dir


class Batch(Base):
    """A batch of the Batch API, with the runner's bookkeeping (which replica drives it)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # batch_<hex>
    owner: Mapped[str] = mapped_column(String(255), index=True)
    principal: Mapped[str] = mapped_column(Text())  # JSON: what the owner may use (see batch.principals)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str | None] = mapped_column(String(255))
    metadata_json: Mapped[str | None] = mapped_column(Text())
    errors_json: Mapped[str | None] = mapped_column(Text())
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer(), default=0)
    completed: Mapped[int] = mapped_column(Integer(), default=0)
    failed: Mapped[int] = mapped_column(Integer(), default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    executor: Mapped[str | None] = mapped_column(String(160))  # hot, or slurm:<cluster>
    executor_state: Mapped[str | None] = mapped_column(Text())  # JSON the executor saved
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # the replica driving it
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BatchResult(Base):
    """One finished line of a running batch (its checkpoint), until the batch's files are written."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[int] = mapped_column(Integer(), primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean())
    output: Mapped[str] = mapped_column(Text())  # the output or error file line, JSON
