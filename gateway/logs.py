"""Logging as one JSON object per line, with the `extra` fields of each record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
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


class AccessLog:
    """One JSON line per request, written straight to stderr (fd 2).

    The same shape as `JsonFormatter`'s lines, without the logging module's per-record
    machinery (caller lookup, handler locks). Lines finished in the same event-loop turn go
    out in one write(2) at the end of that turn: under load that is one system call (and one
    wake-up of journald or whatever reads stderr) for many requests, and nothing waits longer
    than the turn.
    """

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self._lines: list[bytes] = []

    def write(self, fields: dict[str, Any]) -> None:
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "info",
            "logger": "hearth.access",
            "msg": "request",
            **fields,
        }
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        data = b"".join(self._lines)
        self._lines.clear()
        with contextlib.suppress(OSError):  # a closed or full stderr must not fail requests
            while data:
                data = data[os.write(self._fd, data) :]


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
