"""The validating stage: an input file to its lines, or line-numbered errors.

Each line must be a JSON object ``{"custom_id", "method": "POST", "url": <the batch's
endpoint>, "body": {...}}`` with a unique ``custom_id`` and a ``body.model``; every line must
name the same model, one the user may use
(https://platform.openai.com/docs/api-reference/batch/request-input). Errors use the
``errors.data`` shape of a batch: ``{"code", "message", "param", "line"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.batch.executor import BatchLine

__all__ = ["MAX_REPORTED_ERRORS", "Validated", "validate_lines"]

MAX_REPORTED_ERRORS = 100


@dataclass
class Validated:
    lines: list[BatchLine] = field(default_factory=list)
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    more_errors: int = 0

    def error(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})
        else:
            self.more_errors += 1


def validate_lines(
    raw_lines: Iterable[bytes],
    endpoint: str,
    *,
    max_lines: int,
    model_refusal: Callable[[str], str | None],
) -> Validated:
    """Parse and check every line. ``model_refusal(model)`` says why the user may not use it
    (unknown, or not permitted), or None."""
    out = Validated()
    seen: dict[str, int] = {}
    number = 0
    for number, raw in enumerate(raw_lines, 1):
        if number > max_lines:
            out.error("too_many_lines", f"A batch may have at most {max_lines} requests.", number)
            break
        text = raw.strip()
        if not text:
            out.error("invalid_json_line", "Empty line: every line must be one JSON request.", number)
            continue
        try:
            item = orjson.loads(text)
        except orjson.JSONDecodeError:
            out.error("invalid_json_line", "This line is not valid JSON.", number)
            continue
        if not isinstance(item, dict):
            out.error("invalid_json_line", "Each line must be a JSON object.", number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            out.error(
                "missing_required_parameter", "Each line needs a string `custom_id`.", number, "custom_id"
            )
            continue
        if custom_id in seen:
            out.error(
                "duplicate_custom_id",
                f"custom_id {custom_id!r} is also on line {seen[custom_id]}; custom_ids must be unique.",
                number,
                "custom_id",
            )
            continue
        seen[custom_id] = number
        if item.get("method") != "POST":
            out.error("invalid_method", "`method` must be POST.", number, "method")
            continue
        if item.get("url") != endpoint:
            out.error("invalid_url", f"`url` must be {endpoint}, the batch's endpoint.", number, "url")
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            out.error("missing_required_parameter", "`body` must be a JSON object.", number, "body")
            continue
        model = body.get("model")
        if not isinstance(model, str) or not model:
            out.error("missing_required_parameter", "`body.model` is required.", number, "body.model")
            continue
        if body.get("stream"):
            out.error("invalid_request", "Streaming is not available in a batch.", number, "body.stream")
            continue
        if out.model is None:
            refusal = model_refusal(model)
            if refusal is not None:
                out.error("model_not_found", refusal, number, "body.model")
                continue
            out.model = model
        elif model != out.model:
            out.error(
                "mismatched_model",
                f"Every request of a batch must use the same model: {out.model!r} (the first), "
                f"not {model!r}.",
                number,
                "body.model",
            )
            continue
        out.lines.append(BatchLine(number, custom_id, body))
    if number == 0:
        out.error("empty_file", "The input file has no requests.", None)
    return out
