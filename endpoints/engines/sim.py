"""Hearth's SIMULATED inference engine: an OpenAI-compatible server that runs no model.

It speaks the wire format of vLLM's OpenAI server (https://docs.vllm.ai/en/latest/serving/
openai_compatible_server.html; https://platform.openai.com/docs/api-reference) so the
gateway can be load-tested, and its failure paths exercised, on a CPU. Nothing it returns
is real: the text is a fixed cycle of words saying it is simulated, token counts are word
counts, embeddings are hashes. Timing is the only thing modelled: a request waits in a FIFO
for one of `max_concurrency` slots (vLLM's `max_num_seqs`), then takes `ttft_ms` before its
first token and `itl_ms` between tokens. `/metrics` carries vLLM's metric names.

Run it with `python -m endpoints.engines.sim --port 8000 --model sim-model`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import math
import signal
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from endpoints.engines.sim_metrics import METRICS_CONTENT_TYPE, SimState

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

JSONObject = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The simulated text, one word per token; read in a row it says what it is.
_WORDS = ("simulated", "output", "from", "hearth-sim,", "not", "a", "real", "model.")
_TOKENS = tuple(" " + w for w in _WORDS)  # every token after the first starts with a space

# Where the HTTP phrase does not give the name the OpenAI SDK uses (404 → NotFoundError does).
_ERROR_TYPES = {
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    429: "RateLimitError",
    500: "InternalServerError",
}


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


class SimRequestError(Exception):
    """A request the simulator refuses; rendered as an OpenAI error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    """The OpenAI error body; `type` uses vLLM's names (BadRequestError, NotFoundError …)."""
    kind = _ERROR_TYPES.get(status)
    if kind is None:
        try:
            kind = HTTPStatus(status).phrase.replace(" ", "") + "Error"
        except ValueError:
            kind = "Error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _json({"error": error}, status=status)


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


@web.middleware
async def _v1_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API key and fault injection on /v1 (as vLLM's middleware), and the one error path."""
    if request.path.startswith("/v1"):
        config = request.app[SIM_CONFIG]
        if request.method == "POST":
            request.app[SIM_STATE].requests_total += 1
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


# ---------------------------------------------------------------- reading requests


async def _read_body(request: web.Request) -> JSONObject:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise SimRequestError(400, f"Invalid JSON in the request body: {exc}") from None
    if not isinstance(body, dict):
        raise SimRequestError(400, "The request body must be a JSON object.")
    return body


def _check_model(body: JSONObject, config: SimConfig) -> None:
    model = body.get("model")
    if model is not None and model != config.model:
        raise SimRequestError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )


def _int(body: JSONObject, key: str, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SimRequestError(400, f"`{key}` must be an integer >= 1, got {value!r}.", param=key)
    return value


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompts(value: object, param: str) -> list[str | list[int]]:
    """One or more prompts: a string, strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value) or all(_is_token_ids(p) for p in value):
            return list(value)
        if _is_token_ids(value):
            return [value]
    raise SimRequestError(
        400,
        f"`{param}` must be a string, a list of strings, a list of token ids "
        "or a list of lists of token ids.",
        param=param,
    )


def _count(prompt: str | list[int]) -> int:
    """Tokens in a prompt: whitespace-separated words, or token ids; at least 1."""
    return max(len(prompt.split()) if isinstance(prompt, str) else len(prompt), 1)


def _chat_prompt_tokens(body: JSONObject) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimRequestError(400, "`messages` must be a non-empty list.", param="messages")
    words = 0
    for message in messages:
        if not isinstance(message, dict):
            raise SimRequestError(400, "Each message must be an object.", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += len(part["text"].split())
        elif content is not None:
            raise SimRequestError(400, "Message content must be a string or a list of parts.")
    return max(words, 1)


@dataclass(frozen=True)
class _Job:
    """One chat or completion request, validated."""

    chat: bool
    prompt_tokens: int  # all prompts together
    max_tokens: int
    choices: int  # prompts x n
    stream: bool
    include_usage: bool


def _job(body: JSONObject, config: SimConfig, chat: bool, prompt_lengths: list[int]) -> _Job:
    """Validate the generation parameters; unset max_tokens means the default, fitted to room."""
    longest = max(prompt_lengths)
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") else "max_tokens"
    room = config.max_model_len - longest
    max_tokens = _int(body, key, max(min(config.default_max_tokens, room), 1))
    if longest + max_tokens > config.max_model_len:
        raise SimRequestError(
            400,
            f"This model's maximum context length is {config.max_model_len} tokens. However, "
            f"you requested {longest + max_tokens} tokens ({longest} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages "
            "or completion.",
        )
    n = _int(body, "n", 1)
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise SimRequestError(
            400, "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return _Job(chat, sum(prompt_lengths), max_tokens, n * len(prompt_lengths), stream, include_usage)


# ---------------------------------------------------------------- generating


def _token(i: int) -> str:
    return _TOKENS[i % len(_TOKENS)] if i else _WORDS[0]


def _text(num_tokens: int) -> str:
    return "".join(_token(i) for i in range(num_tokens))


def _usage(prompt_tokens: int, completion_tokens: int) -> JSONObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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


async def _generate(request: web.Request, job: _Job) -> web.StreamResponse:
    config, state = request.app[SIM_CONFIG], request.app[SIM_STATE]
    if job.stream:
        return await _stream(request, job, config, state)
    async with _slot(state):
        await _sleep_ms(config.ttft_ms)
        state.prompt_tokens += job.prompt_tokens
        await _sleep_ms((job.max_tokens - 1) * config.itl_ms)  # the same total time as a stream
        state.generation_tokens += job.max_tokens * job.choices
        state.record_success("length")
    text = _text(job.max_tokens)
    if job.chat:
        kind, prefix = "chat.completion", "chatcmpl-"
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            for i in range(job.choices)
        ]
    else:
        kind, prefix = "text_completion", "cmpl-"
        choices = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            for i in range(job.choices)
        ]
    return _json(
        {
            "id": prefix + uuid.uuid4().hex,
            "object": kind,
            "created": int(time.time()),
            "model": config.model,
            "choices": choices,
            "usage": _usage(job.prompt_tokens, job.max_tokens * job.choices),
        }
    )


async def _stream(request: web.Request, job: _Job, config: SimConfig, state: SimState) -> web.StreamResponse:
    """Server-sent events as vLLM writes them, each sent the moment its token is due.

    The words repeat, so each distinct chunk is encoded once per request; with `itl_ms` 0
    nothing separates the tokens in time and the whole answer goes out in one write.
    """
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)  # headers go out before the request waits for a slot
    head: JSONObject = {
        "id": ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex,
        "object": "chat.completion.chunk" if job.chat else "text_completion",
        "created": int(time.time()),
        "model": config.model,
    }
    usage_null: JSONObject = {"usage": None} if job.include_usage else {}

    def events(fields: JSONObject) -> bytes:
        """One chunk per choice (vLLM never puts two choices in one chunk)."""
        return b"".join(
            b"data: " + orjson.dumps({**head, "choices": [{"index": c, **fields}], **usage_null}) + b"\n\n"
            for c in range(job.choices)
        )

    def token_events(text: str, last: bool) -> bytes:
        body = {"delta": {"content": text}} if job.chat else {"text": text}
        end = {"finish_reason": "length", "stop_reason": None} if last else {"finish_reason": None}
        return events({**body, "logprobs": None, **end})

    encoded: dict[str, bytes] = {}
    pending: list[bytes] = []
    try:
        async with _slot(state):
            await _sleep_ms(config.ttft_ms)
            state.prompt_tokens += job.prompt_tokens
            if job.chat:
                role = {"role": "assistant", "content": ""}
                pending.append(events({"delta": role, "logprobs": None, "finish_reason": None}))
            for i in range(job.max_tokens):
                if i and config.itl_ms > 0:
                    await response.write(b"".join(pending))
                    pending.clear()
                    await _sleep_ms(config.itl_ms)
                text = _token(i)
                if i == job.max_tokens - 1:
                    pending.append(token_events(text, last=True))
                else:
                    if text not in encoded:
                        encoded[text] = token_events(text, last=False)
                    pending.append(encoded[text])
                state.generation_tokens += job.choices
            if job.include_usage:
                usage = _usage(job.prompt_tokens, job.max_tokens * job.choices)
                pending.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
            pending.append(b"data: [DONE]\n\n")
            await response.write(b"".join(pending))
            state.record_success("length")
        await response.write_eof()
    except ConnectionResetError:
        log.debug("client went away mid-stream")  # counted and freed by _slot
    return response


# ---------------------------------------------------------------- routes


async def _health(request: web.Request) -> web.Response:
    return web.Response()


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[SIM_STATE].render_metrics()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _models(request: web.Request) -> web.Response:
    config, state = request.app[SIM_CONFIG], request.app[SIM_STATE]
    card = {
        "id": config.model,
        "object": "model",
        "created": state.started,
        "owned_by": "hearth-sim",
        "root": config.model,
        "parent": None,
        "max_model_len": config.max_model_len,
    }
    return _json({"object": "list", "data": [card]})


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    config = request.app[SIM_CONFIG]
    body = await _read_body(request)
    _check_model(body, config)
    return await _generate(request, _job(body, config, True, [_chat_prompt_tokens(body)]))


async def _completions(request: web.Request) -> web.StreamResponse:
    config = request.app[SIM_CONFIG]
    body = await _read_body(request)
    _check_model(body, config)
    lengths = [_count(p) for p in _prompts(body.get("prompt"), "prompt")]
    return await _generate(request, _job(body, config, False, lengths))


def _embedding(item: str | list[int], dim: int) -> bytes:
    """A unit vector from a hash of the input, as little-endian float32 bytes."""
    raw = hashlib.shake_256(orjson.dumps(item)).digest(4 * dim)
    vec = [x / 2**31 - 1.0 for x in struct.unpack(f"<{dim}I", raw)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return struct.pack(f"<{dim}f", *(v / norm for v in vec))


async def _embeddings(request: web.Request) -> web.Response:
    config, state = request.app[SIM_CONFIG], request.app[SIM_STATE]
    body = await _read_body(request)
    _check_model(body, config)
    inputs = _prompts(body.get("input"), "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise SimRequestError(400, "`encoding_format` must be 'float' or 'base64'.", param="encoding_format")
    tokens = [_count(item) for item in inputs]
    for length in tokens:
        if length > config.max_model_len:
            raise SimRequestError(
                400,
                f"This model's maximum context length is {config.max_model_len} tokens. However, "
                f"you requested {length} tokens in the input for embedding generation. Please "
                "reduce the length of the input.",
            )
    async with _slot(state):
        await _sleep_ms(config.ttft_ms)  # an embedding is one prefill
        state.prompt_tokens += sum(tokens)
        state.record_success("stop")
    data = []
    for i, item in enumerate(inputs):
        packed = _embedding(item, config.embedding_dim)
        vector: object = (
            base64.b64encode(packed).decode()
            if fmt == "base64"
            else list(struct.unpack(f"<{config.embedding_dim}f", packed))
        )
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}
    return _json(
        {
            "id": "embd-" + uuid.uuid4().hex,
            "object": "list",
            "created": int(time.time()),
            "model": config.model,
            "data": data,
            "usage": usage,
        }
    )


def create_sim_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application; all its state lives on the app."""
    app = web.Application(middlewares=[_v1_middleware], client_max_size=64 * 1024**2)
    app[SIM_CONFIG] = config
    app[SIM_STATE] = SimState(config.model, config.max_concurrency)
    app.on_response_prepare.append(_add_request_id)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
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
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_sim(config, args.host, args.port)
    except OSError as exc:
        sys.exit(f"hearth-sim: cannot serve on {args.host}:{args.port}: {exc}")


if __name__ == "__main__":
    main()
