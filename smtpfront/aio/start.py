"""``SessionStart``: one connection's start (PROXY header, greeting) and its TLS handshakes.

It owns what a session's start holds: the octets read before an implicit TLS handshake
(kept aside, not in the SMTP buffer, and handed to the TLS layer), the exact reading of a
PROXY header in front of implicit TLS, and the flag that says a handshake owns the transport.
It sends the greeting at once when nothing must be awaited before it, and otherwise opens the
session in the connection's task: the implicit TLS handshake, the reverse lookup, the pregreet
delay, ``on_connect`` (and ``on_secure``) through the middleware. It answers STARTTLS and runs
its handshake.

One per connection, made in ``connection_made`` once the core connection exists. While it
reads the connection's octets itself (before an implicit TLS handshake, or a PROXY header in
front of one), the protocol's ``early`` refers to it and ``get_buffer``/``buffer_updated``
hand their reads to it; after that ``early`` is ``None`` and a read costs the protocol one
attribute check, as before. Its interface to the protocol is narrow: a :class:`Host`
(``SMTPProtocol``) with the transport (replaced by the TLS one after a handshake), whether the
connection is closed or draining, ``early``, and ``flush``, ``close`` and ``end_session``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..core import replies as R
from ..core.connection import ServerConnection
from ..core.events import ProxyHeader, StartTls
from ..core.replies import Reply
from ..hooks import Session
from .decisions import Decisions, ask, constant
from .flow import Flow
from .timeouts import Deadline
from .tls import tls_facts

if TYPE_CHECKING:
    from .protocol import ServerState

__all__ = ["Host", "SessionStart"]

# The lines keep the logger they had when this was part of the protocol: same log lines.
log = logging.getLogger("smtpfront.aio.protocol")
_HANDSHAKE_GRACE = 1.0  # seconds a TLS handshake under way at a graceful stop may still take


class Host(Protocol):
    """What the session start needs of its connection (``SMTPProtocol``)."""

    transport: asyncio.Transport | None  # the TLS transport replaces it after a handshake
    closed: bool
    draining: bool  # a graceful stop came: greeted (or secured), then 421
    early: SessionStart | None  # get_buffer/buffer_updated hand reads to the session start

    def flush(self) -> None:
        """Write the replies queued in the core."""

    def close(self) -> None:
        """Close the transport (once)."""

    def end_session(self) -> None:
        """Release the session (once), whether or not the transport reports the loss."""


class SessionStart:
    """The start of one connection: PROXY reading, greeting, implicit TLS and STARTTLS."""

    __slots__ = ("host", "conn", "session", "deadline", "flow", "decisions", "emit", "state", "settings",
                 "hooks", "loop", "accepted", "reads_early", "pre_tls", "spare", "handshaking")

    def __init__(self, host: Host, conn: ServerConnection, session: Session, deadline: Deadline, flow: Flow,
                 decisions: Decisions, state: ServerState, emit: Callable[..., None], accepted: float,
                 expect_proxy: bool) -> None:
        self.host = host
        self.conn = conn
        self.session = session
        self.deadline = deadline
        self.flow = flow
        self.decisions = decisions
        self.emit = emit
        self.state = state
        self.settings = settings = state.settings
        self.hooks = state.hooks
        self.loop = asyncio.get_running_loop()
        self.accepted = accepted  # the loop's time at connection_made: the greeting's latency
        self.pre_tls: bytearray | None = None  # implicit TLS: octets read before start_tls
        self.spare = memoryview(b"")
        self.handshaking = False  # start_tls owns the transport's callbacks
        if settings.implicit_tls and settings.tls_context is not None and not expect_proxy:
            # uvloop starts reading right after connection_made even if the protocol paused
            # there, so the start of the ClientHello may be read before start_tls takes the
            # transport over. Such octets are kept aside (not in the SMTP buffer, where they
            # would count as early talk) and handed to the TLS layer in handshake().
            self.pre_tls = bytearray()
            self.spare = memoryview(bytearray(16 * 1024))
        # Implicit TLS behind a proxy: read the PROXY header exactly, so not one byte of the
        # TLS ClientHello lands in our buffer (the TLS layer must see all of it).
        self.reads_early = self.pre_tls is not None or (expect_proxy and settings.implicit_tls)

    # -- reading before the session proper (while the host's ``early`` is this) -----------------

    def get_buffer(self) -> memoryview:
        if self.pre_tls is not None:
            return self.spare
        room = self.conn.writable()
        return room[: _proxy_bytes_wanted(bytes(self.conn.buffer.view()))]

    def keep(self, nbytes: int) -> bool:
        """Octets read before the TLS handshake: kept aside (True), or SMTP's (the PROXY header)."""
        if self.pre_tls is None:
            return False
        self.pre_tls += self.spare[:nbytes]
        if self.host.transport is not None:
            self.host.transport.pause_reading()  # effective now that the transport reads
        return True

    # -- the greeting ---------------------------------------------------------------------------

    def proxy(self, event: ProxyHeader) -> Coroutine[Any, Any, None] | None:
        """The PROXY header: the client's own address (and its trust); then the session opens."""
        info = event.info
        self.host.early = None  # the header is read: no more exact reading
        self.session.proxy = info
        if not info.local and info.source_address is not None:
            self.session.client_address = info.source_address
            self.session.client_port = info.source_port or 0
            # Trust (XCLIENT, XFORWARD) is the client's own, not the proxy's (ARCHITECTURE.md rule 9).
            self.conn.use_features(self.settings.features_for(self.session.client_address))
        return None if self.greet_now() else self.open_session()

    def greet_now(self) -> bool:
        """Send the greeting at once when nothing must be awaited before it (no TLS handshake,
        reverse lookup, pregreet delay, on_connect hook or middleware): no task per connection."""
        settings, hooks = self.settings, self.hooks
        if ((settings.implicit_tls and settings.tls_context is not None) or settings.reverse_lookup
                or settings.timeouts.greeting_delay or hooks.middleware or hooks.implements("on_connect")):
            return False
        self.conn.send(self.conn.greeting_reply(settings.banner))
        self.state.instruments.greeting.observe(self.loop.time() - self.accepted)
        self.deadline.arm(settings.timeouts.idle)
        return True

    async def open_session(self) -> None:
        settings = self.settings
        if settings.implicit_tls and settings.tls_context is not None and not await self.handshake():
            return
        if settings.reverse_lookup:
            self.session.client_name = await self._reverse_lookup()
        if settings.timeouts.greeting_delay:
            await asyncio.sleep(settings.timeouts.greeting_delay)
        reply = await self.decisions.decide("CONNECT", None, self._connect_hook)
        self.conn.send(reply)
        self.state.instruments.greeting.observe(self.loop.time() - self.accepted)
        if reply.code != 220:
            self.emit("reject", self.session, reply)
        elif self.host.draining:  # a graceful stop came during the handshake: greeted, then drained
            self.conn.send(R.SHUTTING_DOWN)
        self.deadline.arm(settings.timeouts.idle)

    async def _connect_hook(self) -> Reply:
        if self.hooks.implements("on_connect"):
            result = await ask(self.hooks, "on_connect", self.session)
            if isinstance(result, Reply):
                return result
        if self.session.tls and self.hooks.implements("on_secure"):
            result = await ask(self.hooks, "on_secure", self.session)
            if isinstance(result, Reply):
                return result
        return self.conn.greeting_reply(self.settings.banner)

    async def _reverse_lookup(self) -> str | None:
        try:
            name, _ = await asyncio.wait_for(
                self.loop.getnameinfo((self.session.client_address, 0), socket.NI_NAMEREQD),
                self.settings.timeouts.reverse_lookup,
            )
            return str(name)
        except (TimeoutError, OSError):
            return None

    # -- STARTTLS and the handshake ---------------------------------------------------------------

    async def starttls(self, event: StartTls) -> None:
        reply = await self.decisions.decide("STARTTLS", event, constant(R.READY_TO_START_TLS))
        self.conn.send(reply)
        self.host.flush()
        if not reply.is_positive:
            return
        if await self.handshake():
            self.conn.tls_established()  # drops anything pipelined before the handshake
            if self.host.draining:  # a graceful stop came during the handshake: 421, inside TLS now
                self.conn.send(R.SHUTTING_DOWN)
                return
            self.session.helo, self.session.esmtp = None, False
            self.session.reset_transaction()
            if self.hooks.implements("on_secure"):
                result = await ask(self.hooks, "on_secure", self.session)
                if isinstance(result, Reply) and not result.is_positive:
                    self.conn.send(R.Reply(421, result.enhanced, result.text))

    async def handshake(self) -> bool:
        """Run the TLS handshake on this transport (implicit TLS or after STARTTLS).

        However it fails (reset, EOF, not TLS, timeout, closed by a shutdown, cancelled),
        the session ends here, whether or not the TLS layer reports the lost connection.
        """
        done = False
        self.handshaking = True
        try:
            done = await self._start_tls()
        finally:
            self.handshaking = False
            if not done:
                self.host.close()
                self.host.end_session()
        return done

    async def _start_tls(self) -> bool:
        host = self.host
        assert host.transport is not None and self.settings.tls_context is not None
        # The host is the connection's BufferedProtocol: the TLS layer hands it the plain text.
        starting = self.loop.create_task(self.loop.start_tls(
            host.transport, cast(asyncio.BaseProtocol, host), self.settings.tls_context, server_side=True))
        if self.pre_tls is not None:
            # start_tls pauses the transport and installs its protocol in its first step,
            # which runs before this task resumes; until then octets still come here. Hand
            # them over before start_tls resumes reading (its callbacks come after this).
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:  # the connection was lost meanwhile
                starting.cancel()
                raise
            early, self.pre_tls, self.spare = self.pre_tls, None, memoryview(b"")
            host.early = None
            if early and not self._feed_tls(bytes(early)):
                starting.cancel()
                return False
        try:
            new = await asyncio.wait_for(starting, self.settings.timeouts.tls_handshake)
        except (TimeoutError, OSError, ConnectionError) as exc:
            log.info("session %s: TLS handshake failed: %s", self.session.id, exc)
            return False
        if new is None or new.is_closing() or host.closed:
            # An EOF during the handshake completes start_tls with an already closed transport.
            log.info("session %s: TLS handshake failed: connection closed", self.session.id)
            return False
        host.transport = new
        self.flow.switch(new)  # paused: the task that owns the connection resumes when it is done
        self.session.tls = tls_facts(new.get_extra_info("ssl_object"))
        self.emit("secure", self.session)
        return True

    def _feed_tls(self, data: bytes) -> bool:
        assert self.host.transport is not None
        tls: Any = self.host.transport.get_protocol()
        if tls is self.host or not hasattr(tls, "buffer_updated"):
            log.warning("session %s: cannot hand early TLS octets to the TLS layer", self.session.id)
            return False
        view = memoryview(data)
        while view:
            room = tls.get_buffer(len(view))
            n = min(len(room), len(view))
            room[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]
        return True

    def timed_out(self) -> None:
        """The deadline passed during a handshake: start_tls owns the transport, so no plain-text reply."""
        log.info("session %s: TLS handshake not finished in time", self.session.id)
        self.host.close()

    def grace(self) -> None:
        """A graceful stop during a handshake (there is no transaction yet).

        A handshake that goes on gets a moment to finish (the kernel gave this worker the
        connection just before the stop, as in a reload): the client is then greeted and told
        421 inside TLS. One that stalls is closed when the moment is over, without a plain-text
        421 inside the TLS stream.
        """
        self.deadline.arm(min(_HANDSHAKE_GRACE, self.settings.timeouts.tls_handshake))


def _proxy_bytes_wanted(have: bytes) -> int:
    """How many more octets can be read without reading past a PROXY header."""
    if len(have) < 12:
        return 12 - len(have)  # the v2 signature length; a v1 header is at least 15 octets
    if have.startswith(b"PROXY "):
        return 1  # v1 ends at CRLF: read it octet by octet (at most 107)
    if len(have) < 16:
        return 16 - len(have)
    return max(1, 16 + int.from_bytes(have[14:16], "big") - len(have))
