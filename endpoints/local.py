"""Run the site functions through Globus Compute's own engine, in this process, without the cloud.

`GlobusComputeEngine` is what a `globus-compute-endpoint` runs: Parsl's HighThroughputExecutor
with an interchange and worker processes started by a provider (`LocalProvider` on this host,
`SlurmProvider` in a Slurm job). Tasks go through the same `Task` message and
`ComputeSerializer` as tasks that arrive from the Globus Compute web service, so a function
that works here works on a registered endpoint. A gateway on a login node (single-site mode,
`compute.mode: local`) and the tests use this instead of the cloud hop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines import GlobusComputeEngine
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider

log = logging.getLogger(__name__)


class ComputeTaskError(Exception):
    """The task did not run to a result: the engine or the function raised."""


class LocalCompute:
    def __init__(
        self,
        run_dir: Path,
        *,
        provider: ExecutionProvider | None = None,
        max_workers_per_node: int = 4,
        address: str = "127.0.0.1",
    ) -> None:
        self.run_dir = run_dir
        self._provider = provider or LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)  # type: ignore[no-untyped-call]
        self._max_workers = max_workers_per_node
        self._address = address
        self._serializer = ComputeSerializer()
        self._engine: GlobusComputeEngine | None = None

    def start(self) -> None:
        """Start the interchange and the provider's first block (blocking; a few seconds)."""
        # The engine starts its interchange and worker pool as console scripts of the
        # environment it runs in; make sure that environment's bin directory is found.
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "")
        if bin_dir not in path.split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        engine = GlobusComputeEngine(
            provider=self._provider,
            address=self._address,
            encrypted=False,
            max_workers_per_node=self._max_workers,
        )
        engine.start(endpoint_id=uuid.uuid4(), run_dir=str(self.run_dir))
        self._engine = engine

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run `fn(*args, **kwargs)` on a worker; the future resolves to its return value."""
        if self._engine is None:
            raise RuntimeError("LocalCompute.start() has not been called")
        s = self._serializer
        task_id = uuid.uuid4()
        buffer = s.pack_buffers([s.serialize(fn), s.serialize(args), s.serialize(kwargs)])
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=buffer))
        raw: GCFuture = GCFuture(gc_task_id=task_id)
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()
        raw.add_done_callback(lambda f: self._settle(f, out))
        self._engine.submit(raw, packed, {})
        return out

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`submit` for asyncio code: awaits the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def _settle(self, raw: concurrent.futures.Future[Any], out: concurrent.futures.Future[Any]) -> None:
        if out.cancelled():
            return
        try:
            result = messagepack.unpack(raw.result())
            if not isinstance(result, Result):
                raise ComputeTaskError(f"the engine answered a {type(result).__name__}, not a Result")
            if result.error_details is not None:
                code = result.error_details.code
                raise ComputeTaskError(f"the task failed ({code}): {result.data[-2000:]}")
            out.set_result(self._serializer.deserialize(result.data))
        except Exception as exc:
            out.set_exception(exc if isinstance(exc, ComputeTaskError) else ComputeTaskError(str(exc)))

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
