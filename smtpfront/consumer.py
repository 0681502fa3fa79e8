"""The Redis Streams consumer: hand each queued message to a handler, at least once.

Rule (ARCHITECTURE.md rule 3 "Nothing lost"; the queue record: CHANGELOG.md): an entry is
acknowledged only after its handler returned, or in the step that puts a copy of it into the
dead-letter stream; and (ARCHITECTURE.md rule 10 "Acknowledged means gone") the acknowledgement
deletes the entry once no consumer group needs it any more (:mod:`smtpfront.streamops`).
Anything else leaves it pending in the consumer group, so a crash or a failing handler means
"delivered again later", never "lost": entries idle for ``claim_idle_ms`` (a crashed
consumer's, or ones whose handler raised) are taken over with ``XAUTOCLAIM`` and retried,
until ``max_deliveries`` deliveries, after which the entry goes to the dead-letter stream
with its ``origin_id``, ``reason`` and ``deliveries``.

At least once means handlers must tolerate duplicates: an ``XACK`` lost with the connection,
or a handler running longer than ``claim_idle_ms`` (another consumer then claims the entry;
this consumer does not start its own running delivery again), delivers a message twice.

Deliveries run concurrently, at most ``batch`` at once: an entry is read (or claimed) when a
slot is free and delivered in a task of its own; the deliveries that finished meanwhile are
acknowledged together, in one script call (the next round takes those that finish during
it). :meth:`Consumer.stop` reads nothing new and waits for the deliveries in hand.

Redis errors never end :meth:`Consumer.run`: it logs, backs off (0.1 s doubling to 5 s),
reconnects and recreates a vanished group (``NOGROUP`` after a Redis restart) itself.

Redis Cluster (``redis+cluster://…?shards=N``): the front end writes ``N`` shard streams
``STREAM:{0}`` … ``STREAM:{N-1}`` (see :mod:`smtpfront.sink.redis.sink`). One
``XREADGROUP`` may only name keys of one hash slot, so the consumer runs one loop per shard
stream, each with its own group creation, ``XAUTOCLAIM`` and dead-letter stream
``STREAM:{i}:dead`` (same slot); :meth:`Consumer.stop` stops them all.

Large messages (version-2 records, see :mod:`smtpfront.sink.record`) keep their body in
chunk keys. The consumer reads them for the handler: whole into :attr:`Message.body`, or,
for a handler marked with :func:`streaming` (the ready-made ones are), chunk by chunk
through :meth:`Message.chunks`, so memory stays flat. The step that deletes such an entry
deletes its chunk keys (one script, the keys share the stream's slot). A dead letter keeps
them: it names them (``body_key``, ``body_chunks``), and ``smtpfront queue dead retry``
or ``dead purge`` (or whoever handles it: ``UNLINK <body_key>:0 …``) takes them on.
A chunk found missing fails the delivery like a handler error (retried, then dead-lettered).

The handler's side (:class:`Message`, the errors, :func:`streaming`, the ready-made
:func:`maildir_handler` and :func:`exec_handler`) lives in :mod:`smtpfront.delivery` and is
re-exported here; an :class:`Observer` is told of each delivery's outcome (metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from .delivery import (
    EX_TEMPFAIL,
    BodyChunks,
    BodyMissingError,
    Handler,
    Message,
    PermanentError,
    TemporaryError,
    exec_handler,
    is_streaming,
    maildir_handler,
    streaming,
)
from .idle_consumers import DEFAULT_IDLE_MS, forget_idle
from .sink.record import BodyRef, RecordError, decode_entry
from .sink.redis.url import parse_queue_url, shard_stream
from .streamops import Client, acknowledge, close_client, dead_letter, has_xackdel, open_client, sweep

__all__ = [
    "EX_TEMPFAIL", "BodyMissingError", "Consumer", "Handler", "Message", "Observer", "PermanentError",
    "TemporaryError", "exec_handler", "maildir_handler", "streaming",
]

log = logging.getLogger(__name__)

_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0  # seconds after a Redis error, doubling
_REASON_MAX = 1000  # characters of an exception or stderr kept in a dead letter's reason


class Observer(Protocol):
    """What a :class:`Consumer` reports as it works (``smtpfront consume``'s metrics:
    :mod:`smtpfront.consumer_metrics`). Called on the event loop; must not block."""

    def handler_started(self) -> None:
        """A handler call begins."""

    def handler_finished(self, seconds: float) -> None:
        """A handler call ended (returned or raised) after ``seconds``."""

    def delivered(self, count: int) -> None:
        """``count`` entries were acknowledged after their handler returned."""

    def retried(self) -> None:
        """A delivery failed and its entry stays pending, to be delivered again."""

    def dead_lettered(self) -> None:
        """An entry went to the dead-letter stream."""


class _Unobserved:
    def handler_started(self) -> None:
        return None

    def handler_finished(self, seconds: float) -> None:
        return None

    def delivered(self, count: int) -> None:
        return None

    def retried(self) -> None:
        return None

    def dead_lettered(self) -> None:
        return None


@dataclass(slots=True)
class _Stream:
    """One stream a consumer reads (a shard's, when sharded), with its dead-letter stream."""

    name: str
    dead: str
    group_ready: bool = False
    held: set[bytes] = field(default_factory=set)  # ids delivered by this consumer, not yet acknowledged
    acks: list[tuple[bytes, BodyRef | None]] = field(default_factory=list)  # delivered, to acknowledge
    acking: bool = False  # a flush of ``acks`` is running


class Consumer:
    """Reads one stream (or every shard stream of a cluster) through a consumer group and
    calls a handler per message.

    Args:
        redis_url: ``redis://HOST:PORT/DB`` (also ``rediss://``, ``unix://``),
            ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` or
            ``redis+cluster://HOST:PORT[,HOST:PORT...]/?shards=N`` (see
            :mod:`smtpfront.sink.redis.sink`).
        stream: the stream the front end writes (sharded: the prefix of ``STREAM:{i}``).
        group: the consumer group; created when missing (on every shard stream).
        name: this consumer's name in the group; ``None`` is ``<hostname>-<pid>``.
        batch: deliveries in flight at once (``consume --workers``): entries are read (or
            claimed) as slots are free, each delivered on its own, and those that finished
            meanwhile are acknowledged together in one call.
        block_ms: how long one ``XREADGROUP`` waits for new entries; :meth:`stop` takes
            at most this long plus the deliveries in hand.
        claim_idle_ms: pending entries idle this long are claimed and delivered again.
            Must exceed the longest handler run, or live work is delivered twice.
        max_deliveries: deliveries before an entry goes to the dead-letter stream.
        dead_letter_stream: ``None`` is ``f"{stream}:dead"`` (sharded: each shard's own
            ``STREAM:{i}:dead``, in the shard's slot; a cluster allows no other).
        start_id: where a newly created group starts: ``"0"`` (default) delivers what was
            queued before the group existed; ``"$"`` only what arrives after (what was
            queued before is then not this group's: once no other group needs it, it is
            deleted).
        shards: read the shard streams ``STREAM:{0}`` … ``STREAM:{N-1}``, each in its own
            loop (one ``XREADGROUP`` cannot span hash slots). ``None`` is the URL's
            ``shards=N`` for a cluster URL (default 16), else one unsharded stream. It must
            match the producers' number of shards.
        observer: told of each handler call and outcome (see :class:`Observer`).
        forget_idle_ms: names of the group idle this long with nothing pending (consumers
            gone) are removed from it, this one's excepted (0: never; see
            :mod:`smtpfront.idle_consumers`).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        stream: str = "smtpfront:inbound",
        group: str = "smtpfront",
        name: str | None = None,
        batch: int = 16,
        block_ms: int = 5000,
        claim_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        dead_letter_stream: str | None = None,
        start_id: str = "0",
        shards: int | None = None,
        observer: Observer | None = None,
        forget_idle_ms: int = DEFAULT_IDLE_MS,
    ) -> None:
        if batch < 1 or block_ms < 1 or claim_idle_ms < 1 or max_deliveries < 1:
            raise ValueError("batch, block_ms, claim_idle_ms and max_deliveries must be positive")
        self._queue = parse_queue_url(redis_url)
        count = self._queue.shards if shards is None else shards
        if count < 0:
            raise ValueError("shards must not be negative")
        if count and ("{" in stream or "}" in stream):
            raise ValueError(f"stream {stream!r}: a sharded stream name must not contain braces (hash tags)")
        if dead_letter_stream is not None and self._queue.kind == "cluster":
            raise ValueError("dead_letter_stream: in a cluster each shard's dead letters stay in its hash slot "
                             "(STREAM:{i}:dead); leave it unset")
        self.redis_url = redis_url
        self.stream = stream
        self.shards = count
        self.group = group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.start_id = start_id
        self.forget_idle_ms = forget_idle_ms  # see smtpfront.idle_consumers (0: never)
        self.streams = [shard_stream(stream, i) for i in range(count)] if count else [stream]
        self._streams = [_Stream(s, dead_letter_stream or f"{s}:dead") for s in self.streams]
        self.dead_letter_streams = sorted({s.dead for s in self._streams})
        self._observer: Observer = observer if observer is not None else _Unobserved()
        self._stop = asyncio.Event()
        self._redis: Client | None = None
        self._sentinel: Sentinel | None = None
        self._xackdel: bool | None = None  # the server has XACKDEL (asked once per connection)
        self._tasks: set[asyncio.Task[None]] = set()  # deliveries in flight
        self._slot_freed = asyncio.Event()

    def stop(self) -> None:
        """Make :meth:`run` return once the deliveries in hand are done and acknowledged (at
        once if called before it); no new entry is read or claimed meanwhile.

        Call it from the event loop's thread (a signal handler added with
        ``loop.add_signal_handler`` is). With shards, every shard's loop stops.
        """
        self._stop.set()

    async def run(self, handler: Handler) -> None:
        """Deliver messages to ``handler`` until :meth:`stop` is called.

        Redis errors are logged and retried after a back-off (reconnecting, recreating
        the group); so is an unexpected error, with its traceback. Only cancellation ends
        this early. A handler's error concerns its message only (see :data:`Handler`).
        With shards, one loop per shard stream does all of this on its own.
        """
        try:
            if len(self._streams) == 1:
                await self._loop(self._streams[0], handler)
            else:
                await asyncio.gather(*(self._loop(s, handler) for s in self._streams))
        except asyncio.CancelledError:
            for task in self._tasks:
                task.cancel()
            raise
        finally:
            self._stop.clear()  # a stop() before run() counts; one after it returned does not
            try:
                await self._finish()
            finally:
                await self._disconnect()

    async def _finish(self) -> None:
        """Wait for the deliveries in hand, then acknowledge what is still to be acknowledged."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for stream in self._streams:
            if stream.acks and not stream.acking:
                await self._flush(stream)

    async def _slots(self) -> int:
        """Free delivery slots; while none is, wait for one (or for :meth:`stop`)."""
        while len(self._tasks) >= self.batch and not self._stop.is_set():
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):  # re-checked at least every 0.2 s (stop)
                await asyncio.wait_for(self._slot_freed.wait(), 0.2)
        return 0 if self._stop.is_set() else self.batch - len(self._tasks)

    async def _loop(self, stream: _Stream, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_MIN
        next_claim = 0.0
        while not self._stop.is_set():
            try:
                if not stream.group_ready:
                    await self._create_group(stream)
                if loop.time() >= next_claim:
                    await self._claim(stream, handler)
                    if await sweep(self._client(), stream.name, self.group):
                        log.info("deleted entries every group had acknowledged on %s", stream.name)
                    await forget_idle(self._client(), stream.name, self.group, self.forget_idle_ms, self.name)
                    next_claim = loop.time() + self.claim_idle_ms / 2000
                if not self._stop.is_set():
                    await self._read(stream, handler)
                if stream.acks and not stream.acking:  # left by a failed flush
                    await self._flush(stream)
                backoff = _BACKOFF_MIN
                continue
            except ResponseError as exc:
                # NOGROUP: the stream or group vanished (a Redis restart, a DEL); UNBLOCKED:
                # it vanished while XREADGROUP waited on it.
                if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    log.warning("consumer group %s missing on %s: recreating it", self.group, stream.name)
                    stream.group_ready = False
                else:
                    log.error("redis error: %s; retrying in %.1fs", exc, backoff)
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("redis unavailable: %s; retrying in %.1fs", exc, backoff)
                if len(self._streams) == 1:
                    await self._disconnect()
                else:  # the client is shared: its pools reconnect, a cluster re-reads its slot map
                    stream.group_ready = False
            except Exception:
                log.exception("unexpected error in the consumer loop; retrying in %.1fs", backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _client(self) -> Client:
        if self._redis is None:  # the socket timeout outlasts a blocking read
            self._redis, self._sentinel = open_client(self.redis_url, self._queue, self.block_ms / 1000 + 10)
            self._xackdel = None
        return self._redis

    async def _disconnect(self) -> None:
        client, self._redis = self._redis, None
        sentinel, self._sentinel = self._sentinel, None
        for stream in self._streams:
            stream.group_ready = False
        await close_client(client, sentinel)

    async def _create_group(self, stream: _Stream) -> None:
        try:
            await self._client().xgroup_create(stream.name, self.group, self.start_id, mkstream=True)
            log.info("created consumer group %s on %s at %s", self.group, stream.name, self.start_id)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        stream.group_ready = True

    async def _claim(self, stream: _Stream, handler: Handler) -> None:
        """Take over entries idle for ``claim_idle_ms`` (a crashed consumer's, or failed ones)."""
        client = self._client()
        cursor: bytes | str = "0-0"
        while free := await self._slots():
            reply: Any = await client.xautoclaim(
                stream.name, self.group, self.name, self.claim_idle_ms, cursor, count=free
            )
            # One of our own deliveries running past claim_idle_ms is claimed too: it is not started twice.
            cursor, entries = reply[0], [(i, f) for i, f in reply[1] if f is not None and i not in stream.held]
            if entries:
                # The claim raised each entry's delivery count; XPENDING tells it.
                async with client.pipeline(transaction=False) as pipe:
                    for entry_id, _ in entries:
                        pipe.xpending_range(stream.name, self.group, entry_id, entry_id, 1, self.name)
                    pending = await pipe.execute()
                counts = {p["message_id"]: int(p["times_delivered"]) for rows in pending for p in rows}
                log.info("claimed %d idle entries on %s", len(entries), stream.name)
                self._dispatch(stream, [(i, f, counts[i]) for i, f in entries if i in counts], handler)
            if cursor in (b"0-0", "0-0"):
                return

    async def _read(self, stream: _Stream, handler: Handler) -> None:
        free = await self._slots()
        if not free:
            return
        reply: Any = await self._client().xreadgroup(
            self.group, self.name, {stream.name: ">"}, count=free, block=self.block_ms
        )
        for _stream, entries in reply or ():
            self._dispatch(stream, [(i, f, 1) for i, f in entries], handler)

    def _dispatch(
        self, stream: _Stream, entries: list[tuple[bytes, dict[bytes, bytes], int]], handler: Handler
    ) -> None:
        """Start one delivery task per entry (the caller took the slots from :meth:`_slots`)."""
        for entry_id, fields, deliveries in entries:
            stream.held.add(entry_id)
            task = asyncio.create_task(self._delivery(stream, entry_id, fields, deliveries, handler))
            self._tasks.add(task)
            task.add_done_callback(self._delivered)

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    async def _delivery(
        self, stream: _Stream, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int, handler: Handler
    ) -> None:
        """One entry: deliver it, then acknowledge it with whatever else finished meanwhile."""
        try:
            done = await self._deliver(stream, entry_id, fields, deliveries, handler)
        except (RedisError, RedisClusterException, OSError) as exc:  # reading its body, dead-lettering it
            log.warning("redis unavailable while delivering %s: %s; it stays pending", entry_id.decode(), exc)
            done = None
        except Exception:
            log.exception("unexpected error delivering %s; it stays pending", entry_id.decode())
            done = None
        except asyncio.CancelledError:  # run() was cancelled: the entry stays pending
            stream.held.discard(entry_id)
            raise
        if done is None:
            stream.held.discard(entry_id)
            return
        stream.acks.append(done)
        if not stream.acking:
            await self._flush(stream)

    async def _flush(self, stream: _Stream) -> None:
        """``XACK`` what finished, one call per round (deliveries finishing meanwhile join the
        next round); the call also deletes the entries no group needs, and their chunk keys.
        A Redis error keeps them for the next flush: they stay pending until then."""
        stream.acking = True
        try:
            while stream.acks:
                done, stream.acks = stream.acks, []
                try:
                    client = self._client()
                    if self._xackdel is None:
                        self._xackdel = await has_xackdel(client, stream.name, self.group)
                    acknowledged, _ = await acknowledge(client, stream.name, self.group, done,
                                                        xackdel=self._xackdel)
                except (RedisError, RedisClusterException, OSError) as exc:
                    stream.acks[:0] = done
                    log.warning("redis unavailable while acknowledging %d entries on %s: %s; retrying later",
                                len(done), stream.name, exc)
                    return
                for entry_id, _ in done:
                    stream.held.discard(entry_id)
                self._observer.delivered(acknowledged)
        finally:
            stream.acking = False

    async def _deliver(
        self, stream: _Stream, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int, handler: Handler
    ) -> tuple[bytes, BodyRef | None] | None:
        """Return the id to acknowledge (and the large body to delete), or ``None`` to leave
        the entry pending."""
        ident = entry_id.decode()
        try:
            envelope, body = decode_entry(fields)
            if isinstance(body, BodyRef) and not body.key.startswith(stream.name.encode() + b":body:"):
                raise RecordError(f"body key {body.key!r} is not one of {stream.name}'s")
        except RecordError as exc:
            log.error("entry %s on %s is not a record: %s; dead-lettering it", ident, stream.name, exc)
            await self._dead_letter(stream, entry_id, fields, None, deliveries, str(exc))
            return None
        if deliveries > self.max_deliveries:  # e.g. the handler kept killing its process
            log.error("entry %s on %s was delivered %d times; dead-lettering it", ident, stream.name, deliveries)
            await self._dead_letter(stream, entry_id, fields, body, deliveries, f"delivered {deliveries} times")
            return None
        try:
            if not isinstance(body, BodyRef):
                message = Message(ident, stream.name, envelope, body, deliveries)
            elif is_streaming(handler):
                message = Message._streamed(ident, stream.name, envelope, BodyChunks(self._client(), body), deliveries)
            else:  # a Redis error here is the loop's business (back off), not this delivery's
                whole = [chunk async for chunk in BodyChunks(self._client(), body).read()]
                message = Message(ident, stream.name, envelope, b"".join(whole), deliveries)
                del whole
        except BodyMissingError as exc:
            await self._failed(stream, entry_id, fields, body, deliveries, exc)
            return None
        self._observer.handler_started()
        started = time.monotonic()
        try:
            await handler(message)
        except Exception as exc:
            self._observer.handler_finished(time.monotonic() - started)
            await self._failed(stream, entry_id, fields, body, deliveries, exc)
            return None
        except BaseException:
            self._observer.handler_finished(time.monotonic() - started)
            raise
        self._observer.handler_finished(time.monotonic() - started)
        return entry_id, body if isinstance(body, BodyRef) else None

    async def _failed(
        self, stream: _Stream, entry_id: bytes, fields: dict[bytes, bytes], body: bytes | BodyRef, deliveries: int,
        exc: Exception,
    ) -> None:
        """A delivery failed: the entry stays pending, or is dead-lettered when that was the last try."""
        reason = f"{type(exc).__name__}: {exc}"[:_REASON_MAX]
        final = isinstance(exc, PermanentError) or deliveries >= self.max_deliveries
        expected = isinstance(exc, (PermanentError, TemporaryError, BodyMissingError))  # no traceback to show
        log.log(
            logging.ERROR if final or not expected else logging.WARNING,
            "handler failed for %s (delivery %d of %d)%s%s", entry_id.decode(), deliveries, self.max_deliveries,
            f": {exc}" if expected else "", "; dead-lettering it" if final else "; it stays pending",
            exc_info=not expected,
        )
        if final:
            await self._dead_letter(stream, entry_id, fields, body, deliveries, reason)
        else:
            self._observer.retried()

    async def _dead_letter(
        self, stream: _Stream, entry_id: bytes, fields: dict[bytes, bytes], body: bytes | BodyRef | None,
        deliveries: int, reason: str,
    ) -> None:
        # One script: the dead letter, the XACK and (when no other group needs the entry)
        # its removal; see smtpfront.streamops for who owns the chunk keys afterwards.
        letter: dict[bytes, bytes] = {**fields, b"origin_id": entry_id, b"reason": reason.encode(),
                                      b"deliveries": str(deliveries).encode()}
        if await dead_letter(self._client(), stream.name, stream.dead, self.group, entry_id, letter,
                             body if isinstance(body, BodyRef) else None) is not None:
            self._observer.dead_lettered()
