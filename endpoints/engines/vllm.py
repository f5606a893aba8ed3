"""vLLM's OpenAI-compatible server (`vllm serve`), and the Ray commands of a multi-node worker.

Flags: https://docs.vllm.ai/en/latest/cli/serve.html. The API key travels in `VLLM_API_KEY`,
which vLLM reads when `--api-key` is not given (`vllm/entrypoints/openai/api_server.py`), so it
is never on the command line. `/health` answers once the model is loaded; `/metrics` carries
`vllm:num_requests_running` and `vllm:num_requests_waiting`.

A model larger than one node runs with `--distributed-executor-backend ray` over a Ray cluster
the job starts first: `ray start --head` on the node running the job script and `ray start
--address` on the others (https://docs.vllm.ai/en/latest/serving/parallelism_scaling.html).
Tensor parallelism is usually the GPUs of a node, pipeline parallelism the number of nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

from endpoints.engines.base import Command, EngineLaunch, EnvRef, Port, Word, option, port_word

__all__ = [
    "RAY_ADDRESS_ENV",
    "RAY_PORT_ENV",
    "ray_head_command",
    "ray_worker_command",
    "vllm_launch",
]

RAY_PORT_ENV = "HEARTH_RAY_PORT"  # the multi-node job exports the Ray head's port ...
RAY_ADDRESS_ENV = "HEARTH_RAY_ADDRESS"  # ... and its address, "ip:port"


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def vllm_launch(
    model: str,
    served_name: str,
    host: str,
    port: Port,
    api_key_env: str,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    extra_args: Sequence[str] = (),
    distributed: bool = False,
    executable: str = "vllm",
) -> EngineLaunch:
    """`vllm serve MODEL` on host:port as `served_name`, its key read from `$api_key_env`.

    `distributed` runs the model over the job's Ray cluster (whose address the job script
    exports as `$HEARTH_RAY_ADDRESS`) instead of processes on one node.
    """
    if not model or model.startswith("-"):
        raise ValueError(f"not a model name or path: {model!r}")
    _positive("tensor_parallel", tensor_parallel)
    _positive("pipeline_parallel", pipeline_parallel)
    argv: list[Word] = [
        executable,
        "serve",
        model,  # positional: `vllm serve --model` is deprecated
        option("--host", host),
        option("--port", port_word(port)),
        option("--served-model-name", served_name),
        option("--tensor-parallel-size", tensor_parallel),
        option("--pipeline-parallel-size", pipeline_parallel),
    ]
    if max_model_len is not None:
        _positive("max_model_len", max_model_len)
        argv.append(option("--max-model-len", max_model_len))
    if gpu_memory_utilization is not None:
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        argv.append(option("--gpu-memory-utilization", gpu_memory_utilization))
    env: dict[str, Word] = {"VLLM_API_KEY": EnvRef(api_key_env)}
    if distributed:
        argv.append(option("--distributed-executor-backend", "ray"))
        env["RAY_ADDRESS"] = EnvRef(RAY_ADDRESS_ENV)
    argv.extend(extra_args)
    return EngineLaunch(tuple(argv), env, health_path="/health", metrics_path="/metrics")


def _ray_start(num_gpus: int, executable: str) -> list[Word]:
    if isinstance(num_gpus, bool) or num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus!r}")
    # --block keeps `ray start` in the foreground, so the Slurm step lives as long as Ray does
    # and stopping the step stops Ray.
    return [executable, "start", "--block", option("--num-gpus", num_gpus), "--disable-usage-stats"]


def ray_head_command(
    *,
    num_gpus: int,
    port: Port = EnvRef(RAY_PORT_ENV),
    extra_args: Sequence[str] = (),
    executable: str = "ray",
) -> Command:
    """`ray start --head` on the node that runs the job script (and later `vllm serve`)."""
    argv = _ray_start(num_gpus, executable)
    argv[2:2] = ["--head", option("--port", port_word(port)), "--include-dashboard=false"]
    return Command((*argv, *extra_args))


def ray_worker_command(
    *,
    num_gpus: int,
    address: Word = EnvRef(RAY_ADDRESS_ENV),
    extra_args: Sequence[str] = (),
    executable: str = "ray",
) -> Command:
    """`ray start --address=HEAD` on each of the job's other nodes."""
    argv = _ray_start(num_gpus, executable)
    argv.insert(2, option("--address", address))
    return Command((*argv, *extra_args))
