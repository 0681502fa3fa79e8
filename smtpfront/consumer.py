"""The Redis Streams consumer: hand each queued message to a handler, at least once.

Rule (ARCHITECTURE.md rule 3 "Nothing lost"; the queue record: CHANGELOG.md): an entry is
acknowledged only after its handler returned, or in the step that puts a copy of it into the
dead-letter stream; and (ARCHITECTURE.md rule 10 "Acknowledged means gone") the
acknowledgement deletes the entry once no consumer group needs it any more (see
:mod:`smtpfront.streamops`). Anything
else leaves it pending in the consumer group, so a crash or a failing handler means
"delivered again later", never "lost": entries idle for ``claim_idle_ms`` (a crashed
consumer's, or ones whose handler raised) are taken over with ``XAUTOCLAIM`` and retried,
until ``max_deliveries`` deliveries, after which the entry goes to the dead-letter stream
with its ``origin_id``, ``reason`` and ``deliveries``.

At least once means handlers must tolerate duplicates: an ``XACK`` lost with the
connection, or a handler running longer than ``claim_idle_ms`` (another consumer then
claims the entry), delivers a message twice.

Redis errors never end :meth:`Consumer.run`: it logs, backs off (0.1 s doubling to 5 s),
reconnects and recreates a vanished group (``NOGROUP`` after a Redis restart) itself.

Redis Cluster (``redis+cluster://…?shards=N``): the front end writes ``N`` shard streams
``STREAM:{0}`` … ``STREAM:{N-1}`` (see :mod:`smtpfront.sink.redis_streams`). One
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from .core.events import Address, MailParams
from .idle_consumers import DEFAULT_IDLE_MS, forget_idle
from .sink.base import Envelope
from .sink.maildir import MaildirSink
from .sink.record import BodyRef, RecordError, decode_entry
from .sink.redis_streams import parse_queue_url, shard_stream
from .streamops import Client, acknowledge, close_client, dead_letter, has_xackdel, open_client, sweep

__all__ = [
    "BodyMissingError", "Consumer", "Handler", "Message", "PermanentError", "TemporaryError", "exec_handler",
    "maildir_handler", "streaming",
]

log = logging.getLogger(__name__)

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
_REASON_MAX = 1000  # characters of an exception or stderr kept in a dead letter's reason
EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"

class BodyMissingError(Exception):
    """A large message's chunk keys are not (all) there: the delivery fails, the entry stays pending."""


class _Chunks:
    """A large body in Redis, read one chunk key per round trip."""

    __slots__ = ("_client", "ref")

    def __init__(self, client: Client, ref: BodyRef) -> None:
        self._client = client
        self.ref = ref

    async def read(self) -> AsyncIterator[bytes]:
        seen = 0
        for key in self.ref.chunk_keys():
            chunk = await self._client.get(key)
            if not isinstance(chunk, bytes):
                raise BodyMissingError(f"body chunk {key.decode(errors='replace')} is missing")
            seen += len(chunk)
            yield chunk
        if seen != self.ref.size:
            raise BodyMissingError(f"body is {seen} octets, the record says {self.ref.size}")


class Message:
    """One delivered queue record.

    Attributes:
        id: the stream entry id.
        stream: the stream it came from.
        envelope: the record's ``envelope`` object (see :mod:`smtpfront.sink.record`).
        body: the message with the front end's ``Received:`` header first. For a large
            message given to a :func:`streaming` handler, reading it raises RuntimeError:
            such a handler reads :meth:`chunks`.
        deliveries: how many times the entry was delivered, 1 the first time.
        size: the body's length in octets.
    """

    __slots__ = ("id", "stream", "envelope", "deliveries", "size", "_body", "_chunks")

    def __init__(self, id: str, stream: str, envelope: dict[str, Any], body: bytes, deliveries: int) -> None:
        self.id = id
        self.stream = stream
        self.envelope = envelope
        self.deliveries = deliveries
        self.size = len(body)
        self._body: bytes | None = body
        self._chunks: _Chunks | None = None

    @classmethod
    def _streamed(cls, id: str, stream: str, envelope: dict[str, Any], chunks: _Chunks, deliveries: int) -> Message:
        message = cls(id, stream, envelope, b"", deliveries)
        message.size, message._body, message._chunks = chunks.ref.size, None, chunks
        return message

    @property
    def body(self) -> bytes:
        if self._body is None:
            raise RuntimeError(f"message {self.id} is large ({self.size} octets) and its handler streams it: "
                               "read it with `async for chunk in message.chunks()`")
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces (a large one as it is read from Redis; raises BodyMissingError)."""
        if self._chunks is None:
            yield self.body
            return
        async for chunk in self._chunks.read():
            yield chunk

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, stream={self.stream!r}, size={self.size}, deliveries={self.deliveries})"


Handler = Callable[[Message], Awaitable[None]]
"""Returns to acknowledge; raises to leave the entry pending (retried later)."""


class _Streaming:
    """A handler that reads bodies with :meth:`Message.chunks` (see :func:`streaming`)."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, message: Message) -> Awaitable[None]:
        return self.handler(message)


def streaming(handler: Handler) -> Handler:
    """Mark ``handler`` as reading bodies with :meth:`Message.chunks` only: a large body is then
    not loaded whole before the call (``message.body`` raises for it), so memory stays flat."""
    return handler if isinstance(handler, _Streaming) else _Streaming(handler)


class PermanentError(Exception):
    """Raised by a handler for a message that retrying cannot help: dead-letter it now."""


class TemporaryError(RuntimeError):
    """Raised by a handler for an expected, temporary failure (the entry stays pending and is
    retried): logged as one WARNING line, without the traceback an unexpected error gets."""


@dataclass(slots=True)
class _Stream:
    """One stream a consumer reads (a shard's, when sharded), with its dead-letter stream."""

    name: str
    dead: str
    group_ready: bool = False


class Consumer:
    """Reads one stream (or every shard stream of a cluster) through a consumer group and
    calls a handler per message.

    Args:
        redis_url: ``redis://HOST:PORT/DB`` (also ``rediss://``, ``unix://``),
            ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` or
            ``redis+cluster://HOST:PORT[,HOST:PORT...]/?shards=N`` (see
            :mod:`smtpfront.sink.redis_streams`).
        stream: the stream the front end writes (sharded: the prefix of ``STREAM:{i}``).
        group: the consumer group; created when missing (on every shard stream).
        name: this consumer's name in the group; ``None`` is ``<hostname>-<pid>``.
        batch: entries read (or claimed) per round trip; a batch is handled concurrently.
        block_ms: how long one ``XREADGROUP`` waits for new entries; :meth:`stop` takes
            at most this long plus the current batch.
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
        self._stop = asyncio.Event()
        self._redis: Client | None = None
        self._sentinel: Sentinel | None = None
        self._xackdel: bool | None = None  # the server has XACKDEL (asked once per connection)

    def stop(self) -> None:
        """Make :meth:`run` return after the current batch (at once if called before it).

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
        finally:
            self._stop.clear()  # a stop() before run() counts; one after it returned does not
            await self._disconnect()

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
        while not self._stop.is_set():
            reply: Any = await client.xautoclaim(
                stream.name, self.group, self.name, self.claim_idle_ms, cursor, count=self.batch
            )
            cursor, entries = reply[0], [(i, f) for i, f in reply[1] if f is not None]
            if entries:
                # The claim raised each entry's delivery count; XPENDING tells it.
                async with client.pipeline(transaction=False) as pipe:
                    for entry_id, _ in entries:
                        pipe.xpending_range(stream.name, self.group, entry_id, entry_id, 1, self.name)
                    pending = await pipe.execute()
                counts = {p["message_id"]: int(p["times_delivered"]) for rows in pending for p in rows}
                log.info("claimed %d idle entries on %s", len(entries), stream.name)
                await self._handle(stream, [(i, f, counts[i]) for i, f in entries if i in counts], handler)
            if cursor in (b"0-0", "0-0"):
                return

    async def _read(self, stream: _Stream, handler: Handler) -> None:
        reply: Any = await self._client().xreadgroup(
            self.group, self.name, {stream.name: ">"}, count=self.batch, block=self.block_ms
        )
        for _stream, entries in reply or ():
            await self._handle(stream, [(i, f, 1) for i, f in entries], handler)

    async def _handle(
        self, stream: _Stream, entries: list[tuple[bytes, dict[bytes, bytes], int]], handler: Handler
    ) -> None:
        """Deliver a batch concurrently, then ``XACK`` the delivered ones in one call (which
        also deletes the chunk keys of the large ones)."""
        results = await asyncio.gather(*(self._deliver(stream, *e, handler) for e in entries), return_exceptions=True)
        done = [r for r in results if isinstance(r, tuple)]
        if done:
            client = self._client()
            if self._xackdel is None:
                self._xackdel = await has_xackdel(client, stream.name, self.group)
            await acknowledge(client, stream.name, self.group, done, xackdel=self._xackdel)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # a Redis error while dead-lettering: the loop backs off

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
            elif isinstance(handler, _Streaming):
                message = Message._streamed(ident, stream.name, envelope, _Chunks(self._client(), body), deliveries)
            else:  # a Redis error here is the loop's business (back off), not this delivery's
                whole = [chunk async for chunk in _Chunks(self._client(), body).read()]
                message = Message(ident, stream.name, envelope, b"".join(whole), deliveries)
                del whole
        except BodyMissingError as exc:
            await self._failed(stream, entry_id, fields, body, deliveries, exc)
            return None
        try:
            await handler(message)
        except Exception as exc:
            await self._failed(stream, entry_id, fields, body, deliveries, exc)
            return None
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

    async def _dead_letter(
        self, stream: _Stream, entry_id: bytes, fields: dict[bytes, bytes], body: bytes | BodyRef | None,
        deliveries: int, reason: str,
    ) -> None:
        # One script: the dead letter, the XACK and (when no other group needs the entry)
        # its removal; see smtpfront.streamops for who owns the chunk keys afterwards.
        letter: dict[bytes, bytes] = {**fields, b"origin_id": entry_id, b"reason": reason.encode(),
                                      b"deliveries": str(deliveries).encode()}
        await dead_letter(self._client(), stream.name, stream.dead, self.group, entry_id, letter,
                          body if isinstance(body, BodyRef) else None)


def _address(text: str) -> Address:
    local, at, domain = text.rpartition("@")
    return Address(local, domain) if at else Address(text, "")


def maildir_handler(directory: str, *, fsync: bool = True) -> Handler:
    """A handler delivering each body into a Maildir (``tmp/`` → fsync → ``new/``).

    The file holds ``Return-Path:`` (from the envelope's sender) and then the body as
    queued, ``Received:`` header included. A :class:`~smtpfront.sink.base.SinkError`
    (disk full, say) leaves the entry pending.
    """
    sink = MaildirSink(directory, fsync=fsync)

    @streaming
    async def deliver(message: Message) -> None:
        env = message.envelope
        params = env.get("mail_params") or {}
        envelope = Envelope(
            id=str(env.get("id") or message.id), mail_from=_address(str(env.get("mail_from") or "")),
            mail_params=MailParams(smtputf8=bool(params.get("smtputf8"))), recipients=[],
            received_at=float(env.get("received_at") or 0.0),
        )
        writer = sink.open(envelope)
        try:
            async for chunk in message.chunks():
                writer.write(memoryview(chunk))
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    return deliver


async def _feed(stdin: asyncio.StreamWriter, message: Message) -> None:
    # The command need not read it all: a broken pipe is a ConnectionError under asyncio,
    # a RuntimeError ("handler is closed") under uvloop; its exit status decides. A body
    # that cannot be read raises with stdin still open: the command is killed, not fed a
    # truncated message that it might take for a whole one.
    async for chunk in message.chunks():
        try:
            stdin.write(chunk)
            await stdin.drain()
        except (ConnectionError, RuntimeError):
            break
    stdin.close()


async def _drain(stream: asyncio.StreamReader, keep: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[: max(keep - len(kept), 0)]
    return bytes(kept)


def exec_handler(command: Sequence[str], *, timeout: float = 60, tempfail: Collection[int] = (EX_TEMPFAIL,)) -> Handler:
    """A handler piping each body into a command (no shell), like Postfix ``pipe(8)``.

    The command gets the body on stdin and ``SMTPFRONT_SENDER``, ``SMTPFRONT_RECIPIENTS``
    (comma-separated) and ``SMTPFRONT_QUEUE_ID`` in its environment; its stdout is
    discarded, the start of its stderr goes into the error.

    Exit 0 acknowledges. An exit status in ``tempfail`` (EX_TEMPFAIL, 75), death by a
    signal, or running past ``timeout`` seconds (its process group is then killed) raises
    :class:`TemporaryError`: the entry stays pending and is retried. Any other status raises
    :class:`PermanentError`: the entry is dead-lettered at once.
    """
    argv = list(command)
    if not argv:
        raise ValueError("exec_handler needs a command")

    @streaming
    async def deliver(message: Message) -> None:
        env = message.envelope
        rcpts = ",".join(str(r.get("address", "")) for r in env.get("rcpt_to") or ())
        environ = {
            **os.environ, "SMTPFRONT_SENDER": str(env.get("mail_from") or ""), "SMTPFRONT_RECIPIENTS": rcpts,
            "SMTPFRONT_QUEUE_ID": str(env.get("id") or ""),
        }
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=environ, start_new_session=True,
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(timeout):
                _, stderr, status = await asyncio.gather(_feed(proc.stdin, message), _drain(proc.stderr, 500),
                                                         proc.wait())
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if isinstance(exc, TimeoutError):
                raise TemporaryError(f"{argv[0]}: timed out after {timeout}s") from None
            raise
        if status == 0:
            return
        said = stderr.decode("utf-8", "replace").strip()
        what = f"{argv[0]}: " + (f"killed by signal {-status}" if status < 0 else f"exit status {status}")
        what += f": {said}" if said else ""
        if status < 0 or status in tempfail:
            raise TemporaryError(what)
        raise PermanentError(what)

    return deliver
