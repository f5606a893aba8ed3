"""Every error a client can get, through the real gateway: OpenAI body, right status."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import Gateway, Sim, start_gateway, start_sim, upstream
from tests.support.procs import free_port

RESTRICTED_KEY = "sk-restricted-key-for-tests"


@pytest.fixture(scope="module")
def broken_sims(logs: Path) -> Iterator[dict[str, Sim]]:
    sims = {
        "e500": start_sim(logs, model="broken", fail_status=500),
        "e503": start_sim(logs, model="busy", fail_status=503),
        "e429": start_sim(logs, model="full", fail_status=429),
        "slow": start_sim(logs, model="slow", ttft_ms=3000),
    }
    yield sims
    for s in sims.values():
        s.proc.stop()


@pytest.fixture(scope="module")
def gw(
    logs: Path, sim: Sim, broken_sims: dict[str, Sim], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    dead_port = free_port()  # nothing listens here
    clusters = {
        "good": {"upstreams": [upstream(sim, "sim")]},
        "bad": {
            "upstreams": [
                upstream(broken_sims["e500"], "e500", models=["broken"]),
                upstream(broken_sims["e503"], "e503", models=["busy"]),
                upstream(broken_sims["e429"], "e429", models=["full"]),
                upstream(broken_sims["slow"], "slow"),
                {"name": "dead", "url": f"http://127.0.0.1:{dead_port}/v1", "models": ["ghost"]},
            ]
        },
    }
    store = f"sqlite:///{tmp_path_factory.mktemp('errors') / 'h.db'}"
    g = start_gateway(
        logs, clusters=clusters, store_url=store,
        server={"max_body_bytes": 4096},
        relay={"request_timeout_s": 0.5, "stream_idle_timeout_s": 0.5, "connect_timeout_s": 1},
        extra_keys=[{"owner": "limited", "key": RESTRICTED_KEY, "models": ["slow"]}],
    )  # fmt: skip
    yield g
    g.stop()


def _post(
    gw: Gateway, path: str, content: bytes | str, key: str | None = "default", **kw: object
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {gw.api_key if key == 'default' else key}"
    return httpx.post(f"{gw.url}/{path}", content=content, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


def _assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert "Traceback" not in resp.text
    if code is not None:
        assert error["code"] == code
    return error


def test_bad_json_is_400(gw: Gateway) -> None:
    _assert_openai_error(_post(gw, "chat/completions", b"{not json"), 400, "invalid_json")
    _assert_openai_error(_post(gw, "chat/completions", b"[1, 2]"), 400, "invalid_type")


def test_missing_field_is_400_naming_it(gw: Gateway) -> None:
    err = _assert_openai_error(_post(gw, "chat/completions", b'{"model": "sim-model"}'), 400)
    assert err["param"] == "messages"
    assert err["code"] == "missing_required_parameter"
    err = _assert_openai_error(_post(gw, "completions", b'{"model": "sim-model"}'), 400)
    assert err["param"] == "prompt"


def test_wrong_type_is_400(gw: Gateway) -> None:
    body = b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}'
    err = _assert_openai_error(_post(gw, "chat/completions", body), 400)
    assert err["param"] == "max_tokens"


def test_missing_and_bad_key_are_401(gw: Gateway) -> None:
    _assert_openai_error(_post(gw, "chat/completions", b"{}", key=None), 401, "missing_api_key")
    _assert_openai_error(_post(gw, "chat/completions", b"{}", key="sk-wrong"), 401, "invalid_api_key")
    _assert_openai_error(_post(gw, "chat/completions", b"{}", key="hth_aaaaaaaaaaaa_" + "x" * 43), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url, api_key="sk-nope", max_retries=0).models.list()


def test_model_not_allowed_is_403(gw: Gateway) -> None:
    body = b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}]}'
    err = _assert_openai_error(
        _post(gw, "chat/completions", body, key=RESTRICTED_KEY), 403, "permission_denied"
    )
    assert err["param"] == "model"
    listed = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {RESTRICTED_KEY}"}).json()
    assert [m["id"] for m in listed["data"]] == ["slow"]


def test_unknown_model_is_404(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gw.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    _assert_openai_error(
        httpx.get(f"{gw.url}/models/no-such", headers={"Authorization": f"Bearer {gw.api_key}"}), 404
    )


def test_unknown_route_and_method(gw: Gateway) -> None:
    _assert_openai_error(_post(gw, "nothing/here", b"{}"), 404)
    _assert_openai_error(httpx.get(f"{gw.url}/chat/completions"), 405)


def test_body_too_large_is_413(gw: Gateway) -> None:
    big = b'{"model": "sim-model", "prompt": "' + b"x" * 8000 + b'"}'
    _assert_openai_error(_post(gw, "completions", big), 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is found while reading
        yield big[:3000]
        yield big[3000:]

    _assert_openai_error(_post(gw, "completions", chunked()), 413, "request_too_large")  # type: ignore[arg-type]


def test_upstream_500_is_502_saying_so(gw: Gateway) -> None:
    err = _assert_openai_error(
        _post(gw, "completions", b'{"model": "broken", "prompt": "x"}'), 502, "upstream_error"
    )
    assert "HTTP 500" in str(err["message"])
    stream = _post(gw, "completions", b'{"model": "broken", "prompt": "x", "stream": true}')
    _assert_openai_error(stream, 502, "upstream_error")


def test_upstream_503_is_503(gw: Gateway) -> None:
    _assert_openai_error(
        _post(gw, "completions", b'{"model": "busy", "prompt": "x"}'), 503, "upstream_unavailable"
    )


def test_upstream_429_is_429_with_retry_after(gw: Gateway) -> None:
    resp = _post(gw, "completions", b'{"model": "full", "prompt": "x"}')
    _assert_openai_error(resp, 429, "rate_limit_exceeded")
    assert resp.headers["retry-after"] == "1"


def test_unreachable_upstream_is_502_saying_so(gw: Gateway) -> None:
    err = _assert_openai_error(
        _post(gw, "completions", b'{"model": "ghost", "prompt": "x"}'), 502, "upstream_unreachable"
    )
    assert "could not be reached" in str(err["message"])
    assert "127.0.0.1" not in str(err["message"])  # no internal addresses for clients


def test_slow_upstream_is_504(gw: Gateway) -> None:
    _assert_openai_error(
        _post(gw, "completions", b'{"model": "slow", "prompt": "x"}'), 504, "upstream_timeout"
    )
    _assert_openai_error(
        _post(gw, "completions", b'{"model": "slow", "prompt": "x", "stream": true}'), 504, "upstream_timeout"
    )


def test_health_ready_metrics(gw: Gateway) -> None:
    assert httpx.get(f"{gw.root}/health").json() == {"status": "ok"}
    assert httpx.get(f"{gw.root}/ready").json()["checks"] == {"store": True}
    text = httpx.get(f"{gw.root}/metrics").text
    assert "hearth_requests_total" in text
    assert 'hearth_upstream_failures_total{reason="connect",upstream="bad/dead"}' in text


def test_raw_socket_garbage_does_not_crash(gw: Gateway) -> None:
    host, port = "127.0.0.1", int(gw.url.split(":")[2].split("/")[0])
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 4")
    assert httpx.get(f"{gw.root}/health").status_code == 200
