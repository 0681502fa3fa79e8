"""One connection to one Redis server with its group commit (ARCHITECTURE.md rule 4).

Commits queued while a batch is in flight wait for it and go out together as the next batch:
one ``write`` of hand-packed RESP on a :class:`~smtpfront.sink.redis.wire.Channel`, whose
replies resolve each commit's future. No task runs per batch: the first commit of a loop pass
schedules the send, the batch's answer sends the next one. A lone commit never waits for
company; while a large batch is on the wire (:data:`OVERLAP`), a second one may follow
(:data:`IN_FLIGHT`), so Redis copying a large body does not hold the next batch back.

A batch that fails (the connection lost, no answer within the timeout) takes the lane
**down**: every later commit is refused at once (the client gets ``451 4.3.0``) and nothing
is sent until a background probe gets an answer from Redis; only the probe paces its retries
(``PROBE_PAUSE`` doubling to ``PROBE_PAUSE_MAX``), so traffic cannot stretch the lane's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from ...metrics import instruments
from ..base import SinkError
from .large import RefusedError
from .wire import Channel, ReplyError, adopt, command

__all__ = ["IN_FLIGHT", "PROBE_PAUSE", "PROBE_PAUSE_MAX", "Lane", "LaneOwner"]

log = logging.getLogger(__name__)

PROBE_PAUSE = 0.05
"""Seconds between a probe attempt that failed and the next one, at first (then doubled)."""
PROBE_PAUSE_MAX = 0.4
"""The longest pause between probe attempts: a lane is back this soon after Redis answers."""
IN_FLIGHT = 2
"""Batches on the wire at once; more pending commits wait for one to be answered."""
OVERLAP = 64 * 1024
"""A second batch goes out while one is on the wire only if that one carries this many octets
(Redis copying a large body): small batches wait and grow (one write for many commits)."""

JOIN_LIMIT = 64 * 1024
"""Body octets up to which a batch is joined into one ``bytes`` for its write (small messages)."""

_Batch = Sequence[tuple[list[bytes], "asyncio.Future[str]", int]]  # packed command, its reply, octets
_SLOT_MOVED = (b"MOVED", b"ASK", b"CLUSTERDOWN", b"TRYAGAIN")  # the cluster's slot map changed


class LaneOwner(Protocol):
    """What a lane needs from its sink: the in-flight budget, durability, the figures."""

    inflight: int
    durability: Literal["ack", "replicated"]
    replicas: int
    wait_timeout_ms: int
    batches: int
    entries: int
    max_batch: int

    def released(self, octets: int) -> None: ...


class Lane:
    """Group commit over one adopted connection; ``trouble`` is called after a failure that may
    mean a cluster's slot map changed. ``scripts`` are loaded on every new connection (a
    restarted Redis has none) and again after a ``NOSCRIPT`` reply."""

    __slots__ = ("_owner", "_connect", "label", "_trouble", "_timeout", "_scripts", "_script_count", "_conn",
                 "_channel", "_load_scripts", "_pending", "_scheduled", "_connecting", "down", "_probe", "_closed",
                 "_on_wire")

    def __init__(self, owner: LaneOwner, connect: Callable[[], AbstractConnection], label: str, timeout: float,
                 scripts: Sequence[bytes] = (), trouble: Callable[[], None] | None = None) -> None:
        self._owner = owner
        self._connect = connect
        self.label = label
        self._trouble = trouble
        self._timeout = timeout
        self._scripts = b"".join(command(b"SCRIPT", b"LOAD", script) for script in scripts)
        self._script_count = len(scripts)
        self._conn: AbstractConnection | None = None  # redis-py's, connected (kept to close it)
        self._channel: Channel | None = None  # the same connection, adopted
        self._load_scripts = bool(scripts)  # before the next batch, on this connection
        self._pending: list[tuple[list[bytes], asyncio.Future[str], int]] = []
        self._scheduled = False
        self._on_wire = 0
        self._connecting: asyncio.Task[None] | None = None
        self.down = False
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    # -- commits ------------------------------------------------------------------------------

    def enqueue(self, packed: list[bytes], size: int) -> asyncio.Future[str]:
        """Queue a packed command (``size`` octets of body) for the next batch; its reply comes
        in the future. Commands go out in the order they were queued, on one connection.
        Raises SinkError at once, nothing queued, while the lane is down."""
        if self.down:
            raise SinkError(f"redis queue {self.label} is unavailable (retrying)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._owner.inflight += size
        self._pending.append((packed, future, size))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after this loop pass: its other commits join the batch
        return future

    @property
    def flushing(self) -> bool:
        """Commits are pending or on the wire."""
        channel = self._channel
        return bool(self._pending) or self._connecting is not None or (channel is not None and channel.in_flight > 0)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        if self.down:  # queued before the failure: nothing goes out now
            batch, self._pending = self._pending, []
            self._settle(batch, SinkError(f"redis queue {self.label} is unavailable (retrying)"))
            return
        channel = self._channel
        if channel is None or channel.lost is not None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._open())
            return
        if channel.in_flight >= IN_FLIGHT or (channel.in_flight and self._on_wire < OVERLAP):
            return  # an answer sends the next batch
        batch, self._pending = self._pending, []
        skip = self._script_count if self._load_scripts else 0  # the SCRIPT LOAD replies first
        out = [self._scripts] if skip else []
        for packed, _, _ in batch:
            out.extend(packed)
        owner = self._owner
        replicated = owner.durability == "replicated"
        if replicated:
            out.append(command(b"WAIT", b"%d" % owner.replicas, b"%d" % owner.wait_timeout_ms))
        # A batch carrying large bodies goes out as its parts: joined, it would be a second copy
        # of them in memory, outside the worker's memory budget, until the kernel took it.
        large = sum(size for _, _, size in batch) > JOIN_LIMIT
        data: bytes | list[bytes] = out if large else b"".join(out)
        try:
            answer = channel.call(data, skip + len(batch) + replicated)
        except ConnectionError as exc:
            self._failed(batch, exc)
            return
        self._on_wire = sum(len(part) for part in out) if large else len(data)  # the latest batch's octets
        self._load_scripts = False
        answer.add_done_callback(partial(self._answered, batch, skip))

    def _answered(self, batch: _Batch, skip: int, answer: asyncio.Future[list[Any]]) -> None:
        if answer.cancelled():
            self._failed(batch, ConnectionError(f"redis queue {self.label}: cancelled"))
        elif (exc := answer.exception()) is not None:
            self._failed(batch, exc)
        else:
            self._settle_replies(batch, answer.result()[skip:])
        if self._pending and not self._scheduled:
            self._flush()

    def _settle_replies(self, batch: _Batch, replies: list[Any]) -> None:
        owner = self._owner
        if owner.durability == "replicated":
            acked = replies.pop()
            if not isinstance(acked, int) or acked < owner.replicas:
                error = SinkError(f"only {acked} of {owner.replicas} replicas confirmed within "
                                  f"{owner.wait_timeout_ms} ms")
                self._settle(batch, error)
                return
        owner.batches += 1
        owner.entries += len(batch)
        owner.max_batch = max(owner.max_batch, len(batch))
        instruments().batch_size.observe(len(batch))
        self._release(batch)
        for (_, future, _), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, ReplyError):  # e.g. OOM: this entry failed, the stream is in sync
                instruments().queue_errors.inc()
                text = str(reply)
                if text.startswith("NOSCRIPT"):
                    self._load_scripts = True  # SCRIPT FLUSH on the server: load them again first
                elif text.encode().startswith(_SLOT_MOVED) and self._trouble is not None:
                    self._trouble()
                future.set_exception(RefusedError(f"redis refused the entry: {text}"))
            else:
                future.set_result(reply.decode() if isinstance(reply, bytes) else str(reply))

    def _release(self, batch: _Batch) -> None:
        self._owner.released(sum(size for _, _, size in batch))

    def _settle(self, batch: _Batch, error: BaseException) -> None:
        self._release(batch)
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(error)

    def _failed(self, batch: _Batch, exc: BaseException) -> None:
        """A batch failed: its commits get 451, the lane goes down until the probe hears Redis."""
        m = instruments()
        m.queue_errors.inc()
        m.queue_up.set(0)
        self._down(exc)
        self._settle(batch, SinkError(f"redis queue {self.label}: {exc}"))

    # -- the connection -------------------------------------------------------------------------

    async def _ready(self) -> Channel:
        """The adopted connection, opened (and its scripts scheduled) if need be."""
        channel = self._channel
        if channel is not None and channel.lost is None:
            return channel
        conn = self._conn
        if conn is None or channel is not None:  # none yet, or its channel was lost
            conn = self._conn = self._connect()
            await conn.connect()  # type: ignore[no-untyped-call]
        self._channel = channel = adopt(conn, self.label, self._timeout)
        self._load_scripts = bool(self._scripts)
        return channel

    async def _open(self) -> None:
        try:
            await self._ready()
        except (RedisError, OSError) as exc:
            self._connecting = None
            batch, self._pending = self._pending, []
            self._failed(batch, exc)
            return
        except BaseException:
            self._connecting = None
            raise
        self._connecting = None
        self._flush()

    async def warm(self) -> BaseException | None:
        """Connect (and load the scripts) ahead of the first batch; a failure takes the lane
        down (the probe starts) and is returned."""
        try:
            channel = await self._ready()
            if self._scripts:
                await channel.call(self._scripts, 1)
                self._load_scripts = False
        except (RedisError, OSError) as exc:
            self._down(exc)
            return exc
        return None

    def _down(self, exc: BaseException) -> None:
        """Drop the connection, refuse commits; a probe watches for Redis coming back."""
        self._drop_connection()
        if not self.down:
            self.down = True
            log.warning("redis queue %s failed (%s); refusing mail until it answers again", self.label, exc)
        if self._trouble is not None:
            self._trouble()
        if not self._closed and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    def _drop_connection(self) -> None:
        channel, self._channel = self._channel, None
        conn, self._conn = self._conn, None
        if channel is not None:
            channel.close()
        if conn is not None:
            asyncio.get_running_loop().create_task(_disconnect(conn))

    async def _recover(self) -> None:
        """Connect and PING (on a connection of its own) until Redis answers; then the lane is
        up again, traffic or not. An attempt waits at most the Redis timeout; after a failed
        one the probe pauses (``PROBE_PAUSE``, doubled up to ``PROBE_PAUSE_MAX``)."""
        pause = PROBE_PAUSE
        while self.down and not self._closed:
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("PING", check_health=False)
                await conn.read_response()
            except (RedisError, OSError) as exc:
                await _disconnect(conn)
                log.debug("redis queue %s: probe failed: %s", self.label, exc)
                await asyncio.sleep(pause)
                pause = min(PROBE_PAUSE_MAX, pause * 2)
                continue
            except BaseException:
                await _disconnect(conn)
                raise
            if self._conn is None and self._connecting is None:  # the next batch goes out on it
                self._conn = conn
            else:
                await _disconnect(conn)
            if self.down:
                self.down = False
                instruments().queue_up.set(1)
                log.info("redis queue %s answers again", self.label)

    async def close(self) -> None:
        """Let the batches in flight finish (2 s at most), stop the probe, close the connection."""
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
        for _ in range(200):
            if not self.flushing:
                break
            await asyncio.sleep(0.01)
        self._drop_connection()


async def _disconnect(conn: AbstractConnection) -> None:
    """Close a redis-py connection without waiting on a peer that may be gone."""
    with contextlib.suppress(RedisError, OSError):
        await conn.disconnect(nowait=True)
