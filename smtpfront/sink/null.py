"""A sink that discards every message (``--queue null:``), for benchmarks only.

It acknowledges messages it does not keep: never use it where mail matters.
"""

from __future__ import annotations

from .base import Envelope, SinkError
from .trace import new_queue_id

__all__ = ["NullSink", "NullWriter"]


class NullSink:
    """Counts and forgets.

    Attributes:
        messages: messages committed.
        octets: body octets written to committed and uncommitted messages alike.
    """

    full = False  # never past a high-water mark

    def __init__(self) -> None:
        self.messages = 0
        self.octets = 0
        self.closed = False

    def open(self, envelope: Envelope) -> NullWriter:
        """Start a message. Raises SinkError once the sink is closed."""
        if self.closed:
            raise SinkError("null sink is closed")
        return NullWriter(self)

    async def close(self) -> None:
        """Refuse further messages."""
        self.closed = True


class NullWriter:
    """Counts one body's octets; see :class:`NullSink`."""

    __slots__ = ("_sink",)

    def __init__(self, sink: NullSink) -> None:
        self._sink = sink

    def write(self, data: memoryview) -> None:
        """Count a chunk."""
        self._sink.octets += data.nbytes

    async def commit(self) -> str:
        """Count the message; return a fresh queue id."""
        self._sink.messages += 1
        return new_queue_id()

    def pressure(self) -> None:
        """No backpressure: the data is already where it goes."""
        return None

    async def abort(self) -> None:
        """Nothing to forget."""
