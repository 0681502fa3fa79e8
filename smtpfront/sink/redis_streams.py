"""``RedisStreamSink``: every accepted message becomes one Redis stream entry.

Group commit: messages that finish while a batch is in flight form the next batch, sent as
one pipelined write of ``XADD`` commands (hand-packed RESP; the body goes out as the parts
it arrived in, never concatenated) on one connection, with the replies read in order. No
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

Where the queue lives (the URL decides, see :func:`parse_queue_url`):

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

Rule: ``redis`` is imported only here and by the consumer (which reuses the URL parsing).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    RedisClusterException,
    RedisError,
    ResponseError,
)

from ..metrics import instruments
from .base import Envelope, Holding, SinkError
from .record import envelope_fields
from .redis_lane import Lane
from .redis_large import UPLOAD_TTL, Upload

__all__ = [
    "DEFAULT_SHARDS", "QueueURL", "RedisStreamSink", "RedisStreamWriter", "parse_queue_url", "shard_stream",
]

log = logging.getLogger(__name__)

DEFAULT_SHARDS = 16
"""Shard streams of a ``redis+cluster://`` queue whose URL names no ``shards=N``."""

_MAX_SHARDS = 16384  # one per hash slot is the most that can spread

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



# -- URLs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueURL:
    """A parsed Redis queue URL.

    ``kind`` ``"redis"`` (``redis://``, ``rediss://``, ``unix://``): ``url`` goes to redis-py
    as it is and no other field is set. ``"sentinel"``: ``nodes`` are the sentinels,
    ``service`` and ``db`` name the master's database. ``"cluster"``: ``nodes`` seed the
    slot map discovery, ``shards`` is the number of shard streams.
    """

    kind: Literal["redis", "sentinel", "cluster"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    service: str = ""
    db: int = 0
    shards: int = 0


_SCHEMES: dict[str, tuple[Literal["redis", "sentinel", "cluster"], bool]] = {
    "redis": ("redis", False), "rediss": ("redis", True), "unix": ("redis", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}


def parse_queue_url(url: str) -> QueueURL:
    """Parse a queue URL (see the module docstring); ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"{url!r} is not a Redis URL: use redis://HOST:PORT/DB, rediss://…, unix://PATH, "
                         "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] or "
                         "redis+cluster://HOST:PORT[,HOST:PORT...]/?shards=N")
    kind, ssl = _SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if kind == "redis":
        if "shards" in params:
            raise ValueError(f"{url!r}: shards=N needs a redis+cluster:// URL")
        return QueueURL("redis", url)
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = 26379 if kind == "sentinel" else 6379
    nodes = tuple(_host_port(host, default_port, url) for host in hosts.split(","))
    service, db, shards = "", 0, 0
    if kind == "cluster":
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"{url!r}: Redis Cluster has database 0 only")
        text = params.pop("shards", str(DEFAULT_SHARDS))
        if not text.isdigit() or not 0 < int(text) <= _MAX_SHARDS:
            raise ValueError(f"{url!r}: shards wants a number from 1 to {_MAX_SHARDS}")
        shards = int(text)
    else:
        name, _, db_text = path.partition("/")
        service, db_text = unquote(name), db_text.strip("/") or "0"
        if not service:
            raise ValueError(f"{url!r}: name the master: redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]")
        if not db_text.isdigit():
            raise ValueError(f"{url!r}: the database is a number, got {db_text!r}")
        db = int(db_text)
    if params:
        raise ValueError(f"{url!r}: unknown parameter {', '.join(sorted(params))}"
                         + (" (a cluster URL takes shards=N)" if kind == "cluster" else ""))
    return QueueURL(kind, url, nodes, username, password, ssl, service, db, shards)


def _host_port(text: str, default: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [v6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = text, ""
    if not host or not (port or str(default)).isdigit() or not 0 < int(port or default) < 65536:
        raise ValueError(f"{url!r}: {text!r} is not HOST:PORT")
    return host, int(port or default)


def shard_stream(stream: str, shard: int) -> str:
    """Shard ``shard``'s stream in a cluster: ``STREAM:{SHARD}``, the shard number a hash tag."""
    return f"{stream}:{{{shard}}}"


def _check_stream_name(stream: str) -> None:
    if "{" in stream or "}" in stream:
        raise ValueError(f"stream {stream!r}: a sharded stream name must not contain braces (hash tags)")


# -- the writer -------------------------------------------------------------------------------


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def _xadd_head(stream: bytes, maxlen: int | None) -> tuple[int, bytes]:
    """``XADD stream [MAXLEN ~ n] *`` in RESP, and how many arguments that is."""
    args: list[bytes] = [b"XADD", stream]
    if maxlen is not None:
        args += [b"MAXLEN", b"~", str(maxlen).encode()]
    args.append(b"*")
    return len(args), b"".join(_bulk(a) for a in args)


# RFC 5322 §3.6.4: a Message-ID field in the header block (case-insensitive field name).
_MESSAGE_ID = re.compile(rb"\r\nmessage-id[ \t]*:", re.IGNORECASE)
_HEADER_LIMIT = 64 * 1024  # a header block longer than this is decided on what was seen


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a large message goes: its shard (None: the one stream) and that stream's key names."""

    shard: int | None
    stream: bytes
    dedup_prefix: bytes
    body_prefix: bytes


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
        self._target: _Target | None = None
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
        self._target = target = sink._topology.target(self)
        key = target.body_prefix + uuid.uuid4().hex.encode()
        self._upload = upload = Upload(partial(sink._topology.lane_for, target.shard), key, sink.upload_ttl,
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
        lane, packed, shard = self._sink._topology.route(self)
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

    def _packed(self, xadd_head: bytes, stream: bytes, dedup_key: bytes | None) -> list[bytes]:
        """The XADD command in RESP (or the dedup script around it), the body as its parts."""
        sink = self._sink
        fields = envelope_fields(self._envelope)
        head: list[bytes] = []
        for name, value in fields:
            head.append(_bulk(name))
            head.append(_bulk(value))
        head.append(_bulk(b"body"))
        head.append(b"$%d\r\n" % self._size)
        if dedup_key is None:
            count = sink._xadd_args + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + xadd_head
        else:
            # EVALSHA sha 2 dedup-key stream window maxlen field value ... (see _DEDUP_SCRIPT)
            count = 7 + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + b"".join(_bulk(a) for a in (
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


# -- where the queue lives --------------------------------------------------------------------


async def _backlog(client: aioredis.Redis | RedisCluster, stream: str, group: str | None) -> int:
    """The group's lag on ``stream`` when a group is named (and known), else XLEN."""
    if group is not None:
        try:
            infos: Any = await client.xinfo_groups(stream)
        except ResponseError:  # no such stream (yet)
            infos = []
        for info in infos:
            name = info.get("name")
            if name in (group, group.encode()) and info.get("lag") is not None:
                return int(info["lag"])
    return int(await client.xlen(stream))


class _Topology(Protocol):
    async def start(self) -> None: ...
    def route(self, writer: RedisStreamWriter) -> tuple[Lane, list[bytes], int | None]: ...
    def target(self, writer: RedisStreamWriter) -> _Target: ...
    def lane_for(self, shard: int | None) -> Lane: ...
    def available(self) -> bool: ...
    async def backlog(self) -> int: ...
    async def close(self) -> None: ...


class _Single:
    """One server (``redis://``, ``rediss://``, ``unix://``), or the master Sentinel names."""

    def __init__(self, sink: RedisStreamSink, queue: QueueURL, timeout: float) -> None:
        self._sink = sink
        self._sentinel: Sentinel | None = None
        self.redis: aioredis.Redis
        if queue.kind == "sentinel":
            # A sentinel that is away is skipped at once (no retries): the next one is asked.
            watchers = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "ssl": queue.ssl,
                        "retry": Retry(NoBackoff(), 0)}
            self._sentinel = Sentinel(
                list(queue.nodes), sentinel_kwargs=watchers, socket_timeout=timeout, socket_connect_timeout=timeout,
            )
            self.redis = self._sentinel.master_for(
                queue.service, db=queue.db, username=queue.username, password=queue.password, ssl=queue.ssl,
            )
        else:
            self.redis = aioredis.Redis.from_url(queue.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.lane = Lane(sink, self.redis.connection_pool.make_connection, sink._safe_url, timeout, sink.scripts)
        self._stream = sink.stream.encode()
        self._target = _Target(None, self._stream, sink._dedup_prefix, self._stream + b":body:")

    async def start(self) -> None:
        # As in a cluster: connect the lane and load the dedup script on the connection the
        # batches will use, once (not on a pool connection, then again on the lane's).
        failure = await self.lane.warm()
        if failure is not None:
            await self.lane.close()  # no probe for a sink that did not start
            raise failure

    def route(self, writer: RedisStreamWriter) -> tuple[Lane, list[bytes], int | None]:
        sink = self._sink
        dedup = None if writer._digest is None else sink._dedup_prefix + writer._dedup_hash()
        return self.lane, writer._packed(sink._xadd_head, self._stream, dedup), None

    def target(self, writer: RedisStreamWriter) -> _Target:
        return self._target

    def lane_for(self, shard: int | None) -> Lane:
        return self.lane

    def available(self) -> bool:
        return not self.lane.down

    async def backlog(self) -> int:
        return await _backlog(self.redis, self._sink.stream, self._sink.group)

    async def close(self) -> None:
        await self.lane.close()
        await self.redis.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()


class _Cluster:
    """Redis Cluster: shard streams, one lane per master node, the slot map from RedisCluster."""

    def __init__(self, sink: RedisStreamSink, queue: QueueURL, shards: int, timeout: float) -> None:
        if not 0 < shards <= _MAX_SHARDS:
            raise ValueError(f"shards wants a number from 1 to {_MAX_SHARDS}, got {shards}")
        _check_stream_name(sink.stream)
        self._sink = sink
        self._timeout = timeout
        self.count = shards
        # No retries inside redis-py (the sink backs off); no full coverage needed to start
        # (a shard whose slot no node serves gets 451, the others work).
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in queue.nodes], username=queue.username,
            password=queue.password, ssl=queue.ssl, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), require_full_coverage=False,
        )
        self.keys = [shard_stream(sink.stream, i) for i in range(shards)]
        self._names = [key.encode() for key in self.keys]
        self._heads = [_xadd_head(name, sink.maxlen)[1] for name in self._names]
        self._dedup_prefixes = [name + b":dedup:" for name in self._names]
        self._targets = [_Target(i, name, name + b":dedup:", name + b":body:") for i, name in enumerate(self._names)]
        self._slots = [self.client.keyslot(name) for name in self._names]
        self.lanes: dict[str, Lane] = {}  # by node name
        self.shard_lanes: list[Lane | None] = [None] * shards
        self._next = 0
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        await self.client.initialize()
        self._map()
        unserved = [i for i, lane in enumerate(self.shard_lanes) if lane is None]
        if unserved:
            raise RedisClusterException(f"no node serves the slots of shards {unserved}")
        lanes = list(self.lanes.values())
        failures = await asyncio.gather(*(lane.warm() for lane in lanes))
        if all(failures):  # every node is away: as good as no cluster
            raise RedisClusterException(f"no cluster node answers: {failures[0]}")

    def _map(self) -> None:
        """Map each shard to the lane of the node serving its slot (new nodes get a lane)."""
        nodes = self.client.nodes_manager
        used: dict[str, Lane] = {}
        for shard, slot in enumerate(self._slots):
            try:
                node = nodes.get_node_from_slot(slot)
            except RedisClusterException:  # SlotNotCoveredError
                self.shard_lanes[shard] = None
                continue
            lane = used.get(node.name) or self.lanes.get(node.name) or self._lane(node)
            used[node.name] = self.shard_lanes[shard] = lane
        for name, lane in self.lanes.items():
            if name not in used:  # the node serves none of our shards any more
                task = asyncio.get_running_loop().create_task(lane.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        self.lanes = used

    def _lane(self, node: ClusterNode) -> Lane:
        # A connection of our own to the node, made the way the node's pool makes one.
        kind: Callable[..., Connection] = node.connection_class
        options = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        return Lane(self._sink, lambda: kind(**options), f"{self._sink._safe_url} node {node.name}", self._timeout,
                    self._sink.scripts, self.refresh)

    def refresh(self) -> None:
        """Re-read the slot map in the background: one refresh at a time, at most two a second."""
        if self._closed or (self._refreshing is not None and not self._refreshing.done()):
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        pause = self._refreshed_at + 0.5 - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        try:
            await self.client.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("redis queue %s: slot map refresh failed: %s", self._sink._safe_url, exc)
        else:
            self._map()
        finally:
            self._refreshed_at = time.monotonic()

    def route(self, writer: RedisStreamWriter) -> tuple[Lane, list[bytes], int | None]:
        if writer._digest is not None:  # the same message always goes to the same shard
            digest = writer._dedup_hash()
            shard = int(digest[:8], 16) % self.count
            dedup: bytes | None = self._dedup_prefixes[shard] + digest
        else:
            shard, dedup = self._turn(), None
        lane = self.shard_lanes[shard]
        if lane is None:
            self.refresh()
            raise SinkError(f"redis queue {self._sink._safe_url}: no node serves shard {shard} (retrying)")
        return lane, writer._packed(self._heads[shard], self._names[shard], dedup), shard

    def target(self, writer: RedisStreamWriter) -> _Target:
        """A large message's shard, chosen as its upload starts (before its body is complete):
        with dedup, from its envelope and header block (Message-ID included), so a retry comes
        to the same shard; else by turns."""
        if writer._digest is None:
            return self._targets[self._turn()]
        env = writer._envelope
        digest = hashlib.sha256(writer._block + b"\0" + str(env.mail_from).encode() + b"\0"
                                + b"\0".join(str(r.address).encode() for r in env.recipients))
        return self._targets[int(digest.hexdigest()[:8], 16) % self.count]

    def lane_for(self, shard: int | None) -> Lane:
        lane = None if shard is None else self.shard_lanes[shard]
        if lane is None:
            self.refresh()
            raise SinkError(f"redis queue {self._sink._safe_url}: no node serves shard {shard} (retrying)")
        return lane

    def _turn(self) -> int:
        """The next shard whose node is not down."""
        for _ in range(self.count):
            shard = self._next
            self._next = (shard + 1) % self.count
            lane = self.shard_lanes[shard]
            if lane is not None and not lane.down:
                return shard
        raise SinkError(f"redis queue {self._sink._safe_url}: no cluster node is available (retrying)")

    def available(self) -> bool:
        return any(not lane.down for lane in self.lanes.values())

    async def backlog(self) -> int:
        sink = self._sink
        return sum(await asyncio.gather(*(_backlog(self.client, key, sink.group) for key in self.keys)))

    async def close(self) -> None:
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
        await asyncio.gather(*(lane.close() for lane in self.lanes.values()), *self._retiring)
        await self.client.aclose()


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
        self._dedup_prefix = f"{stream}:dedup:".encode()
        self._dedup_sha = hashlib.sha1(_DEDUP_SCRIPT).hexdigest().encode()  # Redis names scripts by SHA-1
        self.scripts = (_DEDUP_SCRIPT,) if dedup_window else ()  # loaded on every lane's connection
        self.durability = durability
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._xadd_args, self._xadd_head = _xadd_head(stream.encode(), maxlen)
        self._closed = False
        # Figures for operators and the benchmark: batches sent, entries written.
        self.batches = 0
        self.entries = 0
        self.max_batch = 0
        queue = parse_queue_url(url)
        self._topology: _Topology
        if queue.kind == "cluster":
            self.shards = shards or queue.shards
            self._topology = _Cluster(self, queue, self.shards, timeout)
        else:
            if shards:
                raise ValueError(f"shards={shards}: sharded streams need a redis+cluster:// queue")
            self.shards = 0  # one stream
            self._topology = _Single(self, queue, timeout)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStreamSink:
        """The sink for any Redis queue URL (the constructor; it takes every URL form)."""
        return cls(url, **options)

    async def start(self) -> None:
        """Connect, check the server answers, load the dedup script, start the high-water monitor."""
        try:
            await self._topology.start()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise SinkError(f"redis queue {self._safe_url}: {exc}") from exc
        instruments().queue_up.set(1)
        if self.high_water is not None:
            await self._measure()
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _measure(self) -> None:
        """full ⇔ the backlog (the group's lag when a group is named, else XLEN; summed over
        the shards in a cluster) > high_water."""
        assert self.high_water is not None
        backlog = await self._topology.backlog()
        full = backlog > self.high_water
        if full != self.full:
            log.warning("redis queue %s %s its high-water mark (%d > %d)", self._safe_url,
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
    def _safe_url(self) -> str:
        """The URL without its password, for messages."""
        head, sep, tail = self.url.rpartition("@")
        return f"{head.split('://')[0]}://***@{tail}" if sep else self.url

    def open(self, envelope: Envelope) -> RedisStreamWriter:
        """Start a message (no I/O: the record is written at commit)."""
        if self._closed:
            raise SinkError("redis queue is closed")
        if not self._topology.available():
            raise SinkError(f"redis queue {self._safe_url} is unavailable (retrying)")
        return RedisStreamWriter(self, envelope)

    async def close(self) -> None:
        """Let the batches in flight finish, then close the connections."""
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        await self._topology.close()
