"""UTCDateTime's own SQLite conversion against SQLAlchemy's, and its refusal of naive values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeDecorator

from gateway.store.models import UTCDateTime, _sqlite_text

SQLITE = sqlite.dialect()

zones = st.one_of(
    st.just(UTC),
    st.integers(min_value=-23 * 60 + 1, max_value=23 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
)
aware = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=zones
)  # one day's margin, so that converting to UTC stays within datetime's years


def sqlalchemys(dialect: sqlite.dialect) -> object:
    """SQLAlchemy's own conversion: process_bind_param, then the dialect's DATETIME."""
    return TypeDecorator.bind_processor(UTCDateTime().dialect_impl(dialect), dialect)


def test_sqlite_uses_the_fast_conversion_and_other_dialects_do_not() -> None:
    assert UTCDateTime().dialect_impl(SQLITE).bind_processor(SQLITE) is _sqlite_text
    pg = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    assert UTCDateTime().dialect_impl(pg).bind_processor(pg) is not _sqlite_text


@given(aware)
def test_sqlite_text_is_sqlalchemys(value: datetime) -> None:
    expected = sqlalchemys(SQLITE)
    assert callable(expected)
    assert _sqlite_text(value) == expected(value)


def test_none_passes_and_naive_values_are_refused() -> None:
    assert _sqlite_text(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        _sqlite_text(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="naive datetime"):  # every other dialect's way in
        UTCDateTime().process_bind_param(datetime(2030, 1, 1), postgresql.asyncpg.dialect())  # type: ignore[attr-defined]
