"""Server-sent events framing, shared by the site functions and the gateway's relay.

Engines frame events with ``\\n`` (vLLM, the simulator) or ``\\r\\n`` (sse-starlette, used by
llama.cpp's server); events are passed on normalised to ``\\n`` lines ending in a blank line.
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations


class EventFramer:
    """Lines of an event stream in, whole events out."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def line(self, raw: bytes) -> bytes | None:
        """Feed one line (with or without its line break); an event when a blank line ends one."""
        line = raw.rstrip(b"\r\n")
        if line:
            self._lines.append(line)
            return None
        return self.end()

    def end(self) -> bytes | None:
        """At the end of the stream: the last event, if it was not closed by a blank line."""
        if not self._lines:
            return None
        event = b"\n".join(self._lines) + b"\n\n"
        self._lines = []
        return event
