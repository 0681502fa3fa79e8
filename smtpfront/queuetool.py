"""``smtpfront queue``: look at and act on the Redis queue (Postfix's ``postqueue``/``postsuper``).

    smtpfront queue stats                         length, groups (lag, pending per consumer),
                                                  oldest unacknowledged age, dead letters, memory
    smtpfront queue list [--limit N]              envelope summaries, oldest first (no bodies)
    smtpfront queue show ID                       envelope and body (a large body reassembled)
    smtpfront queue dead list [--limit N]         the dead letters, with their reasons
    smtpfront queue dead retry ID|--all           back into the stream (chunk keys kept)
    smtpfront queue dead purge ID|--all|--older-than SECONDS

The queue is the one ``serve`` writes: ``--config FILE``, ``--queue URL`` and the
``SMTPFRONT_*`` environment, read by :func:`smtpfront.config.load_config` (``queue`` and
``redis.stream``). In a cluster (``redis+cluster://…?shards=N``) every shard stream is read
and an id is ``SHARD/ENTRY-ID``, as in the ``250`` reply. ``--json`` prints one JSON document
for scripts. Bad input (a queue that is not Redis, an unknown or malformed id) exits 2 with a
message; Redis unreachable exits 1. Retry and purge are one script per dead letter (see
:mod:`smtpfront.streamops` for who owns a large body's chunk keys).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .config import REDIS_SCHEMES, ConfigError, load_config
from .sink.record import BodyRef, RecordError, decode_entry
from .sink.redis.url import QueueURL, parse_queue_url, shard_stream
from .streamops import Client, close_client, open_client

__all__ = ["add_parser", "read_stats", "run"]

_ID = re.compile(r"^(?:(\d+)/)?(\d+-\d+)$")
_DEAD_ONLY = (b"origin_id", b"reason", b"deliveries")
_BATCH = 500

# KEYS[1] dead-letter stream, KEYS[2] stream; ARGV[1] dead letter id. The letter goes back as a
# new entry (without origin_id, reason, deliveries; with retries counted) and leaves the dead
# stream, in one step; its chunk keys stay, now the new entry's. Returns the new id, or false.
_RETRY_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local fields, out, retries = found[1][2], {}, 0
for i = 1, #fields, 2 do
  local k = fields[i]
  if k == 'retries' then retries = tonumber(fields[i + 1]) or 0
  elseif k ~= 'origin_id' and k ~= 'reason' and k ~= 'deliveries' then
    out[#out + 1] = k
    out[#out + 1] = fields[i + 1]
  end
end
out[#out + 1] = 'retries'
out[#out + 1] = tostring(retries + 1)
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""

# KEYS[1] dead-letter stream, KEYS[2..] chunk keys; ARGV[1] dead letter id. Deletes the letter
# and, if it was there, its chunk keys. Returns 1, or 0 when it was gone already.
_PURGE_SCRIPT = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call('UNLINK', KEYS[i]) end
return 1
"""


class UsageError(Exception):
    """Bad input: the message is printed and the exit status is 2."""


@dataclass(frozen=True, slots=True)
class _Queue:
    client: Client
    streams: list[str]  # index = shard number when sharded
    sharded: bool

    def name(self, index: int, entry_id: bytes | str) -> str:
        text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return f"{index}/{text}" if self.sharded else text

    def locate(self, ident: str) -> list[tuple[int, str]]:
        """(stream index, entry id) candidates for an id given on the command line."""
        match = _ID.match(ident)
        if match is None:
            raise UsageError(f"{ident!r} is not an entry id (MILLISECONDS-SEQUENCE"
                             + (", or SHARD/MILLISECONDS-SEQUENCE)" if self.sharded else ")"))
        shard, entry = match.groups()
        if shard is None:
            return [(i, entry) for i in range(len(self.streams))]
        if not self.sharded or int(shard) >= len(self.streams):
            raise UsageError(f"{ident!r}: no shard {shard} in this queue")
        return [(int(shard), entry)]


def add_parser(sub: Any) -> None:
    """Add ``queue`` and its actions to the ``smtpfront`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="TOML configuration, as for serve (SMTPFRONT_CONFIG)")
    common.add_argument("--queue", dest="queue_url", default=argparse.SUPPRESS, metavar="URL",
                        help="the Redis queue (default: the configuration's, SMTPFRONT_QUEUE)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    queue = sub.add_parser("queue", parents=[common], help="look at and act on the Redis queue")
    actions = queue.add_subparsers(dest="action", required=True)
    actions.add_parser("stats", parents=[common], help="length, lag, pending, oldest age, dead letters, memory")
    listing = actions.add_parser("list", parents=[common], help="envelope summaries, oldest first")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    show = actions.add_parser("show", parents=[common], help="one entry (or dead letter): envelope and body")
    show.add_argument("id")
    dead = actions.add_parser("dead", parents=[common], help="dead letters: list, retry, purge")
    deads = dead.add_subparsers(dest="dead_action", required=True)
    dlist = deads.add_parser("list", parents=[common], help="the dead letters")
    dlist.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    retry = deads.add_parser("retry", parents=[common], help="put dead letters back into the stream")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?")
    which.add_argument("--all", action="store_true")
    purge = deads.add_parser("purge", parents=[common], help="delete dead letters and their bodies")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?")
    which.add_argument("--all", action="store_true")
    which.add_argument("--older-than", type=float, metavar="SECONDS")


def run(args: argparse.Namespace) -> int:
    """Run one ``smtpfront queue`` action; returns the exit status (2: bad input)."""
    try:
        config = load_config(getattr(args, "config", None) or os.environ.get("SMTPFRONT_CONFIG"), env=os.environ,
                             overrides={"queue": getattr(args, "queue_url", None)})
    except (ConfigError, OSError) as exc:
        return _fail(f"configuration: {exc}", 2)
    if config.queue.partition("://")[0] not in REDIS_SCHEMES:
        return _fail(f"the queue {config.queue!r} is not a Redis queue: give --queue redis://HOST:PORT/DB "
                     "(or redis+cluster://…, redis+sentinel://…), or set queue in the configuration", 2)
    if getattr(args, "limit", 1) < 1:
        return _fail("--limit must be at least 1", 2)
    try:
        queue_url = parse_queue_url(config.queue)
    except ValueError as exc:
        return _fail(f"--queue: {exc}", 2)
    streams = _streams(config.redis.stream, queue_url)
    try:
        result = asyncio.run(_main(args, config.queue, queue_url, streams))
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (RedisError, RedisClusterException, OSError) as exc:
        return _fail(f"redis: {exc}", 1)
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
    else:
        print(result)
    return 0


def _streams(stream: str, queue_url: QueueURL) -> list[str]:
    return [shard_stream(stream, i) for i in range(queue_url.shards)] if queue_url.shards else [stream]


async def read_stats(url: str, stream: str, timeout: float) -> dict[str, Any]:
    """What ``queue stats --json`` prints, read within ``timeout`` seconds (TimeoutError past
    it; RedisError, OSError): the master's scrape-time queue metrics (:mod:`smtpfront.queue_metrics`)."""
    queue_url = parse_queue_url(url)
    client, sentinel = open_client(url, queue_url, timeout)
    try:
        return await asyncio.wait_for(_stats(_Queue(client, _streams(stream, queue_url), bool(queue_url.shards))),
                                      timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close_client(client, sentinel), 1)


def _fail(message: str, status: int) -> int:
    print(f"smtpfront queue: {message}", file=sys.stderr)
    return status


async def _main(args: argparse.Namespace, url: str, queue_url: Any, streams: list[str]) -> str | bytes:
    client, sentinel = open_client(url, queue_url, 30)
    try:
        queue = _Queue(client, streams, bool(queue_url.shards))
        as_json = bool(getattr(args, "json", False))
        if args.action == "stats":
            return _render(await _stats(queue), as_json, _stats_text)
        if args.action == "list":
            return _render(await _list(queue, [(i, s) for i, s in enumerate(streams)], args.limit), as_json,
                           _list_text)
        if args.action == "show":
            return await _show(queue, args.id, as_json)
        dead = [(i, f"{s}:dead") for i, s in enumerate(streams)]
        if args.dead_action == "list":
            return _render(await _list(queue, dead, args.limit), as_json, _list_text)
        if args.dead_action == "retry":
            retried = await _retry(queue, args.id, args.all)
            return _render({"retried": retried}, as_json, lambda r: f"retried {r['retried']} dead letter(s)")
        purged = await _purge(queue, args.id, args.all, args.older_than)
        return _render({"purged": purged}, as_json, lambda r: f"purged {r['purged']} dead letter(s)")
    finally:
        await close_client(client, sentinel)


def _render(data: Any, as_json: bool, text: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if as_json else str(text(data))


def _age(entry_id: bytes | str, now: float) -> float:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return round(max(now - int(text.partition("-")[0]) / 1000, 0.0), 3)


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def _memory(client: Client) -> int:
    if isinstance(client, RedisCluster):  # one reply per node
        nodes: Any = await client.info("memory", target_nodes=RedisCluster.ALL_NODES)
        return sum(int(node["used_memory"]) for node in nodes.values())
    info: Any = await client.info("memory")
    return int(info["used_memory"])


async def _stats(queue: _Queue) -> dict[str, Any]:
    client, now = queue.client, time.time()
    out: list[dict[str, Any]] = []
    for stream in queue.streams:
        length = int(await client.xlen(stream))
        dead = int(await client.xlen(f"{stream}:dead"))
        groups: list[dict[str, Any]] = []
        oldest: float | None = None
        infos: Any = await client.xinfo_groups(stream) if length or await client.exists(stream) else []
        for info in infos:
            name = _text(info["name"])
            consumers: Any = await client.xinfo_consumers(stream, name)
            summary: Any = await client.xpending(stream, name)
            undelivered: Any = await client.xrange(stream, b"(" + info["last-delivered-id"], b"+", count=1)
            ages = [_age(summary["min"], now)] if summary["pending"] else []
            ages += [_age(undelivered[0][0], now)] if undelivered else []
            group_oldest = max(ages) if ages else None
            if group_oldest is not None:
                oldest = group_oldest if oldest is None else max(oldest, group_oldest)
            groups.append({
                "name": name, "lag": info.get("lag"), "pending": int(info["pending"]),
                "last_delivered_id": _text(info["last-delivered-id"]), "oldest_unacknowledged_seconds": group_oldest,
                "consumers": [{"name": _text(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
                              for c in consumers],
            })
        if not infos and length:
            first: Any = await client.xrange(stream, b"-", b"+", count=1)
            oldest = _age(first[0][0], now) if first else None
        out.append({"stream": stream, "length": length, "dead_letters": dead, "oldest_unacknowledged_seconds": oldest,
                    "groups": groups})
    ages = [s["oldest_unacknowledged_seconds"] for s in out if s["oldest_unacknowledged_seconds"] is not None]
    return {"length": sum(s["length"] for s in out), "dead_letters": sum(s["dead_letters"] for s in out),
            "oldest_unacknowledged_seconds": max(ages) if ages else None,
            "used_memory": await _memory(queue.client), "streams": out}


def _stats_text(stats: dict[str, Any]) -> str:
    oldest = stats["oldest_unacknowledged_seconds"]
    lines = [f"entries: {stats['length']}", f"oldest unacknowledged: {'-' if oldest is None else f'{oldest:.1f} s'}",
             f"dead letters: {stats['dead_letters']}",
             f"redis memory: {stats['used_memory'] / 1048576:.1f} MiB ({stats['used_memory']} octets)"]
    for stream in stats["streams"]:
        lines.append(f"{stream['stream']}: {stream['length']} entries, {stream['dead_letters']} dead letters")
        for group in stream["groups"]:
            per = ", ".join(f"{c['name']} {c['pending']}" for c in group["consumers"]) or "no consumers"
            lag = "?" if group["lag"] is None else group["lag"]
            lines.append(f"  group {group['name']}: lag {lag}, pending {group['pending']} ({per})")
    return "\n".join(lines)


def _summary(queue: _Queue, index: int, entry_id: bytes, fields: dict[bytes, bytes], now: float) -> dict[str, Any]:
    item: dict[str, Any] = {"id": queue.name(index, entry_id), "age_seconds": _age(entry_id, now)}
    try:
        envelope, body = decode_entry(fields)
    except RecordError as exc:
        item["error"] = str(exc)
    else:
        item.update({
            "from": envelope.get("mail_from"), "to": [r.get("address") for r in envelope.get("rcpt_to") or ()],
            "size": body.size if isinstance(body, BodyRef) else len(body), "large": isinstance(body, BodyRef),
            "queue_id": envelope.get("id"), "received_at": envelope.get("received_at"),
        })
    for name in (b"origin_id", b"reason", b"deliveries", b"retries"):
        if name in fields:
            item[name.decode()] = fields[name].decode(errors="replace")
    return item


async def _list(queue: _Queue, streams: Sequence[tuple[int, str]], limit: int) -> list[dict[str, Any]]:
    now, items = time.time(), []
    for index, stream in streams:
        entries: Any = await queue.client.xrange(stream, b"-", b"+", count=limit)
        items += [(entry_id, _summary(queue, index, entry_id, fields, now)) for entry_id, fields in entries]
    items.sort(key=lambda pair: tuple(int(p) for p in pair[0].split(b"-")))
    return [item for _, item in items[:limit]]


def _list_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "(none)"
    lines = []
    for item in items:
        if "error" in item:
            lines.append(f"{item['id']}  {item['error']}")
            continue
        line = f"{item['id']}  {item['size']:>9}  <{item['from']}> -> {', '.join(f'<{t}>' for t in item['to'])}"
        if "reason" in item:
            line += f"  [{item['deliveries']} deliveries: {item['reason']}]"
        lines.append(line)
    return "\n".join(lines)


async def _find(queue: _Queue, ident: str) -> tuple[int, str, bytes, dict[bytes, bytes]]:
    """The entry or dead letter ``ident`` names: (stream index, stream, id, fields)."""
    for index, entry in queue.locate(ident):
        for stream in (queue.streams[index], f"{queue.streams[index]}:dead"):
            found: Any = await queue.client.xrange(stream, entry, entry)
            if found:
                return index, stream, found[0][0], found[0][1]
    raise UsageError(f"no entry {ident} in {queue.streams[0] if len(queue.streams) == 1 else 'the shard streams'}"
                     " or its dead letters")


async def _show(queue: _Queue, ident: str, as_json: bool) -> str | bytes:
    index, stream, entry_id, fields = await _find(queue, ident)
    try:
        envelope, body = decode_entry(fields)
    except RecordError as exc:
        raise UsageError(f"{ident} in {stream} is not a record: {exc}") from None
    if isinstance(body, BodyRef):
        parts: list[bytes] = []
        for key in body.chunk_keys():
            chunk: Any = await queue.client.get(key)
            if not isinstance(chunk, bytes):
                raise UsageError(f"{ident}: body chunk {key.decode(errors='replace')} is missing")
            parts.append(chunk)
        body = b"".join(parts)
    extra = {name.decode(): value.decode(errors="replace") for name, value in fields.items()
             if name in (*_DEAD_ONLY, b"retries")}
    if as_json:
        return orjson.dumps({"id": queue.name(index, entry_id), "stream": stream, "envelope": envelope, **extra,
                             "body_base64": base64.b64encode(body).decode()}, option=orjson.OPT_INDENT_2).decode()
    head = f"id: {queue.name(index, entry_id)}\nstream: {stream}\n" + "".join(f"{k}: {v}\n" for k, v in extra.items())
    head += "envelope: " + orjson.dumps(envelope, option=orjson.OPT_INDENT_2).decode() + "\n\n"
    return head.encode() + body


async def _retry(queue: _Queue, ident: str | None, every: bool) -> int:
    retried = 0
    for index, dead, entry_id in await _letters(queue, ident, every, None):
        new: Any = await queue.client.eval(_RETRY_SCRIPT, 2, dead, queue.streams[index], entry_id)
        retried += new is not None
    return retried


async def _purge(queue: _Queue, ident: str | None, every: bool, older_than: float | None) -> int:
    if older_than is not None and older_than < 0:
        raise UsageError("--older-than wants seconds, 0 or more")
    purged = 0
    for _index, dead, entry_id in await _letters(queue, ident, every, older_than):
        found: Any = await queue.client.xrange(dead, entry_id, entry_id)
        if not found:
            continue
        try:
            body = decode_entry(found[0][1])[1]
        except RecordError:
            body = b""
        keys = body.chunk_keys() if isinstance(body, BodyRef) else []
        purged += int(await queue.client.eval(_PURGE_SCRIPT, 1 + len(keys), dead, *keys, entry_id))
    return purged


async def _letters(queue: _Queue, ident: str | None, every: bool,
                   older_than: float | None) -> list[tuple[int, str, bytes]]:
    """The dead letters an action applies to: (stream index, dead stream, id)."""
    if ident is not None:
        index, stream, entry_id, _ = await _find(queue, ident)
        if not stream.endswith(":dead"):
            raise UsageError(f"{ident} is in {stream}, not a dead letter")
        return [(index, stream, entry_id)]
    end = b"+" if older_than is None else b"%d" % int((time.time() - older_than) * 1000)
    letters: list[tuple[int, str, bytes]] = []
    for index, stream in enumerate(queue.streams):
        dead, start = f"{stream}:dead", b"-"
        for _ in range(int(await queue.client.xlen(dead)) // _BATCH + 1):  # bounded by the length now
            found: Any = await queue.client.xrange(dead, start, end, count=_BATCH)
            letters += [(index, dead, entry_id) for entry_id, _ in found]
            if len(found) < _BATCH:
                break
            start = b"(" + found[-1][0]
    return letters
