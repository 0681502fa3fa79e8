"""SMTP replies (RFC 5321 §4.2) with RFC 3463 enhanced status codes.

A :class:`Reply` is encoded once, when it is built: the hot path sends constants
whose wire bytes already exist. Two encodings are kept, with and without the
enhanced status code, because RFC 2034 codes are used only in sessions that were
offered ENHANCEDSTATUSCODES (an EHLO/LHLO session), never in the greeting or after
HELO.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Reply", "ehlo_reply"]


class Reply:
    """One SMTP reply: a three-digit code, an optional enhanced code, and text lines.

    Args:
        code: the basic reply code, 200..599.
        enhanced: the RFC 3463 code (``"5.5.2"``) or None.
        text: one line, or several for a multi-line reply.
    """

    __slots__ = ("code", "enhanced", "lines", "_wire", "_wire_plain")

    def __init__(self, code: int, enhanced: str | None, text: str | tuple[str, ...]) -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"reply code out of range: {code}")
        lines = (text,) if isinstance(text, str) else tuple(text)
        if not lines:
            lines = ("",)
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")
        self.code = code
        self.enhanced = enhanced
        self.lines = lines
        self._wire = _encode(code, enhanced, lines)
        self._wire_plain = self._wire if enhanced is None else _encode(code, None, lines)

    def encode(self, enhanced_codes: bool = True) -> bytes:
        """The reply's wire bytes, CRLF-terminated, with or without the enhanced code."""
        return self._wire if enhanced_codes else self._wire_plain

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx replies (the command succeeded or continues)."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """True for 4xx replies."""
        return 400 <= self.code < 500

    @property
    def text(self) -> str:
        """The reply text, lines joined by newlines."""
        return "\n".join(self.lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return self._wire == other._wire

    def __hash__(self) -> int:
        return hash(self._wire)

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.enhanced!r}, {self.text!r})"


def _encode(code: int, enhanced: str | None, lines: tuple[str, ...]) -> bytes:
    prefix = f"{enhanced} " if enhanced else ""
    last = len(lines) - 1
    out = []
    for i, line in enumerate(lines):
        sep = " " if i == last else "-"
        out.append(f"{code}{sep}{prefix}{line}\r\n" if line or prefix else f"{code}{sep}\r\n")
    # Reply text is ASCII by RFC 5321; UTF-8 is tolerated for SMTPUTF8 sessions (RFC 6531 §3.7.4).
    return "".join(out).encode("utf-8")


def ehlo_reply(hostname: str, greeting: str, capabilities: list[str]) -> Reply:
    """The multi-line EHLO/LHLO reply: ``250-host greeting`` then one capability a line.

    EHLO replies carry no enhanced status code (RFC 2034 §3: the codes apply to
    replies after the extension was offered, and the EHLO reply is the offer).
    """
    first = f"{hostname} {greeting}" if greeting else hostname
    return Reply(250, None, (first, *capabilities))


# -- the catalogue ---------------------------------------------------------------
# Constant replies, pre-encoded. Codes follow RFC 5321 §4.2.2/§4.3.2; enhanced codes
# follow RFC 3463 (X.5.x protocol, X.3.x system, X.7.x security, X.1.x addressing).

OK: Final = Reply(250, "2.0.0", "OK")
SENDER_OK: Final = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK: Final = Reply(250, "2.1.5", "Recipient OK")
RESET_OK: Final = Reply(250, "2.0.0", "Reset state")
NOOP_OK: Final = Reply(250, "2.0.0", "OK")
START_DATA: Final = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE: Final = Reply(221, "2.0.0", "Bye")
READY_TO_START_TLS: Final = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK: Final = Reply(235, "2.7.0", "Authentication successful")
VRFY_CANNOT: Final = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP: Final = Reply(214, "2.0.0", "See RFC 5321 https://www.rfc-editor.org/rfc/rfc5321")

UNRECOGNIZED: Final = Reply(500, "5.5.1", "Error: command not recognized")
SYNTAX_ERROR: Final = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Error: line too long")
BARE_LINE_ENDING: Final = Reply(500, "5.5.2", "Error: bare CR or LF in command; lines end with <CR><LF>")
NOT_IMPLEMENTED: Final = Reply(502, "5.5.1", "Error: command not implemented")
BAD_SEQUENCE: Final = Reply(503, "5.5.1", "Error: bad sequence of commands")
NEED_HELO: Final = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL: Final = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT: Final = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL: Final = Reply(503, "5.5.1", "Error: nested MAIL command")
ALREADY_AUTHENTICATED: Final = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION: Final = Reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction")
TLS_ALREADY_ACTIVE: Final = Reply(503, "5.5.1", "Error: TLS already active")
PARAM_NOT_RECOGNIZED: Final = Reply(555, "5.5.4", "Error: MAIL/RCPT parameter not recognized or not implemented")
PARAM_NOT_IMPLEMENTED: Final = Reply(504, "5.5.4", "Error: command parameter not implemented")
AUTH_MECHANISM_UNKNOWN: Final = Reply(504, "5.5.4", "Error: unrecognized authentication type")
AUTH_LINE_TOO_LONG: Final = Reply(500, "5.5.6", "Error: authentication exchange line too long")
AUTH_CANCELLED: Final = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_MALFORMED: Final = Reply(501, "5.5.2", "Error: cannot decode response")
AUTH_FAILED: Final = Reply(535, "5.7.8", "Error: authentication credentials invalid")
AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Error: authentication required")
TLS_REQUIRED: Final = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Error: too many recipients")
MESSAGE_TOO_BIG: Final = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
MESSAGE_TOO_BIG_DECLARED: Final = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
BARE_LINE_ENDING_IN_DATA: Final = Reply(550, "5.5.2", "Error: bare CR or LF in message; lines end with <CR><LF>")
TEXT_LINE_TOO_LONG: Final = Reply(550, "5.5.2", "Error: message line longer than 1000 octets (RFC 5321 4.5.3.1.6)")
UTF8_NOT_ALLOWED: Final = Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8")
BAD_MAILBOX: Final = Reply(553, "5.1.3", "Error: bad address syntax")
BINARY_NEEDS_BDAT: Final = Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT, not DATA")
PIPELINING_VIOLATION: Final = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
EARLY_TALKER: Final = Reply(554, "5.5.0", "Error: SMTP protocol synchronization (client spoke before the greeting)")
TOO_MANY_ERRORS: Final = Reply(421, "4.7.0", "Error: too many errors, closing connection")
TOO_MANY_AUTH_FAILURES: Final = Reply(421, "4.7.0", "Error: too many failed authentication attempts")
SHUTTING_DOWN: Final = Reply(421, "4.3.2", "Service shutting down, closing connection")
TOO_MANY_CONNECTIONS: Final = Reply(421, "4.3.2", "Too many connections, try again later")
TIMEOUT: Final = Reply(421, "4.4.2", "Error: timeout exceeded, closing connection")
LOCAL_ERROR: Final = Reply(451, "4.3.0", "Error: local error in processing, try again later")
QUEUE_UNAVAILABLE: Final = Reply(451, "4.3.0", "Error: queue unavailable, try again later")
INSUFFICIENT_STORAGE: Final = Reply(452, "4.3.1", "Error: insufficient system storage, try again later")
BAD_PROXY_HEADER: Final = Reply(421, "4.7.0", "Error: invalid PROXY protocol header")
XCLIENT_DENIED: Final = Reply(550, "5.7.0", "Error: insufficient authorization")
