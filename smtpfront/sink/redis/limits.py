"""The client limits' counters in the queue's Redis, shared by every worker of every pod.

The queue URL (``queue``) is read with :func:`~smtpfront.sink.redis.sink.parse_queue_url`:
one server, the master Sentinel names, or a Cluster. Keys are ``smtpfront:limits:{CLIENT}:KIND``;
the client is a hash tag, so in a cluster every key of one client (and so every script call)
lies in one slot. Each check is one atomic Lua script on one key, and every key has a TTL:

- a connection slot is a member of a sorted set scored by its expiry (Redis's own clock,
  ``TIME``): expired members are dropped before counting, so a slot a killed worker never gave
  back lapses after ``hold`` seconds, and the set itself expires when its last slot would;
- a rate or failure count is a counter whose TTL (the window) is set by its first event.

redis-py retries nothing here (``Retry(NoBackoff(), 0)``) and every call is bounded by
``timeout``: the caller (``policy/limits.py``) lets the client through when Redis is away.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .url import parse_queue_url

__all__ = ["RedisCounters", "PREFIX"]

PREFIX = "smtpfront:limits:"

# KEYS[1] the slot set; ARGV: member, limit, hold (ms). 1: taken, 0: every slot is held.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local hold = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + hold, ARGV[1])
if redis.call('PTTL', KEYS[1]) < hold then redis.call('PEXPIRE', KEYS[1], hold) end
return 1
"""
# KEYS[1] the counter; ARGV: amount, window (ms). The count after adding.
_ADD = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""


class RedisCounters:
    """A :class:`~smtpfront.policy.limits.CounterStore` in the Redis ``queue_url`` names."""

    def __init__(self, queue_url: str, timeout: float = 0.5) -> None:
        queue = parse_queue_url(queue_url)
        self._sentinel: Sentinel | None = None
        common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                  "retry": Retry(NoBackoff(), 0)}
        self.client: aioredis.Redis | RedisCluster
        if queue.kind == "cluster":
            self.client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in queue.nodes], username=queue.username,
                password=queue.password, ssl=queue.ssl, require_full_coverage=False, **common,
            )
        elif queue.kind == "sentinel":
            self._sentinel = Sentinel(list(queue.nodes), sentinel_kwargs={"ssl": queue.ssl, **common}, **common)
            self.client = self._sentinel.master_for(
                queue.service, db=queue.db, username=queue.username, password=queue.password, ssl=queue.ssl,
            )
        else:
            self.client = aioredis.Redis.from_url(queue.url, **common)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._add = self.client.register_script(_ADD)

    async def acquire(self, key: str, member: str, limit: int, hold: float) -> bool:
        taken = await self._acquire(keys=[PREFIX + key], args=[member, limit, int(hold * 1000)])
        return bool(int(taken))

    async def release(self, key: str, member: str) -> None:
        await self.client.zrem(PREFIX + key, member)

    async def add(self, key: str, amount: int, window: float) -> int:
        return int(await self._add(keys=[PREFIX + key], args=[amount, int(window * 1000)]))

    async def close(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
