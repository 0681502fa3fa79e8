"""The one interface every message destination implements (Postfix's ``rec_put`` idea).

A sink opens a :class:`MessageWriter` per accepted transaction; the server writes the body
to it as it arrives and calls :meth:`MessageWriter.commit` after the final dot. The
server answers ``250`` only after what ``commit`` returned has completed; if it raises (or
times out), the client gets ``451 4.3.0`` (``452 4.3.1`` for :class:`StorageFullError`) and
retries. Nothing half-written may become visible to a consumer as a complete message.

Rule: a ``memoryview`` passed to :meth:`MessageWriter.write` is valid only during that
call (it points into the connection's receive buffer); a writer that keeps data must copy.

A writer that keeps octets in memory after ``write`` returned (until they are sent, or until
its commit) may take part in the worker's memory budget (``limits.memory_budget``) with two
optional methods, ``account(holding)`` and ``spill()``: see :class:`Holding`. A writer
without them is not counted.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from ..core.events import Address, MailParams, Recipient

__all__ = ["Envelope", "Holding", "Recipient", "MessageWriter", "Sink", "SinkError", "StorageFullError"]


class SinkError(Exception):
    """The destination could not take the message; the client is told to retry (451)."""


class StorageFullError(SinkError):
    """The destination's storage is full (ENOSPC, EDQUOT): RFC 5321 ``452``, RFC 3463
    ``4.3.1`` "mail system full"; the client retries."""


@dataclass(slots=True)
class Envelope:
    """What a sink needs to know about one message besides its body.

    ``client`` facts come from the session: the real client address (after PROXY/XCLIENT),
    its name, HELO, TLS and AUTH facts. ``trace`` is the ``Received:`` header the sink
    prepends to the body (RFC 5321 §4.4), CRLF-terminated.
    """

    id: str
    mail_from: Address
    mail_params: MailParams
    recipients: list[Recipient]
    received_at: float
    client_address: str | None = None
    client_port: int | None = None
    client_name: str | None = None
    helo: str | None = None
    protocol: str = "ESMTP"
    tls: dict[str, str] | None = None
    user: str | None = None
    proxy: dict[str, object] | None = None
    trace: bytes = b""
    size: int = 0  # body octets received (set before commit; the trace is not counted)
    extra: dict[str, object] = field(default_factory=dict)


class Holding(Protocol):
    """The server's account of one message's octets in this process's memory.

    The server calls the writer's optional ``account(holding)`` right after ``open``, and
    counts every octet it gives to ``write`` as held. The writer calls :meth:`release` as
    octets it was given leave memory (sent and answered, written to the page cache, dropped),
    never more than it was given, and :meth:`close` once ``commit`` or ``abort`` was called.
    When the worker's budget is full the server calls the writer's optional ``spill() ->
    bool``: send what it holds now where it can; True when what it still holds will leave
    without more input (the server may then pause the client), False when it cannot.
    """

    def release(self, octets: int) -> None: ...

    def close(self) -> None: ...


class MessageWriter(Protocol):
    """Receives one message's body and makes it durable on commit."""

    def write(self, data: memoryview) -> None:
        """Take the next body chunk (copy it if kept). Raises SinkError to give up."""

    def commit(self) -> Awaitable[str]:
        """Make the message durable; the awaitable gives its queue id, or raises SinkError.

        An ``async def commit`` fits. A sink may instead return an ``asyncio.Future`` it
        resolves itself (the Redis sink hands out its batch's future): the server then waits
        with a callback, no task per message. A SinkError raised at once counts as a failure.
        """

    async def abort(self) -> None:
        """Forget the message (the transaction failed or the client went away)."""

    def pressure(self) -> Awaitable[None] | None:
        """None to go on; an awaitable the caller waits on (not reading the client) when
        the destination holds too much in flight (backpressure, DESIGN rule 5)."""


class Sink(Protocol):
    """A destination for accepted messages."""

    @property
    def full(self) -> bool:
        """True while the queue is past its high-water mark: new transactions get 452."""

    def open(self, envelope: Envelope) -> MessageWriter:
        """Start a message; raises SinkError when the destination cannot take one now.

        Synchronous on purpose: opening does no I/O worth waiting for in any sink (Redis
        writes at commit; a Maildir file is created in the page cache), and keeping it
        out of a Task lets DATA be answered at once on the hot path.
        """

    async def close(self) -> None:
        """Release resources (connections, files) when the server stops."""
