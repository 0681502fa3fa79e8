"""``RedisStreamSink``: every accepted message becomes one Redis stream entry.

Group commit: messages that finish while a batch is in flight form the next batch, sent as
one pipelined write of ``XADD`` commands (hand-packed RESP; the body goes out as the parts
it arrived in, never concatenated) on one connection, with the replies read in order. No
timer ever delays a lone message. Each client gets its ``250`` only after its own
``XADD`` reply; an error reply, a lost connection or a timeout fails that batch's commits
(the clients get ``451 4.3.0`` and retry), and commits fail fast while Redis is backing
off, so no connection waits on a Redis that is away.

Durability: ``ack`` (default) trusts the XADD reply, which means the entry is in Redis's
memory; how it survives a Redis crash is Redis's ``appendonly``/``appendfsync`` setting
(``always``: fsynced before the reply; ``everysec``: up to a second may be lost).
``replicated`` adds ``WAIT n timeout`` after each batch and fails the batch's commits
when fewer replicas confirm (the entries may then exist twice after the client's retry:
delivery is at-least-once).

Rule: this is the only module that imports ``redis``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .base import Envelope, SinkError
from .record import envelope_fields

__all__ = ["RedisStreamSink", "RedisStreamWriter"]

log = logging.getLogger(__name__)


# Idempotent enqueue (DESIGN "Nothing lost", issue 4): one atomic step. If the key of this
# message was seen within the window, return the entry id stored under it (the client that
# lost our 250 gets the same queue id again); otherwise XADD and remember the id.
# KEYS[1] dedup key, KEYS[2] stream; ARGV[1] window s, ARGV[2] MAXLEN (0: none), ARGV[3..] fields.
_DEDUP_SCRIPT = b"""
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
local id
if tonumber(ARGV[2]) > 0 then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
"""


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


class RedisStreamWriter:
    """Collects one message's body parts until commit."""

    __slots__ = ("_sink", "_envelope", "_parts", "_size", "_digest")

    def __init__(self, sink: RedisStreamSink, envelope: Envelope) -> None:
        self._sink = sink
        self._envelope = envelope
        self._parts: list[bytes] = [envelope.trace] if envelope.trace else []
        self._size = len(envelope.trace)
        self._digest = hashlib.sha256() if sink.dedup_window else None

    def write(self, data: memoryview) -> None:
        """Keep a copy of the chunk (the view points into the receive buffer)."""
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._digest is not None:
            self._digest.update(data)

    def pressure(self) -> Awaitable[None] | None:
        """Past the worker's in-flight budget (bytes queued for Redis): wait for it to drain.

        Only committed bytes count: they drain by themselves as batches complete. Bytes of
        messages still arriving do not (their clients may be the ones waiting here); they
        are bounded by the message size limit times the connection limit.
        """
        return self._sink._pressure()

    async def commit(self) -> str:
        """XADD the record (in the next batch); returns the stream entry id."""
        sink, size = self._sink, self._size
        packed = self._packed()
        self._parts = []
        sink.inflight += size
        try:
            return await sink._commit(packed)
        finally:
            sink._released(size)

    async def abort(self) -> None:
        """Nothing was sent yet: forget the parts."""
        self._parts = []

    def _dedup_key(self) -> bytes:
        """The idempotency key: the envelope and the body (our trace, which is unique, excluded).

        A client that lost our 250 and retries sends the same sender, recipients and body
        (Message-ID included), so it maps to the same key within the window.
        """
        assert self._digest is not None
        digest = self._digest.copy()
        env = self._envelope
        digest.update(b"\0" + str(env.mail_from).encode() + b"\0")
        digest.update(b"\0".join(str(r.address).encode() for r in env.recipients))
        return self._sink._dedup_prefix + digest.hexdigest().encode()

    def _packed(self) -> list[bytes]:
        """The XADD command in RESP (or the dedup script around it), the body as its parts."""
        sink = self._sink
        fields = envelope_fields(self._envelope)
        head: list[bytes] = []
        for name, value in fields:
            head.append(_bulk(name))
            head.append(_bulk(value))
        head.append(_bulk(b"body"))
        head.append(b"$%d\r\n" % self._size)
        if self._digest is None:
            count = sink._xadd_args + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + sink._xadd_prefix
        else:
            # EVALSHA sha 2 dedup-key stream window maxlen field value ... (see _DEDUP_SCRIPT)
            count = 7 + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + b"".join(_bulk(a) for a in (
                b"EVALSHA", sink._dedup_sha, b"2", self._dedup_key(), sink.stream.encode(),
                str(sink.dedup_window).encode(), str(sink.maxlen or 0).encode()))
        return [prefix + b"".join(head), *self._parts, b"\r\n"]


class RedisStreamSink:
    """Queue accepted messages into a Redis stream.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS.
        stream: the stream key.
        maxlen: trim with ``MAXLEN ~ maxlen`` (None: never trim; unconsumed mail is never
            dropped by default).
        timeout: socket timeout for Redis I/O, seconds.
        durability: ``ack`` or ``replicated`` (``WAIT replicas wait_timeout_ms``).
        replicas, wait_timeout_ms: for ``replicated``.
    """

    def __init__(self, url: str, *, stream: str = "smtpfront:inbound", maxlen: int | None = None,
                 timeout: float = 10.0, durability: Literal["ack", "replicated"] = "ack", replicas: int = 1,
                 wait_timeout_ms: int = 1000, dedup_window: int = 900, high_water: int | None = None,
                 group: str | None = None, monitor_interval: float = 1.0,
                 inflight_budget: int = 64 * 1024 * 1024) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.dedup_window = dedup_window
        self.high_water = high_water
        self.group = group
        self.monitor_interval = monitor_interval
        self.inflight_budget = inflight_budget
        self.inflight = 0  # octets committed and not yet acknowledged by Redis
        self.full = False  # past high_water: the server answers new transactions 452
        self._drained: asyncio.Event | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._dedup_prefix = f"{stream}:dedup:".encode()
        self._dedup_sha = hashlib.sha1(_DEDUP_SCRIPT).hexdigest().encode()  # Redis names scripts by SHA-1
        self.durability = durability
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        args: list[bytes] = [b"XADD", stream.encode()]
        if maxlen is not None:
            args += [b"MAXLEN", b"~", str(maxlen).encode()]
        args.append(b"*")
        self._xadd_args = len(args)
        self._xadd_prefix = b"".join(_bulk(a) for a in args)
        self._conn: Connection | None = None
        self._script_ready = False  # the dedup script is loaded on _conn
        self._pending: list[tuple[list[bytes], asyncio.Future[str]]] = []
        self._flushing = False
        self._backoff = 0.0
        self._down_until = 0.0
        self._closed = False
        # Figures for operators and the benchmark: batches sent, entries written.
        self.batches = 0
        self.entries = 0
        self.max_batch = 0

    async def start(self) -> None:
        """Connect, check the server answers, load the dedup script, start the high-water monitor."""
        try:
            await self._redis.ping()
            if self.dedup_window:
                await self._redis.script_load(_DEDUP_SCRIPT)
        except RedisError as exc:
            raise SinkError(f"redis queue {self._safe_url}: {exc}") from exc
        if self.high_water is not None:
            await self._measure()
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _measure(self) -> None:
        """full ⇔ the backlog (the group's lag when a group is named, else XLEN) > high_water."""
        assert self.high_water is not None
        backlog: int | None = None
        if self.group is not None:
            for info in await self._redis.xinfo_groups(self.stream):
                name = info.get("name")
                if name in (self.group, self.group.encode()) and info.get("lag") is not None:
                    backlog = int(info["lag"])
        if backlog is None:
            backlog = int(await self._redis.xlen(self.stream))
        full = backlog > self.high_water
        if full != self.full:
            log.warning("redis queue %s %s its high-water mark (%d > %d)", self._safe_url,
                        "passed" if full else "is back under", backlog, self.high_water)
        self.full = full

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.monitor_interval)
            try:
                await self._measure()
            except RedisError as exc:  # Redis away: commits already fail with 451
                log.debug("high-water check failed: %s", exc)

    def _pressure(self) -> Awaitable[None] | None:
        if self.inflight <= self.inflight_budget:
            return None
        if self._drained is None or self._drained.is_set():
            self._drained = asyncio.Event()
        return _wait(self._drained)

    def _released(self, octets: int) -> None:
        self.inflight -= octets
        if self._drained is not None and self.inflight <= self.inflight_budget // 2:
            self._drained.set()

    @property
    def _safe_url(self) -> str:
        """The URL without its password, for messages."""
        head, sep, tail = self.url.partition("@")
        return f"{head.split('://')[0]}://***@{tail}" if sep else self.url

    def open(self, envelope: Envelope) -> RedisStreamWriter:
        """Start a message (no I/O: the record is written at commit)."""
        if self._closed:
            raise SinkError("redis queue is closed")
        if time.monotonic() < self._down_until:
            raise SinkError(f"redis queue {self._safe_url} is unavailable (retrying)")
        return RedisStreamWriter(self, envelope)

    async def _commit(self, packed: list[bytes]) -> str:
        if time.monotonic() < self._down_until:
            raise SinkError(f"redis queue {self._safe_url} is unavailable (retrying)")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((packed, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Send batches until nothing is pending: commits arriving meanwhile join the next one."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: Sequence[tuple[list[bytes], asyncio.Future[str]]]) -> None:
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()
                self._script_ready = False
            if self.dedup_window and not self._script_ready:
                # On this connection, before the batch: a restarted Redis has no scripts.
                await conn.send_command("SCRIPT", "LOAD", _DEDUP_SCRIPT, check_health=False)
                await conn.read_response()
                self._script_ready = True
            out: list[bytes] = []
            for packed, _ in batch:
                out.extend(packed)
            await conn.send_packed_command(out, check_health=False)
            results: list[str | BaseException] = []
            for _ in batch:
                try:
                    entry = await conn.read_response()
                    results.append(entry.decode() if isinstance(entry, bytes) else str(entry))
                except NoScriptError as exc:  # scripts flushed: reload before the next batch
                    self._script_ready = False
                    results.append(exc)
                except ResponseError as exc:  # e.g. OOM: this entry failed, the stream is in sync
                    results.append(exc)
            if self.durability == "replicated":
                await self._wait_replicas(conn, results)
        except (RedisError, OSError, asyncio.CancelledError) as exc:
            self._fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._backoff = 0.0
        self.batches += 1
        self.entries += len(batch)
        self.max_batch = max(self.max_batch, len(batch))
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(SinkError(f"redis refused the entry: {result}"))
            else:
                future.set_result(result)

    async def _wait_replicas(self, conn: Connection, results: list[str | BaseException]) -> None:
        await conn.send_command("WAIT", self.replicas, self.wait_timeout_ms, check_health=False)
        acked = await conn.read_response()
        if not isinstance(acked, int) or acked < self.replicas:
            error = SinkError(f"only {acked} of {self.replicas} replicas confirmed within {self.wait_timeout_ms} ms")
            results[:] = [error] * len(results)

    def _fail(self, batch: Sequence[tuple[list[bytes], asyncio.Future[str]]], exc: BaseException) -> None:
        """Fail a batch, drop the connection (its replies are out of step), back off."""
        conn, self._conn = self._conn, None
        if conn is not None:
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
        self._backoff = min(5.0, self._backoff * 2 or 0.1)
        self._down_until = time.monotonic() + self._backoff
        log.warning("redis queue %s failed (%s); retrying in %.1f s", self._safe_url, exc, self._backoff)
        error = SinkError(f"redis queue {self._safe_url}: {exc}")
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Let the batch in flight finish, then close the connections."""
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        for _ in range(200):
            if not self._flushing:
                break
            await asyncio.sleep(0.01)
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None
        await self._redis.aclose()
