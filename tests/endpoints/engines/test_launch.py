"""Engine command lines: what each engine is given, and that the worker key never is an argument.

Most checks run the rendered command through real bash with the program swapped for a recorder
that prints the argv and environment it received, so quoting is proven end to end, not by
comparing strings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from endpoints.engines.apptainer import apptainer_wrap
from endpoints.engines.base import (
    WORKER_KEY_ENV,
    WORKER_PORT_ENV,
    Command,
    EngineLaunch,
    EnvRef,
    Word,
    shell_word,
)
from endpoints.engines.llamacpp import llamacpp_launch
from endpoints.engines.simulated import SIM_KEY_ENV, sim_launch
from endpoints.engines.vllm import (
    RAY_ADDRESS_ENV,
    RAY_PORT_ENV,
    ray_head_command,
    ray_worker_command,
    vllm_launch,
)

SECRET = "hk-5ecret-Value-that-must-stay-hidden"
PORT = EnvRef(WORKER_PORT_ENV)
ODD_MODEL = '/models/My "best" model\'s $HOME `id`; rm -rf ~ *'
ODD_NAME = 'it\'s a "name" with $(spaces) & more'


@pytest.fixture
def recorder(tmp_path: Path) -> str:
    """An executable that prints the argv it got and its environment, as JSON."""
    path = tmp_path / "recorder"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
    )
    path.chmod(0o755)
    return str(path)


def run(command: Command, **env: str) -> dict[str, Any]:
    """Run `command.shell()` in bash (as a job script would) and return what the recorder saw."""
    base = {"PATH": os.environ["PATH"], WORKER_KEY_ENV: SECRET, WORKER_PORT_ENV: "8123"}
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + command.shell()],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    seen: dict[str, Any] = json.loads(proc.stdout)
    return seen


def assert_key_hidden(launch: Command, seen: dict[str, Any]) -> None:
    assert SECRET not in launch.shell()
    assert not any(SECRET in word for word in seen["argv"])
    assert not any(isinstance(w, EnvRef) and w.name == WORKER_KEY_ENV for w in launch.argv)


# ---------------------------------------------------------------- the value types


def test_envref_renders_one_quoted_word_expanded_at_run_time() -> None:
    assert EnvRef("HEARTH_X").shell() == '"${HEARTH_X}"'
    assert EnvRef("HEARTH_X", prefix="--port=").shell() == '--port="${HEARTH_X}"'
    assert EnvRef("P", prefix="a b=").shell() == "'a b='\"${P}\""


@pytest.mark.parametrize("name", ["", "1X", "A-B", "A B", "X;rm", "${X}"])
def test_envref_refuses_names_that_are_not_variables(name: str) -> None:
    with pytest.raises(ValueError, match="environment variable name"):
        EnvRef(name)


def test_command_is_frozen_and_lists_the_variables_it_needs() -> None:
    env: dict[str, Word] = {"A": EnvRef("HEARTH_A")}
    cmd = Command(("prog", EnvRef("HEARTH_B", prefix="--b=")), env)
    env["B"] = "changed later"
    assert dict(cmd.env) == {"A": EnvRef("HEARTH_A")}
    assert cmd.references() == {"HEARTH_A", "HEARTH_B"}
    with pytest.raises(TypeError):
        cmd.env["C"] = "x"  # type: ignore[index]
    with pytest.raises(ValueError, match="environment variable name"):
        Command(("prog",), {"NOT-A-NAME": "x"})
    with pytest.raises(ValueError, match="program"):
        Command(())


def test_an_unset_variable_stops_the_script_naming_it(recorder: str) -> None:
    cmd = Command((recorder,), {"VLLM_API_KEY": EnvRef("HEARTH_NOT_SET")})
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + cmd.shell()],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "HEARTH_NOT_SET" in proc.stderr
    assert proc.stdout == ""


def test_engine_launch_checks_its_paths() -> None:
    with pytest.raises(ValueError, match="URL path"):
        EngineLaunch(("x",), health_path="health; rm -rf ~")
    launch = EngineLaunch(("x",), health_path="/v1/models", metrics_path=None)
    assert launch.template_context() == {
        "engine_command": "x",
        "health_path": "/v1/models",
        "metrics_path": "",
    }


# ---------------------------------------------------------------- vLLM


def test_vllm_argv_and_key_in_the_environment(recorder: str) -> None:
    launch = vllm_launch(
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama-8b",
        "0.0.0.0",
        PORT,
        WORKER_KEY_ENV,
        tensor_parallel=4,
        max_model_len=8192,
        gpu_memory_utilization=0.9,
        extra_args=["--enable-prefix-caching"],
        executable=recorder,
    )
    assert launch.health_path == "/health"
    assert launch.metrics_path == "/metrics"
    assert launch.references() == {WORKER_KEY_ENV, WORKER_PORT_ENV}
    seen = run(launch)
    assert seen["argv"] == [
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--host=0.0.0.0",
        "--port=8123",
        "--served-model-name=llama-8b",
        "--tensor-parallel-size=4",
        "--pipeline-parallel-size=1",
        "--max-model-len=8192",
        "--gpu-memory-utilization=0.9",
        "--enable-prefix-caching",
    ]
    assert seen["env"]["VLLM_API_KEY"] == SECRET
    assert_key_hidden(launch, seen)


def test_vllm_shell_line_is_what_the_job_script_runs() -> None:
    launch = vllm_launch("org/m", "m", "0.0.0.0", 8000, WORKER_KEY_ENV)
    assert launch.shell() == (
        'VLLM_API_KEY="${HEARTH_WORKER_KEY}" vllm serve org/m --host=0.0.0.0 --port=8000 '
        "--served-model-name=m --tensor-parallel-size=1 --pipeline-parallel-size=1"
    )


def test_vllm_distributed_uses_the_jobs_ray_cluster(recorder: str) -> None:
    launch = vllm_launch(
        "org/big",
        "big",
        "0.0.0.0",
        PORT,
        WORKER_KEY_ENV,
        tensor_parallel=4,
        pipeline_parallel=2,
        distributed=True,
        executable=recorder,
    )
    seen = run(launch, **{RAY_ADDRESS_ENV: "10.0.0.1:6379"})
    assert "--distributed-executor-backend=ray" in seen["argv"]
    assert "--tensor-parallel-size=4" in seen["argv"]
    assert "--pipeline-parallel-size=2" in seen["argv"]
    assert seen["env"]["RAY_ADDRESS"] == "10.0.0.1:6379"
    assert launch.references() == {WORKER_KEY_ENV, WORKER_PORT_ENV, RAY_ADDRESS_ENV}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "--help"}, "model"),
        ({"tensor_parallel": 0}, "tensor_parallel"),
        ({"pipeline_parallel": -1}, "pipeline_parallel"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"port": 70000}, "TCP port"),
    ],
)
def test_vllm_refuses_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "model": "org/m",
        "served_name": "m",
        "host": "0.0.0.0",
        "port": 8000,
        "api_key_env": WORKER_KEY_ENV,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        vllm_launch(**args)


def test_ray_commands(recorder: str) -> None:
    head = ray_head_command(num_gpus=4, executable=recorder)
    worker = ray_worker_command(num_gpus=4, executable=recorder, extra_args=["--num-cpus=32"])
    env = {RAY_PORT_ENV: "6380", RAY_ADDRESS_ENV: "10.0.0.1:6380"}
    assert run(head, **env)["argv"] == [
        "start",
        "--head",
        "--port=6380",
        "--include-dashboard=false",
        "--block",
        "--num-gpus=4",
        "--disable-usage-stats",
    ]
    assert run(worker, **env)["argv"] == [
        "start",
        "--address=10.0.0.1:6380",
        "--block",
        "--num-gpus=4",
        "--disable-usage-stats",
        "--num-cpus=32",
    ]


# ---------------------------------------------------------------- llama.cpp


def test_llamacpp_argv_and_environment(recorder: str) -> None:
    launch = llamacpp_launch(
        "/models/tiny.gguf",
        "tiny",
        "127.0.0.1",
        PORT,
        WORKER_KEY_ENV,
        n_ctx=4096,
        n_threads=8,
        extra_args=["--n_gpu_layers=0"],
        python=recorder,
    )
    assert launch.health_path == "/v1/models"
    assert launch.metrics_path is None
    seen = run(launch, HOST="elsewhere.example.org", CONFIG_FILE="/tmp/hijack.json")
    assert seen["argv"] == [
        "-m",
        "llama_cpp.server",
        "--model=/models/tiny.gguf",
        "--model_alias=tiny",
        "--host=127.0.0.1",
        "--port=8123",
        "--n_ctx=4096",
        "--n_threads=8",
        "--n_gpu_layers=0",
    ]
    # The key through pydantic-settings' API_KEY; HOST/PORT pinned, CONFIG_FILE unset (a set
    # one, even empty, replaces every flag: see the module).
    assert seen["env"]["API_KEY"] == SECRET
    assert seen["env"]["HOST"] == "127.0.0.1"
    assert seen["env"]["PORT"] == "8123"
    assert "CONFIG_FILE" not in seen["env"]
    assert_key_hidden(launch, seen)


def test_llamacpp_refuses_a_zero_context() -> None:
    with pytest.raises(ValueError, match="n_ctx"):
        llamacpp_launch("m.gguf", "m", "127.0.0.1", 8000, WORKER_KEY_ENV, n_ctx=0)


# ---------------------------------------------------------------- simulated


def test_sim_reads_its_key_inside_the_process(recorder: str) -> None:
    launch = sim_launch("sim-model", "127.0.0.1", PORT, WORKER_KEY_ENV, ttft_ms=5, python=recorder)
    assert launch.health_path == "/health"
    assert launch.metrics_path == "/metrics"
    seen = run(launch)
    assert seen["argv"][0] == "-c"
    assert "from endpoints.engines.sim import main" in seen["argv"][1]
    assert seen["argv"][2:] == [
        "--host=127.0.0.1",
        "--port=8123",
        "--model=sim-model",
        "--ttft-ms=5",
        "--itl-ms=10",
        "--max-concurrency=64",
    ]
    assert seen["env"][SIM_KEY_ENV] == SECRET
    assert_key_hidden(launch, seen)


def test_sim_one_liner_serves_with_the_key(tmp_path: Path) -> None:
    """The real simulator, started through the one-liner: it asks for the key it was given."""
    from tests.support.procs import free_port

    port = free_port()
    launch = sim_launch("sim-model", "127.0.0.1", port, WORKER_KEY_ENV, python=sys.executable)
    code = (
        "import json, sys, time, urllib.request, urllib.error\n"
        f"url = 'http://127.0.0.1:{port}/v1/models'\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        urllib.request.urlopen(url, timeout=1)\n"
        "    except urllib.error.HTTPError as e:\n"
        "        print(e.code); break\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "req = urllib.request.Request(url, headers={'Authorization': 'Bearer " + SECRET + "'})\n"
        "print(json.load(urllib.request.urlopen(req, timeout=5))['data'][0]['id'])\n"
    )
    client = f"{shell_word(sys.executable)} -c {shell_word(code)}"
    script = f"{launch.shell()} &\npid=$!\n{client}\nkill $pid\nwait $pid\n"
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        env={**os.environ, WORKER_KEY_ENV: SECRET},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.stdout.split() == ["401", "sim-model"], proc.stderr


# ---------------------------------------------------------------- odd names


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            lambda rec: vllm_launch(ODD_MODEL, ODD_NAME, "0.0.0.0", PORT, WORKER_KEY_ENV, executable=rec),
            [ODD_MODEL, f"--served-model-name={ODD_NAME}"],
        ),
        (
            lambda rec: llamacpp_launch(ODD_MODEL, ODD_NAME, "127.0.0.1", PORT, WORKER_KEY_ENV, python=rec),
            [f"--model={ODD_MODEL}", f"--model_alias={ODD_NAME}"],
        ),
        (
            lambda rec: sim_launch(ODD_NAME, "127.0.0.1", PORT, WORKER_KEY_ENV, python=rec),
            [f"--model={ODD_NAME}"],
        ),
    ],
    ids=["vllm", "llamacpp", "sim"],
)
def test_odd_model_names_reach_the_engine_unchanged(
    recorder: str, tmp_path: Path, build: Callable[[str], EngineLaunch], expected: list[str]
) -> None:
    (tmp_path / "victim").write_text("still here")
    launch = build(recorder)
    seen = run(launch, HOME=str(tmp_path))
    for word in expected:
        assert word in seen["argv"]
    assert (tmp_path / "victim").read_text() == "still here"
    assert_key_hidden(launch, seen)


# ---------------------------------------------------------------- Apptainer


def test_apptainer_with_gpus_and_binds(recorder: str) -> None:
    inner = vllm_launch("/models/llama", "llama", "0.0.0.0", PORT, WORKER_KEY_ENV, tensor_parallel=4)
    launch = apptainer_wrap(
        inner,
        "/sw/hearth/vllm.sif",
        gpus=True,
        binds=["/scratch/models:/models:ro", "/scratch/cache"],
        extra_args=["--writable-tmpfs"],
        pass_env=["HF_HOME"],
        executable=recorder,
    )
    assert isinstance(launch, EngineLaunch)
    assert (launch.health_path, launch.metrics_path) == ("/health", "/metrics")
    seen = run(launch, CUDA_VISIBLE_DEVICES="0,1,2,3", HF_HOME="/scratch/hf")
    assert seen["argv"][:8] == [
        "exec",
        "--cleanenv",
        "--nv",
        "--bind",
        "/scratch/models:/models:ro,/scratch/cache",
        "--writable-tmpfs",
        "/sw/hearth/vllm.sif",
        "vllm",
    ]
    assert seen["argv"][8:10] == ["serve", "/models/llama"]
    env = seen["env"]
    assert env["APPTAINERENV_VLLM_API_KEY"] == SECRET
    assert env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["APPTAINERENV_HF_HOME"] == "/scratch/hf"
    assert "VLLM_API_KEY" not in env
    assert_key_hidden(launch, seen)


def test_apptainer_without_gpus_or_binds(recorder: str) -> None:
    inner = llamacpp_launch("/models/tiny.gguf", "tiny", "127.0.0.1", PORT, WORKER_KEY_ENV)
    launch = apptainer_wrap(inner, "/sw/hearth/llamacpp.sif", gpus=False, executable=recorder)
    seen = run(launch)
    assert seen["argv"][:7] == [
        "exec", "--cleanenv", "/sw/hearth/llamacpp.sif", "env", "-u", "CONFIG_FILE", "python3"
    ]  # fmt: skip
    assert "--nv" not in seen["argv"]
    assert "--bind" not in seen["argv"]
    assert "APPTAINERENV_CUDA_VISIBLE_DEVICES" not in seen["env"]
    assert seen["env"]["APPTAINERENV_API_KEY"] == SECRET
    assert "APPTAINERENV_CONFIG_FILE" not in seen["env"]
    assert launch.health_path == "/v1/models"
    assert_key_hidden(launch, seen)


def test_apptainer_wraps_plain_commands_too() -> None:
    head = apptainer_wrap(ray_head_command(num_gpus=4), "/sw/vllm.sif", gpus=True)
    assert type(head) is Command
    assert head.shell().startswith(
        'APPTAINERENV_CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES}" apptainer exec --cleanenv --nv '
        "/sw/vllm.sif ray start --head"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": "--nv"}, "image"),
        ({"binds": ["/a,/b"]}, "bind"),
        ({"binds": [""]}, "bind"),
    ],
)
def test_apptainer_refuses_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"image": "/sw/x.sif", "gpus": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        apptainer_wrap(Command(("x",)), **args)
