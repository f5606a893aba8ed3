"""Durations as people write them: 90s, 15m, 12h, 7d, 2w."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``ValueError`` with a readable reason when ``text`` is not like 7d."""
    m = _DURATION.match(text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90m, 12h, 7d or 2w")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
