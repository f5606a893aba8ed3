"""deploy/hearth.example.yaml must stay valid and document every key of the settings schema."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

import gateway.config as config_module
from gateway.cli import app
from gateway.config import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hearth.example.yaml"

# Sections that hold one object (not a mapping of names): their env override is fixed text.
SINGLE_SECTIONS = ("server", "store", "redis", "auth", "relay", "status_page", "tracing", "batch")


@pytest.fixture(autouse=True)
def _no_hearth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file alone is under test, not whatever HEARTH_* the machine has set."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("HEARTH_"):
            monkeypatch.delenv(name)


def _yaml() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def _instances(value: Any, annotation: Any) -> Iterator[tuple[str, type[BaseModel], dict[str, Any]]]:
    """The YAML mappings in `value` that stand for a settings model in `annotation`, each with
    the path suffix that leads to it ("", "[]" for list items, ".<name>" for mapping values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(value, dict):
            yield "", annotation, value
        return
    origin = get_origin(annotation)
    if origin is list and isinstance(value, list):
        (item,) = get_args(annotation)
        for element in value:
            for suffix, model, data in _instances(element, item):
                yield "[]" + suffix, model, data
    elif origin is dict and isinstance(value, dict):
        _, item = get_args(annotation)
        for element in value.values():
            for suffix, model, data in _instances(element, item):
                yield ".<name>" + suffix, model, data
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _instances(value, arg)


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {m for arg in get_args(annotation) for m in _models_in(arg)}


def _undocumented(
    model: type[BaseModel], examples: list[dict[str, Any]], path: str, seen: set[type[BaseModel]]
) -> list[str]:
    """Fields of `model` absent from every one of its `examples` in the YAML, recursively.

    A field counts as documented when at least one example of its model has it as a key:
    `key` and `sha256` of a static key cannot share an entry, so they appear in different ones.
    """
    seen.add(model)
    missing = []
    for name, field in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        present = [ex[name] for ex in examples if name in ex]
        if not present:
            missing.append(where)
        nested: dict[tuple[str, type[BaseModel]], list[dict[str, Any]]] = {}
        for value in present:
            for suffix, sub, data in _instances(value, field.annotation):
                nested.setdefault((suffix, sub), []).append(data)
        for sub in _models_in(field.annotation):
            found = [(s, d) for (s, m), d in nested.items() if m is sub]
            if not found:
                if present:  # the key is there, but no example of what it holds
                    missing.append(f"{where}: no example of {sub.__name__}")
                seen.add(sub)
                continue
            for suffix, data in found:
                missing += _undocumented(sub, data, where + suffix, seen)
    return missing


def test_example_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.clusters, "the example should show at least one cluster"
    assert settings.models, "the example should show at least one model rule"


def test_config_check_accepts_example() -> None:
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output


def test_every_settings_key_is_in_example() -> None:
    seen: set[type[BaseModel]] = set()
    missing = _undocumented(Settings, [_yaml()], "", seen)
    assert not missing, "keys of gateway.config.Settings missing from the example:\n  " + "\n  ".join(missing)
    # The walk itself must have reached every settings model the config module defines.
    defined = {
        obj
        for obj in vars(config_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == config_module.__name__
        and not obj.__name__.startswith("_")
    }
    assert defined <= seen, f"not reached from Settings: {sorted(m.__name__ for m in defined - seen)}"


def test_single_sections_show_their_defaults_and_env_names() -> None:
    """The header promises that values are the defaults unless marked as examples; the
    sections without example content must keep that promise and name each env override."""
    data, text, defaults = _yaml(), EXAMPLE.read_text(), Settings()
    for section in SINGLE_SECTIONS:
        default = getattr(defaults, section)
        for name in type(default).model_fields:
            assert f"HEARTH_{section.upper()}__{name.upper()}" in text, f"{section}.{name}: env name"
            if section == "auth" and name in ("api_keys", "globus", "policy"):
                continue  # example entries, by design
            assert data[section][name] == getattr(default, name), f"{section}.{name} is not the default"


def test_example_keys_are_digests_not_secrets() -> None:
    for entry in _yaml()["auth"]["api_keys"]:
        assert entry.get("key") is None, "static keys in the example must be given by sha256"
        assert entry.get("sha256")
