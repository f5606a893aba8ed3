"""ComputeRelay: each request becomes a Globus Compute task that runs at the site.

The task (a function from `endpoints.functions`) calls the worker on the cluster's network.
A non-streaming answer comes back as the task's result; a stream's events come back as they
are produced over the callback channel (`gateway.relay.bridge`), and the task's result says
how the stream ended. Payloads above Globus Compute's limit are refused before submission.

Transports: `LocalTransport` runs the functions through Globus Compute's own engine in this
process (`endpoints.local`, single-site mode); `CloudTransport` submits them to a registered
endpoint through the Globus Compute web service (`globus_compute_sdk.Executor`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from endpoints.functions import SITE_FUNCTIONS
from endpoints.local import LocalCompute
from endpoints.protocol import (
    FUNCTIONS_VERSION,
    MAX_PAYLOAD_BYTES,
    InferRequest,
    InferStreamRequest,
    ModelsRequest,
    SiteRequest,
    Worker,
    version_mismatch,
)
from gateway.errors import RequestTooLarge
from gateway.relay.base import (
    BadResponse,
    ConnectFailed,
    EventStream,
    Relay,
    RelayError,
    StreamBroken,
    TimedOut,
    Upstream,
    UpstreamCall,
    UpstreamReply,
    worker_trouble,
)
from gateway.relay.bridge import BridgeError, StreamBridge

log = logging.getLogger(__name__)

# Seconds allowed on top of the worker's own time limit for the task's trip through Globus
# Compute (queueing, serialisation, the cloud hop).
_TASK_MARGIN_S = 60.0
_SHUTDOWN_S = 5.0


class ComputeTransport(Protocol):
    async def call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalTransport:
    """The site functions through `endpoints.local.LocalCompute` (no cloud hop)."""

    FUNCTIONS: Mapping[str, Callable[[Any], Any]] = SITE_FUNCTIONS

    def __init__(self, compute: LocalCompute) -> None:
        self.compute = compute

    async def start(self) -> None:
        await asyncio.to_thread(self.compute.start)

    async def call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.compute.call(self.FUNCTIONS[function], dict(payload))
        return result

    async def close(self) -> None:
        # Parsl's shutdown waits on the interchange and worker pool; when those were already
        # signalled with us (systemd stopping the whole unit), it can wait forever. Give it a
        # few seconds in a daemon thread, so it can never keep the gateway from exiting.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def shutdown() -> None:
            try:
                self.compute.shutdown()
            finally:
                loop.call_soon_threadsafe(settle)

        threading.Thread(target=shutdown, name="hearth-compute-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done, _SHUTDOWN_S)
        except TimeoutError:
            log.warning("Globus Compute engine did not shut down within %s s; leaving it", _SHUTDOWN_S)


class CloudTransport:
    """The site functions registered on a Globus Compute endpoint, through the web service.

    `function_ids` maps "infer", "infer_stream" and "list_models" to the ids printed by
    `hearth endpoint register-functions`. One Executor is reused for every task.
    """

    def __init__(self, endpoint_id: str, function_ids: Mapping[str, str]) -> None:
        self.endpoint_id = endpoint_id
        self.function_ids = dict(function_ids)
        self._executor: Any = None

    async def start(self) -> None:
        from globus_compute_sdk import Executor

        self._executor = await asyncio.to_thread(Executor, endpoint_id=self.endpoint_id)

    async def call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        future = self._executor.submit_to_registered_function(
            self.function_ids[function], args=(dict(payload),)
        )
        result: dict[str, Any] = await asyncio.wrap_future(future)
        return result

    async def close(self) -> None:
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=False, cancel_futures=True)


class ComputeRelay(Relay):
    def __init__(
        self,
        transport: ComputeTransport,
        bridge: StreamBridge,
        callback_base_url: str,
        *,
        request_timeout_s: float = 600.0,
        stream_idle_timeout_s: float = 120.0,
    ) -> None:
        self.transport = transport
        self.bridge = bridge
        self.callback_base_url = callback_base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s

    async def start(self) -> None:
        await self.transport.start()

    async def send(self, upstream: Upstream, call: UpstreamCall) -> UpstreamReply:
        _check_size(call)
        req: InferRequest = {
            "version": FUNCTIONS_VERSION, "worker": _worker(upstream), "path": call.path, "body": call.body,
            "request_id": call.request_id, "timeout_s": self.request_timeout_s,
        }  # fmt: skip
        _add_trace_context(req, call)
        result = await self._call(upstream, "infer", req, self.request_timeout_s + _TASK_MARGIN_S)
        _raise_failure(upstream, result)
        return _reply(upstream, result)

    async def open_stream(self, upstream: Upstream, call: UpstreamCall) -> EventStream | UpstreamReply:
        _check_size(call)
        stream_id, token = self.bridge.open()
        req: InferStreamRequest = {
            "version": FUNCTIONS_VERSION, "worker": _worker(upstream), "path": call.path, "body": call.body,
            "request_id": call.request_id, "timeout_s": self.request_timeout_s,
            "callback_url": f"{self.callback_base_url}/internal/streams/{stream_id}",
            "callback_token": token, "idle_timeout_s": self.stream_idle_timeout_s,
        }  # fmt: skip
        _add_trace_context(req, call)
        task = asyncio.ensure_future(
            self._call(upstream, "infer_stream", req, self.request_timeout_s + _TASK_MARGIN_S)
        )
        events = aiter(self.bridge.events(stream_id))
        first = asyncio.ensure_future(anext(events, None))
        try:
            done, _ = await asyncio.wait(
                (task, first), timeout=self.stream_idle_timeout_s + _TASK_MARGIN_S,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
            if not done:
                raise TimedOut(upstream, "the site produced nothing within the time limit")
            try:
                head = first.result() if first.done() else None
            except BridgeError as exc:
                raise StreamBroken(upstream, f"the stream bridge failed: {exc}") from exc
            if head is not None:
                return _ComputeStream(upstream, head, events, task, self.bridge, stream_id)
            result = await task  # the stream ended or never started: the task says why
        except BaseException:
            first.cancel()
            task.cancel()
            self.bridge.close(stream_id)
            raise
        first.cancel()
        self.bridge.close(stream_id)
        _raise_failure(upstream, result)
        if "status" in result:
            return _reply(upstream, result)
        raise StreamBroken(upstream, "the worker's stream ended before any event")

    async def site_status(self, cluster: str, site_config: str | None) -> dict[str, Any]:
        """The site's `status`: its workers (READY ones with address and key), nodes, queue."""
        req: SiteRequest = {"version": FUNCTIONS_VERSION}
        if site_config:
            req["site_config"] = site_config
        where = Upstream(name=f"{cluster}/site", cluster=cluster, base_url="")
        result = await self._call(where, "status", req, _TASK_MARGIN_S)
        _raise_failure(where, result)
        return result

    async def start_worker(
        self, cluster: str, site_config: str | None, model: str, *, walltime: str | None = None
    ) -> dict[str, Any]:
        """Ask the site to start a worker for `model` (a Slurm job); its view, PENDING at first.
        `walltime` ([D-]HH:MM:SS) asks for a shorter job than the site's own for the model."""
        req: SiteRequest = {"version": FUNCTIONS_VERSION, "model": model}
        if walltime:
            req["walltime"] = walltime
        return await self._worker_call(cluster, site_config, "start_worker", req)

    async def stop_worker(
        self, cluster: str, site_config: str | None, worker_id: str, *, drain: bool = True
    ) -> dict[str, Any]:
        """Ask the site to drain (finish what runs, then stop) or cancel one of its workers."""
        req: SiteRequest = {"version": FUNCTIONS_VERSION, "worker_id": worker_id, "drain": drain}
        return await self._worker_call(cluster, site_config, "stop_worker", req)

    async def _worker_call(
        self, cluster: str, site_config: str | None, function: str, req: SiteRequest
    ) -> dict[str, Any]:
        if site_config:
            req["site_config"] = site_config
        where = Upstream(name=f"{cluster}/site", cluster=cluster, base_url="")
        result = await self._call(where, function, req, _TASK_MARGIN_S)
        _raise_failure(where, result)
        worker: dict[str, Any] = result["worker"]
        return worker

    async def list_models(self, upstream: Upstream) -> list[str]:
        req: ModelsRequest = {"version": FUNCTIONS_VERSION, "worker": _worker(upstream), "timeout_s": 10.0}
        result = await self._call(upstream, "list_models", req, 10.0 + _TASK_MARGIN_S)
        _raise_failure(upstream, result)
        return [str(m) for m in result.get("models", [])]

    async def close(self) -> None:
        await self.transport.close()

    async def _call(
        self, upstream: Upstream, function: str, payload: Mapping[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(self.transport.call(function, payload), timeout_s)
        except TimeoutError as exc:
            raise TimedOut(
                upstream, f"the Globus Compute task did not finish within {timeout_s:g} s"
            ) from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BadResponse(upstream, f"the Globus Compute task failed: {exc}") from exc
        if not isinstance(result, dict):
            raise BadResponse(upstream, f"the site function returned {type(result).__name__}, not a result")
        return result


class _ComputeStream(EventStream):
    def __init__(
        self,
        upstream: Upstream,
        first: bytes,
        events: AsyncIterator[bytes],
        task: asyncio.Future[dict[str, Any]],
        bridge: StreamBridge,
        stream_id: str,
    ) -> None:
        super().__init__(upstream)
        self._first = first
        self._events = events
        self._task = task
        self._bridge = bridge
        self._stream_id = stream_id
        task.add_done_callback(_log_task_error)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._first
        try:
            async for event in self._events:
                yield event
        except BridgeError as exc:  # e.g. Redis became unreachable: the client gets an error event
            raise StreamBroken(self.upstream, f"the stream bridge failed: {exc}") from exc
        # The writer finished; the task's result says whether the worker's stream ended well.
        try:
            result = await asyncio.wait_for(asyncio.shield(self._task), _TASK_MARGIN_S)
        except TimeoutError as exc:
            raise StreamBroken(self.upstream, "the site did not report how the stream ended") from exc
        _raise_failure(self.upstream, result)

    async def aclose(self) -> None:
        # Tells a callback still sending that nobody listens: it stops, and so does the engine.
        self._bridge.close(self._stream_id)


def _log_task_error(task: asyncio.Future[dict[str, Any]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("stream task failed after its stream closed", extra={"error": str(task.exception())})


def _worker(upstream: Upstream) -> Worker:
    return {"base_url": upstream.base_url, "api_key": upstream.api_key}


def _add_trace_context(req: InferRequest, call: UpstreamCall) -> None:
    """The attempt's trace context, which the site function sends on to the engine."""
    if call.traceparent is not None:
        req["traceparent"] = call.traceparent
        if call.tracestate:
            req["tracestate"] = call.tracestate


def _check_size(call: UpstreamCall) -> None:
    if len(call.body) > MAX_PAYLOAD_BYTES:
        raise RequestTooLarge(
            f"The request body is larger than Globus Compute's task limit ({MAX_PAYLOAD_BYTES} bytes) "
            "that this model's cluster is reached through."
        )


def _raise_failure(upstream: Upstream, result: dict[str, Any]) -> None:
    mismatch = version_mismatch(result)
    failure = result.get("failure")
    if mismatch is not None:
        raise BadResponse(upstream, mismatch)
    if failure is None:
        return
    kind, detail = failure.get("kind"), str(failure.get("detail", ""))
    error: RelayError
    if kind == "connect":
        error = ConnectFailed(upstream, detail)
    elif kind == "timeout":
        error = TimedOut(upstream, detail)
    elif kind in ("stream_broken", "callback"):
        error = StreamBroken(upstream, detail)
    else:
        error = BadResponse(upstream, detail, status=failure.get("status"))
    raise error


def _reply(upstream: Upstream, result: dict[str, Any]) -> UpstreamReply:
    status = int(result["status"])
    if worker_trouble(status):
        raise BadResponse(upstream, f"answered HTTP {status}", status=status)
    return UpstreamReply(
        status, bytes(result.get("body", b"")), str(result.get("content_type") or "application/json")
    )
