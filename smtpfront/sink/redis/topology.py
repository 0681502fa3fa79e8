"""Where a Redis queue lives: one server (or the master Sentinel names), or a Cluster.

A topology gives each message its lane (:class:`~smtpfront.sink.redis.lane.Lane`, one per
server or Cluster master node) and its stream: the one stream, or in a cluster the shard its
dedup hash names (a retried message lands on the same shard), else shards by turns, skipping
those whose node is down. In a cluster, redis-py's ``RedisCluster`` reads the slot map; each
master node gets a lane of our own; a failure that may mean the map changed refreshes it in
the background (at most twice a second). The URLs: :mod:`smtpfront.sink.redis.url`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..base import SinkError
from .lane import Lane
from .url import MAX_SHARDS, QueueURL, check_stream_name, shard_stream
from .wire import xadd_head

if TYPE_CHECKING:
    from .sink import RedisStreamSink
    from .writer import RedisStreamWriter

__all__ = ["Cluster", "Single", "Target", "Topology", "backlog_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a large message goes: its shard (None: the one stream) and that stream's key names."""

    shard: int | None
    stream: bytes
    dedup_prefix: bytes
    body_prefix: bytes



async def backlog_of(client: aioredis.Redis | RedisCluster, stream: str, group: str | None) -> int:
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


class Topology(Protocol):
    """Where the queue lives: which lane a message goes out on, and on which stream."""

    async def start(self) -> None: ...
    def route(self, writer: RedisStreamWriter) -> tuple[Lane, list[bytes], int | None]: ...
    def target(self, writer: RedisStreamWriter) -> Target: ...
    def lane_for(self, shard: int | None) -> Lane: ...
    def available(self) -> bool: ...
    async def backlog(self) -> int: ...
    async def close(self) -> None: ...


class Single:
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
        self.lane = Lane(sink, self.redis.connection_pool.make_connection, sink.safe_url, timeout, sink.scripts)
        self._stream = sink.stream.encode()
        self._target = Target(None, self._stream, sink.dedup_prefix, self._stream + b":body:")

    async def start(self) -> None:
        # As in a cluster: connect the lane and load the dedup script on the connection the
        # batches will use, once (not on a pool connection, then again on the lane's).
        failure = await self.lane.warm()
        if failure is not None:
            await self.lane.close()  # no probe for a sink that did not start
            raise failure

    def route(self, writer: RedisStreamWriter) -> tuple[Lane, list[bytes], int | None]:
        sink = self._sink
        digest = writer.dedup_hash()
        dedup = None if digest is None else sink.dedup_prefix + digest
        return self.lane, writer.packed(sink.xadd_head, self._stream, dedup), None

    def target(self, writer: RedisStreamWriter) -> Target:
        return self._target

    def lane_for(self, shard: int | None) -> Lane:
        return self.lane

    def available(self) -> bool:
        return not self.lane.down

    async def backlog(self) -> int:
        return await backlog_of(self.redis, self._sink.stream, self._sink.group)

    async def close(self) -> None:
        await self.lane.close()
        await self.redis.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()


class Cluster:
    """Redis Cluster: shard streams, one lane per master node, the slot map from RedisCluster."""

    def __init__(self, sink: RedisStreamSink, queue: QueueURL, shards: int, timeout: float) -> None:
        if not 0 < shards <= MAX_SHARDS:
            raise ValueError(f"shards wants a number from 1 to {MAX_SHARDS}, got {shards}")
        check_stream_name(sink.stream)
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
        self._heads = [xadd_head(name, sink.maxlen)[1] for name in self._names]
        self._dedup_prefixes = [name + b":dedup:" for name in self._names]
        self._targets = [Target(i, name, name + b":dedup:", name + b":body:") for i, name in enumerate(self._names)]
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
        return Lane(self._sink, lambda: kind(**options), f"{self._sink.safe_url} node {node.name}", self._timeout,
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
            log.warning("redis queue %s: slot map refresh failed: %s", self._sink.safe_url, exc)
        else:
            self._map()
        finally:
            self._refreshed_at = time.monotonic()

    def route(self, writer: RedisStreamWriter) -> tuple[Lane, list[bytes], int | None]:
        digest = writer.dedup_hash()
        if digest is not None:  # the same message always goes to the same shard
            shard = int(digest[:8], 16) % self.count
            dedup: bytes | None = self._dedup_prefixes[shard] + digest
        else:
            shard, dedup = self._turn(), None
        lane = self.shard_lanes[shard]
        if lane is None:
            self.refresh()
            raise SinkError(f"redis queue {self._sink.safe_url}: no node serves shard {shard} (retrying)")
        return lane, writer.packed(self._heads[shard], self._names[shard], dedup), shard

    def target(self, writer: RedisStreamWriter) -> Target:
        """A large message's shard, chosen as its upload starts (before its body is complete):
        with dedup, from its envelope and header block (Message-ID included), so a retry comes
        to the same shard; else by turns."""
        key = writer.header_hash()
        return self._targets[self._turn() if key is None else key % self.count]

    def lane_for(self, shard: int | None) -> Lane:
        lane = None if shard is None else self.shard_lanes[shard]
        if lane is None:
            self.refresh()
            raise SinkError(f"redis queue {self._sink.safe_url}: no node serves shard {shard} (retrying)")
        return lane

    def _turn(self) -> int:
        """The next shard whose node is not down."""
        for _ in range(self.count):
            shard = self._next
            self._next = (shard + 1) % self.count
            lane = self.shard_lanes[shard]
            if lane is not None and not lane.down:
                return shard
        raise SinkError(f"redis queue {self._sink.safe_url}: no cluster node is available (retrying)")

    def available(self) -> bool:
        return any(not lane.down for lane in self.lanes.values())

    async def backlog(self) -> int:
        sink = self._sink
        return sum(await asyncio.gather(*(backlog_of(self.client, key, sink.group) for key in self.keys)))

    async def close(self) -> None:
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
        await asyncio.gather(*(lane.close() for lane in self.lanes.values()), *self._retiring)
        await self.client.aclose()
