"""RedisStreamSink under Redis faults, against a real redis-server and real SMTP clients.

The core promise: a message that got ``250`` is in the stream, whatever Redis does; when
Redis is away, slow, short of replicas or out of memory the client gets ``451 4.3.0`` (and
retries), promptly, and the server keeps serving. The SMTP server runs on its own uvloop
loop in a background thread; the clients run in the test's thread. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
import redis
import uvloop

from smtpfront.server import SMTPServer
from smtpfront.sink.base import SinkError
from smtpfront.sink.record import decode_record
from smtpfront.sink.redis.sink import RedisStreamSink

from ..conftest import RedisServer, free_port
from .test_redis_streams import commit, record_metrics, until

STREAM = "smtpfront:inbound"
REPLY_TIMEOUT = 10.0  # any one SMTP reply; a hang fails the test instead of blocking it
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as (\S+)$")


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that fsyncs every write before replying, so a restart keeps what it acknowledged."""
    server = RedisServer(free_port(), tmp_path, appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


Entries = list[tuple[bytes, dict[bytes, bytes]]]


def redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=10, socket_connect_timeout=10)


def read_stream(client: redis.Redis) -> Entries:
    return cast(Entries, client.xrange(STREAM))


@contextmanager
def smtp_server(make_sink: Callable[[], RedisStreamSink]) -> Iterator[int]:
    """An SMTPServer with the sink on its own uvloop loop in a background thread; yields its port."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        async with SMTPServer(port=0, sink=make_sink(), tls=False, close_timeout=5) as server:
            box["port"], box["loop"], box["stop"] = server.port, asyncio.get_running_loop(), stop
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="smtp-server", daemon=True)
    thread.start()
    assert ready.wait(15), "the SMTP server did not start"
    if "error" in box:
        raise AssertionError(f"the SMTP server failed to start: {box['error']!r}")
    try:
        yield int(box["port"])  # type: ignore[call-overload]
    finally:
        loop = box["loop"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        stop = box["stop"]
        assert isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "the SMTP server did not stop"
        assert "error" not in box, box.get("error")


def deliver(smtp: smtplib.SMTP, subject: str) -> tuple[int, bytes]:
    """One transaction; the 451 may come at DATA (sink backing off) or after the dot."""
    smtp.rset()
    smtp.mail("a@example.org")
    smtp.rcpt("b@example.net")
    try:
        return smtp.data(f"Subject: {subject}\r\n\r\nx\r\n".encode())
    except smtplib.SMTPDataError as exc:
        error = exc.smtp_error
        return exc.smtp_code, error if isinstance(error, bytes) else error.encode()


# -- 1. nothing acknowledged is lost --------------------------------------------------------


@dataclass
class Attempt:
    session: int
    seq: int
    phase: str  # before / down / after (when the transaction started)
    stage: str  # "data": refused at DATA (nothing written); "dot": the reply after the final dot
    code: int
    reply: bytes
    latency: float  # seconds from the first command to the final reply


@dataclass
class Tally:
    phase: str = "before"
    stop: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def count(self, code: int, phase: str | None = None) -> int:
        return sum(1 for a in self.attempts if a.code == code and (phase is None or a.phase == phase))


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (possibly multi-line) reply: its code and its last line."""
    while True:
        line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"server closed the connection (got {line!r})")
        if line[3:4] != b"-":
            return int(line[:3]), line.rstrip(b"\r\n")


async def session(port: int, n: int, tally: Tally) -> None:
    """Pipelined MAIL+RCPT+DATA, then body and dot, as fast as the replies come, until told to stop."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REPLY_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        tally.unexpected.append(f"session {n}: connect: {exc!r}")
        return
    try:
        code, line = await read_reply(reader)
        writer.write(b"EHLO client%d.example\r\n" % n)
        ehlo = await read_reply(reader)
        if code != 220 or ehlo[0] != 250:
            tally.unexpected.append(f"session {n}: greeting {line!r}, EHLO {ehlo[1]!r}")
            return
        seq = 0
        while not tally.stop:
            seq += 1
            phase, started = tally.phase, time.monotonic()
            writer.write(b"MAIL FROM:<load@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n")
            mail, rcpt, data = [await read_reply(reader) for _ in range(3)]
            if mail[0] != 250 or rcpt[0] != 250:
                tally.unexpected.append(f"session {n}: MAIL {mail[1]!r}, RCPT {rcpt[1]!r}")
                return
            if data[0] == 354:
                stage = "dot"
                writer.write(b"Subject: seq %d-%d\r\n\r\nsmall message %d from session %d\r\n.\r\n" % (n, seq, seq, n))
                code, line = await read_reply(reader)
            else:
                stage, (code, line) = "data", data
                writer.write(b"RSET\r\n")
                if (await read_reply(reader))[0] != 250:
                    tally.unexpected.append(f"session {n}: RSET refused")
                    return
            if code == 451 and not line.startswith(b"451 4.3.0 "):
                tally.unexpected.append(f"session {n}: {line!r}")
            elif code == 250 and (stage != "dot" or not QUEUED.match(line)):
                tally.unexpected.append(f"session {n}: {stage}: {line!r}")
            elif code not in (250, 451):
                tally.unexpected.append(f"session {n}: {stage}: {line!r}")
                return
            tally.attempts.append(Attempt(n, seq, phase, stage, code, line, time.monotonic() - started))
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
        tally.unexpected.append(f"session {n}: {exc!r}")
    finally:
        writer.close()


async def drive(port: int, server: RedisServer, tally: Tally, sessions: int = 8) -> None:
    tasks = [asyncio.create_task(session(port, n, tally)) for n in range(sessions)]
    await asyncio.sleep(1.0)
    tally.phase = "down"
    await asyncio.to_thread(server.stop)  # SIGTERM: with appendfsync always, all acknowledged is on disk
    await asyncio.sleep(1.0)
    await asyncio.to_thread(server.start)  # same port, same directory: the AOF is loaded
    tally.phase = "after"
    deadline = time.monotonic() + 8  # the sink's backoff after ~1 s of failures is at most ~1.6 s
    while tally.count(250, "after") == 0 and time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # some steady traffic after recovery
    tally.stop = True
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


def test_nothing_acknowledged_is_lost_across_a_redis_restart(aof_redis: RedisServer) -> None:
    tally = Tally()
    started = time.monotonic()
    with smtp_server(lambda: RedisStreamSink(aof_redis.url, timeout=5)) as port:
        asyncio.run(drive(port, aof_redis, tally))
    elapsed = time.monotonic() - started

    client = redis_client(aof_redis)
    try:
        stored = read_stream(client)
    finally:
        client.close()
    entry_ids = {entry_id.decode() for entry_id, _ in stored}
    markers: dict[tuple[int, int], int] = {}
    for _, fields in stored:
        _, body = decode_record(fields)
        found = re.search(rb"\r\nSubject: seq (\d+)-(\d+)\r\n", body)
        assert found is not None, body
        key = (int(found[1]), int(found[2]))
        markers[key] = markers.get(key, 0) + 1

    queued = {}
    for a in tally.attempts:
        if a.code == 250:
            matched = QUEUED.match(a.reply)
            assert matched is not None
            queued[(a.session, a.seq)] = matched[1].decode()
    lost = [qid for qid in queued.values() if qid not in entry_ids]
    extra = len(stored) - (len(queued) - len(lost))
    dot451 = {(a.session, a.seq) for a in tally.attempts if a.code == 451 and a.stage == "dot"}
    at_data = sum(1 for a in tally.attempts if a.code == 451 and a.stage == "data")
    down_latency = max((a.latency for a in tally.attempts if a.phase == "down"), default=0.0)
    print(f"\nsent={len(tally.attempts)} ok250={tally.count(250)} tempfail451={tally.count(451)} "
          f"(at_data={at_data} after_dot={len(dot451)}) entries={len(stored)} lost={len(lost)} extra={extra} "
          f"ok250_before/down/after={tally.count(250, 'before')}/{tally.count(250, 'down')}/"
          f"{tally.count(250, 'after')} max_reply_while_down={down_latency:.3f}s elapsed={elapsed:.1f}s")

    assert tally.unexpected == []
    assert lost == []  # every 250 names an entry that survived the restart
    assert len(set(queued.values())) == len(queued)  # one entry per acknowledged message
    assert all(count == 1 for count in markers.values())  # no message was written twice
    # An entry without a 250 is one whose reply was lost with the connection: it got 451 after the dot.
    assert set(markers) - set(queued) <= dot451
    assert tally.count(250, "before") > 0 and tally.count(250, "after") > 0  # before the stop, and resumed
    assert tally.count(451) > 0 and tally.count(451, "down") > 0
    assert down_latency < 5  # 451 promptly while Redis is away, never a hang


# -- 2. WAIT not met -------------------------------------------------------------------------


def test_replicas_not_confirming_give_451(redis_server: RedisServer) -> None:
    def sink(replicas: int) -> RedisStreamSink:
        return RedisStreamSink(redis_server.url, durability="replicated", replicas=replicas, wait_timeout_ms=100)

    with smtp_server(lambda: sink(1)) as port, smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
        smtp.ehlo()
        for n in range(2):  # a WAIT shortfall is not a Redis failure: no backoff, the next one is tried too
            started = time.monotonic()
            code, reply = deliver(smtp, f"wait {n}")
            assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
            assert time.monotonic() - started < 2
    client = redis_client(redis_server)
    try:
        assert client.xlen(STREAM) == 2  # written, but unconfirmed: the client retries (at-least-once)
    finally:
        client.close()

    with smtp_server(lambda: sink(0)) as port, smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
        smtp.ehlo()
        code, reply = deliver(smtp, "no replicas needed")
        assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as "), (code, reply)


# -- 3. Redis slower than the timeout ---------------------------------------------------------


class Line:
    """A blocking SMTP client connection on raw sockets, reading replies line by line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One (possibly multi-line) reply: its last line."""
        while True:
            line = self.file.readline()
            if not line.endswith(b"\r\n"):
                raise ConnectionError(f"closed after {line!r}")
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_redis_slower_than_the_timeout_gives_451_without_blocking_the_loop(redis_server: RedisServer) -> None:
    with smtp_server(lambda: RedisStreamSink(redis_server.url, timeout=1)) as port:
        slow = Line(port)
        try:
            assert slow.reply().startswith(b"220 ")
            slow.send(b"EHLO slow.example\r\n")
            assert slow.reply().startswith(b"250 ")
            slow.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            assert [slow.reply()[:4] for _ in range(3)] == [b"250 ", b"250 ", b"354 "]
            client = redis_client(redis_server)
            try:
                assert client.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # type: ignore[no-untyped-call]  # every command waits 3 s
            finally:
                client.close()
            paused = time.monotonic()
            slow.send(b"Subject: slow\r\n\r\nx\r\n.\r\n")

            time.sleep(0.2)  # the commit is now waiting on Redis
            started = time.monotonic()
            other = Line(port)
            try:
                assert other.reply().startswith(b"220 ")
                other.send(b"EHLO other.example\r\n")
                assert other.reply().startswith(b"250 ")
                answered = time.monotonic() - started
                other.send(b"QUIT\r\n")
                other.reply()
            finally:
                other.close()
            assert answered < 0.5, answered  # the worker answers others while the commit waits

            reply = slow.reply()
            waited = time.monotonic() - paused
            assert reply.startswith(b"451 4.3.0 "), reply
            assert 0.8 < waited < 2.0, waited  # the sink's 1 s timeout, not Redis's 3 s

            time.sleep(max(0.0, paused + 3.1 - time.monotonic()))  # the pause is over: mail flows again
            deadline = time.monotonic() + 10
            while True:
                slow.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
                replies = [slow.reply() for _ in range(3)]
                if replies[2].startswith(b"354 "):
                    slow.send(b"Subject: after\r\n\r\nx\r\n.\r\n")
                    reply = slow.reply()
                else:
                    reply = replies[2]
                    slow.send(b"RSET\r\n")
                    slow.reply()
                if reply.startswith(b"250 ") or time.monotonic() > deadline:
                    break
                assert reply.startswith(b"451 4.3.0 "), reply
                time.sleep(0.1)
            assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
            slow.send(b"QUIT\r\n")
            slow.reply()
        finally:
            slow.close()


# -- 4. Redis refuses writes ------------------------------------------------------------------


def test_redis_out_of_memory_fails_only_that_entry(redis_server: RedisServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    m = record_metrics(monkeypatch)
    client = redis_client(redis_server)
    try:
        with smtp_server(lambda: RedisStreamSink(redis_server.url)) as port, \
                smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.ehlo()
            code, reply = deliver(smtp, "before")  # the sink's connection is open before the fault
            assert code == 250, reply
            client.set("ballast", b"x" * 2_000_000)
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1mb")
            connections = client.info("stats")["total_connections_received"]

            code, reply = deliver(smtp, "while full")
            assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
            assert len(m.queue_errors.values) == 1  # counted, so the queue-errors alert can fire

            client.config_set("maxmemory", "0")
            started = time.monotonic()
            code, reply = deliver(smtp, "after")
            assert code == 250, reply
            assert time.monotonic() - started < 0.5  # no backoff: an error reply is not a Redis failure
            # The sink kept its connection (the replies stayed in step): no new connection was made.
            assert client.info("stats")["total_connections_received"] == connections
        stored = read_stream(client)
    finally:
        client.close()
    subjects = [decode_record(fields)[1].rsplit(b"Subject: ", 1)[1] for _, fields in stored]
    assert subjects == [b"before\r\n\r\nx\r\n", b"after\r\n\r\nx\r\n"]


# -- 5. back up without traffic -----------------------------------------------------------------


def test_a_probe_brings_the_queue_back_up_without_traffic(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    m = record_metrics(monkeypatch)

    async def main() -> None:
        sink = RedisStreamSink(redis_server.url, timeout=2)
        await sink.start()
        lane = sink.topology.lane  # type: ignore[attr-defined]
        try:
            assert m.queue_up.last == 1
            await asyncio.to_thread(redis_server.stop)
            with pytest.raises(SinkError):
                await commit(sink, 0)
            assert m.queue_up.last == 0 and not sink.topology.available()
            await asyncio.sleep(1.6)  # probes fail meanwhile, pausing longer each time (up to 0.4 s)
            assert m.queue_up.last == 0 and lane.down
            await asyncio.to_thread(redis_server.start)
            started = time.monotonic()
            await until(lambda: m.queue_up.last == 1, timeout=8)  # no message was sent meanwhile
            print(f"\nback up {time.monotonic() - started:.2f} s after Redis restarted, probe pause ≤ 0.4 s")
            assert sink.topology.available() and not lane.down
            assert await commit(sink, 2)  # and the probe's connection carries mail at once

            await asyncio.to_thread(redis_server.stop)  # down again: close() stops the probe
            with pytest.raises(SinkError):
                await commit(sink, 3)
            probe = lane._probe
            assert probe is not None and not probe.done()
        finally:
            await sink.close()
        await asyncio.wait({probe}, timeout=2)
        assert probe.done()

    asyncio.run(main())
