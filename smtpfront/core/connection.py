"""``ServerConnection``: the sans-IO SMTP/LMTP server session.

Push bytes in (:meth:`~ServerConnection.receive_data`, or :meth:`writable` +
:meth:`commit` to receive in place), pull events out (:meth:`next_event`), answer the
events that need a reply with :meth:`send`, and write what :meth:`data_to_send`
returns. The core never touches a socket, a clock or a logger.

Contract (h11's): :meth:`next_event` raises only :class:`RemoteProtocolError`, and only
for a violation that ends the session; its reply is already queued for sending. Client
mistakes that do not end the session come back as :class:`~events.Rejected` events with
their reply queued. Any other exception is a bug.

This module drives: it holds the receive buffer and what is queued either way, asks the
reader of the current state for the next event (``read_command.py``, ``read_sasl.py``,
``read_body.py``, ``read_chunk.py``, ``read_proxy.py``), and applies a reply: the verb's
handler (``verbs.py``, a column of the verb table) and the state its row names
(``states.py``). The session's facts (HELO name, ESMTP, TLS, AUTH, the transaction's) live
here, where the readers and handlers read and set them.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from . import replies as R
from .buffer import ReceiveBuffer
from .capabilities import ehlo_capabilities
from .errors import LocalProtocolError, RemoteProtocolError
from .events import BodyEnd, ConnectionClosed, Event, Helo, MailParams, Rejected
from .options import Features, Limits, Policies
from .read_body import BodyReader
from .read_chunk import ChunkReader
from .read_command import CommandReader
from .read_proxy import read_proxy
from .read_sasl import SaslReader
from .replies import Reply
from .sasl import ScramSecret
from .sentinels import NEED_DATA, PAUSED, Sentinel
from .states import (
    AFTER_CHUNK,
    AFTER_GREETING,
    AFTER_MESSAGE,
    AFTER_RESET,
    AFTER_TLS,
    BODY_REPLY,
    CLOSED,
    COMMAND_STATES,
    FAILED,
    SCRAM_SECRET,
    TRANSACTION,
    Command,
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

_FEATURES, _LIMITS, _POLICIES = Features(), Limits(), Policies()


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
        self.pipelining = self.features.pipelining
        self.helo: str | None = None
        self.authenticated = False
        self.closing = False  # a reply that ends the session is queued
        self.error_count = 0
        self.auth_failures = 0
        self.out: list[bytes] = []  # queued for the wire (data_to_send)
        self.tallies = Tallies()  # commands and replies, for the adapter's metrics (take_counts)
        # Events made ahead of the one returned (body chunks, a body's end): a list read
        # from _next (list operations compile to C calls; a deque's are method lookups).
        self.events: list[Event] = []
        self._next = 0
        self.verb = ""  # the verb of the line being answered (the tallies' key)
        self.awaiting: Command | None = None  # the row whose reply is awaited
        # What a positive reply to the awaited HELO/EHLO/LHLO or MAIL applies.
        self.pending_hello: tuple[str, bool] = ("", False)
        self.pending_mail = MailParams()
        self.enhanced = False
        self._eof = False
        self.early_talk = False
        self.overflow: deque[memoryview] = deque()  # received bytes the buffer had no room for
        self.disabled = features.disabled
        self.sync_reject = policies.unauthorized_pipelining == "reject"
        # One reader per state that reads something (read_*.py), each owning its own progress.
        self.command_reader = CommandReader(limits)
        self.sasl_reader = SaslReader(sasl_nonce)
        self.body_reader = BodyReader()
        self.chunk_reader = ChunkReader()
        # The message under way: whether its body ended with this chunk (DATA's dot, BDAT
        # LAST), the replies it is owed, its size so far and what already refuses it.
        self.chunk_last = False
        self._replies_due = 0
        self.message_size = 0
        self.body_error: Reply | None = None
        # The transaction's declarations (MAIL's SMTPUTF8 and BODY) and its recipients.
        self.smtputf8 = False
        self.binarymime = False
        self.rcpt_count = 0

    def use_features(self, features: Features) -> None:
        """Offer ``features`` from now on, in place of those given at construction.

        For the moment a PROXY header has named the client: what a client may use (XCLIENT,
        XFORWARD) is judged on its own address, never on the proxy's. Only before the
        greeting; a later change of what was offered is a bug in the caller.
        """
        if self.state is not _CONNECTED:
            raise RuntimeError("features can change only before the greeting")
        self.features = features
        self.pipelining = features.pipelining
        self.disabled = features.disabled

    # -- receiving ----------------------------------------------------------------

    def writable(self) -> memoryview:
        """Where to receive next (``BufferedProtocol.get_buffer``); empty means stop reading."""
        return self.buffer.writable()

    def commit(self, n: int) -> None:
        """Record ``n`` octets received into :meth:`writable` (``buffer_updated``)."""
        self.buffer.commit(n)
        if self.state is _CONNECTED:
            self.early_talk = True

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self.overflow:
            self.overflow.append(memoryview(bytes(data)))
            return
        taken = self.buffer.feed(data)
        if self.state is _CONNECTED:
            self.early_talk = True
        if taken < len(data):
            self.overflow.append(memoryview(bytes(data))[taken:])

    def _refill(self) -> bool:
        """Move bytes held by :meth:`receive_data` into the buffer; True if any moved."""
        moved = False
        overflow = self.overflow
        while overflow:
            head = overflow[0]
            taken = self.buffer.feed(head)
            if not taken:
                break
            moved = True
            if taken < len(head):
                overflow[0] = head[taken:]
                break
            overflow.popleft()
        return moved

    # -- events -------------------------------------------------------------------

    def next_event(self) -> Event | Sentinel:
        """The next event, ``NEED_DATA``, or ``PAUSED`` (a reply is awaited).

        Raises:
            RemoteProtocolError: the session must end; the reply is already queued.
        """
        while True:
            events = self.events
            if events:
                ready = events[self._next]
                self._next += 1
                if self._next == len(events):
                    events.clear()
                    self._next = 0
                return ready
            if self.awaiting is not None:
                return PAUSED
            state = self.state
            try:
                if state is _DATA:
                    event = self.body_reader.read(self)
                elif state is _BDAT:
                    event = self.chunk_reader.read(self)
                elif state in COMMAND_STATES:
                    event = self.command_reader.read(self)
                elif state is _AUTH:
                    event = self.sasl_reader.read(self)
                elif state is _PROXY:
                    event = read_proxy(self)
                elif state is _ERROR:
                    raise RemoteProtocolError(R.BAD_SEQUENCE, fatal=True)
                elif state is _STARTTLS:
                    # Plaintext leftovers were dropped when the 220 was queued; what arrives
                    # now is the TLS layer's, and waits for tls_established().
                    return NEED_DATA
                else:  # CONNECTED, CLOSED
                    event = NEED_DATA
            except LocalProtocolError as exc:
                event = self._refuse(self.verb, exc)
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
        self.queue_reply(verb or "UNKNOWN", reply)
        if exc.fatal or reply.code == 421:
            self.end_session()
            self.state = FAILED
            raise RemoteProtocolError(reply, fatal=True)
        if reply.code >= 500 and self.count_error():
            raise RemoteProtocolError(R.TOO_MANY_ERRORS, fatal=True)
        return Rejected(verb, reply)

    def count_error(self) -> bool:
        """Count one client error; at the limit queue 421 and return True."""
        self.error_count += 1
        if self.error_count < self.limits.max_errors:
            return False
        self.queue_reply(self.verb or "UNKNOWN", R.TOO_MANY_ERRORS)
        self.end_session()
        return True

    def end_session(self) -> None:
        """A reply that ends the session is queued (QUIT's 221, a 421): nothing more is read."""
        self.closing = True
        self.state = CLOSED
        self.awaiting = None

    def supply_scram_secret(self, secret: ScramSecret | None) -> None:
        """Answer :class:`AuthSecretNeeded` with the user's stored secret (None: unknown user)."""
        if self.awaiting is not SCRAM_SECRET or self.sasl_reader.mechanism is None:
            raise RuntimeError("no SCRAM exchange is waiting for a secret")
        self.awaiting = None
        event = self.sasl_reader.supply_secret(self, secret)
        if event is not None:
            self.events.append(event)

    # -- bodies -------------------------------------------------------------------

    def end_body(self, size: int, error: Reply | None) -> None:
        """A body (DATA's, or a BDAT chunk) ended: queue its :class:`BodyEnd` and await the reply."""
        # RFC 2920 §3.1: the end of a message (DATA's dot, BDAT LAST) ends a group.
        last = self.chunk_last
        if last and self.buffer.end > self.buffer.start and (
            self.sync_reject and not (self.esmtp and self.pipelining)
        ):
            raise LocalProtocolError(R.PIPELINING_VIOLATION, fatal=True)
        self.awaiting = BODY_REPLY
        self._replies_due = self.rcpt_count if self.features.lmtp and last else 1
        self.events.append(BodyEnd(size, last, error))

    @property
    def replies_due(self) -> int:
        """Replies still owed for the message that just ended (LMTP: one per recipient)."""
        return self._replies_due if self.awaiting is BODY_REPLY else 0

    # -- replying -----------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        """Answer the event that is waiting (or greet, or send an unsolicited 421)."""
        command = self.awaiting
        code = reply.code
        # queue_reply, inlined: this is the hot path of every reply.
        self.out.append(reply._wire if self.enhanced else reply._wire_plain)
        if command is not None:
            verb = self.verb if command is not SCRAM_SECRET else "AUTH"
        else:
            verb = "CONNECT" if self.state is _CONNECTED else "NONE"
        self.tallies.reply(verb, code)
        if code == 421:
            self.end_session()
            return
        if command is BODY_REPLY:
            self._body_replied(code)
            return
        if command is None:
            if self.state is _CONNECTED:
                if reply.code == 220:
                    self.state = AFTER_GREETING
                else:  # RFC 5321 §3.1: a 554 greeting; we close rather than wait for QUIT
                    self.end_session()
                return
            raise RuntimeError(f"no event is waiting for a reply (state {self.state.name})")
        if command is SCRAM_SECRET:
            raise RuntimeError("SCRAM is waiting for supply_scram_secret(), not a reply")
        self.awaiting = None
        if code < 400:
            # The verb's row: its handler applies what the reply accepted, then its next state.
            command.handler.apply(self)
            target = command.target(self.helo is not None)
            if target is not None:
                self.state = target
        else:
            command.handler.refused(self, code)  # a failed AUTH, or one more client error

    def _body_replied(self, code: int) -> None:
        self._replies_due -= 1
        if self._replies_due > 0:
            return
        self.awaiting = None
        self.body_reader.finish()
        if code < 400 and not self.chunk_last:
            self.state = AFTER_CHUNK
            return
        if code < 400:
            self.error_count = 0  # Postfix: the error budget is per message attempt
        self.reset_transaction()
        self.state = AFTER_MESSAGE

    def reset_transaction(self) -> None:
        """Forget the mail transaction (RSET, HELO/EHLO, end of message, STARTTLS)."""
        self.smtputf8 = False
        self.binarymime = False
        self.rcpt_count = 0
        self.message_size = 0
        self.body_error = None
        if self.state in TRANSACTION:
            self.state = AFTER_RESET

    def queue_reply(self, verb: str, reply: Reply) -> None:
        """Queue a reply for the wire and count it under the verb it answers."""
        self.out.append(reply.encode(self.enhanced))
        self.tallies.reply(verb, reply.code)

    def take_counts(self) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
        """The tallies since the last call: commands by verb, replies by (verb answered,
        code // 100). The connection starts new ones."""
        return self.tallies.take()

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call, as one write."""
        out = self.out
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
        self.helo, self.esmtp, self.enhanced, self.authenticated = None, False, False, False
        self.reset_transaction()
        self.state = AFTER_TLS

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
