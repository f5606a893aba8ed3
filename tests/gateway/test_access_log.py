"""The access log: one JSON line per request, written at the end of the loop turn."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta

import orjson

from gateway.logs import AccessLog


async def test_lines_of_a_loop_turn_go_out_together() -> None:
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog(fd=write_fd)
        before = datetime.now().astimezone()
        log.request("req-1", "POST", "/v1/chat/completions", 200, 0.0012345)
        log.request("req-2", "GET", "/v1/models", 404, 0.25)
        os.set_blocking(read_fd, False)
        assert _read(read_fd) == b""  # nothing before the end of the turn
        await asyncio.sleep(0)
        lines = [orjson.loads(line) for line in _read(read_fd).splitlines()]
        log.request("req-3", "POST", "/v1/embeddings", 499, 0.0)
        await asyncio.sleep(0)
        lines += [orjson.loads(line) for line in _read(read_fd).splitlines()]
    finally:
        os.close(read_fd)
        os.close(write_fd)

    assert [line["request_id"] for line in lines] == ["req-1", "req-2", "req-3"]
    first = lines[0]
    assert {k: v for k, v in first.items() if k != "ts"} == {
        "level": "info",
        "logger": "hearth.access",
        "msg": "request",
        "request_id": "req-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 1.234,
    }
    assert (lines[1]["status"], lines[1]["duration_ms"]) == (404, 250.0)
    for line in lines:
        ts = datetime.fromisoformat(line["ts"])
        assert ts.utcoffset() == timedelta(0)
        assert abs((ts - before).total_seconds()) < 5
        assert len(line["ts"].split(".")[1]) == len("123+00:00")  # milliseconds


async def test_timestamps_follow_the_clock_across_milliseconds() -> None:
    log = AccessLog(fd=-1)  # never flushed here
    a = log._timestamp(1_700_000_000.0004)
    b = log._timestamp(1_700_000_000.0009)
    c = log._timestamp(1_700_000_000.0021)
    assert a == b == "2023-11-14T22:13:20.000+00:00"
    assert c == "2023-11-14T22:13:20.002+00:00"


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""
