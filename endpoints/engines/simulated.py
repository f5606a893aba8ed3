"""How a job starts Hearth's SIMULATED engine (`endpoints.engines.sim`; no real model).

The simulator takes its key only as `--api-key`, and a flag is visible to every user of the
node (`ps`, /proc/PID/cmdline). So the job runs it through a one-line `python -c` that reads
the key from the environment and hands it to `sim.main()` inside the process: the command line
carries the code and the other flags, never the key. The program is the same as
`python -m endpoints.engines.sim ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from endpoints.engines.base import EngineLaunch, EnvRef, Port, Word, option, port_word

__all__ = ["SIM_KEY_ENV", "sim_launch"]

SIM_KEY_ENV = "HEARTH_SIM_API_KEY"  # the variable the one-liner reads the key from

_RUN_SIM = (
    "import os, sys; from endpoints.engines.sim import main; "
    f'main([*sys.argv[1:], "--api-key=" + os.environ["{SIM_KEY_ENV}"]])'
)


def sim_launch(
    served_name: str,
    host: str,
    port: Port,
    api_key_env: str,
    *,
    ttft_ms: float = 50,
    itl_ms: float = 10,
    max_concurrency: int = 64,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> EngineLaunch:
    """Serve the simulator as `served_name` on host:port, its key from `$api_key_env`.

    `python` must be an interpreter with Hearth installed (by default the one running this).
    """
    if ttft_ms < 0 or itl_ms < 0:
        raise ValueError("ttft_ms and itl_ms must be >= 0")
    if isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
    argv: list[Word] = [
        python,
        "-c",
        _RUN_SIM,
        option("--host", host),
        option("--port", port_word(port)),
        option("--model", served_name),
        option("--ttft-ms", ttft_ms),
        option("--itl-ms", itl_ms),
        option("--max-concurrency", max_concurrency),
        *extra_args,
    ]
    env: dict[str, Word] = {SIM_KEY_ENV: EnvRef(api_key_env)}
    return EngineLaunch(tuple(argv), env, health_path="/health", metrics_path="/metrics")
