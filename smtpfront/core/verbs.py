"""The verb table's handler column: what each command line does, and what a positive reply applies.

A handler is the second column of a verb's row in ``states.py``. The command reader calls
``read`` once the line passed the table's checks (known verb, allowed in this state, line
length, TLS/AUTH required, pipelining): it checks the argument, parses it with
``commands.py`` and returns the event (or raises :class:`LocalProtocolError` with the reply).
The connection calls ``apply`` when the application answers that event with a positive
reply, before moving to the state the row names. A handler keeps no state of its own: one
object serves every session; what a line declares until its reply (HELO's name, MAIL's
parameters) is kept on the connection.

Handlers are native classes and ``read``/``apply`` are methods, not a table of functions:
compiled, a method call through the row is a vtable call, as cheap as the ``if verb ==``
chain it replaced (``python -m smtpfront.bench core``), where calling a stored function
goes through Python's calling convention.

This module imports nothing of ``states.py`` (which imports it for the table): what a
handler needs of a state is in the row it is given, or in the reader it hands over to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import commands as C
from . import replies as R
from .errors import LocalProtocolError
from .events import Data, Event, Helo, Help, MailFrom, Noop, Quit, RcptTo, Rset, StartTls, Vrfy, Xclient, Xforward
from .replies import Reply

if TYPE_CHECKING:
    from .connection import ServerConnection
    from .states import Command

__all__ = [
    "Handler", "HelloHandler", "MailHandler", "RcptHandler", "DataHandler", "BdatHandler", "RsetHandler",
    "NoopHandler", "QuitHandler", "VrfyHandler", "HelpHandler", "StartTlsHandler", "AuthHandler",
    "XclientHandler", "XforwardHandler",
]

_WRONG_HELLO: Final = Reply(500, "5.5.1", "Error: command not recognized")
_NO_ARGS: Final = Reply(501, "5.5.4", "Syntax error: no parameters allowed")
_VRFY_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: VRFY address")
_AUTH_NOT_OFFERED: Final = Reply(503, "5.5.1", "Error: AUTH requires EHLO")
_AUTH_NEEDS_TLS: Final = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
# Events without fields: one of each serves every session.
_RSET: Final = Rset()
_NOOP: Final = Noop()
_QUIT: Final = Quit()


class Handler:
    """A verb's handler. The base reads nothing (the rows for awaited body replies use it)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        """The event for the verb's line (``arg``: the text after the verb's SP, no CRLF)."""
        raise AssertionError(f"no handler for {command.verb}")

    def apply(self, conn: ServerConnection) -> None:
        """What a positive reply to the event does, besides the row's move to its next state."""

    def refused(self, conn: ServerConnection, code: int) -> None:
        """What a negative reply (4xx, 5xx but 421) does: a 5xx is one more client error."""
        if code >= 500:
            conn.count_error()


class HelloHandler(Handler):
    """HELO, EHLO, LHLO (RFC 5321 §4.1.1.1; RFC 2033 §4.1: LHLO, and only LHLO, in LMTP)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        verb = command.verb
        if (verb == "LHLO") != conn.features.lmtp:
            raise LocalProtocolError(_WRONG_HELLO)
        name = C.parse_helo(arg)
        esmtp = verb != "HELO"
        conn.pending_hello = (name, esmtp)
        return Helo(verb, name, esmtp)

    def apply(self, conn: ServerConnection) -> None:
        name, esmtp = conn.pending_hello
        conn.helo, conn.esmtp = name, esmtp
        conn.enhanced = esmtp and conn.features.enhancedstatuscodes
        conn.reset_transaction()


class MailHandler(Handler):
    """MAIL FROM (RFC 5321 §4.1.1.2) and its parameters."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        address, params = C.parse_mail(arg, conn.features, conn.limits)
        conn.pending_mail = params
        return MailFrom(address, params)

    def apply(self, conn: ServerConnection) -> None:
        params = conn.pending_mail
        conn.smtputf8 = params.smtputf8
        conn.binarymime = params.body == "BINARYMIME"


class RcptHandler(Handler):
    """RCPT TO (RFC 5321 §4.1.1.3), at most ``limits.max_recipients`` accepted."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if conn.rcpt_count >= conn.limits.max_recipients:
            raise LocalProtocolError(R.TOO_MANY_RECIPIENTS)
        address, params = C.parse_rcpt(arg, conn.features, conn.smtputf8)
        return RcptTo(address, params)

    def apply(self, conn: ServerConnection) -> None:
        conn.rcpt_count += 1


class DataHandler(Handler):
    """DATA (RFC 5321 §4.1.1.4): the 354 starts the dot-stuffed body (``read_body.py``)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if arg:
            raise LocalProtocolError(_NO_ARGS)
        if conn.binarymime:
            raise LocalProtocolError(R.BINARY_NEEDS_BDAT)
        return Data()

    def apply(self, conn: ServerConnection) -> None:
        conn.body_reader.start(conn.limits, conn.policies)


class BdatHandler(Handler):
    """BDAT (RFC 3030 §2): the chunk's octets follow at once (``read_chunk.py``), no reply before them."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        try:
            size, last = C.parse_bdat(arg)
        except LocalProtocolError as exc:  # without a size the stream cannot be resynchronised
            raise LocalProtocolError(exc.reply, fatal=True) from None
        return conn.chunk_reader.begin(conn, command, size, last)


class RsetHandler(Handler):
    """RSET (RFC 5321 §4.1.1.5): ends the transaction."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if arg:
            raise LocalProtocolError(_NO_ARGS)
        return _RSET

    def apply(self, conn: ServerConnection) -> None:
        conn.reset_transaction()


class NoopHandler(Handler):
    """NOOP (RFC 5321 §4.1.1.9: it may carry a string, which is ignored)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        return _NOOP


class QuitHandler(Handler):
    """QUIT (RFC 5321 §4.1.1.10): the 221 ends the session."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if arg:
            raise LocalProtocolError(_NO_ARGS)
        return _QUIT

    def apply(self, conn: ServerConnection) -> None:
        conn.end_session()


class VrfyHandler(Handler):
    """VRFY (RFC 5321 §4.1.1.6): the application answers (usually 252)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if not arg:
            raise LocalProtocolError(_VRFY_SYNTAX)
        return Vrfy(arg)


class HelpHandler(Handler):
    """HELP (RFC 5321 §4.1.1.8)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        return Help(arg)


class StartTlsHandler(Handler):
    """STARTTLS (RFC 3207 §4): the 220 drops what was pipelined after it (the injection defence)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if conn.tls_active:
            raise LocalProtocolError(R.TLS_ALREADY_ACTIVE)
        if not conn.features.starttls:
            raise LocalProtocolError(R.NOT_IMPLEMENTED)
        if arg:
            raise LocalProtocolError(_NO_ARGS)
        return StartTls()

    def apply(self, conn: ServerConnection) -> None:
        conn.buffer.clear()
        conn.overflow.clear()


class AuthHandler(Handler):
    """AUTH (RFC 4954 §4): the SASL exchange that follows is ``read_sasl.py``'s."""

    def refused(self, conn: ServerConnection, code: int) -> None:
        """A failed AUTH counts against ``max_auth_failures``, not as a client error; the last
        one ends the session with 421."""
        conn.auth_failures += 1
        if conn.auth_failures >= conn.limits.max_auth_failures:
            conn.queue_reply("AUTH", R.TOO_MANY_AUTH_FAILURES)
            conn.end_session()

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        mechanisms = conn.features.auth_mechanisms
        if not mechanisms:
            raise LocalProtocolError(R.NOT_IMPLEMENTED)
        if not conn.esmtp:
            raise LocalProtocolError(_AUTH_NOT_OFFERED)
        if conn.authenticated:
            raise LocalProtocolError(R.ALREADY_AUTHENTICATED)
        if conn.auth_requires_tls and not conn.tls_active:
            raise LocalProtocolError(_AUTH_NEEDS_TLS)
        name, initial = C.parse_auth(arg)
        if name not in mechanisms:
            raise LocalProtocolError(R.AUTH_MECHANISM_UNKNOWN)
        return conn.sasl_reader.begin(conn, name, initial)

    def apply(self, conn: ServerConnection) -> None:
        conn.authenticated = True


class XclientHandler(Handler):
    """XCLIENT (Postfix XCLIENT_README): success restarts the session, unhelloed."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if not conn.features.xclient:
            raise LocalProtocolError(R.XCLIENT_DENIED)
        return Xclient(C.parse_x_attributes(arg, C.XCLIENT_ATTRIBUTES))

    def apply(self, conn: ServerConnection) -> None:
        conn.helo, conn.esmtp, conn.enhanced = None, False, False
        conn.reset_transaction()


class XforwardHandler(Handler):
    """XFORWARD (Postfix XFORWARD_README)."""

    def read(self, conn: ServerConnection, command: Command, arg: str) -> Event | None:
        if not conn.features.xforward:
            raise LocalProtocolError(R.XCLIENT_DENIED)
        return Xforward(C.parse_x_attributes(arg, C.XFORWARD_ATTRIBUTES))
