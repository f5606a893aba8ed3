"""GET /v1/usage through a real gateway: rollups made by the gateway's own rounds."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.gateway import Sim, start_gateway, upstream, wait_for

pytestmark = pytest.mark.timeout(90)


def test_users_see_their_own_usage_admins_everyones(logs: Path, sim: Sim, tmp_path: Path) -> None:
    gw = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim")]}},
        store_url=f"sqlite:///{tmp_path / 'hearth.db'}",
        store={"rollup_interval_s": 0.2},
        extra_keys=[{"owner": "bob", "key": "sk-bob-usage-test"}],
    )
    try:
        body = {"model": sim.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        admin = {"Authorization": f"Bearer {gw.api_key}"}
        bob = {"Authorization": "Bearer sk-bob-usage-test"}
        for headers, n in ((admin, 3), (bob, 2)):
            for _ in range(n):
                assert httpx.post(f"{gw.url}/chat/completions", json=body, headers=headers).status_code == 200

        def mine(headers: dict[str, str]) -> list[dict[str, object]]:
            r = httpx.get(f"{gw.url}/usage", params={"since": "1h"}, headers=headers)
            assert r.status_code == 200, r.text
            data: list[dict[str, object]] = r.json()["data"]
            return data

        assert wait_for(lambda: sum(int(str(d["requests"])) for d in mine(bob)) == 2, timeout=15)
        row = mine(bob)[0]
        assert row["model"] == sim.model
        assert int(str(row["total_tokens"])) > 0
        r = httpx.get(f"{gw.url}/usage", params={"all": "true"}, headers=bob)
        assert r.status_code == 403
        r = httpx.get(f"{gw.url}/usage", params={"all": "true", "by": ["user"], "since": "1h"}, headers=admin)
        assert {d["user"]: d["requests"] for d in r.json()["data"]} == {"tester": 3, "bob": 2}
        r = httpx.get(f"{gw.url}/usage", params={"since": "forever"}, headers=bob)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "since"
    finally:
        gw.stop()
