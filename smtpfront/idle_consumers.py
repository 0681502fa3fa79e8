"""Consumer names of consumers long gone leave their group (issue 17 item 5).

Every consumer joins its group under a name (``<hostname>-<pid>`` unless one is given), and
Redis keeps each name in the group until ``XGROUP DELCONSUMER``: a consumer that restarts under
a new pid, or a pod that is replaced, leaves its old name behind for good, and
``XINFO CONSUMERS`` (``smtpfront queue stats``) lists them all.

:func:`forget_idle` removes, in one script (:data:`FORGET_SCRIPT`, atomic: no consumer can read
between the check and the removal), every name of the group that has **no pending entry** and
has been idle (``XINFO CONSUMERS`` ``idle``: since its last read or claim) for at least
``idle_ms``, except the caller's own. A name that still has pending entries is never removed:
``DELCONSUMER`` would drop them from the group's pending list, and nobody would ever claim
them again; ``XAUTOCLAIM`` takes them over first (:mod:`smtpfront.consumer`), and the name
goes once it holds nothing. A live consumer reads at least every ``block_ms``, so its ``idle``
stays below that.

The consumer calls it with every claim round (every ``claim_idle_ms / 2``), for each stream
it reads (each shard stream of a cluster: the script names one key, the shard's stream).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

__all__ = ["DEFAULT_IDLE_MS", "FORGET_SCRIPT", "forget_idle"]

log = logging.getLogger(__name__)

DEFAULT_IDLE_MS = 3_600_000
"""A name idle this long (1 h) with nothing pending is removed from its group."""

# KEYS[1] stream; ARGV[1] group, ARGV[2] idle ms, ARGV[3] the caller's own name.
# XINFO CONSUMERS gives each consumer as name, pending, idle (and, from Redis 7.2, inactive).
FORGET_SCRIPT = """
local removed = {}
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local idle_ms = tonumber(ARGV[2])
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and info['pending'] == 0 and info['idle'] >= idle_ms then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""


async def forget_idle(client: aioredis.Redis | RedisCluster, stream: str, group: str, idle_ms: int,
                      keep: str) -> list[str]:
    """Remove the group's names idle for ``idle_ms`` with nothing pending, ``keep`` excepted;
    returns the names removed (none when ``idle_ms`` is 0, or the stream or group is missing)."""
    if idle_ms <= 0:
        return []
    try:
        reply: Any = await client.eval(FORGET_SCRIPT, 1, stream, group, str(idle_ms), keep)
    except ResponseError as exc:
        if "NOGROUP" in str(exc) or "no such key" in str(exc):
            return []  # the consumer's loop recreates the group
        raise
    names = [name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name) for name in reply or []]
    if names:
        log.info("removed %d consumer name(s) idle for %d s with nothing pending from group %s on %s: %s",
                 len(names), idle_ms // 1000, group, stream, ", ".join(names))
    return names
