"""The wire between the gateway and the site functions: what each function takes and returns.

Plain dicts of JSON-able values (bytes allowed), because they cross Globus Compute's
serialiser and must mean the same thing to a gateway and a site on different releases. Every
payload and result carries `FUNCTIONS_VERSION`; a mismatch is reported, not guessed around.
Both `gateway/` and `endpoints/` import this module; it imports neither.
"""

from __future__ import annotations

import enum
from typing import Any, Literal, NotRequired, TypedDict

# Bump when a payload or result below changes shape.
FUNCTIONS_VERSION = "1"

# Globus Compute refuses task payloads and results above 10 MB
# (https://globus-compute.readthedocs.io/en/latest/limits.html); keep a margin for framing.
MAX_PAYLOAD_BYTES = 9 * 1024 * 1024


class WorkerState(enum.Enum):
    """A worker's life: PENDING → STARTING → READY → DRAINING → GONE, or FAILED."""

    PENDING = "pending"  # the job waits in Slurm's queue
    STARTING = "starting"  # the job runs; the engine loads (or does not answer its probe yet)
    READY = "ready"  # health passes and a 1-token probe answers
    DRAINING = "draining"  # finishing what runs before it stops (walltime, pre-emption, stop)
    GONE = "gone"  # stopped as asked, or ended normally
    FAILED = "failed"  # ended on its own before or while serving; `reason` says why


class Worker(TypedDict):
    """How the site reaches one engine: its OpenAI base URL (…/v1) and bearer key."""

    base_url: str
    api_key: str | None


class InferRequest(TypedDict):
    version: str
    worker: Worker
    path: str  # below /v1, e.g. "chat/completions"
    body: bytes
    request_id: str
    timeout_s: float
    # The W3C trace context (https://www.w3.org/TR/trace-context/) the engine should continue,
    # sent to it as headers; only when the gateway traces. Optional both ways: site functions
    # of this version that predate it ignore it, so FUNCTIONS_VERSION is unchanged.
    traceparent: NotRequired[str]
    tracestate: NotRequired[str]


class InferStreamRequest(InferRequest):
    callback_url: str  # where to POST the events: the gateway's /internal/streams/{id}
    callback_token: str  # the per-stream secret the gateway expects, sent as a bearer token
    idle_timeout_s: float


FailureKind = Literal["connect", "timeout", "bad_response", "stream_broken", "callback", "version", "site"]


class Failure(TypedDict):
    kind: FailureKind
    detail: str
    status: NotRequired[int]


class InferResult(TypedDict):
    """The worker's answer (any status), or why there is none."""

    version: str
    status: NotRequired[int]
    body: NotRequired[bytes]
    content_type: NotRequired[str]
    failure: NotRequired[Failure]


class StreamResult(TypedDict):
    """How a stream ended. `status`/`body` are set when the worker answered without a stream
    (an error status); `events` counts the events delivered to the callback."""

    version: str
    events: int
    status: NotRequired[int]
    body: NotRequired[bytes]
    content_type: NotRequired[str]
    failure: NotRequired[Failure]


class ModelsRequest(TypedDict):
    version: str
    worker: Worker
    timeout_s: float


class ModelsResult(TypedDict):
    version: str
    models: NotRequired[list[str]]
    failure: NotRequired[Failure]


class SiteRequest(TypedDict):
    """For status / start_worker / stop_worker. `site_config` overrides HEARTH_SITE_CONFIG."""

    version: str
    site_config: NotRequired[str]
    model: NotRequired[str]  # start_worker
    walltime: NotRequired[str]  # start_worker: [D-]HH:MM:SS, at most the site's for the model
    worker_id: NotRequired[str]  # stop_worker
    drain: NotRequired[bool]  # stop_worker: finish what runs first (default true)


class SiteResult(TypedDict):
    version: str
    cluster: NotRequired[str]
    models: NotRequired[list[str]]  # status: the models the site can start
    workers: NotRequired[list[dict[str, Any]]]  # WorkerView.to_wire()
    worker: NotRequired[dict[str, Any]]
    free_nodes: NotRequired[int]
    queued: NotRequired[int]
    failure: NotRequired[Failure]


def version_mismatch(result: dict[str, Any]) -> str | None:
    """A sentence for the admin when a result comes from other-version site functions."""
    theirs = result.get("version")
    if theirs == FUNCTIONS_VERSION:
        return None
    return (
        f"the site functions speak version {theirs!r} but this gateway speaks {FUNCTIONS_VERSION!r}: "
        "re-register the functions (`hearth endpoint register-functions`) from this release"
    )
