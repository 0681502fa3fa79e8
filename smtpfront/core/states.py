"""The SMTP/LMTP session state machine, as data.

Rule: everything that decides whether a command is allowed, and where a positive reply
(or any other event of the session) takes it, lives in this file's tables and constants
(h11 ``_state.py``, Postfix's command flags). The connection only looks things up here and
assigns what it found; a command's handler never checks the state itself (BDAT's excepted:
its octets follow at once, refused or not, see ``Flag.OCTETS_FOLLOW``).

Each verb is one row of ``_TABLE``: its handler (``verbs.py``: what the line does, and what a
positive reply to it applies), where it is allowed, where a positive reply leads, its flags.
Adding a verb is adding its row (and its handler and event).

States (RFC 5321 §4.1.4, §3.3; RFC 3030; RFC 4954; RFC 3207):

    PROXY      waiting for a PROXY protocol header (trusted listeners only)
    CONNECTED  accepted; the greeting is not sent yet (bytes now are early talk)
    INIT       greeted; no HELO/EHLO/LHLO yet
    IDLE       after HELO/EHLO/LHLO; no mail transaction
    MAIL       MAIL FROM accepted
    RCPT       at least one RCPT TO accepted
    DATA       receiving a DATA body (after 354)
    BDAT       receiving a BDAT chunk's octets
    BDAT_WAIT  a non-LAST BDAT chunk was accepted; more chunks may follow
    AUTH       inside a SASL exchange: lines are responses, not commands
    STARTTLS   220 sent to STARTTLS; the TLS handshake is the adapter's
    CLOSED     QUIT answered or 421 sent
    ERROR      a fatal protocol error ended the session
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from . import replies as R
from .replies import Reply
from .verbs import (
    AuthHandler,
    BdatHandler,
    DataHandler,
    Handler,
    HelloHandler,
    HelpHandler,
    MailHandler,
    NoopHandler,
    QuitHandler,
    RcptHandler,
    RsetHandler,
    StartTlsHandler,
    VrfyHandler,
    XclientHandler,
    XforwardHandler,
)

__all__ = [
    "State", "Flag", "Command", "COMMANDS", "AFTER_MESSAGE", "AFTER_CHUNK", "AFTER_PROXY", "AFTER_GREETING",
    "AFTER_TLS", "AFTER_SASL", "AFTER_RESET", "CLOSED", "FAILED", "TRANSACTION", "SASL_EXCHANGE", "CHUNK_OCTETS",
    "COMMAND_STATES", "BODY_REPLY", "SCRAM_SECRET",
]


class State(enum.IntEnum):
    # IntEnum, not Enum: the hot path hashes states (``state in allowed``) and Enum's
    # __hash__ is a Python-level call; IntEnum inherits int's.
    PROXY = 1
    CONNECTED = 2
    INIT = 3
    IDLE = 4
    MAIL = 5
    RCPT = 6
    DATA = 7
    BDAT = 8
    BDAT_WAIT = 9
    AUTH = 10
    STARTTLS = 11
    CLOSED = 12
    ERROR = 13


class Flag:
    """Per-command flags (Postfix smtpd.c ``SMTPD_CMD_FLAG_*``), plain ints for speed."""

    NONE: Final = 0
    # RFC 2920 §3.1: may only be the last command of a pipelined group.
    LAST: Final = 1 << 0
    # Refused before TLS when the listener requires TLS (Postfix: not PRE_TLS).
    NEEDS_TLS: Final = 1 << 1
    # Refused before AUTH when the listener requires authentication (submission).
    NEEDS_AUTH: Final = 1 << 2
    # The line may be as long as an AUTH line (RFC 4954 §4: 12288 octets).
    LONG_LINE: Final = 1 << 3
    # The line may carry ESMTP parameters (RFC 1869 §3 extends the 512-octet limit).
    PARAM_LINE: Final = 1 << 4
    # XCLIENT/XFORWARD lines (Postfix allows 2048 octets).
    X_LINE: Final = 1 << 5
    # Octets follow the line at once, refused or not (RFC 3030 §2: BDAT): the handler reads
    # the size first, then checks where the verb is allowed (the reader consumes a refused chunk).
    OCTETS_FOLLOW: Final = 1 << 6


@dataclass(frozen=True, slots=True)
class Command:
    """One verb's row: its handler, where it is allowed and where a positive reply leads.

    ``handler`` reads the verb's line into its event and applies a positive reply (``verbs.py``).
    ``then`` is None when a positive reply leaves the state unchanged. ``refusals``
    gives the precise 503 text for a state the verb is not allowed in.
    """

    verb: str
    handler: Handler
    allowed: frozenset[State]
    then: State | None
    flags: int = Flag.NONE
    refusals: Mapping[State, Reply] = field(default_factory=dict)
    # Where a positive reply leads when no HELO/EHLO/LHLO was accepted yet (RSET: back to INIT).
    then_before_helo: State | None = None
    # The state while the command's own exchange runs, before its final reply (AUTH: the SASL
    # lines; BDAT: its chunk's octets).
    during: State | None = None

    def target(self, helloed: bool) -> State | None:
        """Where a positive reply takes the session (None: it stays where it is)."""
        if not helloed and self.then_before_helo is not None:
            return self.then_before_helo
        return self.then

    def refusal(self, state: State) -> Reply:
        """The reply for this verb arriving in a state that does not allow it."""
        return self.refusals.get(state, R.BAD_SEQUENCE)


_S = State
# States in which a command line (not body, not SASL) is read.
COMMAND_STATES: Final = frozenset({_S.INIT, _S.IDLE, _S.MAIL, _S.RCPT, _S.BDAT_WAIT})
# States inside a mail transaction (RFC 5321 §3.3).
TRANSACTION: Final = frozenset({_S.MAIL, _S.RCPT, _S.BDAT_WAIT})
_GREETED: Final = COMMAND_STATES
_HELLOED: Final = frozenset({_S.IDLE, _S.MAIL, _S.RCPT, _S.BDAT_WAIT})
_OUTSIDE_TRANSACTION: Final = frozenset({_S.INIT, _S.IDLE})
_NO_HELO = {_S.INIT: R.NEED_HELO}

_IN_TRANSACTION = R.Reply(503, "5.5.1", "Error: MAIL transaction in progress")

_TABLE = (
    # RFC 5321 §4.1.4: HELO/EHLO may be sent at any time and reset the transaction.
    Command("HELO", HelloHandler(), _GREETED, _S.IDLE, Flag.LAST),
    Command("EHLO", HelloHandler(), _GREETED, _S.IDLE, Flag.LAST),
    Command("LHLO", HelloHandler(), _GREETED, _S.IDLE, Flag.LAST),
    Command(
        "MAIL", MailHandler(), frozenset({_S.IDLE}), _S.MAIL, Flag.NEEDS_TLS | Flag.NEEDS_AUTH | Flag.PARAM_LINE,
        {_S.INIT: R.NEED_HELO, _S.MAIL: R.NESTED_MAIL, _S.RCPT: R.NESTED_MAIL, _S.BDAT_WAIT: R.NESTED_MAIL},
    ),
    Command(
        "RCPT", RcptHandler(), frozenset({_S.MAIL, _S.RCPT}), _S.RCPT,
        Flag.NEEDS_TLS | Flag.NEEDS_AUTH | Flag.PARAM_LINE,
        {_S.INIT: R.NEED_HELO, _S.IDLE: R.NEED_MAIL},
    ),
    Command(
        "DATA", DataHandler(), frozenset({_S.RCPT}), _S.DATA, Flag.LAST | Flag.NEEDS_TLS | Flag.NEEDS_AUTH,
        {_S.INIT: R.NEED_HELO, _S.IDLE: R.NEED_MAIL, _S.MAIL: R.NEED_RCPT},
    ),
    # BDAT's positive reply comes after its chunk; the chunk's own transitions are below.
    Command(
        "BDAT", BdatHandler(), frozenset({_S.RCPT, _S.BDAT_WAIT}), None,
        Flag.NEEDS_TLS | Flag.NEEDS_AUTH | Flag.OCTETS_FOLLOW,
        {_S.INIT: R.NEED_HELO, _S.IDLE: R.NEED_MAIL, _S.MAIL: R.NEED_RCPT}, during=_S.BDAT,
    ),
    # RFC 5321 §4.1.1.5: RSET ends the transaction; before any HELO the session stays unhelloed.
    Command("RSET", RsetHandler(), _GREETED, _S.IDLE, then_before_helo=_S.INIT),
    Command("NOOP", NoopHandler(), _GREETED, None),
    Command("QUIT", QuitHandler(), _GREETED, _S.CLOSED),
    Command("VRFY", VrfyHandler(), _GREETED, None, Flag.NEEDS_TLS),
    Command("HELP", HelpHandler(), _GREETED, None),
    # RFC 3207 §4: not inside a transaction; the 220 hands the socket to the TLS layer.
    Command(
        "STARTTLS", StartTlsHandler(), _OUTSIDE_TRANSACTION, _S.STARTTLS, Flag.LAST,
        dict.fromkeys(TRANSACTION, _IN_TRANSACTION),
    ),
    # RFC 4954 §4: after EHLO, not during a transaction, at most once successfully. The
    # exchange runs in AUTH (334 challenges are the core's); its final reply returns to IDLE.
    Command(
        "AUTH", AuthHandler(), frozenset({_S.IDLE}), _S.IDLE, Flag.LAST | Flag.LONG_LINE | Flag.NEEDS_TLS,
        {_S.INIT: R.NEED_HELO, **{s: R.AUTH_IN_TRANSACTION for s in TRANSACTION}}, during=_S.AUTH,
    ),
    # Postfix XCLIENT_README: not inside a transaction; success restarts the session (220).
    Command(
        "XCLIENT", XclientHandler(), _OUTSIDE_TRANSACTION, _S.INIT, Flag.LAST | Flag.X_LINE,
        dict.fromkeys(TRANSACTION, _IN_TRANSACTION),
    ),
    # Postfix XFORWARD_README: before MAIL; no state change.
    Command(
        "XFORWARD", XforwardHandler(), _HELLOED - TRANSACTION, None, Flag.X_LINE,
        {_S.INIT: R.NEED_HELO, **dict.fromkeys(TRANSACTION, _IN_TRANSACTION)},
    ),
)

COMMANDS: Final[dict[str, Command]] = {c.verb: c for c in _TABLE}


def _during(verb: str) -> State:
    state = COMMANDS[verb].during
    if state is None:
        raise AssertionError(f"{verb} has no exchange state in the table")
    return state


# Replies awaited that no verb's row describes: the reply to a body's end (DATA's final dot,
# a BDAT chunk), and SCRAM waiting for the user's stored secret (not a reply at all).
BODY_REPLY: Final = Command("<body>", Handler(), frozenset(), None)
SCRAM_SECRET: Final = Command("<secret>", Handler(), frozenset(), None)

# The exchanges' states, from the table: AUTH's SASL lines, BDAT's chunk octets.
SASL_EXCHANGE: Final = _during("AUTH")
CHUNK_OCTETS: Final = _during("BDAT")

# Where the session goes on what is not a command's positive reply (the rest is in _TABLE):
# the PROXY header read (the greeting comes next), the 220 greeting sent, the STARTTLS
# handshake done (RFC 3207 §4.2: a new session), a SASL exchange ended (its final reply is
# AUTH's), a transaction reset (RSET, HELO, STARTTLS, the end of a message), the session
# closed (QUIT, 421, EOF), and a fatal protocol error.
AFTER_PROXY: Final = State.CONNECTED
AFTER_GREETING: Final = State.INIT
AFTER_TLS: Final = State.INIT
AFTER_SASL: Final = State.IDLE
AFTER_RESET: Final = State.IDLE
CLOSED: Final = State.CLOSED
FAILED: Final = State.ERROR
# Where the session goes after the reply that ends a message (DATA end, BDAT LAST):
# RFC 5321 §4.1.1.4 — accepted or not, the transaction is over.
AFTER_MESSAGE: Final = State.IDLE
# After a positive reply to a non-LAST BDAT chunk (RFC 3030 §2); a negative reply ends
# the transaction (AFTER_MESSAGE) and later chunks are consumed and refused.
AFTER_CHUNK: Final = State.BDAT_WAIT
