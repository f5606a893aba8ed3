"""The OpenAI Files and Batch APIs as `hearth batch` uses them, and the batch input file.

- :class:`BatchClient` — :class:`~gateway.client.api.GatewayClient` (same credential, same
  :class:`~gateway.client.api.GatewayError`) with the Files API
  (https://platform.openai.com/docs/api-reference/files: upload, retrieve, download content) and
  the Batch API (https://platform.openai.com/docs/api-reference/batch: create, retrieve, list,
  cancel), and :meth:`BatchClient.wait`, which polls a batch until it ends;
- :func:`make_jsonl` — a plain text file (one prompt a line) or a CSV/TSV file (a prompt column)
  as batch input lines (https://platform.openai.com/docs/guides/batch, "Prepare your batch file");
- :func:`check_input` — what the gateway would refuse an input file for, found before uploading;
- :class:`ProgressMeter` — completed / failed / total, throughput and ETA from successive polls.
"""

from __future__ import annotations

import codecs
import csv
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from gateway.client.api import GatewayClient, GatewayError, _reason, error_from_response

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

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024  # the gateway's default batch.max_file_bytes
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512  # OpenAI's limits on `metadata`
_SLOW = httpx.Timeout(30.0, read=300.0)  # the gateway may read a whole upload before answering
_TRANSIENT_RETRIES = 5

Kind = Literal["text", "csv", "tsv"]


class BatchInputError(ValueError):
    """An input file (or a source for one) that cannot be used, said in one line for the user."""


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


# --- making input files ------------------------------------------------------------------------


def input_kind(path: Path) -> Kind:
    """How :func:`make_jsonl` reads `path`: by its suffix, .csv / .tsv, else one prompt a line."""
    suffix = path.suffix.lower()
    return "csv" if suffix == ".csv" else "tsv" if suffix == ".tsv" else "text"


def make_jsonl(
    source: Iterable[str],
    model: str | None = None,
    *,
    kind: Kind = "text",
    endpoint: str = "/v1/chat/completions",
    system: str | None = None,
    max_tokens: int | None = None,
    column: str | None = None,
    id_column: str | None = None,
) -> Iterator[str]:
    """Batch input lines, one per prompt: ``{"custom_id", "method": "POST", "url", "body"}``.

    ``text``: every line that is not blank is one prompt, its ``custom_id`` ``line-N`` (its line
    number in the source). ``csv`` / ``tsv``: a header row, then one prompt a row from `column`
    (default: ``prompt``, or the only column); ``custom_id`` is `id_column` (default: a
    ``custom_id`` or ``id`` column if there is one; values must be unique) or ``row-N`` (the Nth
    data row). Rows with an empty prompt are left out. `source` yields lines as a text file does
    (for CSV, open it with ``newline=""`` so quoted fields may hold line breaks)."""
    if endpoint not in ENDPOINTS:
        raise BatchInputError(f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}")
    if system is not None and endpoint != "/v1/chat/completions":
        raise BatchInputError("a system prompt needs the /v1/chat/completions endpoint")
    if max_tokens is not None and (endpoint == "/v1/embeddings" or max_tokens < 1):
        raise BatchInputError("max_tokens must be at least 1, and embeddings take none")
    prompts = _text_prompts(source) if kind == "text" else _csv_prompts(source, kind, column, id_column)
    for custom_id, prompt in prompts:
        body: dict[str, Any] = {} if model is None else {"model": model}
        if endpoint == "/v1/chat/completions":
            system_message = [{"role": "system", "content": system}] if system is not None else []
            body["messages"] = [*system_message, {"role": "user", "content": prompt}]
        else:
            body["prompt" if endpoint == "/v1/completions" else "input"] = prompt
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        line = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}
        yield json.dumps(line, ensure_ascii=False)


def make_jsonl_from(path: Path, model: str | None = None, **options: Any) -> Iterator[str]:
    """:func:`make_jsonl` over a file (UTF-8, with or without a byte-order mark), by its suffix."""
    kind = input_kind(path)
    try:
        with path.open(encoding="utf-8-sig", newline="" if kind != "text" else None) as f:
            yield from make_jsonl(f, model, kind=kind, **options)
    except UnicodeDecodeError:
        raise BatchInputError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _text_prompts(source: Iterable[str]) -> Iterator[tuple[str, str]]:
    for n, line in enumerate(source, 1):
        text = line.rstrip("\r\n")
        if n == 1:
            text = text.removeprefix(codecs.BOM_UTF8.decode())
        if text.strip():
            yield f"line-{n}", text


def _csv_prompts(
    source: Iterable[str], kind: Kind, column: str | None, id_column: str | None
) -> Iterator[tuple[str, str]]:
    reader = csv.DictReader(iter(source), delimiter="\t" if kind == "tsv" else ",")
    try:
        header = reader.fieldnames
        if not header:
            raise BatchInputError(f"the {kind.upper()} file has no header row")
        header = reader.fieldnames = [header[0].removeprefix("\ufeff"), *header[1:]]
        names = ", ".join(header)
        if column is None:
            column = "prompt" if "prompt" in header else header[0] if len(header) == 1 else None
            if column is None:
                raise BatchInputError(f"which column holds the prompts? give --column, one of: {names}")
        elif column not in header:
            raise BatchInputError(f"no column {column!r}; the columns are: {names}")
        if id_column is None:
            id_column = next((c for c in ("custom_id", "id") if c in header and c != column), None)
        elif id_column not in header:
            raise BatchInputError(f"no column {id_column!r}; the columns are: {names}")
        seen: set[str] = set()
        for n, row in enumerate(reader, 1):
            prompt = row.get(column)
            if not isinstance(prompt, str) or not prompt.strip():
                continue
            custom_id = f"row-{n}"
            if id_column is not None:
                custom_id = (row.get(id_column) or "").strip()
                if not custom_id:
                    raise BatchInputError(f"row {n} has no {id_column}")
            if custom_id in seen:
                raise BatchInputError(f"row {n}: {id_column} {custom_id!r} is used twice; ids must be unique")
            seen.add(custom_id)
            yield custom_id, prompt
    except csv.Error as exc:
        raise BatchInputError(f"{kind.upper()} line {reader.reader.line_num}: {exc}") from None


def write_lines(lines: Iterable[str], dest: Path) -> int:
    """Write `lines` to `dest` as JSONL (UTF-8, "\\n"), whole or not at all; how many."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    count = 0
    try:
        with tmp.open("x", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
                count += 1
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


# --- checking input files ----------------------------------------------------------------------


@dataclass
class InputCheck:
    """What :func:`check_input` found: lines, the models they ask for, and the first problems."""

    lines: int = 0
    models: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def check_input(path: Path, endpoint: str, *, model: str | None = None, max_problems: int = 10) -> InputCheck:
    """Check a batch input file against the OpenAI format before uploading it.

    Each line must be a JSON object with a unique string ``custom_id``, ``"method": "POST"``, the
    batch's `endpoint` as ``url`` and an object ``body`` that does not ask to stream; and a batch
    runs one model, so the lines must name the same ``model`` — unless `model` is given, which
    will replace theirs (:func:`set_model`). The gateway checks the same
    (:mod:`gateway.batch.validate`) and more (that you may use the model)."""
    check = InputCheck()
    ids: set[str] = set()

    def problem(text: str) -> None:
        if len(check.problems) < max_problems:
            check.problems.append(text)

    try:
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                check.lines = n
                try:
                    line = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    problem(f"line {n} is empty" if not raw.strip() else f"line {n} is not JSON")
                    continue
                if not isinstance(line, dict):
                    problem(f"line {n} is not a JSON object")
                    continue
                custom_id, body = line.get("custom_id"), line.get("body")
                if not isinstance(custom_id, str) or not custom_id:
                    problem(f"line {n} has no custom_id")
                elif custom_id in ids:
                    problem(f"line {n}: custom_id {custom_id!r} is used twice")
                else:
                    ids.add(custom_id)
                if line.get("method") != "POST":
                    problem(f'line {n}: method must be "POST"')
                if line.get("url") != endpoint:
                    problem(f"line {n}: url is {line.get('url')!r}, not the batch's endpoint {endpoint!r}")
                if not isinstance(body, dict):
                    problem(f"line {n} has no body object")
                    continue
                if body.get("stream"):
                    problem(f"line {n}: a batch cannot stream (remove body.stream)")
                if isinstance(body.get("model"), str):
                    check.models.add(body["model"])
                elif model is None:
                    problem(f"line {n}: body has no model (give --model)")
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if check.lines == 0:
        problem(f"{path} is empty")
    if model is None and len(check.models) > 1:
        names = ", ".join(sorted(check.models)[:5])
        problem(f"the lines ask for {len(check.models)} models ({names}); a batch runs one: give --model")
    return check


@dataclass
class PreparedInput:
    """What :func:`prepare_input` made of a file: the file to upload, under which name, and what
    :func:`check_input` found in it (upload it only if ``check.problems`` is empty)."""

    path: Path
    filename: str
    check: InputCheck


def prepare_input(
    source: Path,
    workdir: Path,
    endpoint: str,
    *,
    model: str | None = None,
    make: dict[str, Any] | None = None,
) -> PreparedInput:
    """The batch input file for `source`, written into `workdir` when it has to be changed.

    With `make` (:func:`make_jsonl`'s options), `source` holds prompts and is converted first.
    With `model`, every line is made to ask for it (:func:`set_model`)."""
    path, filename = source, source.name
    if make is not None:
        path = workdir / source.with_suffix(".jsonl").name
        filename = path.name
        if write_lines(make_jsonl_from(source, model, endpoint=endpoint, **make), path) == 0:
            raise BatchInputError(f"{source} has no prompts")
    check = check_input(path, endpoint, model=model)
    if not check.problems and model is not None and check.models != {model}:
        changed = workdir / f"{source.stem}.{model.replace('/', '_')}.jsonl"
        set_model(path, model, changed)
        path = changed
    return PreparedInput(path, filename, check)


def looks_like_prompts(path: Path) -> bool:
    """A .txt, .csv or .tsv file is taken to hold prompts (for :func:`make_jsonl`), not requests."""
    return path.suffix.lower() in (".txt", ".csv", ".tsv")


def set_model(path: Path, model: str, dest: Path) -> int:
    """Copy a (checked) input file to `dest` with every line's ``body.model`` set to `model`."""

    def lines() -> Iterator[str]:
        with path.open("rb") as f:
            for raw in f:
                line = json.loads(raw)
                line["body"] = {**line["body"], "model": model}
                yield json.dumps(line, ensure_ascii=False)

    return write_lines(lines(), dest)


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
