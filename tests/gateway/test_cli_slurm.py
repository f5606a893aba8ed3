"""`hearth slurm render`: the exact worker script, from the site config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from gateway.cli import app


def _site(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": "delta", "state_dir": str(tmp_path / "state"), "partition": "gpuA100x4",
        "python": sys.executable,
        "models": {"llama-8b": {"engine": "vllm", "path": "/models/llama-8b", "gpus": 4, "tensor_parallel": 4,
                                "walltime": "08:00:00"}},
    }))  # fmt: skip
    return path


def test_render_worker_prints_a_valid_script(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["slurm", "render", "worker", "--model", "llama-8b", "--site-config", str(_site(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert script.startswith("#!/bin/bash")
    assert "#SBATCH --gres=gpu:4" in script
    assert "#SBATCH --partition=gpuA100x4" in script
    assert "--tensor-parallel-size=4" in script
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)


def test_render_refuses_unknown_model_and_wrong_cluster(tmp_path: Path) -> None:
    site = str(_site(tmp_path))
    result = CliRunner().invoke(app, ["slurm", "render", "worker", "--model", "nope", "--site-config", site])
    assert result.exit_code == 1
    assert "does not serve 'nope'" in result.output
    result = CliRunner().invoke(
        app,
        ["slurm", "render", "worker", "--model", "llama-8b", "--site-config", site, "--cluster", "polaris"],
    )
    assert result.exit_code == 1
    assert "not 'polaris'" in result.output


def test_render_multinode_worker(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": "polaris", "state_dir": str(tmp_path / "state"),
        "containers": {"enabled": True, "image": "/sw/vllm.sif"},
        "models": {"llama-405b": {"engine": "vllm", "path": "/models/405b", "gpus": 4, "nodes": 2,
                                  "tensor_parallel": 4, "pipeline_parallel": 2}},
    }))  # fmt: skip
    result = CliRunner().invoke(
        app, ["slurm", "render", "worker", "--model", "llama-405b", "--site-config", str(path)]
    )
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert "#SBATCH --nodes=2" in script
    assert "--pipeline-parallel-size=2" in script
    assert "--distributed-executor-backend=ray" in script
    assert "ray start" in script
    assert "apptainer exec" in script
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    subprocess.run(["shellcheck", "-s", "bash", "-"], input=script.encode(), check=True)
