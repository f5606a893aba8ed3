"""The streaming bridge: upstream SSE events to the client, with usage accounting.

`ClientStream` forwards each event as soon as it arrives, notes time to first token and the
gaps between events that carry text (inter-token latency), takes the usage chunk (always
requested upstream) and drops it when the client did not ask for usage, turns a failure after
the first byte into an OpenAI error event, and always ends with ``data: [DONE]``. `aclose()`
(the client went away, or the stream ended) closes the upstream connection, which makes the
engine abort the request, and reports the outcome exactly once, whether or not iteration ever
started.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson

from gateway.errors import UpstreamError
from gateway.metrics import HistogramSeries
from gateway.relay.base import EventStream, RelayError, StreamBroken

DONE = b"data: [DONE]\n\n"
_GAP_BATCH = 256  # text events whose times are kept before their gaps are binned


@dataclass(slots=True)
class StreamOutcome:
    status: int = 499  # until the stream ends: a close before that is the client leaving
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    usage_reported: bool = False
    content_events: int = 0


def data_of(event: bytes) -> bytes | None:
    """The data field of one SSE event (without the blank line), or None for a comment."""
    if not event.startswith(b"data:"):
        return None
    body = event[:-2]
    if b"\n" in body:  # several data lines: join them per the SSE spec
        return b"\n".join(ln[5:].removeprefix(b" ") for ln in body.split(b"\n") if ln.startswith(b"data:"))
    return body[5:].removeprefix(b" ")


def error_event(message: str, code: str = "upstream_error") -> bytes:
    return b"data: " + orjson.dumps(UpstreamError(message, code=code).body()) + b"\n\n"


_EMPTY_TEXT = (b'"content":""', b'"content": ""', b'"text":""', b'"text": ""')


def _carries_text(data: bytes) -> bool:
    """Whether a chunk carries generated text (for counting tokens when the engine sends no usage)."""
    if b'"content"' not in data and b'"text"' not in data:
        return False
    return not any(empty in data for empty in _EMPTY_TEXT)


def usage_of_chunk(data: bytes) -> dict[str, int] | None:
    """The usage object of a chunk, if it carries a non-null one (cheap test first)."""
    if b'"usage"' not in data or b'"usage":null' in data or b'"usage": null' in data:
        return None
    try:
        usage = orjson.loads(data).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


class ClientStream:
    def __init__(
        self,
        stream: EventStream,
        events: AsyncIterator[bytes],
        first: bytes,
        *,
        started: float,
        client_wants_usage: bool,
        renames: tuple[tuple[bytes, bytes], ...],
        on_close: Callable[[StreamOutcome], None],
        inter_token: HistogramSeries | None = None,
    ) -> None:
        self._stream = stream
        self._events = events
        self._first = first
        self._started = started
        self._wants_usage = client_wants_usage
        self._renames = renames
        self._on_close = on_close
        self._inter_token = inter_token
        # perf_counter() of the events that carried text, turned into gaps in batches: binning
        # a batch costs a fraction of binning each gap as it comes (this runs once per token).
        self._text_times: list[float] = []
        self._closed = False
        self.outcome = StreamOutcome()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        out = self.outcome
        try:
            event: bytes | None = self._first
            done = False
            while event is not None:
                data = data_of(event)
                if data is None:
                    yield event  # comment / keep-alive
                elif data == b"[DONE]":
                    done = True
                    break
                else:
                    if out.ttft_s is None:
                        out.ttft_s = time.perf_counter() - self._started
                    if self._forward(data):
                        for old, new in self._renames:
                            event = event.replace(old, new)
                        if not self._wants_usage:  # usage was our request, not the client's
                            event = event.replace(b',"usage":null', b"")
                        yield event
                event = await anext(self._events, None)
            if not done:
                raise StreamBroken(self._stream.upstream, "the worker closed the stream before [DONE]")
            out.status = 200
            yield DONE
        except RelayError as exc:
            out.status = 502
            yield error_event(f"The worker failed mid-stream ({exc.detail}); the response is incomplete.")
            yield DONE
        finally:
            await self.aclose()

    def _forward(self, data: bytes) -> bool:
        """Account for one data chunk; False when it is a usage chunk the client did not ask for."""
        out = self.outcome
        usage = usage_of_chunk(data)
        if usage is None:
            if _carries_text(data):
                times = self._text_times
                times.append(time.perf_counter())
                if len(times) > _GAP_BATCH:
                    self._observe_gaps()
                out.content_events += 1
            return True
        out.usage_reported = True
        out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        out.completion_tokens = int(usage.get("completion_tokens") or 0)
        return self._wants_usage or b'"choices":[]' not in data.replace(b" ", b"")

    def _observe_gaps(self) -> None:
        """Put the gaps between the text events so far into the histogram, keeping the last."""
        times = self._text_times
        if self._inter_token is not None and len(times) > 1:
            self._inter_token.observe_gaps(times)
        del times[:-1]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._observe_gaps()
        out = self.outcome
        if not out.usage_reported:
            # The engine sent no usage (llama.cpp's server never does in streams): count the
            # chunks that carry text, one token each, which is exact for engines that stream
            # token by token. The prompt tokens stay unknown (0).
            out.completion_tokens = out.content_events
        try:
            await self._stream.aclose()
        finally:
            self._on_close(out)
