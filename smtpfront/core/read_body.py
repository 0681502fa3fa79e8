"""The reader of a DATA body (state DATA, RFC 5321 §4.1.1.4): dot-stuffed lines up to ``CRLF.CRLF``.

The unstuffing is ``data.DataStreamer``'s; this reader feeds it the receive buffer, queues
the :class:`BodyChunk` views it cuts, and at the final dot the :class:`BodyEnd` that waits
for the reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .data import DataStreamer
from .events import BodyChunk, Event
from .options import Limits, Policies
from .sentinels import NEED_DATA, Sentinel

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["BodyReader"]


class BodyReader:
    """Reads a session's DATA bodies; owns the streamer of the one under way."""

    def __init__(self) -> None:
        self.streamer: DataStreamer | None = None

    def start(self, limits: Limits, policies: Policies) -> None:
        """A body begins (the 354 was sent)."""
        self.streamer = DataStreamer(
            max_size=limits.max_message_size, bare_line_endings=policies.bare_line_endings,
            long_lines=policies.long_lines, max_text_line=limits.max_text_line,
        )

    def finish(self) -> None:
        """The body's reply was sent."""
        self.streamer = None

    def read(self, conn: ServerConnection) -> Event | Sentinel | None:
        """Unstuff what is there; None when events were queued, ``NEED_DATA`` when none were."""
        buf = conn.buffer
        if buf.end == buf.start:
            return NEED_DATA
        streamer = self.streamer
        assert streamer is not None
        chunks, consumed, done = streamer.feed(buf.view())
        buf.start += consumed
        events = conn.events
        for chunk in chunks:
            events.append(BodyChunk(chunk))
        if done:
            conn.chunk_last = True
            conn.end_body(streamer.size, streamer.error)
        return None if events else NEED_DATA
