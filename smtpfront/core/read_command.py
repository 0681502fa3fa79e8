"""The reader of command lines (states INIT, IDLE, MAIL, RCPT, BDAT_WAIT).

One line from the receive buffer becomes one event, or a refusal: the line's octets and
endings are checked (RFC 5321 §2.3.8, §4.5.3.1.4), its verb is looked up in the verb table
(``states.COMMANDS``), the row's checks run (allowed here, line length, PIPELINING's
groups, TLS or AUTH required), and the row's handler (``verbs.py``) makes the event. An
over-long line is refused once, when it has ended; its rest is dropped as it arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import replies as R
from .buffer import LineTooLong
from .errors import LocalProtocolError
from .events import Event
from .options import Limits
from .replies import Reply
from .sentinels import NEED_DATA, Sentinel
from .states import COMMANDS, Flag

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["CommandReader"]

# Module names: no class lookup per command when interpreted; constants when compiled.
_LAST: Final = Flag.LAST
_NEEDS_TLS: Final = Flag.NEEDS_TLS
_NEEDS_AUTH: Final = Flag.NEEDS_AUTH
_OCTETS_FOLLOW: Final = Flag.OCTETS_FOLLOW
_BAD_UTF8: Final = Reply(500, "5.5.2", "Error: invalid UTF-8 in command")


class CommandReader:
    """Reads a session's command lines; owns what an over-long line leaves to skip.

    Args:
        limits: the line lengths (each verb's, from its row's flags).
    """

    def __init__(self, limits: Limits) -> None:
        self.line_max = max(limits.max_command_line, limits.max_param_line, limits.max_auth_line,
                            limits.max_xclient_line)
        self.line_limits = _line_limits(limits)
        self.skipping_line = False  # dropping the rest of an over-long line
        self.skip_reply: Reply | None = None  # sent once the over-long line has ended

    def skip_rest_quietly(self, consumed: bool) -> None:
        """Drop the rest of an over-long line (unless ``consumed``) without a reply when it ends."""
        self.skipping_line = not consumed
        self.skip_reply = None

    def read(self, conn: ServerConnection) -> Event | Sentinel | None:
        """The next line's event; ``NEED_DATA``; None (an over-long line ended quietly)."""
        buf = conn.buffer
        if conn.early_talk:
            conn.early_talk = False
            if conn.policies.early_talkers == "reject":
                raise LocalProtocolError(R.EARLY_TALKER, fatal=True)
        if self.skipping_line:
            if not buf.skip_line():
                return NEED_DATA
            self.skipping_line = False
            reply, self.skip_reply = self.skip_reply, None
            if reply is None:
                return None
            conn.verb = ""
            raise LocalProtocolError(reply)
        try:
            line = buf.next_line(self.line_max)
        except LineTooLong as exc:
            conn.verb = ""
            if exc.complete or buf.skip_line():  # the whole line is consumed: refuse now
                raise LocalProtocolError(R.LINE_TOO_LONG) from None
            self.skipping_line, self.skip_reply = True, R.LINE_TOO_LONG
            return NEED_DATA
        if line is None:
            return NEED_DATA
        n = len(line)  # octets: the limits count octets, not characters
        conn.verb = ""
        bad_utf8 = False
        try:
            text = line.decode("ascii")  # the usual line: one decode, then str operations
        except UnicodeDecodeError:
            text, bad_utf8 = _decode_line(line)
        if not text.endswith("\r\n") or text.count("\r") != 1:  # RFC 5321 §2.3.8: CRLF only
            raise LocalProtocolError(R.BARE_LINE_ENDING)
        sp = text.find(" ")
        word = text[: len(text) - 2] if sp < 0 else text[:sp]
        command = COMMANDS.get(word)
        if command is None and word.isascii():  # verbs are case-insensitive ASCII
            command = COMMANDS.get(word.upper())
        tallies = conn.tallies
        if command is None:
            tallies.command("UNKNOWN")
            raise LocalProtocolError(R.UNRECOGNIZED)
        conn.verb = verb = command.verb
        tallies.command(verb)
        disabled = conn.disabled
        if disabled and verb in disabled:
            raise LocalProtocolError(R.NOT_IMPLEMENTED)
        if n > self.line_limits[verb]:
            raise LocalProtocolError(R.LINE_TOO_LONG)
        arg = "" if sp < 0 else text[sp + 1 : len(text) - 2]
        flags = command.flags
        if flags & _OCTETS_FOLLOW:  # a refused chunk must still be consumed (RFC 3030 §2)
            return command.handler.read(conn, command, arg)
        state = conn.state
        if state not in command.allowed:
            raise LocalProtocolError(command.refusal(state))
        if conn.sync_reject and (buf.end > buf.start or conn.overflow) and verb != "QUIT" and (
            flags & _LAST or not (conn.esmtp and conn.pipelining)
        ):
            raise LocalProtocolError(R.PIPELINING_VIOLATION, fatal=True)
        if conn.require_tls and flags & _NEEDS_TLS and not conn.tls_active:
            raise LocalProtocolError(R.TLS_REQUIRED)
        if conn.require_auth and flags & _NEEDS_AUTH and not conn.authenticated:
            raise LocalProtocolError(R.AUTH_REQUIRED)
        if bad_utf8:
            raise LocalProtocolError(_BAD_UTF8)
        event = command.handler.read(conn, command, arg)
        if event is not None and conn.awaiting is None:
            conn.awaiting = command
        return event


def _decode_line(line: bytearray) -> tuple[str, bool]:
    """A line that is not ASCII, as text: UTF-8 (RFC 6531), else with the bad octets escaped.

    Returns the text and whether it was invalid UTF-8 (refused once the verb is known:
    an unknown verb is refused as unknown first, as it always was).
    """
    try:
        return line.decode("utf-8"), False
    except UnicodeDecodeError:
        return line.decode("utf-8", "surrogateescape"), True


# Limits object -> (it, its line limits), by identity: the same few objects come with every
# connection, and an lru_cache hashed each one's fields per connection (an interpreted
# dataclass __hash__). The entry holds the object, so its id cannot be reused while cached.
_LINE_LIMITS: dict[int, tuple[Limits, dict[str, int]]] = {}


def _line_limits(limits: Limits) -> dict[str, int]:
    """Each verb's longest line, CRLF included (computed once per Limits object)."""
    entry = _LINE_LIMITS.get(id(limits))
    if entry is not None and entry[0] is limits:
        return entry[1]
    out = _verb_limits(limits)
    if len(_LINE_LIMITS) < 64:
        _LINE_LIMITS[id(limits)] = (limits, out)
    return out


def _verb_limits(limits: Limits) -> dict[str, int]:
    out = {}
    for command in COMMANDS.values():
        flags = command.flags
        if flags & Flag.LONG_LINE:
            out[command.verb] = limits.max_auth_line
        elif flags & Flag.PARAM_LINE:
            out[command.verb] = limits.max_param_line
        elif flags & Flag.X_LINE:
            out[command.verb] = limits.max_xclient_line
        else:
            out[command.verb] = limits.max_command_line
    return out
