"""A fast yes for the request bodies almost every client sends.

`protocol.validate` runs these checks first. Each one accepts only bodies its pydantic model
would accept too, and answers False for anything it is unsure of, so that pydantic then
decides and names the bad field: the error messages come from one place, and a shortcut here
can make validation faster but never more lenient. The property tests in
tests/gateway/api/test_protocol.py hold the two to that (quick yes implies pydantic yes).

Under load pydantic's validation of a chat request was one of the larger costs of the gateway
per request (docs/performance.md); these checks do the same work in plain Python on the
parsed JSON, without building model instances.
"""

from __future__ import annotations

from typing import Any

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ENCODINGS = frozenset({"float", "base64"})
_MISSING = object()


def chat_ok(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    if type(messages) is not list or not messages or not _generation_ok(body):
        return False
    if not _positive_int(body.get("max_completion_tokens")):
        return False
    return all(_message_ok(m) for m in messages)


def completion_ok(body: dict[str, Any]) -> bool:
    return _generation_ok(body) and _text_or_tokens(body.get("prompt", _MISSING))


def embedding_ok(body: dict[str, Any]) -> bool:
    if not (_model_ok(body.get("model")) and _text_or_tokens(body.get("input", _MISSING))):
        return False
    encoding = body.get("encoding_format")
    if encoding is not None and (type(encoding) is not str or encoding not in _ENCODINGS):
        return False
    user = body.get("user")
    return _positive_int(body.get("dimensions")) and (user is None or type(user) is str)


def _generation_ok(body: dict[str, Any]) -> bool:
    if not _model_ok(body.get("model")):
        return False
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        return False
    options = body.get("stream_options")
    if options is not None:
        if type(options) is not dict:
            return False
        usage = options.get("include_usage")
        if usage is not None and type(usage) is not bool:
            return False
    n = body.get("n")
    if n is not None and (type(n) is not int or not 1 <= n <= 128):
        return False
    user = body.get("user")
    return (
        _positive_int(body.get("max_tokens"))
        and _number_within(body.get("temperature"), 2)
        and _number_within(body.get("top_p"), 1)
        and (user is None or type(user) is str)
    )


def _model_ok(model: object) -> bool:
    return type(model) is str and 1 <= len(model) <= 256


def _positive_int(value: object) -> bool:
    """None (absent) or an int >= 1; bools are not ints here."""
    return value is None or (type(value) is int and value >= 1)


def _number_within(value: object, high: int) -> bool:
    return value is None or (type(value) in (int, float) and 0 <= value <= high)  # type: ignore[operator]


def _message_ok(message: object) -> bool:
    if type(message) is not dict:
        return False
    role = message.get("role")
    if type(role) is not str or role not in _ROLES:
        return False
    content = message.get("content")
    if content is None or type(content) is str:
        return True
    if type(content) is not list:
        return False
    return all(type(part) is dict and type(part.get("type")) is str for part in content)


def _text_or_tokens(value: object) -> bool:
    """str | list[str] | list[int] | list[list[int]]: the shapes of `prompt` and `input`."""
    if type(value) is str:
        return True
    if type(value) is not list:
        return False
    if not value:
        return True
    kind = type(value[0])
    if kind is str or kind is int:
        return all(type(item) is kind for item in value)
    if kind is list:
        return all(type(row) is list and all(type(t) is int for t in row) for row in value)
    return False
