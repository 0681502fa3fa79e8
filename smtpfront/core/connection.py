"""``ServerConnection``: the sans-IO SMTP/LMTP server session.

Push bytes in (:meth:`~ServerConnection.receive_data`, or :meth:`writable` +
:meth:`commit` to receive in place), pull events out (:meth:`next_event`), answer the
events that need a reply with :meth:`send`, and write what :meth:`data_to_send`
returns. The core never touches a socket, a clock or a logger.

Contract (h11's): :meth:`next_event` raises only :class:`RemoteProtocolError`, and only
for a violation that ends the session; its reply is already queued for sending. Client
mistakes that do not end the session come back as :class:`~events.Rejected` events with
their reply queued. Any other exception is a bug.

Size (over 500 lines): the driver, the readers of each state (command lines, SASL, DATA,
BDAT, PROXY) and the replies' bookkeeping. The planned split (h11's) moves the readers and
the verb handlers into modules of their own and every transition into ``states.py``'s
tables; it waits for a benchmark-guarded session of its own, as this module is compiled and
tuned (``python -m smtpfront.bench core``).
"""

from __future__ import annotations

import base64
import functools
from collections import deque
from collections.abc import Callable
from typing import Final

from . import commands as C
from . import replies as R
from .buffer import LineTooLong, ReceiveBuffer
from .capabilities import ehlo_capabilities
from .data import DataStreamer
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    AuthCredentials,
    AuthSecretNeeded,
    BdatChunk,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    Data,
    Event,
    Helo,
    Help,
    MailFrom,
    MailParams,
    Noop,
    ProxyHeader,
    Quit,
    RcptTo,
    Rejected,
    Rset,
    StartTls,
    Vrfy,
    Xclient,
    Xforward,
)
from .options import Features, Limits, Policies
from .proxy import parse_proxy_header
from .replies import Reply
from .sasl import Challenge, Done, Mechanism, NeedSecret, ScramSecret, Step, new_mechanism
from .states import (
    AFTER_CHUNK,
    AFTER_GREETING,
    AFTER_MESSAGE,
    AFTER_PROXY,
    AFTER_RESET,
    AFTER_SASL,
    AFTER_TLS,
    CHUNK_OCTETS,
    CLOSED,
    COMMAND_STATES,
    COMMANDS,
    FAILED,
    SASL_EXCHANGE,
    TRANSACTION,
    Command,
    Flag,
    State,
)
from .tallies import Tallies

__all__ = ["ServerConnection", "NEED_DATA", "PAUSED", "Sentinel"]


# Enum class-attribute access costs ~120 ns in 3.11; the hot path uses these aliases.
_AUTH: Final = State.AUTH
_BDAT: Final = State.BDAT
_CLOSED: Final = State.CLOSED
_CONNECTED: Final = State.CONNECTED
_DATA: Final = State.DATA
_ERROR: Final = State.ERROR
_IDLE: Final = State.IDLE
_INIT: Final = State.INIT
_PROXY: Final = State.PROXY
_RCPT: Final = State.RCPT
_STARTTLS: Final = State.STARTTLS


class Sentinel:
    """A named singleton returned by :meth:`ServerConnection.next_event`."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: More bytes are needed before another event can be produced.
NEED_DATA: Final = Sentinel("NEED_DATA")
#: An event is waiting for the application's reply (:meth:`ServerConnection.send`).
PAUSED: Final = Sentinel("PAUSED")

_FEATURES, _LIMITS, _POLICIES = Features(), Limits(), Policies()
_BODY: Final = Command("<body>", frozenset(), None)  # the reply awaited after a body ends
# Module names: no class lookup per command when interpreted; constants when compiled.
_LAST: Final = Flag.LAST
_NEEDS_TLS: Final = Flag.NEEDS_TLS
_NEEDS_AUTH: Final = Flag.NEEDS_AUTH
_SECRET: Final = Command("<secret>", frozenset(), None)  # SCRAM waits for supply_scram_secret
_AUTH_NOT_OFFERED: Final = Reply(503, "5.5.1", "Error: AUTH requires EHLO")
_AUTH_NEEDS_TLS: Final = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
_WRONG_HELLO: Final = Reply(500, "5.5.1", "Error: command not recognized")
_NO_ARGS: Final = Reply(501, "5.5.4", "Syntax error: no parameters allowed")
_VRFY_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: VRFY address")
_BDAT_NOT_OFFERED: Final = Reply(502, "5.5.1", "Error: CHUNKING not offered")
_BAD_UTF8: Final = Reply(500, "5.5.2", "Error: invalid UTF-8 in command")


class ServerConnection:
    """One SMTP or LMTP server session.

    Args:
        hostname: this server's name, used in replies and SASL challenges.
        features: the extensions offered; ``features.lmtp`` makes this an LMTP session.
        limits: sizes and counts a client may not exceed.
        policies: how bare line endings, long lines and protocol-synchronization
            violations are treated.
        buffer_size: the fixed receive buffer's size (at least the longest line).
        expect_proxy: the first bytes must be a PROXY v1/v2 header.
        tls_active: the connection is already encrypted (implicit TLS).
        require_tls: refuse mail commands before STARTTLS (530 5.7.0).
        require_auth: refuse mail commands before AUTH (530 5.7.0).
        auth_requires_tls: hide AUTH and refuse it (538 5.7.11) before TLS.
        sasl_nonce: fixed SASL nonce, for tests only (a fresh random one by default).
    """

    def __init__(
        self,
        *,
        hostname: str = "localhost",
        features: Features = _FEATURES,
        limits: Limits = _LIMITS,
        policies: Policies = _POLICIES,
        buffer_size: int = 64 * 1024,
        expect_proxy: bool = False,
        tls_active: bool = False,
        require_tls: bool = False,
        require_auth: bool = False,
        auth_requires_tls: bool = True,
        sasl_nonce: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.features = features
        self.limits = limits
        self.policies = policies
        self.buffer = ReceiveBuffer(max(buffer_size, limits.max_auth_line + 2))
        self.state = _PROXY if expect_proxy else _CONNECTED
        self.tls_active = tls_active
        self.require_tls = require_tls
        self.require_auth = require_auth
        self.auth_requires_tls = auth_requires_tls
        self.esmtp = False
        self._pipelining = self.features.pipelining
        self.helo: str | None = None
        self.authenticated = False
        self.closing = False  # a reply that ends the session is queued
        self.error_count = 0
        self.auth_failures = 0
        self._sasl_nonce = sasl_nonce
        self._out: list[bytes] = []
        self.tallies = Tallies()  # commands and replies, for the adapter's metrics (take_counts)
        # Events made ahead of the one returned (body chunks, a body's end): a list read
        # from _next (list operations compile to C calls; a deque's are method lookups).
        self._events: list[Event] = []
        self._next = 0
        self._awaiting: Command | None = None
        # What a positive reply to the awaited HELO/EHLO/LHLO or MAIL applies.
        self._pending_hello: tuple[str, bool] = ("", False)
        self._pending_mail = MailParams()
        self._enhanced = False
        self._eof = False
        self._early_talk = False
        self._overflow: deque[memoryview] = deque()
        self._skipping_line = False  # dropping the rest of an over-long line
        self._skip_reply: Reply | None = None  # sent once the over-long line has ended
        self._line_max = max(limits.max_command_line, limits.max_param_line, limits.max_auth_line,
                             limits.max_xclient_line)
        self._line_limits = _line_limits(limits)
        self._disabled = features.disabled
        self._sync_reject = policies.unauthorized_pipelining == "reject"
        self._mechanism: Mechanism | None = None
        self._streamer: DataStreamer | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None
        self._replies_due = 0
        self._chunk_size = 0
        self._return_state = _IDLE
        self._message_size = 0
        self._body_error: Reply | None = None
        self._smtputf8 = False
        self._binarymime = False
        self._rcpt_count = 0

    def use_features(self, features: Features) -> None:
        """Offer ``features`` from now on, in place of those given at construction.

        For the moment a PROXY header has named the client: what a client may use (XCLIENT,
        XFORWARD) is judged on its own address, never on the proxy's. Only before the
        greeting; a later change of what was offered is a bug in the caller.
        """
        if self.state is not _CONNECTED:
            raise RuntimeError("features can change only before the greeting")
        self.features = features
        self._pipelining = features.pipelining
        self._disabled = features.disabled

    # -- receiving ----------------------------------------------------------------

    def writable(self) -> memoryview:
        """Where to receive next (``BufferedProtocol.get_buffer``); empty means stop reading."""
        return self.buffer.writable()

    def commit(self, n: int) -> None:
        """Record ``n`` octets received into :meth:`writable` (``buffer_updated``)."""
        self.buffer.commit(n)
        if self.state is _CONNECTED:
            self._early_talk = True

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._overflow:
            self._overflow.append(memoryview(bytes(data)))
            return
        taken = self.buffer.feed(data)
        if self.state is _CONNECTED:
            self._early_talk = True
        if taken < len(data):
            self._overflow.append(memoryview(bytes(data))[taken:])

    def _refill(self) -> bool:
        """Move bytes held by :meth:`receive_data` into the buffer; True if any moved."""
        moved = False
        while self._overflow:
            head = self._overflow[0]
            taken = self.buffer.feed(head)
            if not taken:
                break
            moved = True
            if taken < len(head):
                self._overflow[0] = head[taken:]
                break
            self._overflow.popleft()
        return moved

    # -- events -------------------------------------------------------------------

    def next_event(self) -> Event | Sentinel:
        """The next event, ``NEED_DATA``, or ``PAUSED`` (a reply is awaited).

        Raises:
            RemoteProtocolError: the session must end; the reply is already queued.
        """
        while True:
            events = self._events
            if events:
                ready = events[self._next]
                self._next += 1
                if self._next == len(events):
                    events.clear()
                    self._next = 0
                return ready
            if self._awaiting is not None:
                return PAUSED
            state = self.state
            try:
                if state is _DATA:
                    event = self._read_body()
                elif state is _BDAT:
                    event = self._read_chunk()
                elif state in COMMAND_STATES:
                    event = self._read_command()
                elif state is _AUTH:
                    event = self._read_sasl()
                elif state is _PROXY:
                    event = self._read_proxy()
                elif state is _ERROR:
                    raise RemoteProtocolError(R.BAD_SEQUENCE, fatal=True)
                elif state is _STARTTLS:
                    # Plaintext leftovers were dropped when the 220 was queued; what arrives
                    # now is the TLS layer's, and waits for tls_established().
                    return NEED_DATA
                else:  # CONNECTED, CLOSED
                    event = NEED_DATA
            except LocalProtocolError as exc:
                event = self._refuse(self._verb, exc)
            if event is NEED_DATA:
                if self._refill():
                    continue
                if self._eof and state is not _CLOSED:
                    self.state = CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            if event is not None:
                return event

    def _refuse(self, verb: str, exc: LocalProtocolError) -> Rejected:
        """Queue the reply for a client mistake; end the session if it is fatal."""
        reply = exc.reply
        self._queue(verb or "UNKNOWN", reply)
        if exc.fatal or reply.code == 421:
            self._close()
            self.state = FAILED
            raise RemoteProtocolError(reply, fatal=True)
        if reply.code >= 500 and self._count_error():
            raise RemoteProtocolError(R.TOO_MANY_ERRORS, fatal=True)
        return Rejected(verb, reply)

    def _count_error(self) -> bool:
        """Count one client error; at the limit queue 421 and return True."""
        self.error_count += 1
        if self.error_count < self.limits.max_errors:
            return False
        self._queue(self._verb or "UNKNOWN", R.TOO_MANY_ERRORS)
        self._close()
        return True

    def _close(self) -> None:
        self.closing = True
        self.state = CLOSED
        self._awaiting = None

    # -- command lines ------------------------------------------------------------

    _verb = ""

    def _read_command(self) -> Event | Sentinel | None:
        buf = self.buffer
        if self._early_talk:
            self._early_talk = False
            if self.policies.early_talkers == "reject":
                raise LocalProtocolError(R.EARLY_TALKER, fatal=True)
        if self._skipping_line:
            if not buf.skip_line():
                return NEED_DATA
            self._skipping_line = False
            reply, self._skip_reply = self._skip_reply, None
            if reply is None:
                return None
            self._verb = ""
            raise LocalProtocolError(reply)
        try:
            line = buf.next_line(self._line_max)
        except LineTooLong as exc:
            self._verb = ""
            if exc.complete or buf.skip_line():  # the whole line is consumed: refuse now
                raise LocalProtocolError(R.LINE_TOO_LONG) from None
            self._skipping_line, self._skip_reply = True, R.LINE_TOO_LONG
            return NEED_DATA
        if line is None:
            return NEED_DATA
        n = len(line)  # octets: the limits count octets, not characters
        self._verb = ""
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
        tallies = self.tallies
        if command is None:
            tallies.command("UNKNOWN")
            raise LocalProtocolError(R.UNRECOGNIZED)
        self._verb = verb = command.verb
        tallies.command(verb)
        if self._disabled and verb in self._disabled:
            raise LocalProtocolError(R.NOT_IMPLEMENTED)
        if n > self._line_limits[verb]:
            raise LocalProtocolError(R.LINE_TOO_LONG)
        arg = "" if sp < 0 else text[sp + 1 : len(text) - 2]
        if verb == "BDAT":  # a refused chunk must still be consumed (RFC 3030 §2)
            return self._bdat(arg)
        state = self.state
        if state not in command.allowed:
            raise LocalProtocolError(command.refusal(state))
        flags = command.flags
        if self._sync_reject and (buf.end > buf.start or self._overflow) and verb != "QUIT" and (
            flags & _LAST or not (self.esmtp and self._pipelining)
        ):
            raise LocalProtocolError(R.PIPELINING_VIOLATION, fatal=True)
        if self.require_tls and flags & _NEEDS_TLS and not self.tls_active:
            raise LocalProtocolError(R.TLS_REQUIRED)
        if self.require_auth and flags & _NEEDS_AUTH and not self.authenticated:
            raise LocalProtocolError(R.AUTH_REQUIRED)
        if bad_utf8:
            raise LocalProtocolError(_BAD_UTF8)
        event = self._handle(verb, arg)
        if event is not None and self._awaiting is None:
            self._awaiting = command
        return event

    def _handle(self, verb: str, text: str) -> Event | None:
        """Run the verb's handler: its argument checks, its parser, its event."""
        if verb == "MAIL":
            return self._mail(text)
        if verb == "RCPT":
            return self._rcpt(text)
        if verb == "DATA":
            return self._data(text)
        if verb in ("EHLO", "HELO", "LHLO"):
            return self._hello(text)
        if verb in ("RSET", "NOOP", "QUIT"):
            return self._no_args(text)
        if verb == "STARTTLS":
            return self._starttls(text)
        if verb == "AUTH":
            return self._auth(text)
        if verb == "VRFY":
            return self._vrfy(text)
        if verb == "HELP":
            return self._help(text)
        if verb == "XCLIENT":
            return self._xclient(text)
        if verb == "XFORWARD":
            return self._xforward(text)
        raise AssertionError(f"no handler for {verb}")

    @property
    def _pipelining_offered(self) -> bool:
        return self.esmtp and self._pipelining

    def _hello(self, text: str) -> Event:
        lmtp = self.features.lmtp
        if (self._verb == "LHLO") != lmtp:
            raise LocalProtocolError(_WRONG_HELLO)
        name = C.parse_helo(text)
        esmtp = self._verb != "HELO"
        self._pending_hello = (name, esmtp)
        return Helo(self._verb, name, esmtp)

    def _mail(self, text: str) -> Event:
        address, params = C.parse_mail(text, self.features, self.limits)
        self._pending_mail = params
        return MailFrom(address, params)

    def _rcpt(self, text: str) -> Event:
        if self._rcpt_count >= self.limits.max_recipients:
            raise LocalProtocolError(R.TOO_MANY_RECIPIENTS)
        address, params = C.parse_rcpt(text, self.features, self._smtputf8)
        return RcptTo(address, params)

    def _data(self, text: str) -> Event:
        if text:
            raise LocalProtocolError(_NO_ARGS)
        if self._binarymime:
            raise LocalProtocolError(R.BINARY_NEEDS_BDAT)
        return Data()

    def _no_args(self, text: str) -> Event:
        if text and self._verb != "NOOP":  # RFC 5321 §4.1.1.9: NOOP may carry a string
            raise LocalProtocolError(_NO_ARGS)
        return _SIMPLE[self._verb]

    def _vrfy(self, text: str) -> Event:
        if not text:
            raise LocalProtocolError(_VRFY_SYNTAX)
        return Vrfy(text)

    def _help(self, text: str) -> Event:
        return Help(text)

    def _starttls(self, text: str) -> Event:
        if self.tls_active:
            raise LocalProtocolError(R.TLS_ALREADY_ACTIVE)
        if not self.features.starttls:
            raise LocalProtocolError(R.NOT_IMPLEMENTED)
        if text:
            raise LocalProtocolError(_NO_ARGS)
        return StartTls()

    def _xclient(self, text: str) -> Event:
        if not self.features.xclient:
            raise LocalProtocolError(R.XCLIENT_DENIED)
        return Xclient(C.parse_x_attributes(text, C.XCLIENT_ATTRIBUTES))

    def _xforward(self, text: str) -> Event:
        if not self.features.xforward:
            raise LocalProtocolError(R.XCLIENT_DENIED)
        return Xforward(C.parse_x_attributes(text, C.XFORWARD_ATTRIBUTES))

    # -- SASL ---------------------------------------------------------------------

    def _auth(self, text: str) -> Event | None:
        mechanisms = self.features.auth_mechanisms
        if not mechanisms:
            raise LocalProtocolError(R.NOT_IMPLEMENTED)
        if not self.esmtp:
            raise LocalProtocolError(_AUTH_NOT_OFFERED)
        if self.authenticated:
            raise LocalProtocolError(R.ALREADY_AUTHENTICATED)
        if self.auth_requires_tls and not self.tls_active:
            raise LocalProtocolError(_AUTH_NEEDS_TLS)
        name, initial = C.parse_auth(text)
        if name not in mechanisms:
            raise LocalProtocolError(R.AUTH_MECHANISM_UNKNOWN)
        self._mechanism = new_mechanism(name, hostname=self.hostname, nonce=self._sasl_nonce)
        self.state = SASL_EXCHANGE
        return self._sasl_step(lambda mechanism: mechanism.start(initial))

    def _read_sasl(self) -> Event | Sentinel | None:
        try:
            line = self.buffer.next_line(self.limits.max_auth_line)
        except LineTooLong as exc:
            # Refuse now; drop the rest of the line quietly, whenever it arrives.
            self._skipping_line = not (exc.complete or self.buffer.skip_line())
            self._skip_reply = None
            self._end_sasl()
            raise LocalProtocolError(R.AUTH_LINE_TOO_LONG) from None
        if line is None:
            return NEED_DATA
        text = line.rstrip(b"\r\n").decode("ascii", "replace")
        return self._sasl_step(lambda mechanism: mechanism.respond(text))

    def _sasl_step(self, advance: Callable[[Mechanism], Step]) -> Event | None:
        mechanism = self._mechanism
        assert mechanism is not None
        self._verb = "AUTH"
        try:
            step: Step = advance(mechanism)
        except LocalProtocolError:
            self._end_sasl()
            raise
        return self._after_step(step)

    def _after_step(self, step: Step) -> Event | None:
        if isinstance(step, Challenge):
            payload = base64.b64encode(step.payload).decode("ascii")
            self._out.append(f"334 {payload}\r\n".encode("ascii"))
            return None
        if isinstance(step, NeedSecret):
            self._awaiting = _SECRET
            return AuthSecretNeeded(self._mechanism.name if self._mechanism else "", step.username)
        assert isinstance(step, Done)
        self._end_sasl()
        self._awaiting = COMMANDS["AUTH"]
        return AuthCredentials(step.credentials)

    def _end_sasl(self) -> None:
        self._mechanism = None
        self.state = AFTER_SASL

    def supply_scram_secret(self, secret: ScramSecret | None) -> None:
        """Answer :class:`AuthSecretNeeded` with the user's stored secret (None: unknown user)."""
        if self._awaiting is not _SECRET or self._mechanism is None:
            raise RuntimeError("no SCRAM exchange is waiting for a secret")
        self._awaiting = None
        event = self._after_step(self._mechanism.supply_secret(secret))
        if event is not None:
            self._events.append(event)

    # -- bodies -------------------------------------------------------------------

    def _bdat(self, arg: str) -> Event | None:
        try:
            size, last = C.parse_bdat(arg)
        except LocalProtocolError as exc:  # without a size the stream cannot be resynchronised
            raise LocalProtocolError(exc.reply, fatal=True) from None
        refusal: Reply | None = None
        state = self.state
        command = COMMANDS["BDAT"]
        if not self.features.chunking:
            refusal = _BDAT_NOT_OFFERED
        elif state not in command.allowed:
            refusal = command.refusal(state)
        elif self.require_tls and not self.tls_active:
            refusal = R.TLS_REQUIRED
        self._chunk_left = size
        self._chunk_last = last
        self._chunk_size = 0
        self._chunk_refusal = refusal
        self._return_state = state
        self.state = CHUNK_OCTETS
        if refusal is not None:
            return None
        first = state is _RCPT
        if first:
            self._message_size = 0
            self._body_error = None
        return BdatChunk(size, last, first)

    def _read_chunk(self) -> Event | Sentinel | None:
        buf = self.buffer
        available = buf.end - buf.start
        if self._chunk_left and not available:
            return NEED_DATA
        n = min(available, self._chunk_left)
        view = buf.consume(n)
        self._chunk_left -= n
        self._chunk_size += n
        refusal = self._chunk_refusal
        if refusal is None:
            self._message_size += n
            if self._message_size > self.limits.max_message_size:
                self._body_error = self._body_error or R.MESSAGE_TOO_BIG
            elif n:
                self._events.append(BodyChunk(view))
        if self._chunk_left:
            return None
        if refusal is not None:
            self.state = self._return_state
            raise LocalProtocolError(refusal)
        self._check_group_end()
        self._await_body_reply()
        self._events.append(BodyEnd(self._chunk_size, self._chunk_last, self._body_error))
        return None

    def _read_body(self) -> Event | Sentinel | None:
        buf = self.buffer
        if buf.end == buf.start:
            return NEED_DATA
        streamer = self._streamer
        assert streamer is not None
        chunks, consumed, done = streamer.feed(buf.view())
        buf.start += consumed
        events = self._events
        for chunk in chunks:
            events.append(BodyChunk(chunk))
        if done:
            self._chunk_last = True
            self._check_group_end()
            self._await_body_reply()
            events.append(BodyEnd(streamer.size, True, streamer.error))
        return None if events else NEED_DATA

    def _check_group_end(self) -> None:
        # RFC 2920 §3.1: the end of a message (DATA's dot, BDAT LAST) ends a group.
        if self._chunk_last and self.buffer.end > self.buffer.start and (
            self._sync_reject and not self._pipelining_offered
        ):
            raise LocalProtocolError(R.PIPELINING_VIOLATION, fatal=True)

    def _await_body_reply(self) -> None:
        self._awaiting = _BODY
        lmtp_last = self.features.lmtp and self._chunk_last
        self._replies_due = self._rcpt_count if lmtp_last else 1

    @property
    def replies_due(self) -> int:
        """Replies still owed for the message that just ended (LMTP: one per recipient)."""
        return self._replies_due if self._awaiting is _BODY else 0

    # -- replying -----------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        """Answer the event that is waiting (or greet, or send an unsolicited 421)."""
        command = self._awaiting
        code = reply.code
        # _queue, inlined: this is the hot path of every reply.
        self._out.append(reply._wire if self._enhanced else reply._wire_plain)
        if command is not None:
            verb = self._verb if command is not _SECRET else "AUTH"
        else:
            verb = "CONNECT" if self.state is _CONNECTED else "NONE"
        self.tallies.reply(verb, code)
        if code == 421:
            self._close()
            return
        if command is _BODY:
            self._body_replied(code)
            return
        if command is None:
            if self.state is _CONNECTED:
                if reply.code == 220:
                    self.state = AFTER_GREETING
                else:  # RFC 5321 §3.1: a 554 greeting; we close rather than wait for QUIT
                    self._close()
                return
            raise RuntimeError(f"no event is waiting for a reply (state {self.state.name})")
        if command is _SECRET:
            raise RuntimeError("SCRAM is waiting for supply_scram_secret(), not a reply")
        self._awaiting = None
        if code < 400:
            self._apply(command)
        elif command.verb == "AUTH":
            self.auth_failures += 1
            if self.auth_failures >= self.limits.max_auth_failures:
                self._queue("AUTH", R.TOO_MANY_AUTH_FAILURES)
                self._close()
        elif reply.code >= 500:
            self._count_error()

    def _apply(self, command: Command) -> None:
        verb = command.verb
        if verb in ("HELO", "EHLO", "LHLO"):
            name, esmtp = self._pending_hello
            self.helo, self.esmtp = name, esmtp
            self._enhanced = esmtp and self.features.enhancedstatuscodes
            self._reset_transaction()
        elif verb == "MAIL":
            params = self._pending_mail
            self._smtputf8 = params.smtputf8
            self._binarymime = params.body == "BINARYMIME"
        elif verb == "RCPT":
            self._rcpt_count += 1
        elif verb == "DATA":
            lim, pol = self.limits, self.policies
            self._streamer = DataStreamer(
                max_size=lim.max_message_size, bare_line_endings=pol.bare_line_endings,
                long_lines=pol.long_lines, max_text_line=lim.max_text_line,
            )
        elif verb == "RSET":
            self._reset_transaction()
        elif verb == "AUTH":
            self.authenticated = True
        elif verb == "XCLIENT":
            self.helo, self.esmtp, self._enhanced = None, False, False
            self._reset_transaction()
        elif verb == "STARTTLS":
            self.buffer.clear()
            self._overflow.clear()
        elif verb == "QUIT":
            self._close()
            return
        target = command.target(self.helo is not None)
        if target is not None:
            self.state = target

    def _body_replied(self, code: int) -> None:
        self._replies_due -= 1
        if self._replies_due > 0:
            return
        self._awaiting = None
        self._streamer = None
        if code < 400 and not self._chunk_last:
            self.state = AFTER_CHUNK
            return
        if code < 400:
            self.error_count = 0  # Postfix: the error budget is per message attempt
        self._reset_transaction()
        self.state = AFTER_MESSAGE

    def _reset_transaction(self) -> None:
        """Forget the mail transaction (RSET, HELO/EHLO, end of message, STARTTLS)."""
        self._smtputf8 = False
        self._binarymime = False
        self._rcpt_count = 0
        self._message_size = 0
        self._body_error = None
        if self.state in TRANSACTION:
            self.state = AFTER_RESET

    def _queue(self, verb: str, reply: Reply) -> None:
        """Queue a reply for the wire and count it under the verb it answers."""
        self._out.append(reply.encode(self._enhanced))
        self.tallies.reply(verb, reply.code)

    def take_counts(self) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
        """The tallies since the last call: commands by verb, replies by (verb answered,
        code // 100). The connection starts new ones."""
        return self.tallies.take()

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call, as one write."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def tls_established(self) -> None:
        """The adapter finished the STARTTLS handshake: restart the session (RFC 3207 §4.2).

        Bytes received before the 220 was queued were dropped then (the injection defence);
        bytes received since came through the TLS layer and are kept: a client may send
        its EHLO as soon as the handshake completes, before the adapter calls this.
        """
        if self.state is not _STARTTLS:
            raise RuntimeError("tls_established() without an accepted STARTTLS")
        self.tls_active = True
        self.helo, self.esmtp, self._enhanced, self.authenticated = None, False, False, False
        self._reset_transaction()
        self.state = AFTER_TLS

    # -- PROXY --------------------------------------------------------------------

    def _read_proxy(self) -> Event | Sentinel:
        self._verb = "PROXY"
        parsed = parse_proxy_header(self.buffer.view())
        if parsed is None:
            return NEED_DATA
        info, consumed = parsed
        self.buffer.consume(consumed)
        self.state = AFTER_PROXY
        self._early_talk = self.buffer.end > self.buffer.start
        return ProxyHeader(info)

    # -- replies the application builds from session facts ---------------------------

    def hello_reply(self, event: Helo, greeting: str = "") -> Reply:
        """The reply to HELO (one line) or EHLO/LHLO (the capability list)."""
        if not event.esmtp:
            return Reply(250, None, f"{self.hostname} {greeting}".rstrip())
        caps = ehlo_capabilities(self.features, self.limits, tls_active=self.tls_active,
                                 authenticated=self.authenticated, auth_requires_tls=self.auth_requires_tls)
        return R.ehlo_reply(self.hostname, greeting, caps)

    def greeting_reply(self, banner: str = "ESMTP smtpfront") -> Reply:
        """The 220 greeting (``LMTP`` replaces ``ESMTP`` in LMTP mode)."""
        if self.features.lmtp:
            banner = banner.replace("ESMTP", "LMTP")
        return Reply(220, None, f"{self.hostname} {banner}")


def _decode_line(line: bytearray) -> tuple[str, bool]:
    """A line that is not ASCII, as text: UTF-8 (RFC 6531), else with the bad octets escaped.

    Returns the text and whether it was invalid UTF-8 (refused once the verb is known:
    an unknown verb is refused as unknown first, as it always was).
    """
    try:
        return line.decode("utf-8"), False
    except UnicodeDecodeError:
        return line.decode("utf-8", "surrogateescape"), True


@functools.lru_cache(maxsize=16)
def _line_limits(limits: Limits) -> dict[str, int]:
    """Each verb's longest line, CRLF included (computed once per Limits)."""
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


_SIMPLE: dict[str, Event] = {"RSET": Rset(), "NOOP": Noop(), "QUIT": Quit()}
