"""``RedisStreamSink``: every accepted message becomes one Redis stream entry.

Group commit (:mod:`smtpfront.sink.redis_lane`): messages that finish while a batch is in
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

Where the queue lives (the URL decides, see :func:`smtpfront.sink.redis_url.parse_queue_url`):

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
:mod:`smtpfront.sink.redis_large`. So is a body below the threshold once the worker's memory
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

The Redis queue's modules: this one (the sink and its writer), ``redis_topology`` (where the
queue lives), ``redis_lane`` (group commit on one connection), ``redis_wire`` (RESP out,
hiredis in), ``redis_url`` (the URL grammar), ``redis_large`` (large bodies).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable
from functools import partial
from typing import Any, Literal

from redis.exceptions import (
    RedisClusterException,
    RedisError,
)

from ..metrics import instruments
from .base import Envelope, Holding, SinkError
from .record import envelope_fields
from .redis_large import UPLOAD_TTL, Upload
from .redis_topology import Cluster, Single, Target, Topology
from .redis_url import parse_queue_url
from .redis_wire import bulk, xadd_head

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



# -- the writer -------------------------------------------------------------------------------


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


# RFC 5322 §3.6.4: a Message-ID field in the header block (case-insensitive field name).
_MESSAGE_ID = re.compile(rb"\r\nmessage-id[ \t]*:", re.IGNORECASE)
_HEADER_LIMIT = 64 * 1024  # a header block longer than this is decided on what was seen


class RedisStreamWriter:
    """Collects one message's body parts until commit; past the large threshold, uploads them."""

    __slots__ = ("_sink", "_envelope", "_parts", "_size", "_digest", "_head", "_block", "_limit", "_upload",
                 "_target", "_holding", "_gone")

    def __init__(self, sink: RedisStreamSink, envelope: Envelope) -> None:
        self._sink = sink
        self._envelope = envelope
        self._parts: list[bytes] = [envelope.trace] if envelope.trace else []
        self._size = len(envelope.trace)
        self._digest = hashlib.sha256() if sink.dedup_window else None
        self._head: bytes | None = b"" if sink.dedup_window else None  # the header block, until decided
        self._block = b""  # the header block, once decided (it routes a large message in a cluster)
        # Octets (trace included) past which the body is uploaded: the threshold counts body octets.
        self._limit = sink.large_threshold + len(envelope.trace) if sink.large_threshold else 1 << 62
        self._upload: Upload | None = None
        self._target: Target | None = None
        self._holding: Holding | None = None  # the worker's memory budget (sink/base.py Holding)
        self._gone = 0  # octets given to write() and released from the budget

    # -- the worker's memory budget: what this message holds in memory (see sink/base.py Holding) --

    def account(self, holding: Holding) -> None:
        """Count this message's octets in the worker's memory budget until they leave memory."""
        self._holding = holding

    def spill(self) -> bool:
        """The budget is full: upload what is held now (as a version-2 record, even below the
        large threshold); True when nothing held stays without more input. False when the
        body cannot go out before its commit (``large_threshold = 0``, or its header block is
        not read whole yet), or when Redis refuses (the next write or the commit says so)."""
        if self._upload is None and (self._head is not None or not self._sink.large_threshold):
            return False
        try:
            if self._upload is None:
                self._start_upload()
            assert self._upload is not None
            self._upload.flush()
        except SinkError:
            return False
        return True

    def _release(self, octets: int) -> None:
        """``octets`` left memory (at most what write() was given and is not yet released:
        chunk sizes include the trace, counted out with the first chunk)."""
        holding = self._holding
        if holding is not None:
            octets = min(octets, self._size - len(self._envelope.trace) - self._gone)
            if octets > 0:
                self._gone += octets
                holding.release(octets)

    def _release_all(self, _: object = None) -> None:
        self._release(self._size)

    def write(self, data: memoryview) -> None:
        """Keep a copy of the chunk (the view points into the receive buffer), or upload it."""
        chunk = bytes(data)
        self._size += len(chunk)
        if self._digest is not None:
            self._digest.update(chunk)
            if self._head is not None:
                self._read_header(chunk)
        if self._upload is not None:
            self._upload.add(chunk)
            return
        self._parts.append(chunk)
        if self._size > self._limit and self._head is None:
            self._start_upload()

    def _start_upload(self) -> None:
        """The body passed the large threshold: from now on it goes to Redis as it comes."""
        sink = self._sink
        self._target = target = sink.topology.target(self)
        key = target.body_prefix + uuid.uuid4().hex.encode()
        self._upload = upload = Upload(partial(sink.topology.lane_for, target.shard), key, sink.upload_ttl,
                                       self._release)
        parts, self._parts = self._parts, []
        for part in parts:
            upload.add(part)

    def _read_header(self, chunk: bytes) -> None:
        """Decide whether this message can be deduplicated: only with a Message-ID.

        Without one, a retry cannot be told from a new message with the same text (a
        monitoring script sending the same alert twice): both must be queued.
        """
        assert self._head is not None
        head = self._head + chunk
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) < _HEADER_LIMIT:
            self._head = head
            return
        block = b"\r\n" + (head if end < 0 else head[: end + 2])
        if _MESSAGE_ID.search(block) is None:
            self._digest = None
        else:
            self._block = block
        self._head = None

    def pressure(self) -> Awaitable[None] | None:
        """Past the worker's in-flight budget (bytes queued for Redis): wait for it to drain.

        Only bytes sent to Redis count (committed messages, chunks of large ones): they drain
        by themselves as batches complete. Bytes of messages still arriving do not (their
        clients may be the ones waiting here); they are bounded by the large threshold (past
        it a body goes out as it comes) times the connection limit. A large message also
        waits while its own chunks in flight fill the window.
        """
        if self._upload is not None:
            waiting = self._upload.pressure()  # this message's own chunks in flight
            if waiting is not None:
                return waiting
        return self._sink._pressure()

    def commit(self) -> Awaitable[str]:
        """XADD the record (in the next batch); the awaitable gives the stream entry id.

        In a cluster the id is ``SHARD/ENTRY-ID``. A message under the large threshold gets
        the batch's own future: no coroutine or task per message (the server adds a
        callback to it). Raises SinkError at once while the lane is down.
        """
        if self._holding is not None:
            self._holding.close()
        if self._head is not None:  # the body ended inside its headers
            self._read_header(b"\r\n\r\n")
        if self._upload is not None:
            return self._commit_large(self._upload)
        lane, packed, shard = self._sink.topology.route(self)
        entry = lane.enqueue(packed, self._size)
        self._parts = []
        if self._holding is not None:  # the parts stay in the lane until its batch is answered
            entry.add_done_callback(self._release_all)
        return entry if shard is None else _prefixed(entry, f"{shard}/")

    async def _commit_large(self, upload: Upload) -> str:
        sink, target = self._sink, self._target
        assert target is not None
        dedup = None if self._digest is None else target.dedup_prefix + self._dedup_hash()
        try:
            ref = upload.finish()
            entry = await upload.commit(target.stream, dedup, sink.dedup_window, sink.maxlen,
                                        envelope_fields(self._envelope, ref))
        finally:
            self._release_all()  # every chunk was answered before the commit script (one connection)
        return entry if target.shard is None else f"{target.shard}/{entry}"

    async def abort(self) -> None:
        """Forget the parts; delete the chunk keys of an upload that was not committed."""
        self._parts = []
        if self._holding is not None:
            self._holding.close()
            self._release_all()  # a message aborted is counted out at once (its last chunks may still fly)
        if self._upload is not None:
            await self._upload.abort()

    def dedup_hash(self) -> bytes | None:
        """The message's idempotency hash, or None when it cannot be deduplicated (no
        Message-ID, or dedup off): a topology routes on it."""
        return None if self._digest is None else self._dedup_hash()

    def header_hash(self) -> int | None:
        """For a large message whose body is not complete yet: a hash of its envelope and header
        block (Message-ID included), so that a retry routes the same way; None without dedup."""
        if self._digest is None:
            return None
        env = self._envelope
        digest = hashlib.sha256(self._block + b"\0" + str(env.mail_from).encode() + b"\0"
                                + b"\0".join(str(r.address).encode() for r in env.recipients))
        return int(digest.hexdigest()[:8], 16)

    def _dedup_hash(self) -> bytes:
        """The idempotency hash: the envelope and the body (our trace, which is unique, excluded).

        A client that lost our 250 and retries sends the same sender, recipients and body
        (Message-ID included), so it maps to the same key within the window.
        """
        assert self._digest is not None
        digest = self._digest.copy()
        env = self._envelope
        digest.update(b"\0" + str(env.mail_from).encode() + b"\0")
        digest.update(b"\0".join(str(r.address).encode() for r in env.recipients))
        return digest.hexdigest().encode()

    def packed(self, xadd_head: bytes, stream: bytes, dedup_key: bytes | None) -> list[bytes]:
        """The XADD command in RESP (or the dedup script around it), the body as its parts."""
        sink = self._sink
        fields = envelope_fields(self._envelope)
        head: list[bytes] = []
        for name, value in fields:
            head.append(bulk(name))
            head.append(bulk(value))
        head.append(bulk(b"body"))
        head.append(b"$%d\r\n" % self._size)
        if dedup_key is None:
            count = sink._xadd_args + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + xadd_head
        else:
            # EVALSHA sha 2 dedup-key stream window maxlen field value ... (see _DEDUP_SCRIPT)
            count = 7 + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + b"".join(bulk(a) for a in (
                b"EVALSHA", sink._dedup_sha, b"2", dedup_key, stream,
                str(sink.dedup_window).encode(), str(sink.maxlen or 0).encode()))
        return [prefix + b"".join(head), *self._parts, b"\r\n"]


def _prefixed(entry: asyncio.Future[str], prefix: str) -> asyncio.Future[str]:
    """A future of ``prefix + entry``'s result (its failure, its cancellation)."""
    out: asyncio.Future[str] = entry.get_loop().create_future()

    def done(f: asyncio.Future[str]) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(prefix + f.result())

    entry.add_done_callback(done)
    return out


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
            version 2 first). See :mod:`smtpfront.sink.redis_large`.
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
        self._dedup_sha = hashlib.sha1(_DEDUP_SCRIPT).hexdigest().encode()  # Redis names scripts by SHA-1
        self.scripts = (_DEDUP_SCRIPT,) if dedup_window else ()  # loaded on every lane's connection
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
