"""Run an engine's command inside an Apptainer container (`apptainer exec`).

https://apptainer.org/docs/user/main/cli/apptainer_exec.html. The container starts with
`--cleanenv`: nothing from the job's environment leaks in (a login shell's `PYTHONPATH`, a
stray `HOST`), and only what the command needs is passed, each variable `NAME` as
`APPTAINERENV_NAME`, which Apptainer sets inside as `NAME` even with `--cleanenv`. Not `--env
NAME=value`: that puts the value on apptainer's own command line, visible in `ps`, and splits
values at commas.

With `gpus`, `--nv` binds the host's NVIDIA driver libraries and devices, and the job's
`CUDA_VISIBLE_DEVICES` (Slurm's choice of GPUs) is passed in: `--cleanenv` would drop it, and
the engine would then see every GPU of the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from endpoints.engines.base import Command, EnvRef, Word

__all__ = ["apptainer_wrap"]

C = TypeVar("C", bound=Command)

_PREFIX = "APPTAINERENV_"


def apptainer_wrap(
    launch: C,
    image: str,
    *,
    gpus: bool,
    binds: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    pass_env: Sequence[str] = (),
    executable: str = "apptainer",
) -> C:
    """`apptainer exec --cleanenv [--nv] [--bind a:b,c] [extra_args] IMAGE <launch.argv>`.

    `binds` are Apptainer bind specs (`src[:dest[:opts]]`, e.g. a model directory).
    `pass_env` names job variables to pass in (e.g. `HF_HOME`, `HF_TOKEN`); each must be set
    when the job runs, or the script stops naming it.
    The result is the same kind of command as `launch` (an `EngineLaunch` keeps its paths).
    """
    if not image or image.startswith("-"):
        raise ValueError(f"not an image path or URI: {image!r}")
    for bind in binds:
        if not bind or "," in bind or bind.startswith("-"):
            raise ValueError(f"not one bind spec (src[:dest[:opts]], no commas): {bind!r}")
    argv: list[Word] = [executable, "exec", "--cleanenv"]
    if gpus:
        argv.append("--nv")
    if binds:
        argv.extend(["--bind", ",".join(binds)])
    argv.extend(extra_args)
    argv.append(image)
    argv.extend(launch.argv)

    env: dict[str, Word] = {}
    for name in pass_env:
        env[_PREFIX + name] = EnvRef(name)
    if gpus:
        env[_PREFIX + "CUDA_VISIBLE_DEVICES"] = EnvRef("CUDA_VISIBLE_DEVICES")
    for name, value in launch.env.items():
        env[_PREFIX + name] = value
    return replace(launch, argv=tuple(argv), env=env)
