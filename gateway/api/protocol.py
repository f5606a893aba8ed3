"""Wire models of the OpenAI requests the gateway accepts.

They validate what the gateway must understand (the model name, streaming, token limits) and
let every other field through untouched (``extra="allow"``), so new engine parameters reach
the worker without a gateway release. Shapes follow the OpenAI API reference:
https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from gateway.api import quickcheck
from gateway.errors import InvalidRequest


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class _Generation(_Open):
    model: str = Field(min_length=1, max_length=256)
    stream: StrictBool | None = False  # "false" must not read as a request to stream
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = None


class ContentPart(_Open):
    type: str


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def validate(model: type[_Open], payload: Any) -> None:
    """Check `payload` against `model`; raise InvalidRequest naming the first bad field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    quick = _QUICK.get(model)
    if quick is not None and quick(payload):
        return
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    # For a union (`str | list[ContentPart]`) pydantic reports each member's complaint; the one
    # that got deepest into the value is the one that explains the mistake.
    err = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
    loc = err["loc"]
    # Union members add their type name to loc; keep only the path into the body.
    path = [str(p) for p in loc if isinstance(p, int) or p in _field_names()]
    param = ".".join(path) or None
    if err["type"] == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    return InvalidRequest(f"Invalid value for '{param}': {err['msg']}.", param=param, code="invalid_value")


def _field_names() -> frozenset[str]:
    return _FIELDS


_FIELDS = frozenset(
    name
    for m in (
        ChatCompletionRequest,
        CompletionRequest,
        EmbeddingRequest,
        ChatMessage,
        StreamOptions,
        ContentPart,
    )
    for name in m.model_fields
)

# The plain-Python yes for each schema's everyday bodies (gateway/api/quickcheck.py).
_QUICK: dict[type[_Open], Callable[[dict[str, Any]], bool]] = {
    ChatCompletionRequest: quickcheck.chat_ok,
    CompletionRequest: quickcheck.completion_ok,
    EmbeddingRequest: quickcheck.embedding_ok,
}
