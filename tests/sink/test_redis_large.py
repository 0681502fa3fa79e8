"""Large messages against real redis-servers: chunk keys written while the body arrives,
a version-2 record committed after them, reassembled by the consumer, deleted on ack.

The SMTP server runs on its own uvloop loop in a background thread (``smtp_server`` from
the fault tests); the 20 MB client runs in a subprocess, so this process's traced memory is
the server's. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from smtpfront.consumer import Consumer, Handler, Message, exec_handler, maildir_handler, streaming
from smtpfront.sink.base import SinkError
from smtpfront.sink.record import FORMAT_VERSION, LARGE_VERSION, BodyRef, chunk_keys, decode_entry
from smtpfront.sink.redis.large import CHUNK_SIZE, WINDOW
from smtpfront.sink.redis.sink import RedisStreamSink
from smtpfront.sink.redis.url import shard_stream

from ..conftest import RedisClusterNodes, RedisServer
from .test_redis_faults import smtp_server
from .test_redis_streams import envelope

STREAM = "smtpfront:inbound"
MiB = 1024 * 1024
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def body_of(size: int, seed: int = 0, message_id: str | None = None) -> bytes:
    """A message of exactly ``size`` octets: headers, then hex lines of at most 80 octets, CRLF-terminated."""
    head = (f"Message-ID: <{message_id}>\r\n" if message_id else "") + f"Subject: large {seed}\r\n\r\n"
    lines, n = [head.encode()], len(head)
    block = hashlib.sha256(b"%d" % seed).hexdigest().encode()  # 64 octets, no dots, no CR/LF
    while size - n > 80:
        lines.append(block + block[:12] + b"\r\n")
        n += 78
    lines.append((block + block)[: size - n - 2] + b"\r\n")  # the last line makes it exact
    body = b"".join(lines)
    assert len(body) == size and body.endswith(b"\r\n"), len(body)
    return body


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=10)


def stored(server: RedisServer) -> Entries:
    with client(server) as c:
        return cast(Entries, c.xrange(STREAM))


def body_keys(server: RedisServer) -> list[bytes]:
    with client(server) as c:
        return sorted(cast(list[bytes], c.keys(f"{STREAM}:body:*")))


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def consume(url: str, done: Callable[[list[Message]], bool], handler: Handler | None = None,
            streamed: bool = False, **kw: Any) -> list[Message]:
    """Run a consumer until ``done(handled)``, then stop it (run() returns after the batch's XACK)."""
    got: list[Message] = []

    async def collect(message: Message) -> None:
        if handler is not None:
            await handler(message)
        got.append(message)

    async def main() -> None:
        c = Consumer(url, block_ms=200, name="T", **kw)
        task = asyncio.create_task(c.run(streaming(collect) if streamed else collect))
        try:
            await until(lambda: done(got), timeout=20)
        finally:
            c.stop()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    return got


async def upload(sink: RedisStreamSink, body: bytes, n: int = 0, step: int = 65536) -> str:
    """One message through the sink API in ``step``-octet parts, honouring backpressure."""
    writer = sink.open(envelope(n))
    try:
        for i in range(0, len(body), step):
            writer.write(memoryview(body[i:i + step]))
            waiting = writer.pressure()
            if waiting is not None:
                await asyncio.wait_for(waiting, 10)
        return await writer.commit()
    except BaseException:
        await writer.abort()
        raise


# -- through a real server ---------------------------------------------------------------------

SENDER = """
import smtplib, sys
body = open(sys.argv[1], "rb").read()
with smtplib.SMTP("127.0.0.1", int(sys.argv[2]), timeout=60) as smtp:
    smtp.ehlo()
    smtp.mail("alice@example.org", ["SIZE=%d" % len(body)])
    smtp.rcpt("bob@example.net")
    code, reply = smtp.data(body)
    print(code, reply.decode())
"""


def test_twenty_megabytes_arrive_byte_exact_and_the_worker_never_holds_them(
        redis_server: RedisServer, tmp_path: Path) -> None:
    size = 20 * 1000 * 1000
    expected = body_of(size, seed=7, message_id="big@example.org")  # allocated before tracing starts
    (tmp_path / "message").write_bytes(expected)
    tracemalloc.start()
    try:
        with smtp_server(lambda: RedisStreamSink(redis_server.url)) as port:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            done = subprocess.run([sys.executable, "-c", SENDER, str(tmp_path / "message"), str(port)],
                                  capture_output=True, timeout=120, check=False)
            peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    said = done.stdout.decode()
    assert done.returncode == 0 and said.startswith("250 2.0.0 Ok: queued as "), done.stderr.decode()[-2000:]
    print(f"\n20 MB message: peak traced memory in the server {peak / MiB:.2f} MiB")
    # The worker holds at most the threshold (1 MiB, collected before the upload starts),
    # WINDOW chunks in flight and one chunk being filled, plus bookkeeping: not the message.
    assert peak < 1 * MiB + (WINDOW + 2) * CHUNK_SIZE + 1 * MiB, peak

    [(entry_id, fields)] = stored(redis_server)
    assert said.split()[-1] == entry_id.decode() and fields[b"v"] == LARGE_VERSION
    env, ref = decode_entry(fields)
    assert isinstance(ref, BodyRef) and env["size"] == size and ref.chunks >= size // (CHUNK_SIZE + 65536)
    with client(redis_server) as c:
        assert all(c.ttl(key) == -1 for key in ref.chunk_keys())  # committed: no TTL

    [message] = consume(redis_server.url, lambda got: len(got) == 1)
    assert message.body.startswith(b"Received: from ") and message.body.endswith(expected)
    assert message.size == ref.size == len(message.body)
    assert body_keys(redis_server) == []  # the ack deleted the chunks


def test_just_under_at_and_just_over_the_threshold(redis_server: RedisServer) -> None:
    threshold = 1024 * 1024  # the default
    bodies = [body_of(threshold + d, seed=d) for d in (-1, 0, 1)]
    ids: list[str] = []
    with smtp_server(lambda: RedisStreamSink(redis_server.url)) as port, \
            smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        for body in bodies:
            smtp.mail("a@example.org")
            smtp.rcpt("b@example.net")
            code, reply = smtp.data(body)
            assert code == 250, reply
            ids.append(reply.decode().split()[-1])
    entries = stored(redis_server)
    assert [e.decode() for e, _ in entries] == ids
    assert [f[b"v"] for _, f in entries] == [FORMAT_VERSION, FORMAT_VERSION, LARGE_VERSION]
    got = {m.id: m.body for m in consume(redis_server.url, lambda got: len(got) == 3)}
    assert all(got[i].startswith(b"Received: ") and got[i].endswith(b) for i, b in zip(ids, bodies, strict=True))
    assert body_keys(redis_server) == []


def test_a_retried_large_message_is_queued_once(redis_server: RedisServer) -> None:
    body = body_of(1_500_000, message_id="retry-large@example.org")
    replies = []
    with smtp_server(lambda: RedisStreamSink(redis_server.url)) as port:
        for _ in range(2):  # a new connection, as a retry is
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.ehlo()
                smtp.mail("a@example.org")
                smtp.rcpt("b@example.net")
                replies.append(smtp.data(body))
    assert [code for code, _ in replies] == [250, 250] and replies[0][1] == replies[1][1]
    [(_, fields)] = stored(redis_server)
    ref = decode_entry(fields)[1]
    assert isinstance(ref, BodyRef)
    assert body_keys(redis_server) == sorted(ref.chunk_keys())  # the retry's own upload was dropped


# -- failures ----------------------------------------------------------------------------------


def test_a_refused_commit_leaves_no_entry_and_deletes_its_chunks(redis_server: RedisServer) -> None:
    async def main() -> None:
        sink = RedisStreamSink(redis_server.url, large_threshold=100_000)
        await sink.start()
        try:
            writer = sink.open(envelope())
            body = body_of(900_000)
            for i in range(0, len(body), 65536):
                writer.write(memoryview(body[i:i + 65536]))
            await asyncio.sleep(0.2)  # the chunks are in
            keys = body_keys(redis_server)
            assert len(keys) >= 3
            with client(redis_server) as c:
                assert all(0 < c.ttl(key) <= sink.upload_ttl for key in keys)  # uncommitted: they would expire
                c.delete(keys[1])  # lost (say, expired): the commit must not name it
            with pytest.raises(SinkError, match="is missing"):
                await writer.commit()
            await writer.abort()
            await until(lambda: body_keys(redis_server) == [])
            assert await upload(sink, body, 1)  # the lane is fine afterwards
        finally:
            await sink.close()

    asyncio.run(main())
    assert len(stored(redis_server)) == 1


def test_an_upload_cut_off_by_a_lost_connection_expires(redis_server: RedisServer) -> None:
    async def main() -> None:
        sink = RedisStreamSink(redis_server.url, large_threshold=100_000, upload_ttl=2)
        await sink.start()
        try:
            writer = sink.open(envelope())
            body = body_of(2_000_000)
            with pytest.raises(SinkError):
                for i in range(0, len(body), 65536):
                    writer.write(memoryview(body[i:i + 65536]))
                    if i == 4 * 65536:  # the first chunk went out with this part: hold the next ones
                        await asyncio.sleep(0.1)
                        with client(redis_server) as c:
                            c.execute_command("CLIENT", "PAUSE", "5000", "WRITE")  # type: ignore[no-untyped-call]
                    if i == 8 * 65536:  # a chunk waits for its answer: the sink's connection drops
                        await asyncio.sleep(0.1)
                        with client(redis_server) as c:
                            assert c.client_kill_filter(_type="normal", skipme=True) >= 1
                            c.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
                    await asyncio.sleep(0.01)
                await writer.commit()
            # The probe reconnects at once (Redis itself is fine): the abort may delete the keys;
            # if the lane was still down, they are left to their TTL. Either way none stays.
            await writer.abort()
            left = body_keys(redis_server)
            with client(redis_server) as c:
                assert all(0 < c.pttl(key) <= 2000 for key in left)
            await until(lambda: body_keys(redis_server) == [], timeout=10)
        finally:
            await sink.close()

    asyncio.run(main())
    assert stored(redis_server) == []


# -- the consumer ------------------------------------------------------------------------------


def test_streaming_handlers_and_dead_letters_keep_memory_and_chunks_right(
        redis_server: RedisServer, tmp_path: Path) -> None:
    bodies = [body_of(3_000_000, seed=n) for n in range(2)]

    async def produce() -> list[str]:
        sink = RedisStreamSink(redis_server.url)
        await sink.start()
        try:
            return [await upload(sink, body, n) for n, body in enumerate(bodies)]
        finally:
            await sink.close()

    first, second = asyncio.run(produce())
    maildir = maildir_handler(str(tmp_path / "Maildir"))
    refused: list[str] = []

    async def handler(message: Message) -> None:
        with pytest.raises(RuntimeError, match="chunks"):
            message.body  # noqa: B018  (streamed: only chunks() reads it)
        if message.id == second:
            refused.append(message.id)
            raise RuntimeError("mailbox full")
        await maildir(message)

    def dead(_: list[Message]) -> bool:
        with client(redis_server) as c:
            return bool(c.xlen(f"{STREAM}:dead"))

    got = consume(redis_server.url, lambda got: len(got) == 1 and dead(got), handler, streamed=True,
                  max_deliveries=1)
    assert [m.id for m in got] == [first] and refused == [second]
    [path] = (tmp_path / "Maildir" / "new").iterdir()
    assert path.read_bytes().endswith(bodies[0])
    with client(redis_server) as c:
        [(_, letter)] = c.xrange(f"{STREAM}:dead")
    ref = decode_entry(letter)[1]
    assert isinstance(ref, BodyRef) and letter[b"origin_id"] == second.encode()
    assert body_keys(redis_server) == sorted(ref.chunk_keys())  # the dead letter's body is kept


def test_exec_streams_a_large_body_and_a_missing_chunk_never_looks_delivered(
        redis_server: RedisServer, tmp_path: Path) -> None:
    bodies = [body_of(700_000, seed=n) for n in range(2)]

    async def produce() -> None:
        sink = RedisStreamSink(redis_server.url, large_threshold=100_000)
        await sink.start()
        try:
            for n, body in enumerate(bodies):
                await upload(sink, body, n)
        finally:
            await sink.close()

    asyncio.run(produce())
    entries = stored(redis_server)
    broken = decode_entry(entries[1][1])[1]
    assert isinstance(broken, BodyRef) and broken.chunks >= 3
    with client(redis_server) as c:
        c.delete(broken.chunk_keys()[1])  # the second message lost a chunk (say, a flushed replica)
    # The command keeps what it read only once stdin ended: a killed one leaves no file.
    command = exec_handler(["sh", "-c", 'cat > "$0/$SMTPFRONT_QUEUE_ID.tmp" && mv "$0/$SMTPFRONT_QUEUE_ID.tmp" '
                            '"$0/$SMTPFRONT_QUEUE_ID"', str(tmp_path)])

    def dead(_: list[Message]) -> bool:
        with client(redis_server) as c:
            return bool(c.xlen(f"{STREAM}:dead"))

    got: list[Message] = []

    async def handler(message: Message) -> None:
        await command(message)
        got.append(message)

    consume(redis_server.url, lambda _: len(got) == 1 and dead(got), handler, streamed=True, max_deliveries=1)
    assert (tmp_path / "t.0").read_bytes() == b"Received: test\r\n" + bodies[0]
    assert not (tmp_path / "t.1").exists()
    with client(redis_server) as c:
        [(_, letter)] = c.xrange(f"{STREAM}:dead")
    assert letter[b"origin_id"] == entries[1][0] and letter[b"reason"].startswith(b"BodyMissingError: body chunk")
    assert body_keys(redis_server) == sorted(k for k in broken.chunk_keys() if k != broken.chunk_keys()[1])


# -- Redis Cluster -----------------------------------------------------------------------------


def test_a_large_message_in_a_cluster(redis_cluster: RedisClusterNodes) -> None:
    body = body_of(2_500_000, message_id="cluster-large@example.org")

    async def produce() -> list[str]:
        sink = RedisStreamSink(redis_cluster.url(6))
        await sink.start()
        try:
            return [await upload(sink, body, n) for n in range(2)]  # the second is a retry
        finally:
            await sink.close()

    first, retry = asyncio.run(produce())
    assert first == retry
    shard, entry = first.split("/")
    nodes = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports])
    try:
        name = shard_stream(STREAM, int(shard))
        [(entry_id, fields)] = nodes.xrange(name)
        ref = decode_entry(fields)[1]
        assert entry_id.decode() == entry and isinstance(ref, BodyRef)
        slot = nodes.keyslot(name)
        assert {nodes.keyslot(key) for key in ref.chunk_keys()} == {slot}  # one node, one script
        assert all(nodes.exists(key) for key in ref.chunk_keys())
        [message] = consume(redis_cluster.url(6), lambda got: len(got) == 1)
        assert message.id == entry and message.body.endswith(body)
        assert not any(nodes.exists(key) for key in chunk_keys(ref.key, ref.chunks))
    finally:
        nodes.close()
