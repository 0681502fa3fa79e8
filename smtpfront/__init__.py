"""smtpfront: a high-throughput SMTP/LMTP receiving front end.

The library face: :class:`SMTPServer` with :class:`Hooks` for policy, :class:`Reply` and
:class:`Reject` for decisions, and the sinks in :mod:`smtpfront.sink`.
"""

from ._version import __version__
from .core.events import Address, MailParams, RcptParams, Recipient, SaslCredentials
from .core.replies import Reply
from .hooks import CommandContext, Hooks, IncomingMessage, Reject, Session
from .server import SMTPServer

__all__ = [
    "Address", "CommandContext", "Hooks", "IncomingMessage", "MailParams", "RcptParams", "Recipient", "Reject",
    "Reply", "SMTPServer", "SaslCredentials", "Session", "__version__",
]
