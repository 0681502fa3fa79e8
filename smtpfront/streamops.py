"""What changes a queue stream after the front end wrote it, each change one atomic step.

Rule (ARCHITECTURE.md rule 10, "Acknowledged means gone"): a consumer's acknowledgement removes the
entry, and a large body's chunk keys, in the same step, so Redis holds the backlog and
nothing else. With several consumer groups on one stream an entry is removed only once no
group needs it any more: every group has delivered it (its ``last-delivered-id`` is at or
past the entry) and none has it pending. That is ``XACKDEL … ACKED`` (Redis ≥ 8.2, used
when the server has it, see :func:`has_xackdel`); older servers get the same rule from
:data:`ACK_SCRIPT` (``XACK``, then per entry ``XINFO GROUPS``/``XPENDING``, then ``XDEL``).
The groups are simply those that exist on the stream (``XGROUP CREATE``): nothing else
declares them. A group that stops reading keeps every entry from its ``last-delivered-id``
on: the stream grows by what arrives meanwhile (``smtpfront queue stats`` shows that group's
lag) until its consumers come back, or until the group is destroyed (``XGROUP DESTROY``);
:func:`sweep` (run by every consumer now and then) then removes what the remaining groups
had acknowledged meanwhile.

Every set of chunk keys belongs to exactly one entry, in the stream or in a dead-letter
stream: the step that deletes an entry deletes its chunk keys, and no other step does.
Dead-lettering (:data:`DEAD_SCRIPT`) adds the dead letter, acknowledges the entry and
removes it in one step when no other group needs it (the dead letter then owns the chunk
keys, under the same names); when another group still needs it, the chunk keys are copied
to ``<stream>:body:dl-<entry id>:<n>`` for the dead letter. A dead letter keeps its chunk
keys until it is retried (they go back with it) or purged (they go with it).

The scripts name every key they touch, all in the stream's hash slot (a cluster shard's
stream, its dead-letter stream and its chunk keys share the ``{i}`` tag).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .sink.record import BodyRef, chunk_keys, decode_entry
from .sink.redis.url import QueueURL

__all__ = ["ACK_SCRIPT", "DEAD_SCRIPT", "Client", "acknowledge", "close_client", "dead_letter", "has_xackdel",
           "open_client", "sweep"]

Client = aioredis.Redis | RedisCluster

# Shared Lua: stream ids compared exactly (as digit strings), and "does some group still need it".
_NEEDED = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end
local function groups(stream)
  local found = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    found[#found + 1] = info
  end
  return found
end
local function needed(stream, id, all, skip)
  for _, g in ipairs(all) do
    if g['name'] ~= skip then
      if older(g['last-delivered-id'], id) then return true end
      if #redis.call('XPENDING', stream, g['name'], id, id, 1) > 0 then return true end
    end
  end
  return false
end
"""

ACK_SCRIPT = _NEEDED + """
-- KEYS[1] stream, KEYS[2..] chunk keys in entry order; ARGV[1] group, ARGV[2] '1': use XACKDEL,
-- then per entry its id and how many of the chunk keys are its. Returns {acknowledged, deleted}.
local stream, group, acked, deleted, key = KEYS[1], ARGV[1], 0, 0, 2
local ids = {}
for i = 3, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local gone = {}
if ARGV[2] == '1' then
  local codes = redis.call('XACKDEL', stream, group, 'ACKED', 'IDS', #ids, unpack(ids))
  for i = 1, #ids do
    gone[i] = codes[i] == 1
    if codes[i] ~= -1 then acked = acked + 1 end
  end
else
  acked = redis.call('XACK', stream, group, unpack(ids))
  local all = groups(stream)
  for i = 1, #ids do
    gone[i] = not needed(stream, ids[i], all, nil) and redis.call('XDEL', stream, ids[i]) == 1
  end
end
for i = 1, #ids do
  local n = tonumber(ARGV[2 + 2 * i])
  if gone[i] then
    deleted = deleted + 1
    for k = key, key + n - 1 do redis.call('UNLINK', KEYS[k]) end
  end
  key = key + n
end
return {acked, deleted}
"""

DEAD_SCRIPT = _NEEDED + """
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3..2+n] the entry's chunk keys,
-- KEYS[3+n..2+2n] the names of their copy; ARGV[1] group, ARGV[2] entry id, ARGV[3] the
-- copy's body_key, ARGV[4..] the dead letter's fields. Returns the dead letter's id, or
-- false when the group no longer has the entry pending (another consumer acknowledged it).
local stream, group, id = KEYS[1], ARGV[1], ARGV[2]
if #redis.call('XPENDING', stream, group, id, id, 1) == 0 then return false end
local n = (#KEYS - 2) / 2
local keep = needed(stream, id, groups(stream), group)
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
if keep and n > 0 then
  for i = 1, #fields, 2 do if fields[i] == 'body_key' then fields[i + 1] = ARGV[3] end end
end
local letter = redis.call('XADD', KEYS[2], '*', unpack(fields))
if keep then
  for i = 1, n do redis.call('COPY', KEYS[2 + i], KEYS[2 + n + i], 'REPLACE') end
end
redis.call('XACK', stream, group, id)
if not keep then redis.call('XDEL', stream, id) end
return letter
"""


def open_client(url: str, queue: QueueURL, socket_timeout: float) -> tuple[Client, Sentinel | None]:
    """A client for the queue URL (and the Sentinel watching its master, for ``close_client``).

    Protocol 2 pins the reply shapes across redis-py versions; no retries inside redis-py
    (the callers back off or report).
    """
    sockets: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": socket_timeout}
    if queue.kind == "cluster":
        client: Client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in queue.nodes], username=queue.username,
            password=queue.password, ssl=queue.ssl, decode_responses=False, protocol=2,
            retry=AsyncRetry(NoBackoff(), 0), require_full_coverage=False, **sockets,
        )
        return client, None
    if queue.kind == "sentinel":
        sentinel = Sentinel(
            list(queue.nodes), sentinel_kwargs={"socket_connect_timeout": 5, "socket_timeout": 5,
                                                "ssl": queue.ssl, "retry": AsyncRetry(NoBackoff(), 0)})
        client = sentinel.master_for(
            queue.service, db=queue.db, username=queue.username, password=queue.password, ssl=queue.ssl,
            decode_responses=False, protocol=2, retry=AsyncRetry(NoBackoff(), 0), **sockets,
        )
        return client, sentinel
    return aioredis.Redis.from_url(url, decode_responses=False, protocol=2, retry=AsyncRetry(NoBackoff(), 0),
                                   **sockets), None


async def close_client(client: Client | None, sentinel: Sentinel | None) -> None:
    """Close what :func:`open_client` opened (each step bounded; errors ignored)."""
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 5)
    for watcher in sentinel.sentinels if sentinel is not None else ():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher.aclose(), 5)


async def has_xackdel(client: Client, stream: str, group: str) -> bool:
    """Whether the server holding ``stream`` knows ``XACKDEL`` (Redis ≥ 8.2).

    Asked with a harmless ``XACKDEL stream group IDS 1 0-0`` (no entry has id 0-0): an older
    server answers "unknown command"; any other answer or error means it has the command.
    """
    try:
        await client.execute_command("XACKDEL", stream, group, "IDS", "1", "0-0")
    except ResponseError as exc:  # unknown, or not allowed to this user (a script could not run it either)
        said = str(exc).lower()
        return "unknown command" not in said and "noperm" not in said
    except RedisError as exc:  # the cluster client looks commands up in the nodes' COMMAND table first
        if "doesn't exist" in str(exc):
            return False
        raise
    return True


async def acknowledge(client: Client, stream: str, group: str, done: Sequence[tuple[bytes, BodyRef | None]],
                      *, xackdel: bool = False) -> tuple[int, int]:
    """Acknowledge ``done`` (entry id, large body or None) for ``group`` and delete each entry
    no group needs any more, with its chunk keys. Returns (acknowledged, deleted)."""
    keys: list[bytes] = []
    args: list[bytes | str] = [group, "1" if xackdel else "0"]
    for entry_id, ref in done:
        mine = ref.chunk_keys() if ref is not None else []
        keys += mine
        args += [entry_id, str(len(mine))]
    reply: Any = await client.eval(ACK_SCRIPT, 1 + len(keys), stream, *keys, *args)
    return int(reply[0]), int(reply[1])


async def dead_letter(client: Client, stream: str, dead: str, group: str, entry_id: bytes,
                      fields: dict[bytes, bytes], ref: BodyRef | None) -> bytes | None:
    """Move a pending entry to ``dead`` in one step (see the module docstring); returns the
    dead letter's id, or None when the group no longer had the entry pending."""
    mine = ref.chunk_keys() if ref is not None else []
    copy = b"%b:body:dl-%b" % (stream.encode(), entry_id)
    flat = [item for pair in fields.items() for item in pair]
    reply: Any = await client.eval(
        DEAD_SCRIPT, 2 + 2 * len(mine), stream, dead, *mine, *chunk_keys(copy, len(mine)),
        group, entry_id, copy, *flat,
    )
    return reply if isinstance(reply, bytes) else None


def _successor(entry_id: bytes) -> bytes:
    ms, _, seq = entry_id.partition(b"-")
    return b"%b-%d" % (ms, int(seq or b"0") + 1)


async def sweep(client: Client, stream: str, group: str, *, batch: int = 100, rounds: int = 10) -> int:
    """Delete entries that every group has delivered and acknowledged but that are still in
    the stream (a group destroyed while it held them back); returns how many went.

    Reads at most ``rounds`` batches of entries below the oldest one some group needs, and
    deletes them through :data:`ACK_SCRIPT` (which checks each again, atomically).
    """
    try:
        infos: Any = await client.xinfo_groups(stream)
    except ResponseError:  # no stream
        return 0
    if not infos:
        return 0
    floors: list[tuple[int, int]] = []
    for info in infos:
        name = info["name"]
        summary: Any = await client.xpending(stream, name)
        floors.append(_parse(_successor(info["last-delivered-id"])))
        if summary["pending"]:
            floors.append(_parse(summary["min"]))
    floor = min(floors)
    deleted = 0
    start = b"-"
    for _ in range(rounds):
        entries: Any = await client.xrange(stream, start, b"%d-%d" % floor, count=batch)
        entries = [(i, f) for i, f in entries if _parse(i) < floor]
        if not entries:
            break
        done: list[tuple[bytes, BodyRef | None]] = []
        for entry_id, fields in entries:
            try:
                body = decode_entry(fields)[1]
            except ValueError:
                body = b""
            done.append((entry_id, body if isinstance(body, BodyRef) else None))
        deleted += (await acknowledge(client, stream, group, done))[1]
        start = b"(" + entries[-1][0]
    return deleted


def _parse(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
