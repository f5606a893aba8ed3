"""The validating stage: every rule, with the line it names."""

from __future__ import annotations

import orjson
import pytest

from gateway.batch.validate import MAX_REPORTED_ERRORS, validate_lines

URL = "/v1/chat/completions"


def line(i: int, **changes: object) -> bytes:
    item: dict[str, object] = {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": URL,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    item.update(changes)
    return orjson.dumps(item) + b"\n"


def check(
    raw: list[bytes], *, max_lines: int = 100, refuse: str | None = None
) -> list[tuple[int | None, str]]:
    out = validate_lines(raw, URL, max_lines=max_lines, model_refusal=lambda m: refuse)
    return [(e["line"], e["code"]) for e in out.errors]


def test_good_file() -> None:
    out = validate_lines([line(1), line(2)], URL, max_lines=10, model_refusal=lambda m: None)
    assert out.errors == []
    assert out.model == "m"
    assert [(b.line, b.custom_id) for b in out.lines] == [(1, "c1"), (2, "c2")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{oops\n", "invalid_json_line"),
        (b"[1, 2]\n", "invalid_json_line"),
        (b"\n", "invalid_json_line"),
        (line(2, custom_id=None), "missing_required_parameter"),
        (line(2, method="GET"), "invalid_method"),
        (line(2, url="/v1/embeddings"), "invalid_url"),
        (line(2, body="text"), "missing_required_parameter"),
        (line(2, body={"messages": []}), "missing_required_parameter"),
        (line(2, body={"model": "other"}), "mismatched_model"),
        (line(2, body={"model": "m", "stream": True}), "invalid_request"),
        (line(2, custom_id="c1"), "duplicate_custom_id"),
    ],
)
def test_each_rule_names_its_line(raw: bytes, expected: str) -> None:
    assert check([line(1), raw]) == [(2, expected)]


def test_model_the_user_may_not_use() -> None:
    out = validate_lines([line(1)], URL, max_lines=10, model_refusal=lambda m: f"no `{m}` for you")
    assert out.errors == [
        {"code": "model_not_found", "message": "no `m` for you", "param": "body.model", "line": 1}
    ]


def test_limits() -> None:
    assert check([line(i) for i in range(1, 5)], max_lines=3) == [(4, "too_many_lines")]
    assert check([]) == [(None, "empty_file")]
    out = validate_lines(
        [b"x\n"] * (MAX_REPORTED_ERRORS + 7), URL, max_lines=10_000, model_refusal=lambda m: None
    )
    assert len(out.errors) == MAX_REPORTED_ERRORS
    assert out.more_errors == 7
