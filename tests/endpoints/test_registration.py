"""`hearth endpoint register-functions` against a loopback stand-in of the Globus Compute web
service (POST /v3/functions, the documented registration call), with the real globus_sdk
client; the endpoint config it writes is loaded by globus-compute-endpoint's own loader."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2
import pytest
from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
from typer.testing import CliRunner

from endpoints.functions import SITE_FUNCTIONS
from endpoints.protocol import FUNCTIONS_VERSION
from gateway.cli import app

TOKEN = "stand-in-access-token"


class ComputeStandIn(BaseHTTPRequestHandler):
    registered: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v3/functions":
            self._json(404, {"code": "NOT_FOUND"})
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._json(401, {"code": "UNAUTHORIZED", "error_args": []})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.registered.append(body)
        self._json(200, {"function_uuid": str(uuid.uuid4())})

    def _json(self, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def compute_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    ComputeStandIn.registered = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ComputeStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # globus_sdk's documented override of a service's base URL
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_COMPUTE", f"http://127.0.0.1:{server.server_port}/")
    yield ComputeStandIn.registered
    server.shutdown()


def test_register_functions_and_endpoint_config(
    compute_service: list[dict[str, Any]], tmp_path: Path
) -> None:
    endpoint_dir = tmp_path / "endpoint"
    result = CliRunner().invoke(
        app,
        ["endpoint", "register-functions", "--endpoint-dir", str(endpoint_dir),
         "--worker-init", "source /opt/hearth/.venv/bin/activate"],
        env={"HEARTH_COMPUTE_ACCESS_TOKEN": TOKEN, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(r["function_name"] for r in compute_service) == sorted(SITE_FUNCTIONS)
    for r in compute_service:
        assert r["function_code"]
        assert f"protocol version {FUNCTIONS_VERSION}" in r["description"]
        assert r["meta"]["python_version"]
    ids = dict(re.findall(r"^ {8}(\w+): ([0-9a-f-]{36})$", result.output, re.M))
    assert set(ids) == set(SITE_FUNCTIONS)
    # The endpoint itself: no engine (template-capable endpoints refuse one), only these functions.
    endpoint = load_config_yaml((endpoint_dir / "config.yaml").read_text())
    assert not hasattr(endpoint, "engine") or endpoint.engine is None
    assert sorted(str(f) for f in endpoint.allowed_functions) == sorted(ids.values())
    # The engine it starts for tasks, from the template (rendered as the endpoint would).
    template = jinja2.Template((endpoint_dir / "user_config_template.yaml.j2").read_text())
    engine_config = load_config_yaml(template.render())
    try:
        assert "source /opt/hearth/.venv/bin/activate" in engine_config.engine.provider.worker_init
    finally:
        engine_config.engine.shutdown()


def test_register_functions_refused_token(compute_service: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(
        app, ["endpoint", "register-functions"], env={"HEARTH_COMPUTE_ACCESS_TOKEN": "wrong"}
    )
    assert result.exit_code != 0
    assert compute_service == []
