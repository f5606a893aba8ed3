"""A streaming response held open while a cold model starts (see gateway.routing.coldstart).

It sends an SSE comment every `relay.keepalive_s` — ``: hearth cold-start model=M cluster=C
state=pending waited=12s estimated_wait=95s`` — which SSE clients (the OpenAI SDK included) ignore and proxies
take as traffic, then the model's stream as usual once a worker is READY. If the model does
not start in time, the stream ends with an error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson

from gateway.errors import HearthError, UpstreamUnavailable
from gateway.relay.base import UpstreamReply
from gateway.relay.stream import ClientStream
from gateway.routing.coldstart import Progress

__all__ = ["HeldStream"]

Opener = Callable[[], Awaitable[ClientStream | UpstreamReply]]
Waiter = Callable[[Callable[[Progress], None]], Awaitable[bool]]


class HeldStream:
    def __init__(self, model: str, wait: Waiter, open_stream: Opener) -> None:
        self._model = model
        self._wait = wait
        self._open = open_stream
        self._inner: ClientStream | None = None
        self._waiting: asyncio.Task[bool] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        notes: asyncio.Queue[Progress] = asyncio.Queue()
        self._waiting = asyncio.ensure_future(self._wait(notes.put_nowait))
        yield b": hearth cold-start model=" + self._model.encode() + b" state=starting\n\n"
        while not self._waiting.done():
            getter = asyncio.ensure_future(notes.get())
            await asyncio.wait({getter, self._waiting}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                p = getter.result()
                estimate = "unknown" if p.estimate_s is None else f"{int(p.estimate_s)}s"
                yield (
                    f": hearth cold-start model={self._model} cluster={p.cluster} state={p.state} "
                    f"waited={int(p.waited_s)}s estimated_wait={estimate}\n\n"
                ).encode()
            else:
                getter.cancel()
        if not self._waiting.result():
            yield _error_event(
                UpstreamUnavailable(
                    f"The model `{self._model}` did not start in time; see GET /v1/status and try again.",
                    code="model_starting",
                )
            )
            return
        try:
            opened = await self._open()
        except HearthError as exc:
            yield _error_event(exc)
            return
        if isinstance(opened, UpstreamReply):
            yield b"data: " + opened.body.strip() + b"\n\ndata: [DONE]\n\n"
            return
        self._inner = opened
        async for chunk in opened:
            yield chunk

    async def aclose(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.cancel()
        if self._inner is not None:
            await self._inner.aclose()


def _error_event(exc: HearthError) -> bytes:
    return b"data: " + orjson.dumps(exc.body()) + b"\n\ndata: [DONE]\n\n"
