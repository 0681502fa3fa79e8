"""An in-memory sink for tests and embedding: committed messages land in a list.

It behaves like a real sink where tests need it to: a body is visible only after
``commit``, ``fail_next`` makes commits fail (the ``451 4.3.0`` path), and
:meth:`MemorySink.wait_for` lets a test await deliveries with a bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .base import Envelope, SinkError
from .trace import new_queue_id

__all__ = ["MemorySink", "MemoryWriter", "StoredMessage"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One committed message: ``body`` is ``envelope.trace`` followed by the body."""

    envelope: Envelope
    body: bytes
    queue_id: str


class MemorySink:
    """Keeps committed messages in :attr:`messages`.

    Attributes:
        messages: committed messages, in commit order.
        fail_next: the next this many commits raise :class:`SinkError` (and count as aborted).
        aborted: messages aborted, or whose commit failed.
        closed: set by :meth:`close`; ``open`` then raises :class:`SinkError`.
    """

    def __init__(self) -> None:
        self.messages: list[StoredMessage] = []
        self.full = False  # set by tests to exercise load shedding (452 4.3.1)
        self.fail_next = 0
        self.aborted = 0
        self.closed = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def open(self, envelope: Envelope) -> MemoryWriter:
        """Start a message. Raises SinkError once the sink is closed."""
        if self.closed:
            raise SinkError("memory sink is closed")
        return MemoryWriter(self, envelope)

    async def close(self) -> None:
        """Refuse further messages; stored ones stay readable."""
        self.closed = True

    async def wait_for(self, count: int, timeout: float) -> list[StoredMessage]:
        """Wait until at least ``count`` messages were committed.

        Returns:
            The committed messages (all of them, not only ``count``).

        Raises:
            TimeoutError: fewer than ``count`` arrived within ``timeout`` seconds.
        """
        if len(self.messages) < count:
            future = asyncio.get_running_loop().create_future()
            entry = (count, future)
            self._waiters.append(entry)
            try:
                await asyncio.wait_for(future, timeout)
            finally:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return self.messages

    def _store(self, message: StoredMessage) -> None:
        self.messages.append(message)
        for count, future in self._waiters:
            if len(self.messages) >= count and not future.done():
                future.set_result(None)


class MemoryWriter:
    """Collects one body; see :class:`MemorySink`."""

    __slots__ = ("_sink", "_envelope", "_body")

    def __init__(self, sink: MemorySink, envelope: Envelope) -> None:
        self._sink = sink
        self._envelope = envelope
        self._body: bytearray | None = bytearray(envelope.trace)

    def write(self, data: memoryview) -> None:
        """Copy a chunk. Raises SinkError after commit or abort."""
        if self._body is None:
            raise SinkError("message already committed or aborted")
        self._body += data

    async def commit(self) -> str:
        """Store the message and return its queue id, or raise SinkError (``fail_next``)."""
        body, self._body = self._body, None
        if body is None:
            raise SinkError("message already committed or aborted")
        sink = self._sink
        if sink.fail_next > 0:
            sink.fail_next -= 1
            sink.aborted += 1
            raise SinkError("memory sink: injected failure (fail_next)")
        queue_id = new_queue_id()
        sink._store(StoredMessage(self._envelope, bytes(body), queue_id))
        return queue_id

    def pressure(self) -> None:
        """No backpressure: the data is already where it goes."""
        return None

    async def abort(self) -> None:
        """Drop the message; a no-op after commit or a second abort."""
        if self._body is not None:
            self._body = None
            self._sink.aborted += 1
