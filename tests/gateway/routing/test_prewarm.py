"""Pre-warm windows: which hold at a moment, in their own time zone, across midnight."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.config import PrewarmWindow
from gateway.routing.prewarm import active_windows, describe_window, prewarm_replicas

# 2024-05-15 is a Wednesday; 2024-05-17 a Friday, 2024-05-18 a Saturday.
WED, FRI, SAT = 15, 17, 18


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


def window(**kw: Any) -> PrewarmWindow:
    return PrewarmWindow.model_validate(kw)


WORKDAY = window(days=["mon", "tue", "wed", "thu", "fri"], start="08:00", end="18:00", replicas=2)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(WED, 12), 2),
        (at(WED, 8), 2),  # the start is inclusive
        (at(WED, 17, 59), 2),
        (at(WED, 18), 0),  # the end is exclusive
        (at(WED, 7, 59), 0),
        (at(SAT, 12), 0),  # not one of its days
    ],
)
def test_daytime_window(now: datetime, expected: int) -> None:
    assert prewarm_replicas([WORKDAY], now) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(FRI, 22), 1),
        (at(FRI, 23, 30), 1),
        (at(SAT, 0, 0), 1),  # past midnight, on the day after the day it starts
        (at(SAT, 5, 59), 1),
        (at(SAT, 6), 0),
        (at(FRI, 21, 59), 0),
        (at(FRI, 3), 0),  # Thursday night's window: Thursday is not one of its days
        (at(SAT, 22), 0),
    ],
)
def test_window_past_midnight_belongs_to_the_day_it_starts(now: datetime, expected: int) -> None:
    assert prewarm_replicas([window(days=["fri"], start="22:00", end="06:00")], now) == expected


def test_end_equal_to_start_is_a_whole_day_from_the_start() -> None:
    w = window(days=["wed"], start="12:00", end="12:00")
    assert prewarm_replicas([w], at(WED, 11, 59)) == 0
    assert prewarm_replicas([w], at(WED, 12)) == 1
    assert prewarm_replicas([w], at(WED + 1, 11, 59)) == 1
    assert prewarm_replicas([w], at(WED + 1, 12)) == 0


def test_end_2400_is_midnight_at_the_end_of_the_day() -> None:
    w = window(days=["wed"], start="18:00", end="24:00")
    assert prewarm_replicas([w], at(WED, 23, 59)) == 1
    assert prewarm_replicas([w], at(WED + 1, 0)) == 0
    assert prewarm_replicas([w], at(WED, 17, 59)) == 0


def test_times_are_in_the_windows_time_zone() -> None:
    chicago = window(
        days=["mon", "tue", "wed", "thu", "fri"], start="08:00", end="18:00", timezone="America/Chicago"
    )
    # In May Chicago is UTC-5 (CDT): 08:00 there is 13:00 UTC.
    assert prewarm_replicas([chicago], at(WED, 12, 59)) == 0
    assert prewarm_replicas([chicago], at(WED, 13)) == 1
    assert prewarm_replicas([chicago], at(WED, 22, 59)) == 1
    assert prewarm_replicas([chicago], at(WED, 23)) == 0
    # Saturday 02:00 UTC is still Friday 21:00 in Chicago.
    evening = window(days=["fri"], start="20:00", end="23:00", timezone="America/Chicago")
    assert prewarm_replicas([evening], at(SAT, 2)) == 1
    assert prewarm_replicas([evening], at(FRI, 21)) == 0


def test_daylight_saving_time_moves_the_window_in_utc() -> None:
    w = window(start="08:00", end="09:00", timezone="America/Chicago")
    # January: CST, UTC-6.
    assert prewarm_replicas([w], datetime(2024, 1, 10, 14, 30, tzinfo=UTC)) == 1
    assert prewarm_replicas([w], datetime(2024, 1, 10, 13, 30, tzinfo=UTC)) == 0


def test_most_replicas_of_the_active_windows() -> None:
    windows = [
        WORKDAY,
        window(start="11:00", end="13:00", replicas=5),
        window(start="20:00", end="21:00", replicas=9),
    ]
    assert prewarm_replicas(windows, at(WED, 12)) == 5
    assert prewarm_replicas(windows, at(WED, 9)) == 2
    assert active_windows(windows, at(WED, 9)) == [WORKDAY]
    assert prewarm_replicas(windows, at(SAT, 3)) == 0
    assert prewarm_replicas([], at(WED, 12)) == 0


def test_naive_time_is_utc() -> None:
    assert prewarm_replicas([WORKDAY], datetime(2024, 5, 15, 8, 0)) == 2
    assert prewarm_replicas([WORKDAY], datetime(2024, 5, 15, 18, 0)) == 0


def test_description() -> None:
    assert describe_window(WORKDAY) == "08:00-18:00 mon-fri"
    assert describe_window(window(start="22:00", end="06:00")) == "22:00-06:00 daily"
    assert describe_window(window(days=["sat", "mon"], start="09:00", end="10:00")) == "09:00-10:00 mon,sat"
    zoned = window(days=["fri"], start="08:00", end="18:00", timezone="Europe/Paris")
    assert describe_window(zoned) == "08:00-18:00 fri Europe/Paris"
