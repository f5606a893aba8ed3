"""The affinity key of a request: the start it shares with the other requests of its conversation.

An engine with prefix caching (vLLM's automatic prefix caching) skips the prefill of a prompt's
start when it saw that start recently. Each turn of a chat resends the whole conversation, so
its turns share the system message and the first user message; a completion's prompt shares
its first bytes with the next one built on it. The router sends requests with the same key to
the same engine when that engine is not much busier than its peers (`gateway.routing.router`).

The key is only a routing hint, so it is cheap rather than exact: at most `MAX_KEY_BYTES`, text
parts only (an image's tokens are left out), the system message at most half of it (so
conversations that share a long system prompt still spread by their first user message, while
each keeps to one engine), and None where no prefix is worth keeping
(embeddings, or a request with no text).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_KEY_BYTES", "affinity_key"]

MAX_KEY_BYTES = 1024
_SYSTEM_BYTES = MAX_KEY_BYTES // 2
_MAX_TOKENS = 256  # of a prompt given as token ids
_SEPARATOR = b"\x00"  # between the system and the user message: ("ab", "c") is not ("a", "bc")


def affinity_key(path: str, payload: dict[str, Any]) -> bytes | None:
    """The key for a request to `path` (below /v1) with the JSON body `payload`."""
    if path == "chat/completions":
        return _chat_key(payload.get("messages"))
    if path == "completions":
        return _prompt_key(payload.get("prompt"))
    return None


def _chat_key(messages: object) -> bytes | None:
    if not isinstance(messages, list):
        return None
    system: str | None = None
    user: str | None = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "system" or role == "developer":
            if system is None:
                system = _text(message.get("content"))
        elif role == "user":
            user = _text(message.get("content"))
            break  # the system message, if any, comes before the first user message
    if not system and not user:
        return None
    # The system message gets at most half: conversations that share a long one must still
    # differ by their first user message, or one engine would get all of an application's.
    head = (system or "")[:_SYSTEM_BYTES].encode("utf-8", "replace")[:_SYSTEM_BYTES]
    key = head + _SEPARATOR + (user or "")[:MAX_KEY_BYTES].encode("utf-8", "replace")
    return key[:MAX_KEY_BYTES]


def _text(content: object) -> str:
    """A message's text: the string, or its text parts joined (up to the key's length)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    size = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
                size += len(text)
                if size >= MAX_KEY_BYTES:
                    break
    return "".join(parts)


def _prompt_key(prompt: object) -> bytes | None:
    """A prompt is a string, a list of strings, a list of token ids or a list of such lists;
    the key is the start of the first prompt."""
    if isinstance(prompt, list):
        if not prompt:
            return None
        first = prompt[0]
        if isinstance(first, int):  # token ids
            return _tokens_key(prompt)
        prompt = first
    if isinstance(prompt, str):
        return prompt[:MAX_KEY_BYTES].encode("utf-8", "replace")[:MAX_KEY_BYTES] or None
    if isinstance(prompt, list) and prompt:
        return _tokens_key(prompt)
    return None


def _tokens_key(tokens: list[Any]) -> bytes | None:
    ids = [t for t in tokens[:_MAX_TOKENS] if isinstance(t, int)]
    return ",".join(map(str, ids)).encode()[:MAX_KEY_BYTES] or None
