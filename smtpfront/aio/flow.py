"""``Flow``: whether one connection's transport reads, and why it does not (flow control).

Reading pauses for three reasons: a task owns the connection (a hook, backpressure, a TLS
handshake), the receive buffer is full, or the transport's write buffer is past its
high-water mark (``pause_writing``). It resumes only when none of them holds: the protocol
asks for it when it is no longer busy, and :meth:`Flow.resume_reading` itself checks that the
writes are not paused and that the core's buffer has room.

One per connection, owned by ``SMTPProtocol``. It holds the transport it pauses (the TLS
transport after a handshake: :meth:`Flow.switch`) until the connection closes
(:meth:`Flow.stop`); after that nothing is paused or resumed.
"""

from __future__ import annotations

import asyncio

from ..core.connection import ServerConnection

__all__ = ["Flow"]


class Flow:
    """Reading paused or resumed on one transport; writing paused by the transport."""

    __slots__ = ("transport", "conn", "read_paused", "write_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None  # None before start and once closed
        self.conn: ServerConnection
        self.read_paused = False
        self.write_paused = False

    def start(self, transport: asyncio.Transport, conn: ServerConnection) -> None:
        """The connection is accepted: pause and resume ``transport``; ``conn`` owns the receive buffer."""
        self.transport, self.conn = transport, conn

    def stop(self) -> None:
        """The connection is closed: nothing to pause or resume any more."""
        self.transport = None

    def switch(self, transport: asyncio.Transport) -> None:
        """A TLS handshake gave a new transport: paused until the task that owns the connection is done."""
        self.transport = transport
        self.read_paused = False
        self.pause_reading()

    def pause_reading(self) -> None:
        transport = self.transport
        # uvloop ignores pause_reading() inside connection_made and starts reading after
        # it, so the flag alone can claim "paused" while the transport reads: ask it too.
        if transport is not None and (not self.read_paused or transport.is_reading()):
            self.read_paused = True
            transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.write_paused and self.transport is not None:
            if not self.conn.writable():
                return  # still full: the core must consume first
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        """The transport's write buffer is past its high-water mark: read nothing more."""
        self.write_paused = True
        self.pause_reading()

    def resume_writing(self, busy: bool) -> None:
        """The write buffer drained: read again, unless a task owns the connection (``busy``)."""
        self.write_paused = False
        if not busy:
            self.resume_reading()
