"""llama.cpp's OpenAI-compatible server, as llama-cpp-python ships it (`python -m llama_cpp.server`).

Its flags are the fields of `llama_cpp.server.settings` (underscored: `--model_alias`,
`--n_ctx`). Those settings are pydantic-settings models without a prefix, so the server also
reads its environment: `API_KEY` carries the worker key here, off the command line. The same
reading has two traps this module closes (checked against llama-cpp-python 0.3.36):

- `__main__` passes `os.getenv("HOST")` / `os.getenv("PORT")` to uvicorn ahead of `--host` /
  `--port`, and a `HOST` left in a login environment (tcsh sets one) would move the server; so
  `HOST` and `PORT` are set to the same values as the flags.
- `CONFIG_FILE`, when set at all (even empty), replaces every flag with a config file: the
  command runs under `env -u CONFIG_FILE`.

Other fields still fall back to like-named variables (`VERBOSE`, `N_GPU_LAYERS`, ...) when
no flag gives them; `apptainer exec --cleanenv` removes that last surprise.

The server has no `/health` and no `/metrics`: readiness is GET `/v1/models` (which needs the
key), and a draining job waits out its whole drain time.
"""

from __future__ import annotations

from collections.abc import Sequence

from endpoints.engines.base import EngineLaunch, EnvRef, Port, Word, option, port_word

__all__ = ["llamacpp_launch"]


def llamacpp_launch(
    model_path: str,
    served_name: str,
    host: str,
    port: Port,
    api_key_env: str,
    *,
    n_ctx: int = 2048,
    n_threads: int = 1,
    extra_args: Sequence[str] = (),
    python: str = "python3",
) -> EngineLaunch:
    """Serve the GGUF file `model_path` as `served_name` on host:port, key from `$api_key_env`.

    `python` is the interpreter that has llama-cpp-python[server]: the container's `python3`,
    or a site virtualenv's.
    """
    for name, value in (("n_ctx", n_ctx), ("n_threads", n_threads)):
        if isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    port_arg = port_word(port)
    argv: list[Word] = [
        # The server reads CONFIG_FILE from the environment and, when it is set at all (even
        # empty), replaces every flag with that file: make sure it is not set.
        "env",
        "-u",
        "CONFIG_FILE",
        python,
        "-m",
        "llama_cpp.server",
        option("--model", model_path),
        option("--model_alias", served_name),
        option("--host", host),
        option("--port", port_arg),
        option("--n_ctx", n_ctx),
        option("--n_threads", n_threads),
        *extra_args,
    ]
    env: dict[str, Word] = {
        "API_KEY": EnvRef(api_key_env),
        "HOST": host,
        "PORT": port_arg,
    }
    return EngineLaunch(tuple(argv), env, health_path="/v1/models", metrics_path=None)
