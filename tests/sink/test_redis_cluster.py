"""Redis Cluster (and Sentinel) queues against real servers: shard streams, dedup per shard,
one pipelined write per node, the consumer's per-shard loops, a node going away and coming back.

Each cluster test gets a fresh three-master cluster (``redis_cluster`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from smtpfront.assembly import build_sink
from smtpfront.config import load_config
from smtpfront.consumer import Consumer, Message
from smtpfront.server import SMTPServer
from smtpfront.sink.base import SinkError
from smtpfront.sink.record import decode_record
from smtpfront.sink.redis.sink import RedisStreamSink
from smtpfront.sink.redis.url import DEFAULT_SHARDS, QueueURL, parse_queue_url, shard_stream

from ..conftest import RedisClusterNodes, RedisServer, free_port
from .test_redis_streams import attempt, envelope

STREAM = "smtpfront:inbound"
SHARDS = 6

Entries = dict[int, dict[bytes, dict[bytes, bytes]]]  # shard → entry id → fields


def cluster_client(cluster: RedisClusterNodes) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in cluster.ports])


def shard_entries(cluster: RedisClusterNodes, shards: int = SHARDS) -> Entries:
    client = cluster_client(cluster)
    try:
        return {i: dict(client.xrange(shard_stream(STREAM, i))) for i in range(shards)}  # type: ignore[arg-type]
    finally:
        client.close()


def node_of(cluster: RedisClusterNodes, shard: int) -> int:
    client = cluster_client(cluster)
    try:
        return int(client.get_node_from_key(shard_stream(STREAM, shard)).port)
    finally:
        client.close()


async def commit(sink: RedisStreamSink, body: bytes, n: int = 0) -> str:
    writer = sink.open(envelope(n))
    writer.write(memoryview(body))
    return await writer.commit()


def run_server_and(make: Callable[[], RedisStreamSink], client: Callable[[int], None]) -> None:
    async def main() -> None:
        async with SMTPServer(port=0, sink=make(), tls=False) as server:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)

    asyncio.run(main())


def split_id(queue_id: str) -> tuple[int, bytes]:
    shard, _, entry = queue_id.rpartition(" ")[2].partition("/")
    return int(shard), entry.encode()


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/?shards=6",
     QueueURL("cluster", "", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), shards=6)),
    ("rediss+cluster://u:p%40ss@h1,[::1]:7002", QueueURL("cluster", "", (("h1", 6379), ("::1", 7002)), "u", "p@ss",
                                                         ssl=True, shards=DEFAULT_SHARDS)),
    ("redis+sentinel://s1:26380,s2/mymaster/3",
     QueueURL("sentinel", "", (("s1", 26380), ("s2", 26379)), service="mymaster", db=3)),
    ("rediss+sentinel://:secret@s1/mymaster", QueueURL("sentinel", "", (("s1", 26379),), None, "secret", True,
                                                       "mymaster")),
    ("redis://localhost:6379/2", QueueURL("redis", "")),
])
def test_queue_urls(url: str, expected: QueueURL) -> None:
    parsed = parse_queue_url(url)
    assert parsed == QueueURL(expected.kind, url, expected.nodes, expected.username, expected.password, expected.ssl,
                              expected.service, expected.db, expected.shards)


@pytest.mark.parametrize(("url", "complaint"), [
    ("redis+cluster://h:7000/?shards=0", "shards wants a number"),
    ("redis+cluster://h:7000/?shards=x", "shards wants a number"),
    ("redis+cluster://h:7000/1", "database 0 only"),
    ("redis+cluster://h:7000/?shard=4", "unknown parameter shard"),
    ("redis+cluster://h:port", "is not HOST:PORT"),
    ("redis+sentinel://s1:26379", "name the master"),
    ("redis+sentinel://s1:26379/m/x", "database is a number"),
    ("redis://h:6379/0?shards=4", "needs a redis\\+cluster:// URL"),
    ("memcached://h", "is not a Redis URL"),
])
def test_bad_queue_urls(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_queue_url(url)


def test_sink_and_cli_options() -> None:
    def sink_for(url: str) -> object:  # what `smtpfront serve --queue URL` builds
        return build_sink(load_config(env={}, overrides={"queue": url}))

    sink = sink_for("redis+cluster://127.0.0.1:7000/?shards=5")  # no I/O until start()
    assert isinstance(sink, RedisStreamSink) and sink.shards == 5
    assert RedisStreamSink("redis+cluster://127.0.0.1:7000", shards=3).shards == 3
    assert RedisStreamSink("redis+cluster://127.0.0.1:7000").shards == DEFAULT_SHARDS
    assert shard_stream(STREAM, 3) == "smtpfront:inbound:{3}"
    with pytest.raises(ValueError, match="redis\\+cluster"):
        RedisStreamSink("redis://127.0.0.1:6379/0", shards=4)
    with pytest.raises(ValueError, match="braces"):
        RedisStreamSink("redis+cluster://127.0.0.1:7000", stream="mail:{x}")
    with pytest.raises(ValueError, match="shards"):
        sink_for("redis+cluster://127.0.0.1:7000/?shards=-1")
    assert Consumer("redis+cluster://127.0.0.1:7000/?shards=4").streams == [shard_stream(STREAM, i) for i in range(4)]
    assert Consumer("redis://127.0.0.1:6379/0").streams == [STREAM]


# -- the producer -----------------------------------------------------------------------------


def test_messages_spread_over_shards_and_nodes_byte_exact(redis_cluster: RedisClusterNodes) -> None:
    bodies = [b"Message-ID: <%d@client.example>\r\nSubject: %d\r\n\r\nplain %d\r\n" % (n, n, n) for n in range(24)]
    bodies += [b"Message-ID: <dots@client.example>\r\nSubject: dots\r\n\r\n.leading dot\r\n\xc3\xa9 8bit\r\n",
               b"Message-ID: <big@client.example>\r\nSubject: big\r\n\r\n" + b"x" * 70_000 + b"\r\n"]
    queue_ids: list[str] = []

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo()
            for body in bodies:
                code, reply = attempt(smtp, body)
                assert code == 250, reply
                queue_ids.append(reply)

    run_server_and(lambda: RedisStreamSink.from_url(redis_cluster.url(SHARDS)), client)
    stored = shard_entries(redis_cluster)
    assert sum(map(len, stored.values())) == len(bodies)
    for queue_id, body in zip(queue_ids, bodies, strict=True):
        shard, entry = split_id(queue_id)  # the 250 names the shard and the entry id
        env, data = decode_record(stored[shard][entry])
        assert data.startswith(b"Received: from ") and data.endswith(body)
        assert env["mail_from"] == "alice@example.org" and env["size"] == len(body)
    shards = {split_id(q)[0] for q in queue_ids}
    assert len(shards) >= 4 and len({node_of(redis_cluster, s) for s in shards}) == 3
    client = cluster_client(redis_cluster)
    try:  # each dedup key lives in its shard's slot and names its entry
        for shard in shards:
            keys = client.keys(f"{shard_stream(STREAM, shard)}:dedup:*", target_nodes=RedisCluster.ALL_NODES)
            assert keys and all(client.get(key) in stored[shard] for key in keys)  # type: ignore[union-attr]
    finally:
        client.close()


def test_a_retried_message_lands_on_its_shard_and_is_not_queued_twice(redis_cluster: RedisClusterNodes) -> None:
    body = b"Message-ID: <retry@example.org>\r\nSubject: retry\r\n\r\nsame\r\n"
    replies: list[str] = []

    def client(port: int) -> None:
        for payload in (body, body, body + b"different\r\n"):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:  # a new connection, as a retry is
                smtp.ehlo()
                code, reply = attempt(smtp, payload)
                assert code == 250, reply
                replies.append(reply)

    run_server_and(lambda: RedisStreamSink.from_url(redis_cluster.url(SHARDS)), client)
    first, retry, other = map(split_id, replies)
    assert first == retry != other  # the same shard, the original entry id
    assert sum(map(len, shard_entries(redis_cluster).values())) == 2


def test_without_dedup_shards_take_turns_one_write_per_node(redis_cluster: RedisClusterNodes) -> None:
    """Round-robin over the shards; concurrent commits go out as one pipelined batch per node;
    the high-water mark compares the sum of the shards' backlogs."""

    async def main() -> RedisStreamSink:
        sink = RedisStreamSink(redis_cluster.url(SHARDS), dedup_window=0, high_water=SHARDS, monitor_interval=0.05)
        await sink.start()
        assert not sink.full
        ids = await asyncio.gather(*(commit(sink, b"same body\r\n", n) for n in range(2 * SHARDS)))
        assert collections.Counter(split_id(i)[0] for i in ids) == {shard: 2 for shard in range(SHARDS)}
        await asyncio.sleep(0.3)
        assert sink.full  # 12 entries > 6, though no shard holds more than 2
        await sink.close()
        return sink

    sink = asyncio.run(main())
    assert (sink.entries, sink.batches) == (2 * SHARDS, 3)


def test_a_stopped_node_fails_only_its_shards_then_recovers(redis_cluster: RedisClusterNodes) -> None:
    owners = collections.Counter(node_of(redis_cluster, shard) for shard in range(SHARDS))
    victim = owners.most_common(1)[0][0]
    accepted: dict[bytes, tuple[int, bytes]] = {}

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.ehlo()
            assert attempt(smtp, b"Subject: warm\r\n\r\nx\r\n")[0] == 250
            redis_cluster.stop(victim)
            failed: list[bytes] = []
            for n in range(12):
                body = b"Subject: while down %d\r\n\r\nx\r\n" % n
                code, reply = attempt(smtp, body)
                if code == 250:
                    accepted[body] = split_id(reply)
                    assert node_of_shard[accepted[body][0]] != victim
                else:
                    assert (code, reply[:5]) == (451, "4.3.0"), (code, reply)
                    failed.append(body)
            assert failed and accepted  # only the stopped node's shards refused mail
            redis_cluster.start(victim)
            deadline = time.monotonic() + 15
            for body in failed:  # the node backs off (at most 5 s) and becomes writable (~2 s): 250 again
                while True:
                    code, reply = attempt(smtp, body)
                    if code == 250 or time.monotonic() > deadline:
                        break
                    assert (code, reply[:5]) == (451, "4.3.0"), (code, reply)
                    time.sleep(0.2)
                assert code == 250, reply
                accepted[body] = split_id(reply)

    node_of_shard = {shard: node_of(redis_cluster, shard) for shard in range(SHARDS)}
    run_server_and(lambda: RedisStreamSink.from_url(redis_cluster.url(SHARDS)), client)
    stored = shard_entries(redis_cluster)
    for body, (shard, entry) in accepted.items():
        assert decode_record(stored[shard][entry])[1].endswith(body)
    victims = [s for s in range(SHARDS) if node_of_shard[s] == victim]
    bodies = [decode_record(f)[1] for shard in victims for f in stored[shard].values()]
    assert len(bodies) == len({b for b, (s, _) in accepted.items() if s in victims})  # each once


def test_start_fails_clearly_when_no_node_answers(redis_cluster: RedisClusterNodes) -> None:
    url = redis_cluster.url(SHARDS)
    redis_cluster.close()

    async def main() -> None:
        sink = RedisStreamSink(url, timeout=1)
        with pytest.raises(SinkError, match="redis queue redis\\+cluster://"):
            await sink.start()
        await sink.close()

    asyncio.run(main())


# -- the consumer -----------------------------------------------------------------------------


def test_consumer_reads_every_shard_exactly_once(redis_cluster: RedisClusterNodes) -> None:
    got: list[Message] = []
    sent: dict[tuple[str, str], bytes] = {}

    async def handler(message: Message) -> None:
        got.append(message)

    async def produce(sink: RedisStreamSink, first: int, count: int) -> None:
        for n in range(first, first + count):
            body = b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n)
            shard, entry = split_id(await commit(sink, body, n))
            sent[(shard_stream(STREAM, shard), entry.decode())] = b"Received: test\r\n" + body

    async def until(check: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.02)

    async def main() -> None:
        sink = RedisStreamSink(redis_cluster.url(SHARDS))
        await sink.start()
        await produce(sink, 0, 20)  # queued before the groups exist
        consumer = Consumer(redis_cluster.url(SHARDS), block_ms=200, name="B")
        task = asyncio.create_task(consumer.run(handler))
        try:
            await until(lambda: len(got) == 20)
            await produce(sink, 20, 20)  # arriving while every shard's loop blocks in XREADGROUP
            await until(lambda: len(got) == 40)
            await asyncio.sleep(0.5)  # time for a duplicate to show up
        finally:
            consumer.stop()
            await asyncio.wait_for(task, 3)  # stop() ends every shard's loop
        await sink.close()

    asyncio.run(main())
    assert sorted((m.stream, m.id) for m in got) == sorted(sent)  # each exactly once
    assert all(m.body == sent[(m.stream, m.id)] and m.deliveries == 1 for m in got)
    client = cluster_client(redis_cluster)
    try:
        for shard in range(SHARDS):
            assert client.xpending(shard_stream(STREAM, shard), "smtpfront")["pending"] == 0  # type: ignore[index]
    finally:
        client.close()


# -- Sentinel ---------------------------------------------------------------------------------


def test_sentinel_url_finds_the_master(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    binary = shutil.which("redis-server")
    assert binary is not None
    sentinel = subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, socket_timeout=1) as probe:
                    if probe.sentinel_masters().get("mymaster"):
                        break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        # The first sentinel listed is away: the next one is asked.
        url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{port}/mymaster/0"
        replies: list[str] = []

        def client(smtp_port: int) -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
                smtp.ehlo()
                code, reply = attempt(smtp, b"Subject: via sentinel\r\n\r\nx\r\n")
                assert code == 250, reply
                replies.append(reply.rsplit(" ", 1)[1])

        run_server_and(lambda: RedisStreamSink.from_url(url), client)
        got: list[Message] = []

        async def consume() -> None:
            async def handler(message: Message) -> None:
                got.append(message)

            consumer = Consumer(url, block_ms=100)
            task = asyncio.create_task(consumer.run(handler))
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            consumer.stop()
            await asyncio.wait_for(task, 3)

        asyncio.run(consume())
        assert [m.id for m in got] == replies and got[0].body.endswith(b"via sentinel\r\n\r\nx\r\n")
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)
