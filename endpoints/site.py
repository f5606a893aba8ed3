"""A site's own configuration: where workers run and how each model is served there.

One YAML file on the cluster's login node (path in `HEARTH_SITE_CONFIG`, else
~/.hearth/site.yaml), written by the cluster's admin; the gateway never sees it. The site
functions read it each time they run, so an edit takes effect on the next task.
See docs/admin/endpoint.md and deploy/site.example.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContainerSettings(_Strict):
    enabled: bool = False
    image: str | None = Field(default=None, description="The .sif image engines run in (apptainer/).")
    binds: tuple[str, ...] = Field(default=(), description="--bind entries, e.g. /scratch/models:/models:ro")
    executable: str = "apptainer"


class ModelSpec(_Strict):
    """How one model is served at this site."""

    engine: Literal["vllm", "llamacpp", "sim"]
    path: str | None = Field(default=None, description="vLLM: model dir or HF id; llama.cpp: the .gguf file.")
    gpus: int = Field(default=0, ge=0, description="GPUs per node.")
    nodes: int = Field(default=1, ge=1, description="vLLM only: >1 runs one engine over a Ray cluster.")
    cpus: int = Field(default=1, ge=1)
    mem: str = ""
    walltime: str = "04:00:00"
    tensor_parallel: int = Field(default=1, ge=1)
    pipeline_parallel: int = Field(default=1, ge=1, description="vLLM: usually the number of nodes.")
    max_model_len: int | None = Field(default=None, ge=1)
    n_threads: int = Field(default=1, ge=1, description="llama.cpp threads.")
    sim_ttft_ms: float = Field(default=50.0, ge=0)
    sim_itl_ms: float = Field(default=10.0, ge=0)
    args: tuple[str, ...] = Field(default=(), description="Extra engine arguments.")
    start_timeout_s: int = Field(default=1800, ge=1, description="Loading longer than this fails the job.")


class SiteConfig(_Strict):
    cluster: str = Field(min_length=1)
    state_dir: Path = Field(description="Shared by the login node and the compute nodes.")
    slurm_conf: str | None = Field(
        default=None, description="SLURM_CONF for Slurm's commands, if not the default."
    )
    partition: str = ""
    account: str = ""
    qos: str = ""
    python: str = Field(
        default="python3", description="An interpreter with Hearth (and llama.cpp) installed."
    )
    setup: tuple[str, ...] = Field(
        default=(), description="Shell lines run in the job first (module load …)."
    )
    containers: ContainerSettings = ContainerSettings()
    drain_seconds: int = Field(default=60, ge=0)
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    @property
    def ready_dir(self) -> Path:
        return self.state_dir / "ready"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def workers_dir(self) -> Path:
        return self.state_dir / "workers"

    @property
    def slurm_env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}


class SiteConfigError(Exception):
    pass


def default_path() -> Path:
    return Path(os.environ.get("HEARTH_SITE_CONFIG") or Path.home() / ".hearth" / "site.yaml")


def load_site(path: Path | str | None = None) -> SiteConfig:
    where = Path(path) if path else default_path()
    try:
        data = yaml.safe_load(where.read_text()) or {}
    except OSError as exc:
        raise SiteConfigError(f"cannot read the site config {where}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SiteConfigError(f"the site config {where} is not valid YAML: {exc}") from exc
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(p) for p in e["loc"])
            + ": "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors(include_url=False)
        )
        raise SiteConfigError(f"the site config {where} is invalid: {problems}") from None
