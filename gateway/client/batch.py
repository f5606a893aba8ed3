"""The OpenAI Files and Batch APIs as `hearth batch` uses them, and the batch input file.

- :class:`BatchClient` — :class:`~gateway.client.api.GatewayClient` (same credential, same
  :class:`~gateway.client.api.GatewayError`) with the Files API
  (https://platform.openai.com/docs/api-reference/files: upload, retrieve, download content) and
  the Batch API (https://platform.openai.com/docs/api-reference/batch: create, retrieve, list,
  cancel), and :meth:`BatchClient.wait`, which polls a batch until it ends;
- the input-file helpers of :mod:`gateway.client.batch_input` (re-exported here);
- :class:`ProgressMeter` — completed / failed / total, throughput and ETA from successive polls.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from gateway.client.api import GatewayClient, GatewayError, _reason, error_from_response
from gateway.client.batch_input import (
    ENDPOINTS,
    BatchInputError,
    InputCheck,
    PreparedInput,
    check_input,
    input_kind,
    looks_like_prompts,
    make_jsonl,
    make_jsonl_from,
    prepare_input,
    set_model,
    write_lines,
)

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "ENDPOINTS",
    "TERMINAL",
    "BatchClient",
    "BatchInputError",
    "BearerKey",
    "InputCheck",
    "PreparedInput",
    "Progress",
    "ProgressMeter",
    "check_input",
    "input_kind",
    "looks_like_prompts",
    "make_jsonl",
    "make_jsonl_from",
    "parse_metadata",
    "prepare_input",
    "set_model",
    "write_lines",
]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024  # the gateway's default batch.max_file_bytes
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512  # OpenAI's limits on `metadata`
_SLOW = httpx.Timeout(30.0, read=300.0)  # the gateway may read a whole upload before answering
_TRANSIENT_RETRIES = 5


class BearerKey(httpx.Auth):
    """An API key as the bearer credential (what the OpenAI SDK sends)."""

    def __init__(self, key: str) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key}"
        yield request


class BatchClient(GatewayClient):
    """The gateway's /v1/files and /v1/batches, synchronously."""

    def __enter__(self) -> BatchClient:
        return self

    def upload_file(
        self,
        path: Path,
        *,
        filename: str | None = None,
        purpose: str = "batch",
        max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    ) -> dict[str, Any]:
        """``POST /v1/files`` (multipart: ``file``, ``purpose``), streamed from disk.

        A file larger than `max_bytes` is refused before a byte is sent (the gateway has the
        last word: its limit is ``batch.max_file_bytes``)."""
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if size == 0:
            raise BatchInputError(f"{path} is empty")
        if max_bytes is not None and size > max_bytes:
            raise BatchInputError(
                f"{path} is {_mib(size)}; the most a batch input may be is {_mib(max_bytes)}"
            )
        with path.open("rb") as f:  # httpx reads it in chunks and sends a Content-Length
            files = {"file": (filename or path.name, f, "application/jsonl")}
            return self._call("POST", "/files", data={"purpose": purpose}, files=files, timeout=_SLOW)

    def get_file(self, file_id: str) -> dict[str, Any]:
        """``GET /v1/files/{file_id}``: the file object (bytes, filename, purpose, created_at)."""
        return self._call("GET", f"/files/{quote(file_id, safe='')}")

    def download_file(self, file_id: str, dest: Path) -> int:
        """``GET /v1/files/{file_id}/content`` streamed into `dest` (whole or not at all); bytes written."""
        part = dest.with_name(dest.name + ".part")
        written = 0
        try:
            with self._http.stream("GET", f"/files/{quote(file_id, safe='')}/content", timeout=_SLOW) as resp:
                if resp.is_error:
                    resp.read()
                    raise error_from_response(resp)
                with part.open("wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
                        written += len(chunk)
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise GatewayError(None, f"cannot reach {self.root}: {_reason(exc)}") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(dest)
        return written

    def create_batch(
        self, input_file_id: str, endpoint: str, *, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``POST /v1/batches``; the completion window is "24h", the only one OpenAI defines."""
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if metadata:
            body["metadata"] = metadata
        return self._call("POST", "/batches", json=body)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """``GET /v1/batches/{batch_id}``."""
        return self._call("GET", f"/batches/{quote(batch_id, safe='')}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """``POST /v1/batches/{batch_id}/cancel``: the batch, now ``cancelling`` (then ``cancelled``)."""
        return self._call("POST", f"/batches/{quote(batch_id, safe='')}/cancel")

    def list_batches(self, *, limit: int | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Your batches, newest first, following ``after`` / ``has_more`` page by page; at most `limit`."""
        after: str | None = None
        seen = 0
        while True:
            want = page_size if limit is None else min(page_size, limit - seen)
            params: dict[str, Any] = {"limit": max(1, min(100, want))}
            if after is not None:
                params["after"] = after
            page = self._call("GET", "/batches", params=params)
            data = page.get("data")
            if not isinstance(data, list):
                raise GatewayError(200, f"{self.root}/v1/batches answered an unexpected body")
            for batch in data:
                yield batch
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page.get("has_more") or not data:
                return
            after = str(page.get("last_id") or data[-1].get("id"))

    def wait(
        self,
        batch_id: str,
        on_progress: Callable[[Progress], None],
        *,
        interval: float = 1.0,
        max_interval: float = 15.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> dict[str, Any]:
        """Poll the batch until it is completed, failed, expired or cancelled; return it.

        `on_progress` hears every poll. The pause grows by half while nothing changes (up to
        `max_interval`) and starts again at `interval` when the status changes. The gateway being
        briefly unreachable or busy (no answer, 429, 5xx) is waited out, a few times in a row."""
        sleep = sleep or time.sleep
        clock = clock or time.monotonic
        meter = ProgressMeter()
        delay, failures = interval, 0
        last: tuple[str, int, int] | None = None
        while True:
            try:
                batch = self.get_batch(batch_id)
            except GatewayError as exc:
                failures += 1
                if not _transient(exc) or failures > _TRANSIENT_RETRIES:
                    raise
                sleep(min(max_interval, interval * 2**failures))
                continue
            failures = 0
            progress = meter.update(batch, clock())
            on_progress(progress)
            if progress.status in TERMINAL:
                return batch
            now = (progress.status, progress.completed, progress.failed)
            if last is not None and now[0] != last[0]:
                delay = interval
            elif now == last:
                delay = min(max_interval, delay * 1.5)
            last = now
            sleep(delay)


def _transient(exc: GatewayError) -> bool:
    return exc.status is None or exc.status == 429 or exc.status >= 500


# --- progress ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One poll of a batch: its counts, and lines/s and seconds left as seen from here."""

    batch: dict[str, Any]
    status: str
    total: int
    completed: int
    failed: int
    rate: float | None  # lines (completed or failed) per second; None until two polls apart
    eta: float | None  # seconds until every line is done at that rate; None when unknown

    @property
    def done(self) -> int:
        return self.completed + self.failed

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total > 0 else None


class ProgressMeter:
    """Throughput over the last `window` seconds of polls (a sliding window, so the rate follows
    a batch that speeds up as workers start); restarted when the status changes."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._status: str | None = None

    def update(self, batch: dict[str, Any], now: float) -> Progress:
        counts = batch.get("request_counts") or {}
        total, completed, failed = (_count(counts.get(k)) for k in ("total", "completed", "failed"))
        status = str(batch.get("status") or "unknown")
        done = completed + failed
        if status != self._status or (self._samples and done < self._samples[-1][1]):
            self._samples.clear()
            self._status = status
        self._samples.append((now, done))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        rate: float | None = None
        eta: float | None = None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 > t0:
            rate = (d1 - d0) / (t1 - t0)
            if rate > 0 and total > 0 and status == "in_progress":
                eta = max(0, total - done) / rate
        return Progress(batch, status, total, completed, failed, rate, eta)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def parse_metadata(pairs: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings as a batch's ``metadata`` (at most 16 pairs; keys up to 64 characters,
    values up to 512, as OpenAI allows)."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BatchInputError(f"metadata {pair!r} is not key=value")
        if len(key) > _METADATA_KEY or len(value) > _METADATA_VALUE:
            raise BatchInputError(
                f"metadata {key[:20]!r}: keys may have {_METADATA_KEY} characters, values {_METADATA_VALUE}"
            )
        metadata[key] = value
    if len(metadata) > _METADATA_PAIRS:
        raise BatchInputError(f"at most {_METADATA_PAIRS} metadata pairs")
    return metadata


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MiB"
