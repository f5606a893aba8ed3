"""Hearth's offline batch runner: runs inside a Slurm batch job, over an OpenAI batch input file,
against an OpenAI-compatible engine, appending one OpenAI batch output line per request.

    python -m endpoints.batch_runner --input IN.jsonl --output OUT.jsonl \\
        (--engine-url http://127.0.0.1:8000/v1 [--api-key-file KEY] | --engine-command 'SHELL LINE') \\
        [--served-model NAME] [--concurrency 64] [--progress progress.json]

Input lines are `{"custom_id", "method": "POST", "url": "/v1/...", "body"}`; each output line is
`{"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}`, or `{"response": null, "error": {"code", "message"}}` when the engine could not
be reached after `--retries` (https://platform.openai.com/docs/api-reference/batch).

Crash-safe and resumable. Each output line goes to the file in one write as soon as it is
answered (a killed process loses nothing written), and the file is fsynced every
`--commit-interval` seconds, after which `--progress` records `durable_bytes`: how much of it a
node crash cannot take back (readers stop there while the job runs). On start the runner drops a
torn last line and skips every custom_id the output already answers, so running it again after a
pre-emption, a requeue or a crash finishes the batch with no line lost and none twice.

Signals (TERM, INT, USR1): no new request starts; those in flight get `--stop-grace` seconds,
then are abandoned (they run again on resume). After a signal only successful answers are
written: an error then may be the engine going down with the job, and is not the line's answer.

With `--engine-command` the runner starts the engine itself (a shell line from
`endpoints.engines`, as in the worker template: it reads `$HEARTH_WORKER_PORT`, which the runner
sets to a free port, and `$HEARTH_WORKER_KEY`, a random key the runner makes), waits until
`--engine-health` answers, and stops it at the end. `--served-model` replaces each body's
`model` with the name the engine serves.

Exit status: 0 every input line has an output line; 75 (EX_TEMPFAIL) stopped by a signal
first, run again to resume; 3 the engine did not start or died; 2 bad arguments or input.
slurm/batch.sbatch.j2 treats any status but 0 as "not done": after its USR1 the job requeues.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from endpoints.batch_protocol import MAX_COLLECT_BYTES, Progress, fsync_dir
from endpoints.engines.base import WORKER_KEY_ENV, WORKER_PORT_ENV

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DONE",
    "EXIT_ENGINE",
    "EXIT_STOPPED",
    "RunnerConfig",
    "main",
    "recover_output",
    "run",
]

log = logging.getLogger("hearth.batch_runner")

EXIT_DONE = 0
EXIT_BAD_INPUT = 2
EXIT_ENGINE = 3
EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): not done, try again

_RETRY_STATUSES = frozenset({502, 503, 504})
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@dataclass(frozen=True)
class RunnerConfig:
    input: Path
    output: Path
    progress: Path | None = None
    engine_url: str | None = None  # an engine already running ...
    api_key: str | None = None
    engine_command: str | None = None  # ... or one the runner starts
    engine_health: str = "/health"
    engine_start_timeout_s: float = 1800.0
    served_model: str | None = None
    concurrency: int = 64
    retries: int = 3
    retry_delay_s: float = 0.5  # doubled after each failed attempt
    request_timeout_s: float = 600.0
    stop_grace_s: float = 5.0
    commit_interval_s: float = 0.25
    max_line_bytes: int = MAX_COLLECT_BYTES

    def __post_init__(self) -> None:
        if (self.engine_url is None) == (self.engine_command is None):
            raise ValueError("give exactly one of engine_url and engine_command")
        if self.concurrency < 1 or self.retries < 0:
            raise ValueError("concurrency must be >= 1 and retries >= 0")


class BadInput(Exception):
    """The input file cannot be read."""


class EngineFailed(Exception):
    """The engine the runner started did not come up, or exited."""


@dataclass(frozen=True, slots=True)
class Request:
    custom_id: str
    path: str  # below the engine's /v1, e.g. "chat/completions"
    body: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _error_line(custom_id: str, code: str, message: str) -> bytes:
    line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}  # fmt: skip
    return orjson.dumps(line) + b"\n"


# -- input ------------------------------------------------------------------------------------


def read_input(path: Path) -> tuple[list[Request], list[bytes]]:
    """The requests of the input file, and error output lines for the lines that are not valid
    requests but name a custom_id (other broken lines are logged and skipped)."""
    requests: list[Request] = []
    rejected: list[bytes] = []
    seen: set[str] = set()
    try:
        f = path.open("rb")
    except OSError as exc:
        raise BadInput(f"cannot read the input {path}: {exc.strerror or exc}") from exc
    with f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("input line %d is not JSON; skipped", number)
                continue
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not custom_id:
                log.warning("input line %d has no custom_id; skipped", number)
                continue
            if custom_id in seen:
                log.warning("input line %d repeats custom_id %r; skipped", number, custom_id)
                continue
            seen.add(custom_id)
            url, body = item.get("url"), item.get("body")
            if item.get("method", "POST") != "POST" or not isinstance(url, str) or not url.startswith("/v1/"):
                message = "method must be POST and url a path below /v1/"
                rejected.append(_error_line(custom_id, "invalid_request", message))
            elif not isinstance(body, dict):
                rejected.append(_error_line(custom_id, "invalid_request", "body must be a JSON object"))
            else:
                requests.append(Request(custom_id, url.removeprefix("/v1/"), body))
    return requests, rejected


# -- output -----------------------------------------------------------------------------------


def recover_output(path: Path) -> set[str]:
    """The custom_ids the output file already answers. A torn last line (no newline: the
    process died writing it) is cut off; lines that do not parse (a crashed disk's garbage)
    are left in place and answer nothing, so their requests run again."""
    answered: set[str] = set()
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return answered
    with f:
        position = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                log.warning("dropping a torn last output line (%d bytes)", len(raw))
                os.truncate(path, position)
                break
            position += len(raw)
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning(
                    "an output line at byte %d is not JSON; its request runs again", position - len(raw)
                )
                continue
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if isinstance(custom_id, str):
                answered.add(custom_id)
    return answered


class OutputLog:
    """The output file, appended one line per write, and the progress file that says how much
    of it is durable."""

    def __init__(self, path: Path, progress: Path | None, total: int, done: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0640 before the umask: a site's default ACL can let the gateway read it (shared dir).
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._progress = progress
        self.size = os.fstat(self._fd).st_size
        self.durable = -1
        self.total = total
        self.done = done
        self._published: tuple[int, int] | None = None

    def append(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(line)
        self.done += 1

    async def commit(self) -> None:
        """fsync what was written, then publish it as durable (and the count) in the progress file."""
        size = self.size
        if size != self.durable:
            await asyncio.to_thread(os.fsync, self._fd)
            self.durable = size
        if self._published != (self.durable, self.done):
            self._write_progress()
            self._published = (self.durable, self.done)

    def _write_progress(self) -> None:
        if self._progress is None:
            return
        progress: Progress = {"done": self.done, "total": self.total, "durable_bytes": self.durable,
                              "at": _now()}  # fmt: skip
        if job_id := os.environ.get("SLURM_JOB_ID"):
            progress["job_id"] = job_id
        tmp = self._progress.with_name(f".{self._progress.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(progress) + b"\n")
        os.replace(tmp, self._progress)
        fsync_dir(self._progress.parent)

    def close(self) -> None:
        os.close(self._fd)


# -- the engine -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ManagedEngine:
    """An engine the runner starts (`bash -c COMMAND`, in its own process group) and stops."""

    def __init__(self, command: str, health_path: str) -> None:
        self.command = command
        self.health_path = health_path
        self.port = _free_port()
        self.key = secrets.token_urlsafe(32)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout_s: float) -> None:
        env = {**os.environ, WORKER_KEY_ENV: self.key, WORKER_PORT_ENV: str(self.port)}
        log.info("starting the engine on port %d", self.port)
        self.proc = await asyncio.create_subprocess_exec(
            "bash", "-c", self.command, env=env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        url = f"http://127.0.0.1:{self.port}{self.health_path}"
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as client:
            while True:
                if not self.alive:
                    raise EngineFailed(
                        f"the engine exited (status {self.proc.returncode}) before {url} answered"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with client.get(url, headers=headers) as resp:
                        if resp.status == 200:
                            log.info("the engine answers at %s", url)
                            return
                if time.monotonic() > deadline:
                    raise EngineFailed(f"{url} did not answer within {timeout_s:g} s")
                await asyncio.sleep(0.5)

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.info("the engine stopped (status %s)", proc.returncode)


# -- running ----------------------------------------------------------------------------------


class _Run:
    def __init__(self, config: RunnerConfig, out: OutputLog, engine: ManagedEngine | None) -> None:
        self.config = config
        self.out = out
        self.engine = engine
        self.stopping = asyncio.Event()
        self.engine_died = False
        self.base_url = ""

    def _body(self, request: Request) -> bytes:
        body = request.body
        if self.config.served_model is not None and body.get("model") != self.config.served_model:
            body = {**body, "model": self.config.served_model}
        if body.get("stream"):  # a batch answer is one JSON body
            body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        return orjson.dumps(body)

    async def _until_stopped(self) -> None:
        await self.stopping.wait()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def answer(self, client: aiohttp.ClientSession, request: Request) -> bytes | None:
        """The request's output line, or None when it is abandoned (it runs again on resume)."""
        content = self._body(request)
        delay = self.config.retry_delay_s
        problem = ""
        for attempt in range(self.config.retries + 1):
            if attempt and self.stopping.is_set():
                return None
            request_id = secrets.token_hex(16)
            headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
            try:
                async with client.post(self.base_url + request.path, data=content, headers=headers) as resp:
                    status, payload = resp.status, await resp.read()
                    answered_id = resp.headers.get("X-Request-ID") or request_id
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if self.engine is not None and not self.engine.alive:
                    return None  # the engine died: not this request's answer
            else:
                if status not in _RETRY_STATUSES or attempt == self.config.retries:
                    return self._response_line(request, status, payload, answered_id)
                problem = f"HTTP {status}"
            if attempt < self.config.retries:
                await self._pause(delay)
                delay *= 2
        if self.stopping.is_set() or (self.engine is not None and not self.engine.alive):
            return None
        message = f"the engine could not be reached after {self.config.retries + 1} attempts: {problem}"
        return _error_line(request.custom_id, "engine_unreachable", message)

    def _response_line(self, request: Request, status: int, payload: bytes, request_id: str) -> bytes | None:
        if self.stopping.is_set() and not 200 <= status < 300:
            return None  # may be the engine stopping with the job: ask again on resume
        try:
            body: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            text = payload[:2000].decode("utf-8", "replace")
            body = {"error": {"message": f"the engine answered with non-JSON: {text}", "type": "engine_error",
                              "param": None, "code": None}}  # fmt: skip
        line = orjson.dumps({
            "id": f"batch_req_{secrets.token_hex(12)}", "custom_id": request.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }) + b"\n"  # fmt: skip
        if len(line) > self.config.max_line_bytes:
            message = f"the answer ({len(line)} bytes) is larger than a batch output line may be"
            return _error_line(request.custom_id, "response_too_large", message)
        return line

    async def _worker(self, client: aiohttp.ClientSession, todo: Iterator[Request]) -> None:
        while not self.stopping.is_set():
            request = next(todo, None)
            if request is None:
                return
            line = await self.answer(client, request)
            if line is not None:
                self.out.append(line)

    async def _committer(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(self.config.commit_interval_s)
            await self.out.commit()
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info("%d of %d lines done", self.out.done, self.out.total)

    async def _watch_engine(self) -> None:
        assert self.engine is not None
        assert self.engine.proc is not None
        status = await self.engine.proc.wait()
        if not self.stopping.is_set():
            log.error("the engine exited (status %s) while the batch ran", status)
            self.engine_died = True
            self.stopping.set()

    async def run(self, todo: list[Request], base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        c = self.config
        connector = aiohttp.TCPConnector(limit=c.concurrency)
        timeout = aiohttp.ClientTimeout(total=c.request_timeout_s, connect=10.0)
        async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as client:
            queue = iter(todo)
            workers = [asyncio.ensure_future(self._worker(client, queue)) for _ in range(c.concurrency)]
            helpers = [asyncio.ensure_future(self._committer())]
            if self.engine is not None:
                helpers.append(asyncio.ensure_future(self._watch_engine()))
            stop = asyncio.ensure_future(self._until_stopped())
            all_done = asyncio.ensure_future(_join(workers))
            try:
                await asyncio.wait([all_done, stop], return_when=asyncio.FIRST_COMPLETED)
                if not all_done.done():
                    _, late = await asyncio.wait(workers, timeout=c.stop_grace_s)
                    if late:
                        log.info("abandoning %d requests in flight; they run again on resume", len(late))
                    for task in late:
                        task.cancel()
                results = await asyncio.gather(*workers, return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        raise result  # e.g. the output cannot be written (disk full)
            finally:
                for task in [*workers, *helpers, stop]:
                    task.cancel()
                await asyncio.gather(*workers, *helpers, stop, all_done, return_exceptions=True)


async def _join(tasks: Sequence[asyncio.Future[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


async def run(config: RunnerConfig) -> int:
    """Run the batch (see the module docstring); the exit status."""
    requests, rejected = read_input(config.input)
    answered = recover_output(config.output)
    ids = {r.custom_id for r in requests}
    todo = [r for r in requests if r.custom_id not in answered]
    total = len(requests) + len(rejected)
    out = OutputLog(config.output, config.progress, total, done=len(answered & ids))
    try:
        for line in rejected:
            custom_id = orjson.loads(line)["custom_id"]
            if custom_id not in answered:
                out.append(line)
            else:
                out.done += 1
        await out.commit()
        log.info("%d input lines, %d already answered, %d to run", total, out.done, len(todo))
        if not todo:
            return EXIT_DONE
        return await _run_todo(config, out, todo)
    finally:
        with contextlib.suppress(OSError):
            await out.commit()
        out.close()
        log.info("%d of %d lines done", out.done, out.total)


async def _run_todo(config: RunnerConfig, out: OutputLog, todo: list[Request]) -> int:
    engine = ManagedEngine(config.engine_command, config.engine_health) if config.engine_command else None
    runner = _Run(config, out, engine)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not runner.stopping.is_set():
            log.info("%s: stopping; finished lines are kept, the rest run on resume",
                     signal.Signals(signum).name)  # fmt: skip
        runner.stopping.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if engine is not None:
            starting = asyncio.ensure_future(engine.start(config.engine_start_timeout_s))
            stop = asyncio.ensure_future(runner.stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return EXIT_STOPPED
            try:
                starting.result()
            except EngineFailed as exc:
                log.error("%s", exc)
                return EXIT_ENGINE
            await runner.run(todo, engine.url, engine.key)
        else:
            assert config.engine_url is not None
            await runner.run(todo, config.engine_url, config.api_key)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        if engine is not None:
            await engine.stop()
    if runner.engine_died:
        return EXIT_ENGINE
    return EXIT_DONE if out.done >= out.total else EXIT_STOPPED


def _parser() -> argparse.ArgumentParser:
    d = RunnerConfig(Path(), Path(), engine_url="")
    p = argparse.ArgumentParser(
        prog="python -m endpoints.batch_runner",
        description="Hearth's resumable OpenAI batch runner (runs in a Slurm job).",
    )
    p.add_argument("--input", type=Path, required=True, help="OpenAI batch input (JSONL)")
    p.add_argument("--output", type=Path, required=True, help="OpenAI batch output (JSONL), appended")
    p.add_argument("--progress", type=Path, default=None, help="progress file (done, total, durable_bytes)")
    engine = p.add_mutually_exclusive_group(required=True)
    engine.add_argument("--engine-url", help="an engine's OpenAI base URL, ending in /v1")
    engine.add_argument("--engine-command", help="a shell line that starts the engine (see the module doc)")
    p.add_argument("--api-key-file", type=Path, help="the --engine-url engine's key")
    p.add_argument("--engine-health", default=d.engine_health, help="--engine-command: its health path")
    p.add_argument("--engine-start-timeout", type=float, default=d.engine_start_timeout_s, metavar="S")
    p.add_argument("--served-model", help="put this model name in every request body")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight")
    p.add_argument(
        "--retries", type=int, default=d.retries, help="more attempts when the engine is unreachable"
    )
    p.add_argument("--retry-delay", type=float, default=d.retry_delay_s, metavar="S")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, metavar="S")
    p.add_argument("--stop-grace", type=float, default=d.stop_grace_s, metavar="S",
                   help="after a signal, how long requests in flight may finish")  # fmt: skip
    p.add_argument("--commit-interval", type=float, default=d.commit_interval_s, metavar="S",
                   help="how often the output is fsynced (the most a node crash can take back)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s hearth-batch-runner: %(message)s")  # fmt: skip
    try:
        api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
        config = RunnerConfig(
            input=args.input, output=args.output, progress=args.progress, engine_url=args.engine_url,
            api_key=api_key, engine_command=args.engine_command, engine_health=args.engine_health,
            engine_start_timeout_s=args.engine_start_timeout, served_model=args.served_model,
            concurrency=args.concurrency, retries=args.retries, retry_delay_s=args.retry_delay,
            request_timeout_s=args.request_timeout, stop_grace_s=args.stop_grace,
            commit_interval_s=args.commit_interval,
        )  # fmt: skip
        return asyncio.run(run(config))
    except (BadInput, ValueError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
