"""load_settings: the YAML file, the environment over it, overrides over both; every kind of
bad configuration named precisely; and `hearth config check`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "hearth.example.yaml"

VALID: dict[str, Any] = {
    "server": {"host": "0.0.0.0", "port": 8100, "max_body_bytes": 4096},
    "store": {"url": "sqlite:///tmp/x.db"},
    "auth": {"api_keys": [{"owner": "ops", "key": "sk-1"}], "key_cache_ttl_s": 10},
    "clusters": {
        "polaris": {"upstreams": [{"url": "http://gpu01:8000/v1", "name": "gpu01", "models": ["m"]}]},
        "aurora": {"upstreams": [{"url": "https://proxy.example.org/v1/"}]},
    },
    "models": {"m": {"clusters": ["polaris"]}},
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HEARTH_* variables from the machine leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("HEARTH_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, config: Any, name: str = "hearth.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def problems(path: Path | None, **overrides: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, **overrides)
    assert str(path or "the environment") in str(info.value)
    return info.value.problems


# --- sources and precedence ---------------------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID))
    assert (s.server.host, s.server.port, s.server.max_body_bytes) == ("0.0.0.0", 8100, 4096)
    assert s.server.log_level == "info"  # a default where the file says nothing
    assert s.store.url == "sqlite:///tmp/x.db"
    assert s.auth.key_cache_ttl_s == 10
    (key,) = s.auth.api_keys
    assert key.key is not None
    assert key.key.get_secret_value() == "sk-1"
    assert "sk-1" not in repr(s)  # secrets stay hidden
    assert s.clusters["polaris"].upstreams[0].base_url == "http://gpu01:8000/v1"
    assert s.clusters["aurora"].upstreams[0].base_url == "https://proxy.example.org/v1"  # no trailing /
    assert s.models["m"].clusters == ["polaris"]


def test_defaults_without_a_file() -> None:
    s = load_settings(None)
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert s.clusters == {}
    assert s.models == {}
    assert s.auth.api_keys == []


def test_environment_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_SERVER__PORT", "9000")
    monkeypatch.setenv("HEARTH_AUTH__KEY_CACHE_TTL_S", "0")
    monkeypatch.setenv("HEARTH_STORE__URL", "postgresql://u@db/hearth")
    s = load_settings(write(tmp_path, VALID))
    assert s.server.port == 9000
    assert s.server.host == "0.0.0.0"  # the rest of the section still comes from the file
    assert s.auth.key_cache_ttl_s == 0
    assert len(s.auth.api_keys) == 1  # …including lists the environment did not name
    assert s.store.url == "postgresql://u@db/hearth"


def test_environment_lists_and_mappings_are_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    monkeypatch.setenv("HEARTH_AUTH__API_KEYS", f'[{{"owner": "env", "sha256": "{digest}"}}]')
    monkeypatch.setenv("HEARTH_CLUSTERS__LOCAL__UPSTREAMS", '[{"url": "http://127.0.0.1:8001/v1"}]')
    s = load_settings(None)
    assert [(k.owner, k.sha256) for k in s.auth.api_keys] == [("env", digest)]
    assert s.clusters["local"].upstreams[0].base_url == "http://127.0.0.1:8001/v1"


def test_overrides_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_SERVER__PORT", "9000")
    s = load_settings(write(tmp_path, VALID), server={"port": 7000})
    assert s.server.port == 7000
    assert s.server.host == "0.0.0.0"  # keys the override does not name are kept
    assert s.server.max_body_bytes == 4096


def test_other_hearth_variables_are_not_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hearth serve` reads HEARTH_API_KEY itself; it must not trip the unknown-key check."""
    monkeypatch.setenv("HEARTH_API_KEY", "sk-from-env")
    assert load_settings(None).auth.api_keys == []


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_SERVER__PORT", "eighty")
    assert [key for key, _ in problems(None)] == ["server.port"]
    monkeypatch.setenv("HEARTH_SERVER__PORT", "80")
    monkeypatch.setenv("HEARTH_SERVER__BOGUS", "1")
    assert problems(None) == [("server.bogus", "unknown key")]


# --- bad configurations -------------------------------------------------------------------


def test_unknown_key(tmp_path: Path) -> None:
    config = {**VALID, "server": {**VALID["server"], "bogus": 1}}
    assert problems(write(tmp_path, config)) == [("server.bogus", "unknown key")]


def test_unknown_section_and_nested_unknown_key(tmp_path: Path) -> None:
    config = {**VALID, "extra": {}, "relay": {"max_attempts": 2, "retries": 5}}
    assert sorted(problems(write(tmp_path, config))) == [
        ("extra", "unknown key"),
        ("relay.retries", "unknown key"),
    ]


@pytest.mark.parametrize(
    "url",
    ["http://gpu01:8000", "http://gpu01:8000/v2", "http://gpu01:8000/v1/chat", "ftp://gpu01/v1", "gpu01/v1"],
)
def test_upstream_url_must_be_http_and_end_in_v1(tmp_path: Path, url: str) -> None:
    config = {**VALID, "clusters": {"c": {"upstreams": [{"url": url}]}}, "models": {}}
    ((key, reason),) = problems(write(tmp_path, config))
    assert key == "clusters.c.upstreams.0.url"
    assert reason


@pytest.mark.parametrize(
    "entry",
    [{"owner": "a"}, {"owner": "a", "key": "k", "sha256": hashlib.sha256(b"k").hexdigest()}],
    ids=["neither", "both"],
)
def test_static_key_needs_exactly_one_of_key_or_sha256(tmp_path: Path, entry: dict[str, str]) -> None:
    ((key, reason),) = problems(write(tmp_path, {"auth": {"api_keys": [entry]}}))
    assert key == "auth.api_keys.0"
    assert "exactly one of `key` or `sha256`" in reason


@pytest.mark.parametrize("digest", ["abc", "g" * 64, "a" * 63])
def test_static_key_sha256_must_be_a_digest(tmp_path: Path, digest: str) -> None:
    ((key, _),) = problems(write(tmp_path, {"auth": {"api_keys": [{"sha256": digest}]}}))
    assert key == "auth.api_keys.0.sha256"


def test_static_key_sha256_upper_case_is_accepted(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    s = load_settings(write(tmp_path, {"auth": {"api_keys": [{"sha256": digest.upper()}]}}))
    assert s.auth.api_keys[0].sha256 == digest


def test_model_naming_an_unknown_cluster(tmp_path: Path) -> None:
    config = {**VALID, "models": {"m": {"clusters": ["polaris", "frontier"]}}}
    ((key, reason),) = problems(write(tmp_path, config))
    assert "models.m.clusters" in reason
    assert "'frontier'" in reason
    assert key == "(config)"


def test_scaling_rules_are_checked(tmp_path: Path) -> None:
    config = {**VALID, "models": {"m": {"min_hot": {"elsewhere": 1}}}}
    ((_, reason),) = problems(write(tmp_path, config))
    assert "min_hot names unknown cluster 'elsewhere'" in reason
    config = {**VALID, "models": {"m": {"min_hot": {"polaris": 2}, "max_replicas": 1}}}
    ((key, reason),) = problems(write(tmp_path, config))
    assert key == "models.m"
    assert "more than max_replicas" in reason
    config = {**VALID, "models": {"m": {"prewarm": [{"start": "25:00", "end": "08:00"}]}}}
    ((key, _),) = problems(write(tmp_path, config))
    assert key == "models.m.prewarm.0.start"
    config = {
        **VALID,
        "models": {"m": {"prewarm": [{"start": "08:00", "end": "18:00", "timezone": "Mars/Base"}]}},
    }
    ((key, reason),) = problems(write(tmp_path, config))
    assert key == "models.m.prewarm.0.timezone"
    assert "unknown time zone" in reason
    config = {**VALID, "scheduler": {"interval_s": 30, "leader_ttl_s": 20}}
    ((key, reason),) = problems(write(tmp_path, config))
    assert key == "scheduler"
    assert "leader_ttl_s must be longer than scheduler.interval_s" in reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("- server\n- store\n", "the top level must be a mapping of sections"),
        ("just a string\n", "the top level must be a mapping of sections"),
        ("server: {port: [\n", "not valid YAML"),
        ("server:\n  port: 1\n   host: x\n", "not valid YAML"),
    ],
)
def test_unusable_file(tmp_path: Path, text: str, reason: str) -> None:
    ((key, got),) = problems(write(tmp_path, text))
    assert key == "(file)"
    assert got.startswith(reason)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).server.port == 8000


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [("(file)", "No such file or directory")]


def test_values_out_of_range(tmp_path: Path) -> None:
    config = {
        "server": {"port": 70000, "max_body_bytes": 10, "log_level": "loud"},
        "relay": {"max_attempts": 0},
    }
    keys = sorted(key for key, _ in problems(write(tmp_path, config)))
    assert keys == ["relay.max_attempts", "server.log_level", "server.max_body_bytes", "server.port"]


# --- hearth config check ------------------------------------------------------------------


def check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["config", "check", str(path)], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_config_check_valid(tmp_path: Path) -> None:
    code, output = check(write(tmp_path, VALID))
    assert code == 0, output
    assert "is valid" in output
    assert "2 cluster(s), 2 upstream(s), 1 model rule(s)" in output


def test_config_check_invalid(tmp_path: Path) -> None:
    config = {**VALID, "server": {"bogus": 1}, "relay": {"max_attempts": 0}}
    code, output = check(write(tmp_path, config))
    assert code == 1
    assert "server.bogus" in output
    assert "unknown key" in output
    assert "relay.max_attempts" in output
    assert "is valid" not in output.replace("is not valid", "")


def test_config_check_unreadable(tmp_path: Path) -> None:
    code, output = check(tmp_path / "missing.yaml")
    assert code == 1
    assert "(file)" in output


def test_documented_example_is_valid() -> None:
    """deploy/hearth.example.yaml documents every key; it must stay loadable."""
    code, output = check(EXAMPLE)
    assert code == 0, output
