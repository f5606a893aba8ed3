"""Pre-warm windows: times a model is kept hot whatever its demand (`models.<name>.prewarm`).

A window is days of the week, a start and an end (HH:MM, in the window's own IANA time zone)
and a number of workers. The day is the day the window starts: a window with an end at or
before its start runs past midnight into the next day (``fri 22:00-06:00`` holds until
Saturday 06:00); ``24:00`` as the end means midnight at the end of the day.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.config import PrewarmWindow

__all__ = ["active_windows", "describe_window", "prewarm_replicas"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def prewarm_replicas(windows: Sequence[PrewarmWindow], now: datetime) -> int:
    """The most workers any window active at `now` asks for; 0 when none is active."""
    return max((w.replicas for w in active_windows(windows, now)), default=0)


def active_windows(windows: Sequence[PrewarmWindow], now: datetime) -> list[PrewarmWindow]:
    """The windows that hold at `now` (a naive `now` is taken as UTC)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return [w for w in windows if _active(w, now)]


def describe_window(window: PrewarmWindow) -> str:
    """A short human form for logs, e.g. ``08:00-18:00 mon-fri`` (plus the zone unless UTC)."""
    text = f"{window.start}-{window.end} {_describe_days(window.days)}"
    return text if window.timezone == "UTC" else f"{text} {window.timezone}"


def _active(window: PrewarmWindow, now: datetime) -> bool:
    local = now.astimezone(ZoneInfo(window.timezone))
    minute = local.hour * 60 + local.minute
    start, end = _minutes(window.start), _minutes(window.end)
    days = set(window.days)
    today = _DAYS[local.weekday()]
    if start < end:
        return today in days and start <= minute < end
    # Past midnight: the part from the start on the day it starts, or the part before the end
    # on the day after a day it starts.
    yesterday = _DAYS[(local.weekday() - 1) % 7]
    return (today in days and minute >= start) or (yesterday in days and minute < end)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _describe_days(days: Sequence[str]) -> str:
    indices = sorted({_DAYS.index(d) for d in days})
    if len(indices) == len(_DAYS):
        return "daily"
    if len(indices) > 2 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"{_DAYS[indices[0]]}-{_DAYS[indices[-1]]}"
    return ",".join(_DAYS[i] for i in indices)
