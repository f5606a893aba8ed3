"""Logging as one JSON object per line, with the `extra` fields of each record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

# Record attributes that are not `extra` fields; uvicorn's color_message duplicates msg with
# ANSI escapes.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


# A finished request: (time.time(), request id, method, path, status, duration in seconds).
_Entry = tuple[float, str, str, str, int, float]


class AccessLog:
    """One JSON line per request, written straight to stderr (fd 2).

    The same shape as `JsonFormatter`'s lines, without the logging module's per-record
    machinery (caller lookup, handler locks). A request only leaves a tuple; the lines of the
    requests finished in the same event-loop turn are formatted together at the end of that
    turn and go out in one write(2): under load that is one system call (and one wake-up of
    journald or whatever reads stderr) for many requests, and nothing waits longer than the
    turn.
    """

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self._pending: list[_Entry] = []
        self._ts_ms = -1  # the millisecond `_ts` was formatted for
        self._ts = ""

    def request(self, request_id: str, method: str, path: str, status: int, duration_s: float) -> None:
        """Log a finished request (at the end of this loop turn)."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append((time.time(), request_id, method, path, status, duration_s))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        data = b"".join([self._line(entry) for entry in pending])
        with contextlib.suppress(OSError):  # a closed or full stderr must not fail requests
            while data:
                data = data[os.write(self._fd, data) :]

    def _line(self, entry: _Entry) -> bytes:
        ts, request_id, method, path, status, duration_s = entry
        line = {
            "ts": self._timestamp(ts),
            "level": "info",
            "logger": "hearth.access",
            "msg": "request",
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_s * 1e3, 3),
        }
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    def _timestamp(self, ts: float) -> str:
        ms = int(ts * 1000)
        if ms != self._ts_ms:  # under load many lines share a millisecond
            self._ts_ms = ms
            self._ts = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        return self._ts


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # the gateway writes its own access log
    # aiosqlite logs SQL parameters (key digests among them) at DEBUG: never let it.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
