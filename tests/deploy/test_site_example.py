"""deploy/site.example.yaml must load, document every key of the site config schema, and render
a valid worker script for each of its models."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import endpoints.site as site_module
from endpoints.site import SiteConfig, load_site
from endpoints.workers import render_worker
from tests.deploy.test_example_config import _undocumented

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "site.example.yaml"
MODELS = sorted(yaml.safe_load(EXAMPLE.read_text())["models"])


def _yaml() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def test_example_loads() -> None:
    site = load_site(EXAMPLE)
    assert site.containers.enabled, "the example should show containers in use"
    assert {spec.engine for spec in site.models.values()} == {"vllm", "llamacpp", "sim"}


def test_every_site_key_is_in_example() -> None:
    seen: set[type[BaseModel]] = set()
    missing = _undocumented(SiteConfig, [_yaml()], "", seen)
    assert not missing, "keys of the site config missing from the example:\n  " + "\n  ".join(missing)
    defined = {
        obj
        for obj in vars(site_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == site_module.__name__
        and not obj.__name__.startswith("_")
    }
    assert defined <= seen, f"not reached from SiteConfig: {sorted(m.__name__ for m in defined - seen)}"


@pytest.mark.parametrize("model", MODELS)
def test_worker_script_of_each_model_is_valid_bash(model: str) -> None:
    site = load_site(EXAMPLE)
    script = render_worker(site, model, "w0000000000", Path("/tmp/k.key"))
    assert script.startswith("#!/bin/bash")
    # The engine serves the model under its name in the site config (vLLM, llama.cpp, sim).
    served = {f"--served-model-name={model}", f"--model_alias={model}", f"--model={model}"}
    assert served & set(script.split())
    result = subprocess.run(["bash", "-n"], input=script.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
