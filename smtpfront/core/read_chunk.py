"""The reader of a BDAT chunk's octets (state BDAT, RFC 3030 §2).

BDAT's handler (``verbs.py``) parses the size and hands it to :meth:`ChunkReader.begin`,
which decides whether the chunk is accepted; a refused chunk's octets are read all the same
(the stream stays in step) and refused once they are all in. An accepted chunk's octets
become :class:`BodyChunk` views of the receive buffer, and its end a :class:`BodyEnd` that
waits for the reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import replies as R
from .errors import LocalProtocolError
from .events import BdatChunk, BodyChunk, Event
from .replies import Reply
from .sentinels import NEED_DATA, Sentinel
from .states import CHUNK_OCTETS, Command, State

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["ChunkReader"]

_RCPT: Final = State.RCPT  # the first chunk of a message follows the last RCPT
_BDAT_NOT_OFFERED: Final = Reply(502, "5.5.1", "Error: CHUNKING not offered")


class ChunkReader:
    """Reads a session's BDAT chunks; owns the one under way: octets left, its size, its refusal."""

    def __init__(self) -> None:
        self.left = 0
        self.size = 0
        self.refusal: Reply | None = None
        self.return_state = State.IDLE  # where a refused chunk leaves the session

    def begin(self, conn: ServerConnection, command: Command, size: int, last: bool) -> Event | None:
        """A BDAT line of ``size`` octets: its event, or None when it is refused (after its octets)."""
        refusal: Reply | None = None
        state = conn.state
        if not conn.features.chunking:
            refusal = _BDAT_NOT_OFFERED
        elif state not in command.allowed:
            refusal = command.refusal(state)
        elif conn.require_tls and not conn.tls_active:
            refusal = R.TLS_REQUIRED
        self.left = size
        self.size = 0
        self.refusal = refusal
        self.return_state = state
        conn.chunk_last = last
        conn.state = CHUNK_OCTETS
        if refusal is not None:
            return None
        first = state is _RCPT
        if first:
            conn.message_size = 0
            conn.body_error = None
        return BdatChunk(size, last, first)

    def read(self, conn: ServerConnection) -> Event | Sentinel | None:
        """Take what is there of the chunk's octets; at its end, refuse it or await its reply."""
        buf = conn.buffer
        available = buf.end - buf.start
        if self.left and not available:
            return NEED_DATA
        n = min(available, self.left)
        view = buf.consume(n)
        self.left -= n
        self.size += n
        refusal = self.refusal
        if refusal is None:
            conn.message_size += n
            if conn.message_size > conn.limits.max_message_size:
                conn.body_error = conn.body_error or R.MESSAGE_TOO_BIG
            elif n:
                conn.events.append(BodyChunk(view))
        if self.left:
            return None
        if refusal is not None:
            conn.state = self.return_state
            raise LocalProtocolError(refusal)
        conn.end_body(self.size, conn.body_error)
        return None
