"""The wire format of the SIMULATED engine: what it reads from a request and what it writes back.

The shapes are those of vLLM's OpenAI-compatible server (https://docs.vllm.ai/en/latest/serving/
openai_compatible_server.html), which follows https://platform.openai.com/docs/api-reference:
chat and text completions, whole or as server-sent events, embeddings, the model list, and the
error body. The simulated content is here too, since it is all the "model" there is: the text
is a fixed cycle of words saying it is simulated, token counts are word counts, and embeddings
are hashes. Nothing here touches HTTP or the engine's state; `endpoints.engines.sim` serves it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

__all__ = [
    "DONE_EVENT",
    "EmbeddingJob",
    "JSONObject",
    "Job",
    "SimRequestError",
    "StreamChunks",
    "chat_prompt_tokens",
    "check_model",
    "completion_body",
    "count_tokens",
    "embeddings_body",
    "error_body",
    "model_list",
    "parse_body",
    "parse_embedding_job",
    "parse_job",
    "prompts",
    "token_text",
]

JSONObject = dict[str, Any]

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

DONE_EVENT = b"data: [DONE]\n\n"


# ---------------------------------------------------------------- errors


class SimRequestError(Exception):
    """A request the simulator refuses; rendered as an OpenAI error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONObject:
    """The OpenAI error body; `type` uses vLLM's names (BadRequestError, NotFoundError …)."""
    kind = _ERROR_TYPES.get(status)
    if kind is None:
        try:
            kind = HTTPStatus(status).phrase.replace(" ", "") + "Error"
        except ValueError:
            kind = "Error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------- reading requests


def parse_body(raw: bytes) -> JSONObject:
    """The request body, which must be one JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SimRequestError(400, f"Invalid JSON in the request body: {exc}") from None
    if not isinstance(body, dict):
        raise SimRequestError(400, "The request body must be a JSON object.")
    return body


def check_model(body: JSONObject, model: str) -> None:
    """A request may leave `model` out; if it names one, it must be the one served."""
    requested = body.get("model")
    if requested is not None and requested != model:
        raise SimRequestError(
            404, f"The model `{requested}` does not exist.", param="model", code="model_not_found"
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


def prompts(value: object, param: str) -> list[str | list[int]]:
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


def count_tokens(prompt: str | list[int]) -> int:
    """Tokens in a prompt: whitespace-separated words, or token ids; at least 1."""
    return max(len(prompt.split()) if isinstance(prompt, str) else len(prompt), 1)


def chat_prompt_tokens(body: JSONObject) -> int:
    """Tokens in `messages`: the words of every text content, at least 1."""
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
class Job:
    """One chat or completion request, validated."""

    chat: bool
    prompt_tokens: int  # all prompts together
    max_tokens: int
    choices: int  # prompts x n
    stream: bool
    include_usage: bool


def parse_job(
    body: JSONObject, chat: bool, prompt_lengths: list[int], *, max_model_len: int, default_max_tokens: int
) -> Job:
    """Validate the generation parameters; unset max_tokens means the default, fitted to room."""
    longest = max(prompt_lengths)
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") else "max_tokens"
    room = max_model_len - longest
    max_tokens = _int(body, key, max(min(default_max_tokens, room), 1))
    if longest + max_tokens > max_model_len:
        raise SimRequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, "
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
    return Job(chat, sum(prompt_lengths), max_tokens, n * len(prompt_lengths), stream, include_usage)


@dataclass(frozen=True)
class EmbeddingJob:
    """One embeddings request, validated."""

    inputs: list[str | list[int]]
    encoding_format: str  # "float" or "base64"
    prompt_tokens: int  # all inputs together


def parse_embedding_job(body: JSONObject, max_model_len: int) -> EmbeddingJob:
    """Validate `input` and `encoding_format`; each input must fit the context on its own."""
    inputs = prompts(body.get("input"), "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise SimRequestError(400, "`encoding_format` must be 'float' or 'base64'.", param="encoding_format")
    tokens = [count_tokens(item) for item in inputs]
    for length in tokens:
        if length > max_model_len:
            raise SimRequestError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"you requested {length} tokens in the input for embedding generation. Please "
                "reduce the length of the input.",
            )
    return EmbeddingJob(inputs, fmt, sum(tokens))


# ---------------------------------------------------------------- writing responses


def token_text(i: int) -> str:
    """The text of the i-th generated token."""
    return _TOKENS[i % len(_TOKENS)] if i else _WORDS[0]


def _usage(prompt_tokens: int, completion_tokens: int) -> JSONObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(job: Job, model: str) -> JSONObject:
    """A whole chat completion or text completion, every choice cut off at `max_tokens`."""
    text = "".join(token_text(i) for i in range(job.max_tokens))
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
    return {
        "id": prefix + uuid.uuid4().hex,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(job.prompt_tokens, job.max_tokens * job.choices),
    }


class StreamChunks:
    """The server-sent events of one streamed completion, as vLLM writes them.

    Each method returns ready-to-send bytes: one `data:` event per choice (vLLM never puts
    two choices in one chunk). The caller decides when each goes out, and may cache the
    bytes of a token that repeats; the stream ends with `DONE_EVENT`.
    """

    __slots__ = ("_head", "_job", "_usage_null")

    def __init__(self, job: Job, model: str) -> None:
        self._job = job
        self._head: JSONObject = {
            "id": ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex,
            "object": "chat.completion.chunk" if job.chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._usage_null: JSONObject = {"usage": None} if job.include_usage else {}

    def _events(self, fields: JSONObject) -> bytes:
        head, usage_null = self._head, self._usage_null
        return b"".join(
            b"data: " + orjson.dumps({**head, "choices": [{"index": c, **fields}], **usage_null}) + b"\n\n"
            for c in range(self._job.choices)
        )

    def role(self) -> bytes:
        """A chat stream's first events: the assistant role with empty content."""
        return self._events(
            {"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        )

    def token(self, text: str, last: bool) -> bytes:
        """One token for every choice; the last one carries `finish_reason` "length"."""
        body = {"delta": {"content": text}} if self._job.chat else {"text": text}
        end = {"finish_reason": "length", "stop_reason": None} if last else {"finish_reason": None}
        return self._events({**body, "logprobs": None, **end})

    def usage(self) -> bytes:
        """The closing usage event (`stream_options.include_usage`), with no choices."""
        job = self._job
        usage = _usage(job.prompt_tokens, job.max_tokens * job.choices)
        return b"data: " + orjson.dumps({**self._head, "choices": [], "usage": usage}) + b"\n\n"


def _embedding(item: str | list[int], dim: int) -> bytes:
    """A unit vector from a hash of the input, as little-endian float32 bytes."""
    raw = hashlib.shake_256(orjson.dumps(item)).digest(4 * dim)
    vec = [x / 2**31 - 1.0 for x in struct.unpack(f"<{dim}I", raw)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return struct.pack(f"<{dim}f", *(v / norm for v in vec))


def embeddings_body(job: EmbeddingJob, dim: int, model: str) -> JSONObject:
    """The embeddings list, each vector as floats or as base64 of its float32 bytes."""
    data = []
    for i, item in enumerate(job.inputs):
        packed = _embedding(item, dim)
        vector: object = (
            base64.b64encode(packed).decode()
            if job.encoding_format == "base64"
            else list(struct.unpack(f"<{dim}f", packed))
        )
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {
        "id": "embd-" + uuid.uuid4().hex,
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
    }


def model_list(model: str, created: int, max_model_len: int) -> JSONObject:
    """`GET /v1/models`: the one model served, with vLLM's extra fields."""
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "hearth-sim",
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
    }
    return {"object": "list", "data": [card]}
