"""``RedisStreamSink``: every accepted message becomes one Redis stream entry.

Group commit (:mod:`smtpfront.sink.redis.lane`): messages that finish while a batch is in
flight form the next batch, sent as one write of hand-packed ``XADD`` commands (the parts a
body arrived in are joined once, into that write) on one connection, with the replies read
in order. No
timer ever delays a lone message. Each client gets its ``250`` only after its own
``XADD`` reply; an error reply, a lost connection or a timeout fails that batch's commits
(the clients get ``451 4.3.0`` and retry). A failed batch (a timeout, a lost connection)
takes its lane down: from then on every commit is refused at once, no batch goes out and no
connection is opened for one, until the background probe gets an answer. A Redis that stops
answering costs its clients one timeout, once, not one per batch.

Durability: ``ack`` (default) trusts the XADD reply, which means the entry is in Redis's
memory; how it survives a Redis crash is Redis's ``appendonly``/``appendfsync`` setting
(``always``: fsynced before the reply; ``everysec``: up to a second may be lost).
``replicated`` adds ``WAIT n timeout`` after each batch and fails the batch's commits
when fewer replicas confirm (the entries may then exist twice after the client's retry:
delivery is at-least-once).

Where the queue lives (the URL decides, see :func:`smtpfront.sink.redis.url.parse_queue_url`):

``redis://[USER:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS, ``unix://PATH``)
    One server: one connection, one stream, the path described above.
``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` (``rediss+sentinel://``)
    The master that Sentinel names for ``SERVICE`` (sentinel port 26379 by default), then
    the same single-server path. Every new connection asks the sentinels again, so after
    a failover the next batch (the one after the failed one) goes to the new master. The
    credentials are the master's; the sentinels are asked without any.
``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/?shards=N`` (``rediss+cluster://``)
    Redis Cluster, seeded by any of the nodes listed. The stream is split into ``N``
    (default 16) shard streams ``STREAM:{0}`` … ``STREAM:{N-1}`` (:func:`shard_stream`).
    The ``{i}`` is a hash tag, so shard ``i``'s stream, its dedup keys
    (``STREAM:{i}:dedup:<sha256>``) and the consumer's dead letters (``STREAM:{i}:dead``)
    share one slot, as the dedup script (which touches two keys) requires. Each message goes
    to the shard its dedup hash names, so a retried message lands on the same shard and is
    recognised there; with dedup off, shards take turns (skipping shards whose node is
    down). redis-py's ``RedisCluster`` reads the slot map; then each master node
    gets its own connection carrying that node's group commits exactly as on one server (a
    batch holds entries for every shard the node owns). A ``MOVED``/``ASK``/``CLUSTERDOWN``
    reply fails that entry; a lost connection fails that node's batch and takes that node's
    lane down; either refreshes the slot map in the background. Other nodes keep taking mail.
    The ``250`` names the entry as ``SHARD/ENTRY-ID`` (entry ids repeat across streams).

Large messages (body octets past ``large_threshold``, 1 MiB by default) are written into
chunk keys while they arrive and committed as a version-2 entry naming them: see
:mod:`smtpfront.sink.redis.large`. So is a body below the threshold once the worker's memory
budget is full (``spill``; ``aio/budget.py``): its octets then leave as Redis answers. In a
cluster such a message's shard is chosen when its upload starts: from its header block and
envelope when it can be deduplicated (a retry lands on the same shard), else by turns.

While a lane (a server's, or a cluster node's connection) is down, a background probe
connects and sends ``PING`` on a connection of its own, again and again (each attempt
waits at most the Redis timeout; between failed attempts it pauses :data:`PROBE_PAUSE`,
doubling up to :data:`PROBE_PAUSE_MAX`); the first answer brings the lane, and ``smtpfront_queue_up``, back without
waiting for traffic. Only the probe paces the retries: traffic never reaches a lane that is
down, so it can neither delay the lane's return nor wait on Redis meanwhile.

Rule: ``redis`` is imported only by the Redis modules of the sink and by the consumer side.

The Redis queue's modules (the package ``smtpfront.sink.redis``): this one (the sink, its
in-flight budget and high-water mark), ``writer`` (one message: its parts, dedup, commit),
``topology`` (where the queue lives), ``lane`` (group commit on one connection), ``wire``
(RESP out, hiredis in), ``url`` (the URL grammar), ``large`` (large bodies), ``limits`` (the
client limits' counters in the queue's Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from typing import Any, Literal

from redis.exceptions import (
    RedisClusterException,
    RedisError,
)

from ...metrics import instruments
from ..base import Envelope, SinkError
from .large import UPLOAD_TTL
from .topology import Cluster, Single, Topology
from .url import parse_queue_url
from .wire import bulk, xadd_head
from .writer import DEDUP_SCRIPT, RedisStreamWriter

__all__ = ["RedisStreamSink", "RedisStreamWriter"]

log = logging.getLogger(__name__)


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


# -- the sink ---------------------------------------------------------------------------------


class RedisStreamSink:
    """Queue accepted messages into a Redis stream (or, in a cluster, shard streams).

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS), or a
            ``redis+sentinel://`` or ``redis+cluster://`` URL (see the module docstring).
        stream: the stream key (in a cluster, the prefix of the shard streams).
        maxlen: trim with ``MAXLEN ~ maxlen`` (None: never trim; unconsumed mail is never
            dropped by default).
        timeout: socket timeout for Redis I/O, seconds.
        durability: ``ack`` or ``replicated`` (``WAIT replicas wait_timeout_ms``).
        replicas, wait_timeout_ms: for ``replicated``.
        shards: cluster only: the number of shard streams (default: the URL's ``shards=N``,
            else :data:`DEFAULT_SHARDS`). Producers and consumers must agree on it.
        large_threshold: body octets past which a message is written into chunk keys as it
            arrives and queued as a version-2 record (0: never; every consumer must read
            version 2 first). See :mod:`smtpfront.sink.redis.large`.
        upload_ttl: seconds the chunk keys of a message not committed live (a crash's leftovers).

    Raises:
        ValueError: the URL or an option is malformed.
    """

    def __init__(self, url: str, *, stream: str = "smtpfront:inbound", maxlen: int | None = None,
                 timeout: float = 10.0, durability: Literal["ack", "replicated"] = "ack", replicas: int = 1,
                 wait_timeout_ms: int = 1000, dedup_window: int = 900, high_water: int | None = None,
                 group: str | None = None, monitor_interval: float = 1.0,
                 inflight_budget: int = 64 * 1024 * 1024, shards: int | None = None,
                 large_threshold: int = 1024 * 1024, upload_ttl: int = UPLOAD_TTL) -> None:
        if large_threshold < 0 or upload_ttl < 1:
            raise ValueError("large_threshold must not be negative, upload_ttl must be positive")
        self.url = url
        self.large_threshold = large_threshold
        self.upload_ttl = upload_ttl
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
        self._sampler: asyncio.TimerHandle | None = None
        self.dedup_prefix = f"{stream}:dedup:".encode()
        self._dedup_sha = hashlib.sha1(DEDUP_SCRIPT).hexdigest().encode()  # Redis names scripts by SHA-1
        # The dedup script's call, packed once: EVALSHA sha 2 … and, after the keys, window maxlen.
        self.evalsha_head = bulk(b"EVALSHA") + bulk(self._dedup_sha) + bulk(b"2")
        self.evalsha_args = bulk(b"%d" % dedup_window) + bulk(b"%d" % (maxlen or 0))
        self.scripts = (DEDUP_SCRIPT,) if dedup_window else ()  # loaded on every lane's connection
        self.durability = durability
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._xadd_args, self.xadd_head = xadd_head(stream.encode(), maxlen)
        self._closed = False
        # Figures for operators and the benchmark: batches sent, entries written.
        self.batches = 0
        self.entries = 0
        self.max_batch = 0
        queue = parse_queue_url(url)
        self.topology: Topology
        if queue.kind == "cluster":
            self.shards = shards or queue.shards
            self.topology = Cluster(self, queue, self.shards, timeout)
        else:
            if shards:
                raise ValueError(f"shards={shards}: sharded streams need a redis+cluster:// queue")
            self.shards = 0  # one stream
            self.topology = Single(self, queue, timeout)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStreamSink:
        """The sink for any Redis queue URL (the constructor; it takes every URL form)."""
        return cls(url, **options)

    async def start(self) -> None:
        """Connect, check the server answers, load the dedup script, start the high-water monitor."""
        try:
            await self.topology.start()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise SinkError(f"redis queue {self.safe_url}: {exc}") from exc
        instruments().queue_up.set(1)
        self._sample()
        if self.high_water is not None:
            await self._measure()
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _sample(self) -> None:
        """The in-flight bytes gauge, sampled every ``monitor_interval`` (a gauge write per
        batch cost more than the batch's own Python)."""
        instruments().inflight_bytes.set(self.inflight)
        if not self._closed:
            self._sampler = asyncio.get_running_loop().call_later(self.monitor_interval, self._sample)

    async def _measure(self) -> None:
        """full ⇔ the backlog (the group's lag when a group is named, else XLEN; summed over
        the shards in a cluster) > high_water."""
        assert self.high_water is not None
        backlog = await self.topology.backlog()
        full = backlog > self.high_water
        if full != self.full:
            log.warning("redis queue %s %s its high-water mark (%d > %d)", self.safe_url,
                        "passed" if full else "is back under", backlog, self.high_water)
        self.full = full
        m = instruments()
        m.queue_backlog.set(backlog)
        m.queue_full.set(1 if full else 0)

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.monitor_interval)
            try:
                await self._measure()
            except (RedisError, RedisClusterException) as exc:  # Redis away: commits already fail with 451
                log.debug("high-water check failed: %s", exc)

    def _pressure(self) -> Awaitable[None] | None:
        if self.inflight <= self.inflight_budget:
            return None
        if self._drained is None or self._drained.is_set():
            self._drained = asyncio.Event()
        return _wait(self._drained)

    def released(self, octets: int) -> None:
        """``octets`` committed earlier are answered (or failed): out of the in-flight budget."""
        self.inflight -= octets
        if self._drained is not None and self.inflight <= self.inflight_budget // 2:
            self._drained.set()

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        head, sep, tail = self.url.rpartition("@")
        return f"{head.split('://')[0]}://***@{tail}" if sep else self.url

    def open(self, envelope: Envelope) -> RedisStreamWriter:
        """Start a message (no I/O: the record is written at commit)."""
        if self._closed:
            raise SinkError("redis queue is closed")
        if not self.topology.available():
            raise SinkError(f"redis queue {self.safe_url} is unavailable (retrying)")
        return RedisStreamWriter(self, envelope)

    async def close(self) -> None:
        """Let the batches in flight finish, then close the connections."""
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
        await self.topology.close()
        instruments().inflight_bytes.set(self.inflight)
