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
import logging
import time
from collections.abc import Sequence
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from .base import Envelope, SinkError
from .record import envelope_fields

__all__ = ["RedisStreamSink", "RedisStreamWriter"]

log = logging.getLogger(__name__)


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


class RedisStreamWriter:
    """Collects one message's body parts until commit."""

    __slots__ = ("_sink", "_envelope", "_parts", "_size")

    def __init__(self, sink: RedisStreamSink, envelope: Envelope) -> None:
        self._sink = sink
        self._envelope = envelope
        self._parts: list[bytes] = [envelope.trace] if envelope.trace else []
        self._size = len(envelope.trace)

    def write(self, data: memoryview) -> None:
        """Keep a copy of the chunk (the view points into the receive buffer)."""
        self._parts.append(bytes(data))
        self._size += len(data)

    async def commit(self) -> str:
        """XADD the record (in the next batch); returns the stream entry id."""
        return await self._sink._commit(self._packed())

    async def abort(self) -> None:
        """Nothing was sent yet: forget the parts."""
        self._parts = []

    def _packed(self) -> list[bytes]:
        """The XADD command in RESP, the body as its parts (no concatenation)."""
        head: list[bytes] = [self._sink._xadd_prefix]
        fields = envelope_fields(self._envelope)
        count = self._sink._xadd_args + 2 * len(fields) + 2
        for name, value in fields:
            head.append(_bulk(name))
            head.append(_bulk(value))
        head.append(_bulk(b"body"))
        head.append(b"$%d\r\n" % self._size)
        return [b"*%d\r\n" % count + b"".join(head), *self._parts, b"\r\n"]


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
                 wait_timeout_ms: int = 1000) -> None:
        self.url = url
        self.stream = stream
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
        """Connect and check the server answers (a clear error at start, not at the first message)."""
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise SinkError(f"redis queue {self._safe_url}: {exc}") from exc

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
            out: list[bytes] = []
            for packed, _ in batch:
                out.extend(packed)
            await conn.send_packed_command(out, check_health=False)
            results: list[str | BaseException] = []
            for _ in batch:
                try:
                    entry = await conn.read_response()
                    results.append(entry.decode() if isinstance(entry, bytes) else str(entry))
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
        for _ in range(200):
            if not self._flushing:
                break
            await asyncio.sleep(0.01)
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None
        await self._redis.aclose()
