"""Start llama-cpp-python's OpenAI-compatible server (a real engine on the CPU) for tests.

    with start_llamacpp_server(write_tiny_llama(tmp / "m.gguf"), "tiny", free_port(), log):
        ...  # http://127.0.0.1:<port>/v1/...

`start_llamacpp_server` returns a started `LlamaCppServer` (a `ServerProcess`, ready once
GET /v1/models answers 200); use it as a context manager (entering it does not start it
again) or call `.stop()` yourself, e.g. in a fixture's `finally`. It needs
llama-cpp-python[server] in the running interpreter; `llamacpp_available()` tells whether
it is there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.support.procs import ServerProcess, python_argv

# Loading the tiny model takes well under a second, but the first start after an install
# imports a lot (and a loaded 2-core CI machine is slow): be generous.
READY_TIMEOUT = 120.0


def llamacpp_available() -> bool:
    """True when llama-cpp-python and its server extra can be imported here."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
    )


def llamacpp_argv(
    model_path: Path, alias: str, port: int, *, n_ctx: int = 2048, n_threads: int = 1
) -> list[str]:
    """The command line that serves `model_path` as model `alias` on 127.0.0.1:`port`.

    Flags keep it light on a 2-core machine: one thread for generation and for prompt
    processing, a small batch, no mmap/mlock surprises, no GPU offload.
    """
    return python_argv(
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--n_batch",
        "128",
        "--n_ubatch",
        "128",
        "--n_gpu_layers",
        "0",
        "--verbose",
        "False",
    )


class LlamaCppServer(ServerProcess):
    """A `ServerProcess` that can be used in `with` after it was started.

    (`ServerProcess.__enter__` starts unconditionally: entering an already started one would
    launch a second process and orphan the first.)
    """

    def __enter__(self) -> LlamaCppServer:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self


def start_llamacpp_server(
    model_path: Path,
    alias: str,
    port: int,
    log_path: Path,
    *,
    n_ctx: int = 2048,
    n_threads: int = 1,
    timeout: float = READY_TIMEOUT,
) -> LlamaCppServer:
    """Start the server and return it once GET /v1/models answers 200.

    Raises RuntimeError (with the server's log) if it exits while starting, TimeoutError if
    it is not ready within `timeout` seconds (the process is stopped then).
    """
    argv = llamacpp_argv(model_path, alias, port, n_ctx=n_ctx, n_threads=n_threads)
    server = LlamaCppServer(
        argv,
        ready_url=f"http://127.0.0.1:{port}/v1/models",
        log_path=log_path,
        # Keep OpenMP/BLAS from spawning a thread per core behind our back.
        env={"OMP_NUM_THREADS": str(n_threads), "PYTHONUNBUFFERED": "1"},
        timeout=timeout,
    )
    server.start()
    return server
