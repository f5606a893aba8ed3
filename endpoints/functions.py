"""The functions Hearth runs at a site through Globus Compute.

Each is small, imports only `endpoints/` and the standard library (they run in a Globus
Compute worker on a login node), takes one payload dict from `endpoints.protocol` and returns
one result dict. They never raise for trouble with the engine: the failure is part of the
result, so the gateway can tell a worker that refused from a site that broke.

- `infer`: one non-streaming request to a worker.
- `infer_stream`: a streaming request; the worker's SSE events are forwarded as they arrive
  to the gateway's callback URL in one chunked POST, authenticated by a per-stream secret.
  If the gateway stops reading (its client left), the function closes the worker connection,
  which makes the engine abort the request.
- `list_models`: what a worker serves.
- `status`, `start_worker`, `stop_worker`: the site's workers (`endpoints.workers`), as
  configured in the site's own config (`endpoints.site`).
- `batch_submit`, `batch_status`: offline batch jobs (`endpoints.batch`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit

from endpoints.batch import BatchError
from endpoints.batch_functions import BATCH_FUNCTIONS
from endpoints.protocol import (
    FUNCTIONS_VERSION,
    MAX_PAYLOAD_BYTES,
    Failure,
    FailureKind,
    InferRequest,
    InferResult,
    InferStreamRequest,
    ModelsRequest,
    ModelsResult,
    SiteRequest,
    SiteResult,
    StreamResult,
    Worker,
    WorkerState,
)
from endpoints.site import SiteConfig, SiteConfigError, load_site
from endpoints.slurm import SlurmError
from endpoints.sse import EventFramer
from endpoints.workers import WorkerError, Workers

__all__ = [
    "SITE_FUNCTIONS",
    "infer",
    "infer_stream",
    "list_models",
    "start_worker",
    "status",
    "stop_worker",
]


class _Failed(Exception):
    def __init__(self, kind: FailureKind, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.failure: Failure = {"kind": kind, "detail": detail}
        if status is not None:
            self.failure["status"] = status


def _open(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    """A connected HTTP(S) connection to the origin of `url`, and the URL's path."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    port = parts.port or (443 if parts.scheme == "https" else 80)
    conn = cls(parts.hostname or "", port, timeout=timeout_s)
    try:
        conn.connect()
    except TimeoutError as exc:
        raise _Failed("connect", f"connecting to {parts.hostname}:{port} timed out") from exc
    except OSError as exc:
        raise _Failed("connect", f"cannot connect to {parts.hostname}:{port}: {exc.strerror or exc}") from exc
    return conn, parts.path.rstrip("/")


def _auth(worker: Worker) -> dict[str, str]:
    """The worker's own bearer key, if it has one."""
    return {"Authorization": f"Bearer {worker['api_key']}"} if worker["api_key"] else {}


def _headers(req: InferRequest, accept: str) -> dict[str, str]:
    """Headers of the request to the engine: the request id, the worker's key, and the trace
    context when the gateway traces (vLLM continues a `traceparent` in its own spans)."""
    headers = {
        "Content-Type": "application/json",
        "Accept": accept,
        "X-Request-ID": req["request_id"],
        **_auth(req["worker"]),
    }
    if traceparent := req.get("traceparent"):
        headers["traceparent"] = traceparent
        if tracestate := req.get("tracestate"):
            headers["tracestate"] = tracestate
    return headers


def _version_failure() -> Failure:
    return {"kind": "version", "detail": f"site functions are version {FUNCTIONS_VERSION}"}


def infer(req: InferRequest) -> InferResult:
    if req.get("version") != FUNCTIONS_VERSION:
        return {"version": FUNCTIONS_VERSION, "failure": _version_failure()}
    worker = req["worker"]
    conn: http.client.HTTPConnection | None = None
    try:
        conn, prefix = _open(worker["base_url"], req["timeout_s"])
        conn.request(
            "POST",
            f"{prefix}/{req['path']}",
            req["body"],
            _headers(req, "application/json"),
        )
        resp = conn.getresponse()
        body = resp.read()
    except _Failed as exc:
        return {"version": FUNCTIONS_VERSION, "failure": exc.failure}
    except TimeoutError:
        return _failure("timeout", f"no answer within {req['timeout_s']:g} s")
    except (http.client.HTTPException, OSError) as exc:
        return _failure("bad_response", f"the connection failed: {type(exc).__name__}: {exc}")
    finally:
        if conn is not None:
            conn.close()
    if len(body) > MAX_PAYLOAD_BYTES:
        return _failure(
            "bad_response", "the answer is larger than Globus Compute's result limit; stream it instead"
        )
    content_type = resp.getheader("Content-Type", "application/json").split(";", 1)[0].strip()
    return {"version": FUNCTIONS_VERSION, "status": resp.status, "body": body, "content_type": content_type}


def _failure(kind: FailureKind, detail: str) -> InferResult:
    return {"version": FUNCTIONS_VERSION, "failure": {"kind": kind, "detail": detail}}


def infer_stream(req: InferStreamRequest) -> StreamResult:
    if req.get("version") != FUNCTIONS_VERSION:
        return {"version": FUNCTIONS_VERSION, "events": 0, "failure": _version_failure()}
    worker = req["worker"]
    conn: http.client.HTTPConnection | None = None
    callback: _Callback | None = None
    events = 0
    done = False
    try:
        conn, prefix = _open(worker["base_url"], req["timeout_s"])
        headers = _headers(req, "text/event-stream")
        conn.request("POST", f"{prefix}/{req['path']}", req["body"], headers)
        resp = conn.getresponse()
        content_type = resp.getheader("Content-Type", "").split(";", 1)[0].strip()
        if resp.status >= 400 or content_type != "text/event-stream":
            body = resp.read(MAX_PAYLOAD_BYTES)
            return {"version": FUNCTIONS_VERSION, "events": 0, "status": resp.status, "body": body,
                    "content_type": content_type or "application/json"}  # fmt: skip
        if conn.sock is not None:
            conn.sock.settimeout(req["idle_timeout_s"])
        callback = _Callback(req["callback_url"], req["callback_token"], req["timeout_s"])
        for event in _events(resp):
            callback.send(event)
            events += 1
            done = event.startswith(b"data: [DONE]")
        callback.finish()
        return {"version": FUNCTIONS_VERSION, "events": events}
    except _Failed as exc:
        if exc.failure["kind"] == "callback" and done:
            # The gateway had the whole answer and closed its end first: a complete stream.
            return {"version": FUNCTIONS_VERSION, "events": events}
        return {"version": FUNCTIONS_VERSION, "events": events, "failure": exc.failure}
    except TimeoutError:
        detail = f"the stream stalled for more than {req['idle_timeout_s']:g} s"
        return {
            "version": FUNCTIONS_VERSION,
            "events": events,
            "failure": {"kind": "timeout", "detail": detail},
        }
    except (http.client.HTTPException, OSError) as exc:
        detail = f"the worker's stream broke: {type(exc).__name__}: {exc}"
        return {"version": FUNCTIONS_VERSION, "events": events,
                "failure": {"kind": "stream_broken", "detail": detail}}  # fmt: skip
    finally:
        if conn is not None:
            conn.close()  # before the end of the stream, this is what stops the engine
        if callback is not None:
            callback.close()


def _events(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """Whole SSE events from the worker's response, as they arrive."""
    framer = EventFramer()
    while line := resp.readline():
        if (event := framer.line(line)) is not None:
            yield event
    if (event := framer.end()) is not None:
        yield event


class _Callback:
    """One chunked POST to the gateway carrying a stream's events as they come."""

    def __init__(self, url: str, token: str, timeout_s: float) -> None:
        try:
            self._conn, path = _open(url, timeout_s)
        except _Failed as exc:  # the gateway, not the worker, is out of reach
            raise _Failed("callback", f"cannot reach the gateway's callback: {exc}") from exc
        try:
            self._conn.putrequest("POST", path or "/")
            self._conn.putheader("Authorization", f"Bearer {token}")
            self._conn.putheader("Content-Type", "text/event-stream")
            self._conn.putheader("Transfer-Encoding", "chunked")
            self._conn.endheaders()
        except OSError as exc:
            self._conn.close()
            raise _Failed("callback", f"cannot open the callback to the gateway: {exc}") from exc

    def send(self, event: bytes) -> None:
        try:
            self._conn.send(b"%x\r\n%s\r\n" % (len(event), event))
            sock = self._conn.sock
            # The gateway only answers early to say its client left (410), then hangs up.
            if sock is not None and select.select([sock], [], [], 0)[0]:
                raise _Failed("callback", "the gateway ended the stream (its client left)")
        except OSError as exc:  # the gateway hung up: its client is gone
            raise _Failed("callback", "the gateway closed the stream (its client left)") from exc

    def finish(self) -> None:
        try:
            self._conn.send(b"0\r\n\r\n")
            resp = self._conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _Failed("callback", f"the gateway did not acknowledge the stream: {exc}") from exc
        if resp.status >= 300:
            raise _Failed("callback", f"the gateway refused the stream (HTTP {resp.status})", resp.status)

    def close(self) -> None:
        self._conn.close()


def list_models(req: ModelsRequest) -> ModelsResult:
    if req.get("version") != FUNCTIONS_VERSION:
        return {"version": FUNCTIONS_VERSION, "failure": _version_failure()}
    worker = req["worker"]
    conn: http.client.HTTPConnection | None = None
    try:
        conn, prefix = _open(worker["base_url"], req["timeout_s"])
        conn.request("GET", f"{prefix}/models", headers=_auth(worker))
        resp = conn.getresponse()
        raw = resp.read()
    except _Failed as exc:
        return {"version": FUNCTIONS_VERSION, "failure": exc.failure}
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        return {"version": FUNCTIONS_VERSION, "failure": {"kind": "bad_response", "detail": str(exc)}}
    finally:
        if conn is not None:
            conn.close()
    if resp.status != 200:
        failure: Failure = {"kind": "bad_response", "detail": f"GET /models answered HTTP {resp.status}",
                            "status": resp.status}  # fmt: skip
        return {"version": FUNCTIONS_VERSION, "failure": failure}
    try:
        return {"version": FUNCTIONS_VERSION, "models": [str(m["id"]) for m in json.loads(raw)["data"]]}
    except (ValueError, KeyError, TypeError):
        bad: Failure = {"kind": "bad_response", "detail": "GET /models did not return a model list"}
        return {"version": FUNCTIONS_VERSION, "failure": bad}


def status(req: SiteRequest) -> SiteResult:
    """The site's workers (READY ones with address, key and engine load; when each running job's
    walltime ends and when Slurm expects each queued one to start), free nodes, queue."""
    return _site(req, _status)


def start_worker(req: SiteRequest) -> SiteResult:
    """Submit a worker job for `req["model"]`, for `req["walltime"]` if given (capped at the
    model's walltime in site.yaml)."""
    return _site(req, _start)


def stop_worker(req: SiteRequest) -> SiteResult:
    """Drain (default) or cancel `req["worker_id"]`."""
    return _site(req, _stop)


async def _status(site: SiteConfig, req: SiteRequest) -> SiteResult:
    workers = Workers(site)
    views = await workers.list()
    free = await workers.slurm.free_nodes(workers.site.partition or None)
    queued = sum(1 for v in views if v.state is WorkerState.PENDING)
    return {"version": FUNCTIONS_VERSION, "cluster": workers.site.cluster, "models": sorted(site.models),
            "workers": [v.to_wire() for v in views], "free_nodes": free, "queued": queued}  # fmt: skip


async def _start(site: SiteConfig, req: SiteRequest) -> SiteResult:
    view = await Workers(site).start(req["model"], walltime=req.get("walltime"))
    return {"version": FUNCTIONS_VERSION, "cluster": site.cluster, "worker": view.to_wire()}


async def _stop(site: SiteConfig, req: SiteRequest) -> SiteResult:
    view = await Workers(site).stop(req["worker_id"], drain=req.get("drain", True))
    return {"version": FUNCTIONS_VERSION, "cluster": site.cluster, "worker": view.to_wire()}


def _site(
    req: SiteRequest, work: Callable[[SiteConfig, SiteRequest], Coroutine[Any, Any, SiteResult]]
) -> SiteResult:
    if req.get("version") != FUNCTIONS_VERSION:
        return {"version": FUNCTIONS_VERSION, "failure": _version_failure()}
    try:
        return asyncio.run(work(load_site(req.get("site_config")), req))
    except (SiteConfigError, WorkerError, BatchError, SlurmError, KeyError) as exc:
        detail = f"missing {exc} in the request" if isinstance(exc, KeyError) else str(exc)
        return {"version": FUNCTIONS_VERSION, "failure": {"kind": "site", "detail": detail}}


# What is registered with Globus Compute and allowed on a Hearth endpoint, by the name the
# gateway calls it by (`compute.function_ids` in hearth.yaml).
SITE_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "infer": infer,
    "infer_stream": infer_stream,
    "list_models": list_models,
    "status": status,
    "start_worker": start_worker,
    "stop_worker": stop_worker,
    # Offline batch jobs (stage, submit, status, collect, cancel): endpoints/batch_functions.py.
    **BATCH_FUNCTIONS,
}
