"""The core's one error family.

Rule (h11's): inside the core every client mistake raises :class:`LocalProtocolError`
carrying the reply to send. :meth:`ServerConnection.next_event` is the single public entry
for received bytes; it turns an error that ends the session into
:class:`RemoteProtocolError` and moves the connection to ``ERROR``. Anything else that
escapes the core is a bug.
"""

from __future__ import annotations

from .replies import Reply

__all__ = ["ProtocolError", "LocalProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """A protocol violation, with the reply that answers it.

    Args:
        reply: the SMTP reply to send for this violation.
        fatal: True when the session must end after the reply is sent.
    """

    def __init__(self, reply: Reply, *, fatal: bool = False) -> None:
        super().__init__(reply.text)
        self.reply = reply
        self.fatal = fatal


class LocalProtocolError(ProtocolError):
    """Raised inside the core when the peer broke the protocol."""


class RemoteProtocolError(ProtocolError):
    """What the core's public entry points raise for a violation that ends the session."""
