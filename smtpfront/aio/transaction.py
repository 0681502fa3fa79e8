"""``Transaction``: one connection's message, from DATA (or the first BDAT) to its replies.

It owns what a message holds while it is received and committed: the sink's writer, the
message's :class:`~smtpfront.aio.budget.Account` in the worker's memory budget, the octets
written, the envelope, the body stream and task of an ``on_data`` hook, a BDAT refusal kept
for its chunk's end, and the commit waited on without a task. It ends a message with its
replies, counts it, tells the listeners, and gives up a writer when the message is refused,
the queue fails, or the session ends.

One per connection, made in ``connection_made`` once the core connection exists, and used
again for each message (nothing is allocated per message for it: the hot path, see
ARCHITECTURE.md "performance facts"). Its interface to the protocol is narrow: the core
connection it sends replies to, the session, the connection's :class:`Deadline`, the
listeners' ``emit``, and a :class:`Host` (``SMTPProtocol``) that says whether the connection
is closed and is told when the commit owns the connection (``busy``), when it may carry on
(``resume``), when a message ended (``message_ended``: the session's own budgets and a
graceful stop) and when a bug must close it (``crash``).

A message no hook needs to see is committed without a task or coroutine: the sink's future
gets a callback (:meth:`Transaction._committed`) and the connection's deadline bounds the wait
(:meth:`Transaction.commit_timed_out`); both end in :meth:`Transaction._commit_answered`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..core import replies as R
from ..core.connection import ServerConnection
from ..core.events import BodyChunk, BodyEnd, ProxyInfo
from ..core.replies import Reply
from ..hooks import Session
from ..logs import Throttle
from ..sink.base import Envelope, MessageWriter, SinkError, StorageFullError
from .body import BodyStream
from .budget import Account
from .decisions import ask
from .timeouts import Deadline

if TYPE_CHECKING:
    from .protocol import ServerState

__all__ = ["ACCEPT", "Host", "Transaction"]

# The lines keep the logger they had when this was part of the protocol: same log lines.
log = logging.getLogger("smtpfront.aio.protocol")
_QUEUE_TROUBLE = Throttle()  # a queue that is away fails every message: one line a second
ACCEPT = Reply(250, "2.0.0", "Ok")
START_DATA = R.START_DATA


class Host(Protocol):
    """What a transaction needs of its connection (``SMTPProtocol``)."""

    busy: bool  # the commit (or a task) owns the connection: the pump waits
    closed: bool

    def resume(self) -> None:
        """The commit is answered: not busy any more, handle what the client pipelined."""

    def message_ended(self, accepted: bool) -> None:
        """A message ended with its reply queued: a graceful stop, the session's budgets."""

    def crash(self) -> None:
        """A bug: 421 and close this connection."""


class Transaction:
    """The message of one connection: writer, envelope, body stream, commit and replies."""

    __slots__ = ("host", "conn", "session", "deadline", "emit", "state", "settings", "loop", "writer",
                 "account", "size", "envelope", "stream", "data_task", "refusal", "committing")

    def __init__(self, host: Host, conn: ServerConnection, session: Session, deadline: Deadline,
                 state: ServerState, emit: Callable[..., None]) -> None:
        self.host = host
        self.conn = conn
        self.session = session
        self.deadline = deadline
        self.emit = emit
        self.state = state
        self.settings = state.settings
        self.loop = asyncio.get_running_loop()
        self.writer: MessageWriter | None = None
        self.account: Account | None = None  # the message's octets in the worker's memory budget
        self.size = 0  # body octets handed to the writer
        self.envelope: Envelope | None = None
        self.stream: BodyStream | None = None  # the body for on_data
        self.data_task: asyncio.Task[Any] | None = None  # on_data
        self.refusal: Reply | None = None  # BDAT: a refusal answered at its chunk's end
        self.committing: tuple[asyncio.Future[str], BodyEnd, int, float, MessageWriter] | None = None

    # -- the start --------------------------------------------------------------------------

    def begin(self, verb: str, reply: Reply) -> None:
        """Open the sink and start ``on_data`` for a positive decision; answer DATA."""
        if reply.is_positive:
            try:
                envelope = self._make_envelope()
                self.writer = self.state.sink.open(envelope)
                self.account = self.settings.budget.open(self.writer)  # aio/budget.py
                self.size = 0
                self.envelope = envelope
            except (SinkError, OSError) as exc:
                _QUEUE_TROUBLE.warning(log, "session %s: queue refused a new message: %s", self.session.id, exc)
                reply = queue_refusal(exc)
        if reply.is_positive and "on_data" in self.state.hooks.implemented:
            self.stream = BodyStream(self.settings.body_stream_limit)
            self.data_task = self.loop.create_task(ask(self.state.hooks, "on_data", self.session, self.stream))
        if verb == "DATA":
            self.conn.send(reply if not reply.is_positive or reply.code == 354 else START_DATA)
            if not reply.is_positive:
                self._count_outcome(reply)  # the message ends here (BDAT's ends at its chunk)
        elif not reply.is_positive:
            # BDAT has no reply before its chunk: remember the refusal for the chunk's end.
            self.refusal = reply
        self.deadline.arm(self.settings.timeouts.data)
        if not reply.is_positive:
            self.emit("reject", self.session, reply)

    def _make_envelope(self) -> Envelope:
        session = self.session
        session.transactions += 1
        assert session.mail_from is not None and session.mail_params is not None
        envelope = Envelope(
            id=f"{session.id}.{session.transactions}", mail_from=session.mail_from,
            mail_params=session.mail_params, recipients=list(session.recipients), received_at=time.time(),
            client_address=session.client_address, client_port=session.client_port,
            client_name=session.client_name, helo=session.helo, protocol=session.protocol, tls=session.tls,
            user=session.user, proxy=_proxy_facts(session.proxy),
        )
        headers = "".join(f"{name}: {value}\r\n" for name, value in session.headers).encode("utf-8")
        envelope.trace = self.state.trace(envelope, self.settings.hostname) + headers
        return envelope

    # -- the body -----------------------------------------------------------------------------

    def on_chunk(self, event: BodyChunk) -> Coroutine[Any, Any, None] | None:
        """Hand a body chunk to the writer and ``on_data``; something to await when either is behind."""
        writer = self.writer
        pressure: Awaitable[None] | None = None
        if writer is not None:
            self.size += len(event.data)
            try:
                writer.write(event.data)
            except SinkError as exc:
                _QUEUE_TROUBLE.warning(log, "session %s: queue write failed: %s", self.session.id, exc)
                self.writer = None
                self.refusal = queue_refusal(exc)
                self.loop.create_task(writer.abort())
            else:
                account = self.account  # the worker's memory budget: an add and a compare (aio/budget.py)
                if account is not None:
                    account.held += len(event.data)
                    if account.held > account.mark:
                        pressure = account.more()
                # the sink holds too much in flight: stop reading (after this chunk reached on_data)
                pressure = pressure or writer.pressure()
        # Extend the body deadline: each octet buys 1/min_data_rate s (slowloris defence).
        self.deadline.extend(len(event.data) / self.settings.timeouts.min_data_rate)
        stream = self.stream
        if stream is not None and not stream.push(bytes(event.data)):
            return self._wait_for_consumer(stream, pressure)  # the consumer is behind: stop reading
        return None if pressure is None else self._wait_pressure(pressure)

    async def _wait_pressure(self, pressure: Awaitable[None]) -> None:
        async with asyncio.timeout(self.settings.timeouts.sink):
            await pressure

    async def _wait_for_consumer(self, stream: BodyStream, pressure: Awaitable[None] | None = None) -> None:
        if pressure is not None:
            await self._wait_pressure(pressure)
        await asyncio.wait_for(stream.drained.wait(), self.settings.timeouts.hook)

    def on_body_end(self, event: BodyEnd) -> Coroutine[Any, Any, None] | None:
        """The end of a chunk or of the message: commit without a task when no hook needs to see it."""
        if (event.last and event.error is None and self.refusal is None and self.writer is not None
                and self.data_task is None):
            self._commit(event)  # nothing to ask: straight to the sink
            return None
        return self._end_chunk(event)

    async def _end_chunk(self, event: BodyEnd) -> None:
        started = self.loop.time()
        self._end_message(event, await self._message_replies(event, self.conn.replies_due), started)

    def _end_message(self, event: BodyEnd, replies: Sequence[Reply], started: float) -> None:
        """Send the replies that end a chunk or a message; count the message; the idle clock restarts."""
        conn = self.conn
        for reply in replies:
            conn.send(reply)
        if event.last:
            m = self.state.instruments
            m.dot_to_reply.observe(self.loop.time() - started)
            m.received_bytes.inc(event.size)
        first = replies[0]
        if event.last or not first.is_positive:  # the message ends here
            self._count_outcome(first)
            self.session.reset_transaction()
            self.host.message_ended(first.is_positive)
        self.deadline.arm(self.settings.timeouts.idle)

    # -- the commit without a task: a callback on the sink's future, the connection's deadline --

    def _commit(self, event: BodyEnd) -> None:
        """Commit a message no hook needs to see: the sink's awaitable gets a callback (a
        coroutine becomes a task), the connection's own deadline bounds the wait, and the
        client's next commands wait in the receive buffer (reading pauses only when it fills)."""
        writer, self.writer = self.writer, None
        assert writer is not None
        envelope, due, started = self.envelope, self.conn.replies_due, self.loop.time()
        if envelope is not None:
            envelope.size = self.size
        try:
            pending = writer.commit()  # a sink's future as it is (ensure_future is three calls more)
            future = pending if isinstance(pending, asyncio.Future) else asyncio.ensure_future(pending)
        except (SinkError, OSError) as exc:
            self._give_up(writer, exc)
            self._end_message(event, [queue_refusal(exc)] * due, started)
            return
        self.host.busy = True
        self.committing = (future, event, due, started, writer)
        self.deadline.arm(self.settings.timeouts.sink)
        future.add_done_callback(self._committed)

    def _committed(self, future: asyncio.Future[str]) -> None:
        waiting = self.committing
        if waiting is None or waiting[0] is not future:
            return  # timed out (answered already)
        self.committing = None
        _, event, due, started, writer = waiting
        if self.host.closed:
            return  # the client is gone: the entry stands, no one to tell
        try:
            try:
                queue_id = future.result()
            except (SinkError, OSError, asyncio.CancelledError) as exc:
                self._give_up(writer, exc or type(exc).__name__)
                replies = [queue_refusal(exc)] * due
            else:
                replies = self._queued(queue_id, [ACCEPT] * due, started)
        except Exception:  # a bug (a callback has no task to carry it): this connection only
            self.host.crash()
            return
        self._commit_answered(event, replies, started)

    def commit_timed_out(self) -> None:
        """The connection's deadline passed while the queue had not answered: 451, the session goes on."""
        waiting, self.committing = self.committing, None
        assert waiting is not None
        future, event, due, started, writer = waiting
        future.cancel()
        self._give_up(writer, f"no answer within {self.settings.timeouts.sink} s")
        self._commit_answered(event, [R.QUEUE_UNAVAILABLE] * due, started)

    def _commit_answered(self, event: BodyEnd, replies: list[Reply], started: float) -> None:
        """The commit's end, however it went (queued, failed, timed out): its replies, then the
        connection carries on with what the client pipelined meanwhile."""
        try:
            self._end_message(event, replies, started)
        except Exception:  # a bug (a callback has no task to carry it): this connection only
            self.host.crash()
            return
        self.host.resume()

    def _give_up(self, writer: MessageWriter, why: object) -> None:
        """The commit failed: one throttled line, the writer aborted in the background."""
        _QUEUE_TROUBLE.warning(log, "session %s: queue commit failed: %s", self.session.id, why)
        self.loop.create_task(_quietly(writer.abort()))

    def _queued(self, queue_id: str, replies: list[Reply], committing: float) -> list[Reply]:
        """The message is in the queue: count it, tell the listeners, the replies that say so."""
        m = self.state.instruments
        m.queue_write.observe(self.loop.time() - committing)
        m.message_size.observe(self.size)
        self.state.messages_accepted += 1
        self.emit("mail", self.session, self.envelope, queue_id)
        ok = Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
        return [ok if r is ACCEPT else r for r in replies]

    def _count_outcome(self, reply: Reply) -> None:
        """One message ended with ``reply`` (the first, for LMTP): accepted, tempfailed or rejected."""
        m = self.state.instruments
        (m.accepted if reply.is_positive else m.tempfailed if reply.is_transient else m.rejected).inc()

    # -- the end with a task: on_data's decision, BDAT chunks, refusals ---------------------------

    async def _message_replies(self, event: BodyEnd, due: int) -> list[Reply]:
        """The replies that end a chunk or a message; ``due`` of them (LMTP: per recipient)."""
        refusal = event.error or self.refusal
        if refusal is not None or (not event.last and self.writer is None):
            await self.abandon()
            self.emit("reject", self.session, refusal or R.QUEUE_UNAVAILABLE)
            return [refusal or R.QUEUE_UNAVAILABLE] * due
        if not event.last:
            return [Reply(250, "2.0.0", f"{event.size} octets received")]
        decision: Reply | Sequence[Reply] | None = None
        if self.stream is not None and self.data_task is not None:
            self.stream.finish()
            try:
                decision = await asyncio.wait_for(self.data_task, self.settings.timeouts.hook)
            except TimeoutError:
                decision = R.LOCAL_ERROR
        replies = per_recipient(decision, due)
        if not any(r.is_positive for r in replies):
            await self.abandon()
            return replies
        envelope = self.envelope
        if due > 1 and envelope is not None and len(envelope.recipients) == due:
            # LMTP: the message is stored only for the recipients it was accepted for; the
            # client handles the refused ones (bounce or retry), so they must not get it too.
            envelope.recipients = [rcpt for rcpt, r in zip(envelope.recipients, replies, strict=True)
                                   if r.is_positive]
        writer, self.writer = self.writer, None
        assert writer is not None
        if envelope is not None:
            envelope.size = self.size
        committing = self.loop.time()
        try:
            async with asyncio.timeout(self.settings.timeouts.sink):
                queue_id = await writer.commit()
        except (TimeoutError, SinkError, OSError) as exc:
            _QUEUE_TROUBLE.warning(log, "session %s: queue commit failed: %s", self.session.id, exc)
            await _quietly(writer.abort())
            return [queue_refusal(exc)] * due
        finally:
            self.stream = self.data_task = None
        return self._queued(queue_id, replies, committing)

    async def abandon(self) -> None:
        """No message after all (refused, or the session ended): the writer aborted, ``on_data`` cancelled."""
        writer, self.writer = self.writer, None
        self.refusal = None
        if self.data_task is not None and not self.data_task.done():
            self.data_task.cancel()
        self.stream = self.data_task = None
        if writer is not None:
            await _quietly(writer.abort())


def queue_refusal(exc: BaseException) -> Reply:
    """The reply to a queue that cannot take a message: 452 4.3.1 when its storage is full."""
    return R.INSUFFICIENT_STORAGE if isinstance(exc, StorageFullError) else R.QUEUE_UNAVAILABLE


def per_recipient(decision: Reply | Sequence[Reply] | None, due: int) -> list[Reply]:
    """Spread an ``on_data`` decision over the replies owed (LMTP: one per recipient)."""
    if decision is None:
        return [ACCEPT] * due
    if isinstance(decision, Reply):
        return [decision if not decision.is_positive else ACCEPT] * due
    replies = [r if not r.is_positive else ACCEPT for r in decision]
    if len(replies) != due:
        log.error("on_data returned %d replies for %d recipients", len(replies), due)
        return [R.LOCAL_ERROR] * due
    return replies


def _proxy_facts(info: ProxyInfo | None) -> dict[str, object] | None:
    """The PROXY header's facts for the envelope (plain values; raw TLVs left out)."""
    if info is None:
        return None
    facts: dict[str, object] = {}
    for name in ("version", "local", "family", "source_address", "source_port", "dest_address", "dest_port",
                 "authority", "ssl", "ssl_version", "ssl_cn", "netns"):
        value = getattr(info, name)
        if value is not None:
            facts[name] = value
    if info.alpn is not None:
        facts["alpn"] = info.alpn.decode("ascii", "replace")
    return facts


async def _quietly(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("sink abort failed")
