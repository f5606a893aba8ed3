"""A small HTTP/1.1 client for the relay's hot path: a keep-alive pool over httptools.

Why not aiohttp or httpx: on the relay's path the HTTP client is most of the gateway's CPU per
request, and `python -m benchmarks.clients` measures this client at a fraction of either (see
docs/performance.md). It does only what the relay needs, and does it completely:

- requests with a body (POST) or without (GET) to ``http://`` or ``https://`` origins;
- responses with Content-Length, chunked, or close-delimited bodies, read whole or line by
  line (for SSE), with back-pressure on large bodies;
- keep-alive reuse, ``Connection: close``, one retry on a fresh connection when a reused one
  turns out to have been closed by the server before any byte of the answer arrived (the
  request was not seen, so the retry cannot duplicate work);
- connect and read (idle) timeouts, and a deadline for a whole request; cancellation closes
  the connection, which is how a worker learns that its client went away.

A request's deadline costs no timer of its own: the pool keeps the deadlines of its busy
connections and one timer, set for the earliest, fails the requests that pass theirs. An
``asyncio.timeout`` around each request (a timer scheduled and cancelled, a task
cancellation to undo) was a few percent of the gateway's CPU per request under load.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 256 * 1024  # pause reading the socket above this much unread body
_SWEEP_MIN_S = 0.05  # deadlines are kept to within this


class HTTPClientError(Exception):
    """Base of the client's errors."""


class ConnectError(HTTPClientError):
    """The TCP (or TLS) connection could not be made."""


class ConnectionLost(HTTPClientError):
    """The connection closed, or the answer was not HTTP, before the response was complete."""


class ReadTimeout(HTTPClientError, TimeoutError):
    """Nothing arrived for longer than the read timeout."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Connecting took longer than the connect timeout."""


class DeadlineExceeded(HTTPClientError, TimeoutError):
    """The response was not complete by the request's deadline."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        """The origin of `url` and its path (without a trailing slash)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port), parts.path.rstrip("/")

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One TCP connection, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self._loop = loop
        self.origin = origin
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._framed = False  # Content-Length or chunked, rather than close-delimited

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"the server's answer is not valid HTTP/1.1 ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self._framed and self.error is None:
            self.complete = True  # a close-delimited body ends with the connection
        elif not self.complete:
            detail = f": {exc}" if exc else ""
            self._fail(ConnectionLost(f"the connection closed before the response was complete{detail}"))
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.buffer += body
        if len(self.buffer) > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- used by the pool and the response ---------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, idle_s: float | None) -> None:
        """Until something happens on the connection (data, end, error), or the timeout."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(idle_s, self._timed_out, waiter) if idle_s is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self.error is not None:
            raise self.error

    def expire(self) -> None:
        """The request's deadline passed: fail what waits for it (the caller then closes)."""
        self._fail(DeadlineExceeded("the response was not complete by the request's deadline"))

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout("no data from the server within the read timeout"))

    def take(self, n: int | None = None) -> bytes:
        """Remove and return up to `n` buffered body bytes (all when None)."""
        if n is None or n >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:n])
            del self.buffer[:n]
        if self._paused and len(self.buffer) < _HIGH_WATER // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def send(self, head: bytes, body: bytes) -> None:
        """Start a request on this (idle) connection."""
        self._reset()
        assert self._transport is not None
        if len(body) < 65536:
            self._transport.write(head + body)  # one send(2); cheaper than a copy is dear
        else:
            self._transport.writelines((head, body))

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class Response:
    """A response whose headers have arrived; read the body, then `release()` (or `close()`)."""

    __slots__ = ("_conn", "_done", "_pool", "_read_timeout", "headers", "status")

    def __init__(self, pool: ConnectionPool, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._done = False
        self.status = conn.status
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in conn.headers}

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        conn = self._conn
        chunks = []
        while not conn.complete:
            if conn.buffer:  # drain as we go, or back-pressure would stall a large body
                chunks.append(conn.take())
            await conn.wait(self._read_timeout)
        chunks.append(conn.take())
        return b"".join(chunks)

    async def readline(self) -> bytes:
        """The next line, with its ``\\n``; at the end, what is left (b"" once empty)."""
        conn = self._conn
        i = conn.buffer.find(b"\n")
        if i >= 0:
            return conn.take(i + 1)
        # Collect a long line outside the buffer: back-pressure only lifts as the buffer drains.
        parts: list[bytes] = []
        while True:
            if conn.complete:
                parts.append(conn.take())
                return b"".join(parts)
            await conn.wait(self._read_timeout)
            i = conn.buffer.find(b"\n")
            if i >= 0:
                parts.append(conn.take(i + 1))
                return b"".join(parts)
            parts.append(conn.take())

    def release(self) -> None:
        """Give the connection back for reuse if the response was read to its end."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        self._pool._deadlines.pop(conn, None)
        if conn.complete and conn.keep_alive and not conn.closed and not conn.buffer:
            self._pool._put(conn)
        else:
            conn.close()
        self._pool._release_slot()

    def close(self) -> None:
        """Drop the connection (the server sees the client leave)."""
        if self._done:
            return
        self._done = True
        self._pool._deadlines.pop(self._conn, None)
        self._conn.close()
        self._pool._release_slot()


class ConnectionPool:
    """Keep-alive connections per origin; at most `max_connections` requests at once."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._in_use = 0  # connection slots taken, at most max_connections
        self._waiters: deque[asyncio.Future[None]] = deque()  # for a slot, first come first served
        self._deadlines: dict[_Connection, float] = {}  # busy connections' deadlines (loop time)
        self._sweep: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: dict[str, str],
        body: bytes = b"",
        *,
        read_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send a request and wait for the response headers.

        `read_timeout` bounds each wait for data; `deadline` (the event loop's clock) is when
        the whole response must have arrived, headers and body, or DeadlineExceeded is raised.
        """
        head = _render_head(method, origin, target, headers, body)
        await self._acquire(deadline)
        try:
            for attempt in range(2):
                conn, reused = self._take_idle(origin), True
                if conn is None:
                    conn, reused = await self._connect(origin), False
                conn.send(head, body)
                if deadline is not None:
                    self._watch(conn, deadline)
                try:
                    while not conn.headers_done:
                        await conn.wait(read_timeout)
                except ConnectionLost:
                    self._deadlines.pop(conn, None)
                    conn.close()
                    if reused and not conn.got_bytes and attempt == 0:
                        continue  # the server had closed this idle connection: not seen, retry
                    raise
                except BaseException:
                    self._deadlines.pop(conn, None)
                    conn.close()
                    raise
                return Response(self, conn, read_timeout)
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            self._release_slot()
            raise

    async def _acquire(self, deadline: float | None) -> None:
        # The slots are counted here rather than by an asyncio.Semaphore: a free slot is taken
        # without suspending the request (the Semaphore's acquire scans its waiters each time).
        if self._in_use < self._max and not self._waiters:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:  # every slot is taken: the wait for one counts against the deadline
            if deadline is None:
                await waiter
            else:
                async with asyncio.timeout_at(deadline):
                    await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as the wait ended: pass it on
            elif waiter in self._waiters:  # (a release may have dropped it, cancelled, already)
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded("no connection became free before the request's deadline") from None
            raise
        # handed over by _release_slot, still counted in _in_use

    def _release_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the longest waiting request
                return
        self._in_use -= 1

    def _watch(self, conn: _Connection, deadline: float) -> None:
        self._deadlines[conn] = deadline
        sweep = self._sweep
        if sweep is None or sweep.when() > deadline:
            if sweep is not None:
                sweep.cancel()
            self._sweep = conn._loop.call_at(deadline, self._expire, conn._loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the requests past their deadline; set the timer for the next deadline."""
        self._sweep = None
        now = loop.time()
        for conn, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[conn]
                conn.expire()
        if self._deadlines:
            # Not sooner than _SWEEP_MIN_S: deadlines that fall close together (a burst of
            # requests to a stalled worker) are failed in one sweep, not one wake-up each.
            soonest = min(self._deadlines.values())
            self._sweep = loop.call_at(max(soonest, now + _SWEEP_MIN_S), self._expire, loop)

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self._idle_timeout
        while idle:
            conn = idle.pop()  # most recently used first
            if not conn.closed and conn.idle_since >= oldest_ok:
                return conn
            conn.close()
        return None

    def _put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, deque()).append(conn)

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, origin), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {origin.host}:{origin.port} timed out") from None
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from exc
        return conn

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)


def _render_head(method: str, origin: Origin, target: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
