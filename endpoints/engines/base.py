"""The command line that starts an inference engine inside a Slurm job script.

An engine is launched by a job script rendered from `slurm/*.sbatch.j2` on a compute node
that other users share, so two rules shape what is here:

- A secret never appears in a command line, which every user of the node can read with `ps`.
  The per-worker API key lives in an environment variable of the job script (`WORKER_KEY_ENV`)
  and reaches the engine through the engine's own environment (vLLM reads `VLLM_API_KEY`,
  llama.cpp's server `API_KEY`). Values the job only knows when it runs (the port it picked,
  the Ray head's address) travel the same way.
- Every word is shell-quoted when rendered, so model names with spaces or quotes cannot change
  the script. A word the script must expand at run time is an `EnvRef`, rendered as
  `"${NAME}"`: quoted, expanded by the shell that runs the job, never by Hearth.

`Command.shell()` renders `NAME=value ... argv...`: bash prefix assignments set the variables for
that one command without a process (such as `env`) whose arguments would show them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "WORKER_KEY_ENV",
    "WORKER_PORT_ENV",
    "Command",
    "EngineLaunch",
    "EnvRef",
    "Port",
    "Word",
    "option",
    "port_word",
    "shell_word",
]

WORKER_KEY_ENV = "HEARTH_WORKER_KEY"  # the job script exports the worker's API key under this name
WORKER_PORT_ENV = "HEARTH_WORKER_PORT"  # ... and the port it chose for the engine

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_env_name(name: str) -> None:
    if not _ENV_NAME.match(name):
        raise ValueError(f"not a valid environment variable name: {name!r}")


@dataclass(frozen=True)
class EnvRef:
    """A word the job script expands when it runs: `prefix"${NAME}"`, one shell word.

    `prefix` is literal text glued in front (`EnvRef("P", prefix="--port=")` renders
    `--port="${P}"`). An unset variable stops the script (`set -u`) with an error naming it.
    """

    name: str
    prefix: str = ""

    def __post_init__(self) -> None:
        _check_env_name(self.name)

    def shell(self) -> str:
        quoted_prefix = shlex.quote(self.prefix) if self.prefix else ""
        return f'{quoted_prefix}"${{{self.name}}}"'


Word = str | EnvRef
Port = int | EnvRef  # a fixed port, or the variable holding the one the job picked


def shell_word(word: Word) -> str:
    """One argument as bash source: quoted text, or an `EnvRef` expanded at run time."""
    return word.shell() if isinstance(word, EnvRef) else shlex.quote(word)


def option(flag: str, value: Word | int | float) -> Word:
    """`--flag=value` as one word, so a value that starts with "-" is not read as a flag."""
    if isinstance(value, EnvRef):
        return EnvRef(value.name, prefix=f"{flag}={value.prefix}")
    return f"{flag}={value}"


def port_word(port: Port) -> Word:
    """A port as an argument; a fixed one must be a valid TCP port."""
    if isinstance(port, EnvRef):
        return port
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"not a TCP port: {port!r}")
    return str(port)


@dataclass(frozen=True)
class Command:
    """A program to run (`argv`) and the variables to set for it alone (`env`)."""

    argv: tuple[Word, ...]
    env: Mapping[str, Word] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("a command needs at least a program name")
        for name in self.env:
            _check_env_name(name)
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def shell(self) -> str:
        """The command as one line of bash: `NAME=value ... program args...`, every word quoted."""
        assignments = [f"{name}={shell_word(value)}" for name, value in self.env.items()]
        return " ".join([*assignments, *(shell_word(word) for word in self.argv)])

    def references(self) -> frozenset[str]:
        """The names of the variables the job script must define before running this command."""
        words = [*self.argv, *self.env.values()]
        return frozenset(w.name for w in words if isinstance(w, EnvRef))


@dataclass(frozen=True)
class EngineLaunch(Command):
    """An engine's command, plus where the job script checks that it serves and what it runs.

    `health_path` answers 200 once the engine serves (GET, with the worker key as a Bearer
    token). `metrics_path`, when the engine has one, is Prometheus text with vLLM's
    `vllm:num_requests_running` / `vllm:num_requests_waiting`, which the job polls while it
    drains; without it the job waits the whole drain time.
    """

    health_path: str = "/health"
    metrics_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for path in (self.health_path, self.metrics_path):
            if path is not None and not re.fullmatch(r"/[A-Za-z0-9_./-]*", path):
                raise ValueError(f"not a plain URL path: {path!r}")

    def template_context(self) -> dict[str, str]:
        """The variables `slurm/worker*.sbatch.j2` take from an engine launch."""
        return {
            "engine_command": self.shell(),
            "health_path": self.health_path,
            "metrics_path": self.metrics_path or "",
        }
