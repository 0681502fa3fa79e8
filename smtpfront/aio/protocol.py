"""``SMTPProtocol``: the asyncio ``BufferedProtocol`` that drives one sans-IO connection.

uvloop (or asyncio) reads straight into the core's receive buffer (``get_buffer``). Each
read is turned into events; events that need no waiting are answered at once, and all
replies produced by one read go out in one write. The greeting, a message's commit and a
session's end need no task when no hook or middleware waits on them: the greeting goes out
from ``connection_made``, a commit is a callback on the sink's future bounded by the
connection's own deadline (the client's next commands wait in the receive buffer), and a
session ends with its ``close`` event. An event that needs a hook, backpressure or a TLS
handshake pauses reading and runs in one task per connection, which then carries on with
whatever the client pipelined meanwhile.

Rules: the core's memoryviews are only valid until the next ``next_event()``, so body
chunks are handed to the sink synchronously; every wait has a timeout; an unexpected
exception is logged with its traceback, answered with ``421 4.3.0``, and closes this one
connection only.

Objects that own their state, one per connection: the session start (PROXY reading, greeting,
implicit TLS and STARTTLS handshakes, the octets read before TLS: ``start.py``), the message
transaction (writer, envelope, body stream, commit and replies: ``transaction.py``), flow
control (``flow.py``), the middleware and hook decisions (``decisions.py``), the deadline
(``timeouts.py``); the body stream (``body.py``) and the tallies (``tally.py``) are apart too.
The protocol holds direct references to them, so a command or body chunk costs no extra call
layer; a read costs one check (``early``, set only while the session start reads the octets).

Size (house rule 11, about 600 lines): what remains is the one mapping from core events to
hooks, sink and replies, one short handler per event type, with the asyncio callbacks, the
pump, the session budgets, graceful close and the session's end. They stay together: they
share the pump's state (``busy``, the task, ``closed``, the budgets) and run for every command,
so splitting them further would put a call layer between the pump and each handler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, cast

from ..core import replies as R
from ..core.connection import NEED_DATA, PAUSED, ServerConnection
from ..core.errors import RemoteProtocolError
from ..core.events import (
    Address,
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
    Noop,
    ProxyHeader,
    Quit,
    RcptTo,
    Recipient,
    Rejected,
    Rset,
    StartTls,
    Vrfy,
    Xclient,
    Xforward,
)
from ..core.replies import Reply
from ..core.states import State
from ..hooks import HookChain, Listeners, Session
from ..metrics import instruments
from ..sink.base import Envelope, Sink
from . import budgets
from .decisions import Decisions
from .flow import Flow
from .sessionlog import debug_command, debug_enabled, debug_replies
from .settings import ListenerSettings, in_networks
from .start import SessionStart
from .tally import Tally
from .timeouts import Deadline
from .transaction import Transaction

__all__ = ["SMTPProtocol", "ServerState"]

log = logging.getLogger(__name__)
_ids = itertools.count(1)
_PID = os.getpid()


def _after_fork() -> None:
    """Session ids start with the pid: a pre-forked worker must use its own."""
    global _PID, _ids
    _PID, _ids = os.getpid(), itertools.count(1)


os.register_at_fork(after_in_child=_after_fork)
_IDLE_STATES = frozenset({State.CONNECTED, State.INIT, State.IDLE, State.PROXY})
_BODY_STATES = frozenset({State.DATA, State.BDAT})


class ServerState:
    """What a worker's connections share: settings, hooks, sink, the open connections."""

    def __init__(self, settings: ListenerSettings, hooks: HookChain, sink: Sink, listeners: Listeners,
                 trace: Callable[[Envelope, str], bytes]) -> None:
        self.settings = settings
        self.hooks = hooks
        self.sink = sink
        self.listeners = listeners
        self.trace = trace  # builds the Received: header for an envelope
        self.instruments = instruments()  # after the fork: each worker writes its own metric files
        self.tally = Tally(self.instruments)
        self.connections: set[SMTPProtocol] = set()
        self.closing = False
        self.messages_accepted = 0


class SMTPProtocol(asyncio.BufferedProtocol):
    """One SMTP/LMTP connection on a worker."""

    __deletable__ = ("message", "start", "decisions", "deadline")  # mypyc: _let_go() drops them

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.settings = state.settings
        self.hooks = state.hooks
        self.transport: asyncio.Transport | None = None
        self.conn: ServerConnection
        self.session: Session
        self.loop = asyncio.get_running_loop()
        self.busy = False  # a task owns the connection (hook, sink, TLS)
        self._task: asyncio.Task[None] | None = None
        self.flow = Flow()  # aio/flow.py: reading paused or resumed
        self.closed = False
        self.deadline = Deadline(self.loop, self._timed_out, state.settings.timeouts.idle)
        self.draining = False
        self.start: SessionStart  # aio/start.py: PROXY reading, greeting, implicit TLS and STARTTLS
        self.early: SessionStart | None = None  # the start reads the octets (before TLS, a PROXY header)

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        settings, state = self.settings, self.state
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        if isinstance(peer, str):  # a UNIX socket
            peer, local = (peer, 0), (local, 0)
        self.session = Session(
            id=f"{_PID:x}{next(_ids):07x}", client_address=str(peer[0]), client_port=int(peer[1]),
            local_address=str(local[0]), local_port=int(local[1]), lmtp=settings.features.lmtp,
        )
        m = state.instruments
        m.connections.inc()
        if state.closing or (settings.max_clients and len(state.connections) >= settings.max_clients):
            (m.refused_closing if state.closing else m.refused_full).inc()
            transport.write(R.TOO_MANY_CONNECTIONS.encode(False) if not state.closing
                            else R.SHUTTING_DOWN.encode(False))
            transport.close()
            self.closed = True
            return
        state.connections.add(self)
        m.active.inc()
        state.tally.watch(state.connections)
        self._accepted = self.loop.time()
        self._debug = debug_enabled()
        expect_proxy = in_networks(self.session.client_address, settings.proxy_networks)
        # With implicit TLS the handshake comes before any SMTP octet: the session is
        # encrypted from its first command (AUTH offered, require_tls satisfied).
        self.conn = ServerConnection(
            hostname=settings.hostname, features=settings.features_for(self.session.client_address),
            limits=settings.limits, policies=settings.policies, buffer_size=settings.buffer_size,
            expect_proxy=expect_proxy, tls_active=settings.implicit_tls, require_tls=settings.require_tls,
            require_auth=settings.require_auth, auth_requires_tls=not settings.allow_insecure_auth,
        )
        self.flow.start(transport, self.conn)
        self.decisions = Decisions(self.hooks, self.session, self.conn, self.emit, settings.timeouts.hook)
        self.message = Transaction(self, self.conn, self.session, self.deadline, state, self.emit)
        self.start = start = SessionStart(self, self.conn, self.session, self.deadline, self.flow, self.decisions,
                                          state, self.emit, self._accepted, expect_proxy)
        self.early = start if start.reads_early else None
        self.deadline.arm(settings.timeouts.greeting)
        self.emit("connect", self.session)
        if not expect_proxy:
            if start.greet_now():
                self.flush()
            else:
                self._run(start.open_session())

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.early is not None:  # before implicit TLS, or a PROXY header in front of it
            return self.early.get_buffer()
        room = self.conn.writable()
        if not room:
            # Cannot happen while reading is paused whenever the buffer fills (below); if it
            # does, the octets read into the spare are lost, so the session must end.
            self._overrun = True
            return memoryview(bytearray(1024))
        return room

    _overrun = False
    _debug = False

    def buffer_updated(self, nbytes: int) -> None:
        if self.early is not None and self.early.keep(nbytes):
            return  # kept aside for the TLS layer
        if self._overrun:
            log.error("session %s: receive buffer overrun", self.session.id)
            self.crash()
            return
        self.conn.commit(nbytes)
        if not self.busy:
            self._pump()
        elif not self.conn.buffer.free and not self.conn.buffer.start:
            self.flow.pause_reading()  # full while a task works: wait for it

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        if not self.busy:
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.stop()
        self.end_session()

    def end_session(self) -> None:
        """Release the session, once: the gauge, ``max_clients`` and the drain see it gone.

        ``connection_lost`` ends it, and so does a TLS handshake that did not finish
        (``SessionStart.handshake``): from ``start_tls`` on the TLS layer owns the transport's callbacks,
        and it passes ``connection_lost`` on for a handshake it gave up (timeout, not TLS)
        but not for a connection reset or closed by the client mid-handshake.
        """
        if self not in self.state.connections:
            return  # ended already, or refused at connect (max_clients, shutting down)
        self.state.connections.discard(self)
        self.state.instruments.active.dec()
        self.state.tally.session_ended(self.conn, self.session.tls is not None, self.session.user is not None)
        self.deadline.cancel()
        message = self.message
        if self._task is not None or message.data_task is not None:
            current = asyncio.current_task()
            for task in (self._task, message.data_task):
                if task is not None and not task.done() and task is not current:
                    task.cancel()
        if message.writer is None and message.data_task is None and not self.hooks.implements("on_close"):
            self.emit("close", self.session)  # nothing to abandon or to ask: no task
            if self._task is None:
                self._let_go()
        else:
            self.loop.create_task(self._finish_session())

    def _let_go(self) -> None:
        """Nothing runs for this ended session any more: drop the parts that refer back to the
        protocol (the transaction, the session start, the decisions and the deadline each hold
        it), so that reference counting frees the connection as soon as the loop lets go of it.
        Left in a cycle, each connection waited for the cycle collector: ~5 % of a
        one-message connection's CPU (perf), and its memory meanwhile."""
        self.early = None
        del self.message, self.start, self.decisions, self.deadline

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing(self.busy)

    # -- the event loop of one connection --------------------------------------------------

    def _pump(self) -> None:
        """Handle events until the core needs bytes or a handler needs to wait."""
        conn = self.conn
        handled = False
        try:
            while not self.closed:
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
                handled = True
                if self._debug:
                    debug_command(self.session, cast(Event, event))
                pending = self._HANDLERS[type(event)](self, event)
                if pending is not None:
                    # The task's own pump writes the replies queued so far together with
                    # its own: one write per read (ARCHITECTURE.md, performance facts), not one per step.
                    self._run(pending)
                    return
        except RemoteProtocolError as exc:
            self.emit("reject", self.session, exc.reply)
            self.flush()
            self.close()
            return
        except Exception:
            self.crash()
            return
        self.flush()
        if conn.closing:
            self.close()
        elif not self.busy:
            if handled and conn.state is not State.DATA and conn.state is not State.BDAT:
                self._touch()  # a whole command arrived: the idle clock restarts
            self.flow.resume_reading()

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        """Let a task own the connection until ``work`` is done, then carry on."""
        self.busy = True
        self.flow.pause_reading()
        self.deadline.suspend()  # the client is not at fault while we work
        self._task = self.loop.create_task(self._owned(work))

    async def _owned(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            self.crash()
            return
        self.busy = False
        self._task = None
        if self.closed:
            return
        if self.conn.state not in _BODY_STATES:
            self._touch()
        elif self.deadline.suspended:
            # Inside a body the DATA allowance (extended by min_data_rate) applies, not the
            # idle timeout; after a pause on our side the client gets a fresh allowance.
            self.deadline.arm(self.settings.timeouts.data)
        self._pump()

    def crash(self) -> None:
        """A bug: log it, tell the client to retry later, close this connection only."""
        log.exception("unexpected error in session %s", self.session.id)
        self.emit("error", self.session)
        if self.transport is not None and not self.closed:
            self.flush()
            try:  # through the core, so an EHLO session gets its enhanced code
                self.conn.send(_INTERNAL_ERROR)
                data = self.conn.data_to_send()
            except Exception:  # the core itself failed: plain bytes
                data = _INTERNAL_ERROR.encode(False)
            self.transport.write(data)
        self.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self._debug:
            debug_replies(self.session, data)
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.flow.stop()
            self.transport.close()

    # -- deadlines (aio/timeouts.py) ----------------------------------------------------

    def _touch(self) -> None:
        """A whole command arrived (or the server finished working): the idle clock restarts."""
        self.deadline.arm(self.settings.timeouts.idle)

    def _timed_out(self) -> None:
        if self.closed:
            return
        if self.start.handshaking:  # start_tls owns the transport: no plain-text reply into it
            self.start.timed_out()
            return
        if self.message.committing is not None:
            self.message.commit_timed_out()  # the queue did not answer in time: 451, the session goes on
            return
        log.info("session %s timed out in state %s", self.session.id, self.conn.state.name)
        self.emit("reject", self.session, R.TIMEOUT)
        self.conn.send(R.TIMEOUT)
        self.flush()
        self.close()

    # -- handlers: one per event type --------------------------------------------------------

    def _on_proxy(self, event: ProxyHeader) -> Coroutine[Any, Any, None] | None:
        return self.start.proxy(event)

    def _on_helo(self, event: Helo) -> Coroutine[Any, Any, None] | None:
        refusal = self._idle_command()
        if refusal is not None:
            return self._over_budget(refusal)

        def apply(reply: Reply, _: object) -> None:
            if reply.is_positive:
                self.session.helo, self.session.esmtp = event.hostname, event.esmtp
                self.session.reset_transaction()
                self.emit("helo", self.session)

        return self.decisions.answer(event.verb, event, self.conn.hello_reply(event), "on_helo", self.session,
                            event.hostname, apply=apply)

    def _on_mail(self, event: MailFrom) -> Coroutine[Any, Any, None] | None:
        self._idle_commands = 0  # a transaction starts: the idle-command run ends
        if self.loop.time() - self._accepted > self.settings.session_duration:
            return self._over_budget(budgets.SESSION_TOO_LONG)
        if self.state.sink.full:
            # Load shedding (DESIGN rule 5): the queue is past its high-water mark. RFC 5321
            # §4.2.2: 452 "insufficient system storage" asks the client to retry later.
            self.conn.send(R.INSUFFICIENT_STORAGE)
            self.emit("reject", self.session, R.INSUFFICIENT_STORAGE)
            return None
        def apply(reply: Reply, rewritten: object) -> None:
            if reply.is_positive:
                self.session.mail_from = rewritten if isinstance(rewritten, Address) else event.address
                self.session.mail_params = event.params

        return self.decisions.answer("MAIL", event, R.SENDER_OK, "on_mail_from", self.session, event.address,
                            event.params, apply=apply)

    def _on_rcpt(self, event: RcptTo) -> Coroutine[Any, Any, None] | None:
        def apply(reply: Reply, rewritten: object) -> None:
            if reply.is_positive:
                address = rewritten if isinstance(rewritten, Address) else event.address
                self.session.recipients.append(Recipient(address, event.params))

        return self.decisions.answer("RCPT", event, R.RECIPIENT_OK, "on_rcpt_to", self.session, event.address,
                            event.params, apply=apply)

    def _on_simple(self, event: Event) -> Coroutine[Any, Any, None] | None:
        verb, reply = _SIMPLE[type(event)]
        if verb != "QUIT":
            refusal = self._idle_command()
            if refusal is not None:
                return self._over_budget(refusal)
        return self.decisions.answer(verb, event, reply, None, apply=self._after_rset if verb == "RSET" else None)

    _idle_commands = 0  # RSET/NOOP/VRFY/HELP and HELO/EHLO since the last MAIL
    _messages = 0  # messages accepted in this session

    def _idle_command(self) -> Reply | None:
        """RSET/NOOP/VRFY/HELP or HELO/EHLO: one more in the run without MAIL; the budget it spends."""
        self._idle_commands += 1
        if self._idle_commands > self.settings.idle_commands:
            return budgets.TOO_MANY_IDLE_COMMANDS
        if self.loop.time() - self._accepted > self.settings.session_duration:
            return budgets.SESSION_TOO_LONG
        return None

    def _over_budget(self, reply: Reply) -> Coroutine[Any, Any, None] | None:
        """A session budget is spent: 421 (the core closes after it), one reject line; nothing to await."""
        self.conn.send(reply)
        self.emit("reject", self.session, reply)
        return None

    def _after_rset(self, reply: Reply, _: object) -> None:
        if reply.is_positive:
            self.session.reset_transaction()

    def _on_data(self, event: Data) -> Coroutine[Any, Any, None] | None:
        return self._start_message("DATA", event)

    def _on_bdat(self, event: BdatChunk) -> Coroutine[Any, Any, None] | None:
        if event.first:
            return self._start_message("BDAT", event)
        return None

    def _start_message(self, verb: str, event: Event) -> Coroutine[Any, Any, None] | None:
        """DATA or the first BDAT: decide (a task only if a hook or middleware is asked), then begin."""
        if self.hooks.middleware or "on_data_start" in self.hooks.implemented:
            return self._decide_start(verb, event)
        self.message.begin(verb, R.START_DATA)
        return None

    async def _decide_start(self, verb: str, event: Event) -> None:
        async def inner() -> Reply:
            result = await self.hooks.ask("on_data_start", self.session)
            return result if isinstance(result, Reply) else R.START_DATA

        self.message.begin(verb, await self.decisions.decide(verb, event, inner))

    def _on_chunk(self, event: BodyChunk) -> Coroutine[Any, Any, None] | None:
        return self.message.on_chunk(event)

    def _on_body_end(self, event: BodyEnd) -> Coroutine[Any, Any, None] | None:
        return self.message.on_body_end(event)

    def message_ended(self, accepted: bool) -> None:
        """A message ended (its reply queued): a graceful stop says 421 now; the session's message budget."""
        if self.draining:
            self.conn.send(R.SHUTTING_DOWN)
        elif accepted and self.settings.messages_per_session:
            self._messages += 1
            if self._messages >= self.settings.messages_per_session:
                self._over_budget(budgets.TOO_MANY_MESSAGES)

    def resume(self) -> None:
        """The commit is answered: the connection carries on with what the client pipelined."""
        self.busy = False
        self._pump()

    def _on_starttls(self, event: StartTls) -> Coroutine[Any, Any, None] | None:
        return self.start.starttls(event)

    def _on_auth(self, event: AuthCredentials) -> Coroutine[Any, Any, None]:
        return self._auth(event)

    async def _auth(self, event: AuthCredentials) -> None:
        async def inner() -> Reply:
            result = await self.hooks.ask("on_auth", self.session, event.credentials)
            if isinstance(result, Reply):
                return result
            return R.AUTH_OK if result is True else R.AUTH_FAILED

        reply = await self.decisions.decide("AUTH", event, inner)
        if reply.code == 235:
            self.session.user = event.credentials.authzid or event.credentials.username
            self.emit("auth", self.session, event.credentials.username)
        else:
            self.emit("reject", self.session, reply)
            await asyncio.sleep(self.settings.auth_failure_delay)
        self.conn.send(reply)

    def _on_secret(self, event: AuthSecretNeeded) -> Coroutine[Any, Any, None]:
        return self._secret(event)

    async def _secret(self, event: AuthSecretNeeded) -> None:
        secret = await self.hooks.ask("scram_secret", self.session, event.username)
        self.conn.supply_scram_secret(secret)

    def _on_xclient(self, event: Xclient) -> Coroutine[Any, Any, None] | None:
        def apply(reply: Reply, _: object) -> None:
            if not reply.is_positive:
                return
            attrs, session = event.attributes, self.session
            session.xclient.update(attrs)
            if _known(attrs.get("ADDR")):
                session.client_address = attrs["ADDR"].removeprefix("IPV6:").removeprefix("ipv6:")
            if _known(attrs.get("PORT")) and attrs["PORT"].isdigit():
                session.client_port = int(attrs["PORT"])
            if _known(attrs.get("NAME")):
                session.client_name = attrs["NAME"]
            if _known(attrs.get("LOGIN")):
                session.user = attrs["LOGIN"]
            session.helo, session.esmtp = (attrs["HELO"] if _known(attrs.get("HELO")) else None), False
            session.reset_transaction()

        greeting = self.conn.greeting_reply(self.settings.banner)
        return self.decisions.answer("XCLIENT", event, greeting, None, apply=apply)

    def _on_xforward(self, event: Xforward) -> Coroutine[Any, Any, None] | None:
        def apply(reply: Reply, _: object) -> None:
            if reply.is_positive:
                self.session.xforward.update(event.attributes)

        return self.decisions.answer("XFORWARD", event, R.OK, None, apply=apply)

    def _on_rejected(self, event: Rejected) -> None:
        self.emit("reject", self.session, event.reply)

    def _on_closed(self, event: ConnectionClosed) -> None:
        self.close()

    # One handler per event type; filled in below the class (mypyc compiles this module, and a
    # class body it compiles cannot name its own methods).
    _HANDLERS: ClassVar[dict[type, Callable[[SMTPProtocol, Any], Coroutine[Any, Any, None] | None]]] = {}

    # -- the end -------------------------------------------------------------------------

    async def _finish_session(self) -> None:
        await self.message.abandon()
        try:
            await asyncio.wait_for(self.hooks.notify_close(self.session), self.settings.timeouts.hook)
        except Exception:
            log.exception("on_close failed for session %s", self.session.id)
        self.emit("close", self.session)

    def shutdown(self) -> None:
        """Graceful close: idle sessions get 421 now; a transaction may finish first."""
        if self.closed:
            return
        if self.start.handshaking:  # no transaction yet: the handshake gets a moment to finish
            self.draining = True
            self.start.grace()
        elif self.conn.state in _IDLE_STATES and not self.busy:
            self.conn.send(R.SHUTTING_DOWN)
            self.flush()
            self.close()
        else:
            self.draining = True

    def abort(self) -> None:
        """The graceful window is over: 421 and close, whatever the state."""
        if not self.closed:
            if not self.start.handshaking:
                self.conn.send(R.SHUTTING_DOWN)  # through the core: enhanced code only when offered
                self.flush()
            self.close()

    def emit(self, name: str, *args: object) -> None:
        for listener in self.state.listeners.get(name):
            self.loop.call_soon(_call_listener, listener, name, args)


SMTPProtocol._HANDLERS.update({
    ProxyHeader: SMTPProtocol._on_proxy, Helo: SMTPProtocol._on_helo, MailFrom: SMTPProtocol._on_mail,
    RcptTo: SMTPProtocol._on_rcpt, Data: SMTPProtocol._on_data, BdatChunk: SMTPProtocol._on_bdat,
    BodyChunk: SMTPProtocol._on_chunk, BodyEnd: SMTPProtocol._on_body_end, Rset: SMTPProtocol._on_simple,
    Noop: SMTPProtocol._on_simple, Quit: SMTPProtocol._on_simple, Vrfy: SMTPProtocol._on_simple,
    Help: SMTPProtocol._on_simple, StartTls: SMTPProtocol._on_starttls,
    AuthCredentials: SMTPProtocol._on_auth, AuthSecretNeeded: SMTPProtocol._on_secret,
    Xclient: SMTPProtocol._on_xclient, Xforward: SMTPProtocol._on_xforward,
    Rejected: SMTPProtocol._on_rejected, ConnectionClosed: SMTPProtocol._on_closed,
})


_INTERNAL_ERROR = Reply(421, "4.3.0", "Error: internal server error")
_SIMPLE: dict[type, tuple[str, Reply]] = {
    Rset: ("RSET", R.RESET_OK), Noop: ("NOOP", R.NOOP_OK), Quit: ("QUIT", R.BYE),
    Vrfy: ("VRFY", R.VRFY_CANNOT), Help: ("HELP", R.HELP),
}


def _known(value: str | None) -> bool:
    return value is not None and value.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]")


def _call_listener(listener: Callable[..., object], name: str, args: tuple[object, ...]) -> None:
    try:
        result = listener(*args)
        if result is not None and asyncio.iscoroutine(result):  # most listeners return None: no ABC check
            asyncio.get_running_loop().create_task(result)
    except Exception:
        log.exception("%r listener failed", name)

