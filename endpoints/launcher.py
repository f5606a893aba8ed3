"""The local process launcher: run an engine as a child process on this machine.

The embedded default of the scheduler seam (Slurm in production): `hearth demo` uses it to
start the simulated engine as a one-node "cluster".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


class LaunchError(RuntimeError):
    pass


class LocalProcess:
    """A worker process that is ready once GET `health_url` answers 200."""

    def __init__(self, argv: Sequence[str], health_url: str, *, quiet: bool = False) -> None:
        self.argv = list(argv)
        self.health_url = health_url
        self.quiet = quiet  # discard the worker's output
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(self.argv, start_new_session=True, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"{self.argv[0]} exited with status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1.0) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise LaunchError(f"{self.argv[0]} did not become healthy within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def sim_argv(
    *,
    model: str,
    port: int,
    api_key: str | None,
    host: str = "127.0.0.1",
    ttft_ms: float = 50.0,
    itl_ms: float = 10.0,
    max_concurrency: int = 64,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "endpoints.engines.sim",
        "--host",
        host,
        "--port",
        str(port),
        "--model",
        model,
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
        "--max-concurrency",
        str(max_concurrency),
    ]
    if api_key:
        argv.append(f"--api-key={api_key}")  # one word: a key may start with "-"
    argv.extend(extra)
    return argv


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
