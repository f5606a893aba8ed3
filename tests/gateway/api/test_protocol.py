"""Request validation, property-based: `validate` on arbitrary and on valid bodies, and the
live gateway on arbitrary bytes and JSON (always an OpenAI error body, never a 5xx)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.api import quickcheck
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate
from gateway.errors import InvalidRequest
from tests.support.gateway import Gateway

Schema = type[ChatCompletionRequest] | type[CompletionRequest] | type[EmbeddingRequest]
SCHEMAS: dict[str, Schema] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}
CODES = {"invalid_type", "missing_required_parameter", "invalid_value"}
KNOWN_FIELDS = sorted({name for schema in SCHEMAS.values() for name in schema.model_fields})

# --- strategies ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what orjson can encode
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
# Keys are often field names, so that bodies get past the first checks and into the nested ones.
json_keys = st.sampled_from([*KNOWN_FIELDS, "role", "content", "type", "text", "include_usage"]) | st.text(
    max_size=10
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=8)

roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
content_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio"])},
    optional={
        "text": st.text(max_size=20),
        "image_url": st.fixed_dictionaries({"url": st.text(max_size=20)}),
    },
)
messages = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": st.none() | st.text(max_size=40) | st.lists(content_parts, max_size=3),
        "name": st.text(max_size=10),
        "tool_call_id": st.text(max_size=10),
    },
)
token_ids = st.lists(st.integers(min_value=0, max_value=200_000), max_size=8)
prompts = (
    st.text(max_size=40)
    | st.lists(st.text(max_size=10), max_size=4)
    | token_ids
    | st.lists(token_ids, max_size=3)
)
model_names = st.text(min_size=1, max_size=256)
generation = {
    "max_tokens": st.integers(min_value=1, max_value=2**31),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0, max_value=1),
    "n": st.integers(min_value=1, max_value=128),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "user": st.text(max_size=20),
}


def with_unknown_fields(schema: type[Any], required: dict[str, Any], optional: dict[str, Any]) -> Any:
    """Valid bodies for `schema`, plus fields the gateway does not know (returned separately)."""
    unknown = st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k not in schema.model_fields),
        json_values,
        max_size=4,
    )
    return st.tuples(st.fixed_dictionaries(required, optional=optional), unknown)


valid_requests = st.one_of(
    with_unknown_fields(
        ChatCompletionRequest,
        {"model": model_names, "messages": st.lists(messages, min_size=1, max_size=4)},
        {**generation, "max_completion_tokens": st.integers(min_value=1, max_value=2**31)},
    ).map(lambda t: ("chat", t)),
    with_unknown_fields(CompletionRequest, {"model": model_names, "prompt": prompts}, generation).map(
        lambda t: ("completions", t)
    ),
    with_unknown_fields(
        EmbeddingRequest,
        {"model": model_names, "input": prompts},
        {
            "encoding_format": st.sampled_from(["float", "base64"]),
            "dimensions": st.integers(min_value=1, max_value=4096),
            "user": st.text(max_size=20),
        },
    ).map(lambda t: ("embeddings", t)),
)


def check_invalid(error: InvalidRequest, schema: type[Any]) -> None:
    assert error.message
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert error.error_code in CODES
    if error.param is not None:
        assert error.param.split(".")[0] in schema.model_fields
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}


# --- (a) arbitrary JSON: InvalidRequest or nothing ----------------------------------------


@given(kind=st.sampled_from(sorted(SCHEMAS)), payload=json_values | json_objects)
@example(kind="chat", payload={"model": "m", "messages": [{"role": "user", "content": [{}]}]})
@example(kind="chat", payload={"model": "m", "messages": [{"role": "user", "content": [1]}], "n": 0})
@example(kind="completions", payload={"model": "m", "prompt": [[1, "x"]]})
@example(kind="embeddings", payload={"model": "", "input": None})
@example(kind="chat", payload={"model": "m", "messages": [], "__class__": 1, "model_config": {}})
@example(kind="chat", payload=[{"model": "m"}])
@settings(max_examples=200, deadline=None)
def test_validate_raises_only_invalid_request(kind: str, payload: Any) -> None:
    schema = SCHEMAS[kind]
    before = copy.deepcopy(payload)
    try:
        validate(schema, payload)
    except InvalidRequest as exc:
        check_invalid(exc, schema)
    assert payload == before  # validation never changes the body that is relayed


# --- (b) valid requests pass, unknown fields are kept -------------------------------------


@given(valid_requests)
@settings(max_examples=200, deadline=None)
def test_valid_requests_pass_and_keep_unknown_fields(
    case: tuple[str, tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    kind, (known, unknown) = case
    schema = SCHEMAS[kind]
    payload = {**known, **unknown}
    before = copy.deepcopy(payload)

    validate(schema, payload)

    assert payload == before
    parsed = schema.model_validate(payload)
    assert parsed.model_extra == unknown
    assert parsed.model_dump(exclude_unset=True) == payload  # nested extras too


# --- (c) the quick check: never more lenient than pydantic, and covers the everyday bodies --

QUICK = {
    "chat": quickcheck.chat_ok,
    "completions": quickcheck.completion_ok,
    "embeddings": quickcheck.embedding_ok,
}


def accepted(schema: Schema, payload: dict[str, Any]) -> bool:
    try:
        schema.model_validate(payload)
    except ValueError:
        return False
    return True


# Values at and just past the edges the schemas draw, for the quick check to get wrong.
edge_values = (
    st.sampled_from([0, 1, 2, 128, 129, -1, 0.0, 1.0, 2.0, 1.5, True, False, "5", "1.0", "", "robot", [], {}])
    | st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "float", "base64"])
    | st.integers(-3, 300)
    | st.floats(-0.5, 2.5)
    | st.sampled_from(
        ["m" * 256, "m" * 257, {"type": 1}, {"text": "x"}, [{"text": "x"}], [{"type": None}], [1.0]]
    )
    | st.lists(st.integers(0, 3) | st.floats(0, 3) | st.text(max_size=2) | st.booleans(), max_size=3)
)


def fuzzed(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `valid`: a body with one or two edge values in it tests the quick check best."""
    return st.sampled_from(range(8)).flatmap(lambda i: edge_values if i == 0 else valid)


def fuzzy_body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies whose every field, at every depth, may be valid or at an edge."""
    return st.fixed_dictionaries(
        {name: fuzzed(strategy) for name, strategy in required.items()},
        optional={name: fuzzed(strategy) for name, strategy in optional.items()},
    )


fuzzy_parts = fuzzed(
    fuzzy_body({"type": st.sampled_from(["text", "image_url"])}, {"text": st.text(max_size=5)})
)
fuzzy_messages = fuzzed(
    fuzzy_body(
        {"role": roles}, {"content": st.none() | st.text(max_size=5) | st.lists(fuzzy_parts, max_size=3)}
    )
)
fuzzy_prompts = fuzzed(
    prompts
    | st.lists(fuzzed(st.integers(0, 5) | st.text(max_size=2)), max_size=3)
    | st.lists(fuzzed(st.lists(fuzzed(st.integers(0, 5)), max_size=3)), max_size=3)
)
fuzzy_generation = {
    **generation,
    "stream_options": fuzzy_body({}, {"include_usage": st.booleans() | st.none()}),
}
fuzzy_requests = st.one_of(
    fuzzy_body(
        {"model": model_names, "messages": st.lists(fuzzy_messages, min_size=1, max_size=3)},
        {**fuzzy_generation, "max_completion_tokens": st.integers(min_value=1)},
    ).map(lambda b: ("chat", b)),
    fuzzy_body({"model": model_names, "prompt": fuzzy_prompts}, fuzzy_generation).map(
        lambda b: ("completions", b)
    ),
    fuzzy_body(
        {"model": model_names, "input": fuzzy_prompts},
        {
            "encoding_format": st.sampled_from(["float", "base64"]),
            "dimensions": st.integers(1),
            "user": st.text(),
        },
    ).map(lambda b: ("embeddings", b)),
)


@given(valid_requests)
@settings(max_examples=300, deadline=None)
def test_quick_check_accepts_valid_requests(case: tuple[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    kind, (known, unknown) = case
    assert QUICK[kind]({**known, **unknown})


@given(fuzzy_requests)
@example(("chat", {"model": "m", "messages": [{"role": "user"}], "model_config": {}, "__class__": 1}))
@settings(max_examples=1500, deadline=None)
def test_quick_check_is_never_more_lenient_than_pydantic(case: tuple[str, dict[str, Any]]) -> None:
    kind, payload = case
    if QUICK[kind](payload):
        assert accepted(SCHEMAS[kind], payload), payload


@given(kind=st.sampled_from(sorted(SCHEMAS)), payload=json_objects)
@settings(max_examples=300, deadline=None)
def test_quick_check_on_arbitrary_objects(kind: str, payload: dict[str, Any]) -> None:
    if QUICK[kind](payload):
        assert accepted(SCHEMAS[kind], payload), payload


# --- (d) dropping a required field --------------------------------------------------------


def required_paths(kind: str, payload: dict[str, Any]) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = [("model",)]
    if kind == "chat":
        paths.append(("messages",))
        paths += [("messages", i, "role") for i in range(len(payload["messages"]))]
    else:
        paths.append(("prompt",) if kind == "completions" else ("input",))
    return paths


def drop(payload: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any]:
    mutated = copy.deepcopy(payload)
    parent: Any = mutated
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return mutated


@given(valid_requests, st.data())
@settings(max_examples=200, deadline=None)
def test_missing_required_field(
    case: tuple[str, tuple[dict[str, Any], dict[str, Any]]], data: st.DataObject
) -> None:
    kind, (known, unknown) = case
    payload = {**known, **unknown}
    path = data.draw(st.sampled_from(required_paths(kind, payload)))

    with pytest.raises(InvalidRequest) as info:
        validate(SCHEMAS[kind], drop(payload, path))

    assert info.value.error_code == "missing_required_parameter"
    assert info.value.param == ".".join(map(str, path))
    assert f"'{info.value.param}'" in info.value.message


def test_missing_content_part_type() -> None:
    payload = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}],
    }
    with pytest.raises(InvalidRequest) as info:
        validate(ChatCompletionRequest, payload)
    assert (info.value.error_code, info.value.param) == (
        "missing_required_parameter",
        "messages.0.content.1.type",
    )


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"model": "m", "messages": []}, "messages", "invalid_value"),
        ({"model": "", "messages": [{"role": "user"}]}, "model", "invalid_value"),
        ({"model": 5, "messages": [{"role": "user"}]}, "model", "invalid_value"),
        ({"model": "m", "messages": [{"role": "robot"}]}, "messages.0.role", "invalid_value"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": 2.5}, "temperature", "invalid_value"),
        ({"model": "m", "messages": [{"role": "user"}], "n": 129}, "n", "invalid_value"),
        ({"model": "m", "messages": "hi"}, "messages", "invalid_value"),
    ],
)
def test_invalid_values_name_the_field(payload: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate(ChatCompletionRequest, payload)
    assert (info.value.param, info.value.error_code) == (param, code)


# --- (e) the live gateway -----------------------------------------------------------------


def post(gateway: Gateway, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"},
        timeout=10,
    )


def assert_client_error(resp: httpx.Response) -> None:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    assert resp.headers.get("x-request-id")
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == "invalid_request_error"


# Bodies that are nearly valid: one field of a good request replaced by anything. The model
# does not exist, so a body that does validate is answered 404.
near_valid = st.builds(
    lambda field, value: orjson.dumps(
        {
            "model": "no-such-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            field: value,
        }
    ),
    st.sampled_from(["model", "messages", "max_tokens", "stream", "stream_options", "temperature", "n"]),
    json_values,
)


@given(
    body=st.binary(max_size=512) | json_values.map(orjson.dumps) | json_objects.map(orjson.dumps) | near_valid
)
@example(body=b"")
@example(body=b"\xff\xfe{")
@example(body=b'{"model": "sim-model", "messages": [{"role": "user"}], "max_tokens": 2}'[:-1])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_gateway_answers_garbage_with_a_client_error(gateway: Gateway, body: bytes) -> None:
    assert_client_error(post(gateway, body))


def test_stream_is_read_as_validated(gateway: Gateway) -> None:
    body = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": "false",
    }
    resp = post(gateway, orjson.dumps(body))
    assert resp.headers["content-type"].startswith("application/json"), resp.text[:200]
    # Either answered as the non-streaming request it validated as, or refused as not a boolean.
    assert (resp.status_code == 200 and resp.json()["object"] == "chat.completion") or (
        resp.status_code == 400 and resp.json()["error"]["param"] == "stream"
    )
