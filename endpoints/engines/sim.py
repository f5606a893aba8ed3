"""Hearth's SIMULATED inference engine: an OpenAI-compatible server that runs no model.

It speaks the wire format of vLLM's OpenAI server (https://docs.vllm.ai/en/latest/serving/
openai_compatible_server.html; https://platform.openai.com/docs/api-reference) so the
gateway can be load-tested, and its failure paths exercised, on a CPU. Nothing it returns
is real: the text is a fixed cycle of words saying it is simulated, token counts are word
counts, embeddings are hashes. Timing is the only thing modelled: a request waits in a FIFO
for one of `max_concurrency` slots (vLLM's `max_num_seqs`), then takes `ttft_ms` before its
first token and `itl_ms` between tokens. `/metrics` carries vLLM's metric names;
`/debug/traces` lists the W3C `traceparent` headers it received (where vLLM would continue
the trace in its own spans).

This module is the server: its config, routes, timing, and CLI. The request and response
shapes are in `endpoints.engines.sim_protocol`, the slots and metrics in
`endpoints.engines.sim_metrics`.

Run it with `python -m endpoints.engines.sim --port 8000 --model sim-model`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from endpoints.engines.sim_metrics import METRICS_CONTENT_TYPE, SimState
from endpoints.engines.sim_protocol import (
    DONE_EVENT,
    Job,
    SimRequestError,
    StreamChunks,
    chat_prompt_tokens,
    check_model,
    completion_body,
    count_tokens,
    embeddings_body,
    error_body,
    model_list,
    parse_body,
    parse_embedding_job,
    parse_job,
    prompts,
    token_text,
)

__all__ = [
    "SIM_CONFIG",
    "SIM_STATE",
    "SimConfig",
    "create_sim_app",
    "main",
    "run_sim",
    "serve_sim",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class SimConfig:
    """How one simulated engine behaves; see the module docstring."""

    model: str = "sim-model"
    ttft_ms: float = 50.0  # delay before the first token (prefill)
    itl_ms: float = 10.0  # delay between tokens
    max_concurrency: int = 64  # running at once; the rest wait in a FIFO (vLLM's max_num_seqs)
    max_model_len: int = 4096
    default_max_tokens: int = 16  # when the request names no max_tokens / max_completion_tokens
    embedding_dim: int = 64
    api_key: str | None = None  # like `vllm serve --api-key`: /v1/* needs `Bearer <key>`
    fail_status: int | None = None  # fault injection: every /v1 request answers this status
    stamp_events: bool = False  # benchmarks: a `: sent=<unix time>` comment before each write

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.itl_ms < 0:
            raise ValueError("ttft_ms and itl_ms must be >= 0")
        for name in ("max_concurrency", "max_model_len", "default_max_tokens", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP error status, got {self.fail_status}")


SIM_CONFIG = web.AppKey("hearth_sim_config", SimConfig)
SIM_STATE = web.AppKey("hearth_sim_state", SimState)


# ---------------------------------------------------------------- errors


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    return _json(error_body(status, message, param, code), status=status)


@web.middleware
async def _v1_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API key and fault injection on /v1 (as vLLM's middleware), and the one error path."""
    if request.path.startswith("/v1"):
        config = request.app[SIM_CONFIG]
        if request.method == "POST":
            state = request.app[SIM_STATE]
            state.requests_total += 1
            if (traceparent := request.headers.get("traceparent")) is not None:
                state.traceparents.append(traceparent)
        if config.api_key is not None and request.method != "OPTIONS":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                return _error_response(401, "Unauthorized", code="invalid_api_key")
        if config.fail_status is not None:
            message = f"Simulated failure: hearth-sim answers {config.fail_status} (fail_status)."
            return _error_response(config.fail_status, message)
    try:
        return await handler(request)
    except SimRequestError as exc:
        return _error_response(exc.status, exc.message, exc.param, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(exc.status, exc.reason)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Echo X-Request-ID, like `vllm serve --enable-request-id-headers`."""
    response.headers["X-Request-ID"] = request.headers.get("X-Request-ID") or uuid.uuid4().hex


# ---------------------------------------------------------------- generating


@contextlib.asynccontextmanager
async def _slot(state: SimState) -> AsyncIterator[None]:
    """Hold one engine slot; a client that goes away frees it and is counted as cancelled."""
    try:
        await state.gate.acquire()
    except asyncio.CancelledError:
        state.requests_cancelled += 1
        raise
    try:
        yield
    except (asyncio.CancelledError, ConnectionResetError):
        state.requests_cancelled += 1
        raise
    finally:
        state.gate.release()


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def _generate(request: web.Request, job: Job) -> web.StreamResponse:
    config, state = request.app[SIM_CONFIG], request.app[SIM_STATE]
    if job.stream:
        return await _stream(request, job, config, state)
    async with _slot(state):
        await _sleep_ms(config.ttft_ms)
        state.prompt_tokens += job.prompt_tokens
        await _sleep_ms((job.max_tokens - 1) * config.itl_ms)  # the same total time as a stream
        state.generation_tokens += job.max_tokens * job.choices
        state.record_success("length")
    return _json(completion_body(job, config.model))


async def _stream(request: web.Request, job: Job, config: SimConfig, state: SimState) -> web.StreamResponse:
    """Server-sent events as vLLM writes them, each sent the moment its token is due.

    The words repeat, so each distinct chunk is encoded once per request; with `itl_ms` 0
    nothing separates the tokens in time and the whole answer goes out in one write.
    """
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)  # headers go out before the request waits for a slot
    chunks = StreamChunks(job, config.model)
    encoded: dict[str, bytes] = {}
    pending: list[bytes] = []
    try:
        async with _slot(state):
            await _sleep_ms(config.ttft_ms)
            state.prompt_tokens += job.prompt_tokens
            if job.chat:
                pending.append(chunks.role())
            for i in range(job.max_tokens):
                if i and config.itl_ms > 0:
                    await response.write(_stamp(config) + b"".join(pending))
                    pending.clear()
                    await _sleep_ms(config.itl_ms)
                text = token_text(i)
                if i == job.max_tokens - 1:
                    pending.append(chunks.token(text, last=True))
                else:
                    if text not in encoded:
                        encoded[text] = chunks.token(text, last=False)
                    pending.append(encoded[text])
                state.generation_tokens += job.choices
            if job.include_usage:
                pending.append(chunks.usage())
            pending.append(DONE_EVENT)
            await response.write(_stamp(config) + b"".join(pending))
            state.record_success("length")
        await response.write_eof()
    except ConnectionResetError:
        log.debug("client went away mid-stream")  # counted and freed by _slot
    return response


def _stamp(config: SimConfig) -> bytes:
    """An SSE comment with the time of the write (clients ignore comments), so a benchmark on
    the same host can measure how long each chunk takes to reach it through a relay."""
    return b": sent=%.6f\n\n" % time.time() if config.stamp_events else b""


# ---------------------------------------------------------------- routes


async def _health(request: web.Request) -> web.Response:
    return web.Response()


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[SIM_STATE].render_metrics()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _traces(request: web.Request) -> web.Response:
    """The `traceparent` headers of the latest requests that carried one, oldest first."""
    return _json({"traceparents": list(request.app[SIM_STATE].traceparents)})


async def _models(request: web.Request) -> web.Response:
    config, state = request.app[SIM_CONFIG], request.app[SIM_STATE]
    return _json(model_list(config.model, state.started, config.max_model_len))


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    config = request.app[SIM_CONFIG]
    body = parse_body(await request.read())
    check_model(body, config.model)
    job = parse_job(
        body,
        True,
        [chat_prompt_tokens(body)],
        max_model_len=config.max_model_len,
        default_max_tokens=config.default_max_tokens,
    )
    return await _generate(request, job)


async def _completions(request: web.Request) -> web.StreamResponse:
    config = request.app[SIM_CONFIG]
    body = parse_body(await request.read())
    check_model(body, config.model)
    lengths = [count_tokens(p) for p in prompts(body.get("prompt"), "prompt")]
    job = parse_job(
        body,
        False,
        lengths,
        max_model_len=config.max_model_len,
        default_max_tokens=config.default_max_tokens,
    )
    return await _generate(request, job)


async def _embeddings(request: web.Request) -> web.Response:
    config, state = request.app[SIM_CONFIG], request.app[SIM_STATE]
    body = parse_body(await request.read())
    check_model(body, config.model)
    job = parse_embedding_job(body, config.max_model_len)
    async with _slot(state):
        await _sleep_ms(config.ttft_ms)  # an embedding is one prefill
        state.prompt_tokens += job.prompt_tokens
        state.record_success("stop")
    return _json(embeddings_body(job, config.embedding_dim, config.model))


def create_sim_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application; all its state lives on the app."""
    app = web.Application(middlewares=[_v1_middleware], client_max_size=64 * 1024**2)
    app[SIM_CONFIG] = config
    app[SIM_STATE] = SimState(config.model, config.max_concurrency)
    app.on_response_prepare.append(_add_request_id)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/debug/traces", _traces)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    return app


# ---------------------------------------------------------------- serving


async def serve_sim(config: SimConfig, host: str, port: int) -> None:
    """Serve the simulator on host:port until cancelled."""
    runner = web.AppRunner(
        create_sim_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        log.info(
            "hearth-sim (SIMULATED engine, no real model) serving %r on http://%s:%d",
            config.model,
            host,
            port,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _serve_until_signalled(config: SimConfig, host: str, port: int) -> None:
    serving = asyncio.ensure_future(serve_sim(config, host, port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, serving.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_sim(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the simulator until SIGTERM or SIGINT (blocking); uses uvloop when installed."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_until_signalled(config, host, port))
    log.info("hearth-sim stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m endpoints.engines.sim`: parse flags, then `run_sim`."""
    default = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m endpoints.engines.sim",
        description="Hearth's SIMULATED OpenAI-compatible engine (no real model).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=default.model)
    parser.add_argument("--ttft-ms", type=float, default=default.ttft_ms)
    parser.add_argument("--itl-ms", type=float, default=default.itl_ms)
    parser.add_argument("--max-concurrency", type=int, default=default.max_concurrency)
    parser.add_argument("--max-model-len", type=int, default=default.max_model_len)
    parser.add_argument("--default-max-tokens", type=int, default=default.default_max_tokens)
    parser.add_argument("--embedding-dim", type=int, default=default.embedding_dim)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument(
        "--stamp-events", action="store_true", help="benchmarks: a `: sent=<time>` comment before each write"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = SimConfig(
            model=args.model,
            ttft_ms=args.ttft_ms,
            itl_ms=args.itl_ms,
            max_concurrency=args.max_concurrency,
            max_model_len=args.max_model_len,
            default_max_tokens=args.default_max_tokens,
            embedding_dim=args.embedding_dim,
            api_key=args.api_key,
            fail_status=args.fail_status,
            stamp_events=args.stamp_events,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_sim(config, args.host, args.port)
    except OSError as exc:
        sys.exit(f"hearth-sim: cannot serve on {args.host}:{args.port}: {exc}")


if __name__ == "__main__":
    main()
