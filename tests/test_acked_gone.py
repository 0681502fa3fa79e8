"""ARCHITECTURE.md rule 10, "Acknowledged means gone", against a real redis-server and a real Redis
Cluster: messages written by the real sink, consumed by the real consumer, and then neither
the entries nor the large bodies' chunk keys are left in Redis; with two consumer groups an
entry goes only when both have acknowledged it; a dead letter keeps its body.

Every wait is bounded (the consumer helper waits at most 20 s for what it expects).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.cluster import ClusterNode, RedisCluster

from smtpfront.consumer import Message, PermanentError
from smtpfront.sink.record import BodyRef, decode_entry
from smtpfront.sink.redis.sink import RedisStreamSink
from smtpfront.sink.redis.url import shard_stream

from .conftest import RedisClusterNodes, RedisServer
from .sink.test_redis_large import body_of, consume, upload
from .supervisor.test_serve import Serve

ROOT = Path(__file__).resolve().parent.parent
STREAM = "smtpfront:inbound"
DEAD = f"{STREAM}:dead"
THRESHOLD = 100_000  # bodies past this go to chunk keys (the default is 1 MiB: smaller here, for speed)


def bodies(n: int) -> list[bytes]:
    """``n`` bodies without a Message-ID (no dedup keys stay behind): every tenth a large one."""
    return [body_of(300_000 if i % 10 == 0 else 3_000, seed=i) for i in range(n)]


def produce(url: str, payloads: list[bytes]) -> list[str]:
    async def main() -> list[str]:
        sink = RedisStreamSink(url, large_threshold=THRESHOLD)
        await sink.start()
        try:
            return list(await asyncio.gather(*(upload(sink, body, n) for n, body in enumerate(payloads))))
        finally:
            await sink.close()

    return asyncio.run(main())


def used_memory(client: redis.Redis | RedisCluster) -> int:
    if isinstance(client, RedisCluster):  # one reply per node
        info: Any = client.info("memory", target_nodes=RedisCluster.ALL_NODES)
        return sum(int(node["used_memory"]) for node in info.values())
    return int(client.info("memory")["used_memory"])


def body_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match=f"{STREAM}:body:*", count=1000))


def test_consumed_messages_leave_nothing_behind(redis_server: RedisServer) -> None:
    n = 300
    with redis.Redis.from_url(redis_server.url) as client:
        client.xgroup_create(STREAM, "smtpfront", "0", mkstream=True)
        before = used_memory(client)
        produce(redis_server.url, bodies(n))
        assert client.xlen(STREAM) == n and len(body_keys(client)) == 30 * 2  # 300 kB: two chunks each
        peak = used_memory(client)
        got = consume(redis_server.url, lambda got: len(got) == n)
        assert len({m.id for m in got}) == n
        assert client.xlen(STREAM) == 0
        assert body_keys(client) == []
        assert client.xpending(STREAM, "smtpfront")["pending"] == 0
        after = used_memory(client)
    # 300 messages, 30 of them large, are ~10 MB; what stays is the empty stream and its group.
    assert peak - before > 8_000_000, (before, peak)
    assert after - before < 1_000_000, (before, peak, after)


def test_consumed_messages_leave_nothing_behind_in_a_cluster(redis_cluster: RedisClusterNodes) -> None:
    n, shards = 120, 6
    nodes = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports])
    try:
        before = used_memory(nodes)
        produce(redis_cluster.url(shards), bodies(n))
        streams = [shard_stream(STREAM, i) for i in range(shards)]
        assert sum(nodes.xlen(s) for s in streams) == n
        peak = used_memory(nodes)
        got = consume(redis_cluster.url(shards), lambda got: len(got) == n)
        assert len({(m.stream, m.id) for m in got}) == n
        assert [nodes.xlen(s) for s in streams] == [0] * shards
        assert list(nodes.scan_iter(match=f"{STREAM}:*:body:*", count=1000)) == []
        after = used_memory(nodes)
    finally:
        nodes.close()
    assert peak - before > 3_000_000, (before, peak)
    assert after - before < 2_000_000, (before, peak, after)


async def refuse(message: Message) -> None:
    raise PermanentError("no such mailbox")


def test_a_dead_letter_keeps_its_chunk_keys(redis_server: RedisServer) -> None:
    [entry] = produce(redis_server.url, [body_of(300_000, seed=7)])
    with redis.Redis.from_url(redis_server.url) as client:
        consume(redis_server.url, lambda got: client.xlen(DEAD) == 1, handler=refuse)
        [(_, letter)] = client.xrange(DEAD)
        assert letter[b"origin_id"].decode() == entry
        ref = decode_entry(letter)[1]
        assert isinstance(ref, BodyRef) and all(client.exists(key) for key in ref.chunk_keys())
        assert client.xlen(STREAM) == 0  # the entry itself went with the dead-lettering step
        assert b"".join(client.get(key) or b"" for key in ref.chunk_keys()).endswith(body_of(300_000, seed=7))


def test_with_two_groups_an_entry_goes_when_both_acknowledged(redis_server: RedisServer) -> None:
    payloads = bodies(20)
    with redis.Redis.from_url(redis_server.url) as client:
        for group in ("billing", "archive"):
            client.xgroup_create(STREAM, group, "0", mkstream=True)
        produce(redis_server.url, payloads)
        keys = len(body_keys(client))
        consume(redis_server.url, lambda got: len(got) == 20, group="billing")
        assert client.xlen(STREAM) == 20 and len(body_keys(client)) == keys == 4  # archive has not read them
        got = consume(redis_server.url, lambda got: len(got) == 20, group="archive")
        assert all(any(m.body.endswith(p) for m in got) for p in payloads)  # chunk keys were still there
        assert client.xlen(STREAM) == 0 and body_keys(client) == []


def test_dead_letter_with_another_group_copies_the_body(redis_server: RedisServer) -> None:
    body = body_of(300_000, seed=3)
    with redis.Redis.from_url(redis_server.url) as client:
        for group in ("billing", "archive"):
            client.xgroup_create(STREAM, group, "0", mkstream=True)
        produce(redis_server.url, [body])
        consume(redis_server.url, lambda got: client.xlen(DEAD) == 1, handler=refuse, group="billing")
        assert client.xlen(STREAM) == 1  # archive still needs it
        [(_, letter)] = client.xrange(DEAD)
        got = consume(redis_server.url, lambda got: len(got) == 1, group="archive")
        assert got[0].body.endswith(body)
        assert client.xlen(STREAM) == 0  # archive acknowledged last: the entry and its chunks are gone
        ref = decode_entry(letter)[1]
        assert isinstance(ref, BodyRef) and b":body:dl-" in ref.key
        assert b"".join(client.get(key) or b"" for key in ref.chunk_keys()).endswith(body)
        assert [k for k in body_keys(client) if b":body:dl-" not in k] == []


def test_a_destroyed_group_stops_holding_entries(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        for group in ("billing", "stopped"):
            client.xgroup_create(STREAM, group, "0", mkstream=True)
        produce(redis_server.url, bodies(15))
        consume(redis_server.url, lambda got: len(got) == 15, group="billing")
        assert client.xlen(STREAM) == 15  # "stopped" holds them
        client.xgroup_destroy(STREAM, "stopped")
        consume(redis_server.url, lambda got: client.xlen(STREAM) == 0, group="billing")  # its sweep
        assert body_keys(client) == []


def test_served_and_consumed_by_the_commands_leaves_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    """The whole path with the real commands: ``serve`` queues, ``consume`` delivers, and the
    stream is empty afterwards (``smtpfront queue stats`` says so too)."""
    server = Serve(tmp_path, "--workers", "1", "--queue", redis_server.url)  # the last --queue wins
    try:
        server.send(20)
    finally:
        assert server.stop() == 0
    maildir = tmp_path / "delivered"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.xlen(STREAM) == 20
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtpfront", "consume", "--queue", redis_server.url, "--maildir", str(maildir),
             "--block-ms", "200", "--log-format", "plain"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while not ((maildir / "new").is_dir() and len(list((maildir / "new").iterdir())) == 20
                       and client.xlen(STREAM) == 0):
                assert proc.poll() is None and time.monotonic() < deadline, client.xlen(STREAM)
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    stats = subprocess.run([sys.executable, "-m", "smtpfront", "queue", "stats", "--json", "--queue", redis_server.url],
                           cwd=ROOT, env=env, capture_output=True, timeout=60, check=True)
    assert orjson.loads(stats.stdout)["length"] == 0
