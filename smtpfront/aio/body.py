"""The message body as an async iterator for ``Hooks.on_data``, bounded.

The protocol pushes copies of the body chunks as they arrive; when the hook falls more than
``limit`` octets behind, :meth:`BodyStream.push` says so and the protocol stops reading the
client until :attr:`BodyStream.drained` is set again (backpressure, DESIGN rule 5).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["BodyStream"]


class BodyStream:
    """The body as an async iterator for ``on_data``, bounded (the protocol pauses past it)."""

    def __init__(self, limit: int) -> None:
        self.size = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._limit = limit
        self._done = False
        self._wakeup = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    def push(self, data: bytes) -> bool:
        """Add a chunk; False when the consumer is behind (pause reading until ``drained``)."""
        self._chunks.append(data)
        self._buffered += len(data)
        self.size += len(data)
        self._wakeup.set()
        if self._buffered > self._limit:
            self.drained.clear()
            return False
        return True

    def finish(self) -> None:
        self._done = True
        self._wakeup.set()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= self._limit // 2:
                    self.drained.set()
                yield chunk
            if self._done:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])
