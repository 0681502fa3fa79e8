"""RedisStreamSink against a real redis-server: byte-exact records, group commit, 451 when Redis is away."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Callable

import orjson
import pytest
import redis

from smtpfront.core.events import Address, MailParams, RcptParams, Recipient
from smtpfront.server import SMTPServer
from smtpfront.sink.base import Envelope, SinkError
from smtpfront.sink.record import FORMAT_VERSION, decode_record
from smtpfront.sink.redis import lane as redis_lane
from smtpfront.sink.redis import sink as redis_streams
from smtpfront.sink.redis.sink import RedisStreamSink

from ..conftest import RedisServer

STREAM = "smtpfront:inbound"


def entries(url: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = redis.Redis.from_url(url)
    try:
        return client.xrange(STREAM)  # type: ignore[return-value]
    finally:
        client.close()


def envelope(n: int = 0) -> Envelope:
    return Envelope(
        id=f"t.{n}", mail_from=Address("a", "example.org"), mail_params=MailParams(),
        recipients=[Recipient(Address("b", "example.net"), RcptParams())], received_at=time.time(),
        trace=b"Received: test\r\n",
    )


class Recorded:
    """A metric stand-in that remembers every value it was given."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)

    def inc(self, amount: float = 1) -> None:
        self.values.append(amount)

    def observe(self, value: float) -> None:
        self.values.append(value)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None


class Recording:
    """What the Redis sink reads from ``instruments()``, recorded."""

    def __init__(self) -> None:
        self.queue_up, self.queue_errors, self.batch_size = Recorded(), Recorded(), Recorded()
        self.queue_backlog, self.queue_full, self.inflight_bytes = Recorded(), Recorded(), Recorded()


def record_metrics(monkeypatch: pytest.MonkeyPatch) -> Recording:
    recording = Recording()
    monkeypatch.setattr(redis_streams, "instruments", lambda: recording)
    monkeypatch.setattr(redis_lane, "instruments", lambda: recording)
    return recording


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def commit(sink: RedisStreamSink, n: int = 0, body: bytes = b"x\r\n") -> str:
    writer = sink.open(envelope(n))
    writer.write(memoryview(body))
    return await writer.commit()


def run_server_and(url: str, client: object) -> None:
    async def main() -> None:
        async with SMTPServer(port=0, sink=RedisStreamSink(url), tls=False) as server:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)  # type: ignore[arg-type]

    asyncio.run(main())


def test_messages_arrive_byte_exact_with_their_envelope(redis_server: RedisServer) -> None:
    bodies = [b"Subject: one\r\n\r\nplain\r\n", b"Subject: two\r\n\r\n.leading dot\r\n\xc3\xa9 8bit\r\n",
              b"Subject: three\r\n\r\n" + b"x" * 70_000 + b"\r\n"]
    queue_ids: list[str] = []

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo()
            for body in bodies:
                smtp.mail("alice@example.org")
                smtp.rcpt("bob@example.net")
                code, reply = smtp.data(body)
                assert code == 250
                queue_ids.append(reply.decode().rsplit(" ", 1)[1])

    run_server_and(redis_server.url, client)
    stored = entries(redis_server.url)
    assert [entry_id.decode() for entry_id, _ in stored] == queue_ids  # the 250 names the entry id
    for (_, fields), body in zip(stored, bodies, strict=True):
        assert fields[b"v"] == FORMAT_VERSION
        env, data = decode_record(fields)
        assert data.startswith(b"Received: from ") and data.endswith(body)
        assert env["mail_from"] == "alice@example.org"
        assert [r["address"] for r in env["rcpt_to"]] == ["bob@example.net"]
        assert env["size"] == len(body)
        assert env["client"]["address"] == "127.0.0.1"
        assert orjson.loads(fields[b"envelope"]) == env


def test_group_commit_batches_concurrent_messages(redis_server: RedisServer) -> None:
    async def main() -> RedisStreamSink:
        sink = RedisStreamSink(redis_server.url)
        await sink.start()

        async def one(n: int) -> str:
            writer = sink.open(envelope(n))
            writer.write(memoryview(b"body %d\r\n" % n))
            return await writer.commit()

        ids = await asyncio.gather(*(one(n) for n in range(200)))
        assert len(set(ids)) == 200
        await sink.close()
        return sink

    sink = asyncio.run(main())
    assert sink.entries == 200
    assert sink.batches < 200 and sink.max_batch > 1  # commits that met in flight shared a round trip
    stored = entries(redis_server.url)
    assert sorted(decode_record(f)[1] for _, f in stored) == sorted(
        b"Received: test\r\nbody %d\r\n" % n for n in range(200))


def attempt(smtp: smtplib.SMTP, body: bytes) -> tuple[int, str]:
    """One transaction; the 451 may come at DATA (the queue backing off) or after the dot."""
    smtp.rset()
    smtp.mail("alice@example.org")
    smtp.rcpt("bob@example.net")
    try:
        code, reply = smtp.data(body)
    except smtplib.SMTPDataError as exc:
        code, reply = exc.smtp_code, exc.smtp_error
    return code, reply.decode()


def test_redis_away_gives_451_and_recovers(redis_server: RedisServer) -> None:
    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.ehlo()
            assert attempt(smtp, b"Subject: before\r\n\r\nx\r\n")[0] == 250
            redis_server.stop()
            code, reply = attempt(smtp, b"Subject: while down\r\n\r\nx\r\n")
            assert (code, reply[:5]) == (451, "4.3.0"), (code, reply)
            redis_server.start()
            deadline = time.monotonic() + 10
            while True:  # the sink backs off (at most 5 s), then takes mail again
                code, reply = attempt(smtp, b"Subject: after\r\n\r\nx\r\n")
                if code == 250 or time.monotonic() > deadline:
                    break
                assert (code, reply[:5]) == (451, "4.3.0"), (code, reply)
                time.sleep(0.2)
            assert code == 250, reply

    run_server_and(redis_server.url, client)
    stored = entries(redis_server.url)  # a fresh redis-server: only what came after the restart
    assert [decode_record(f)[1].endswith(b"Subject: after\r\n\r\nx\r\n") for _, f in stored] == [True]


def test_start_fails_clearly_when_redis_is_not_there(redis_server: RedisServer) -> None:
    redis_server.stop()

    async def main() -> None:
        sink = RedisStreamSink(redis_server.url, timeout=1)
        with pytest.raises(SinkError, match="redis queue"):
            await sink.start()

    asyncio.run(main())


def test_a_retried_message_is_not_queued_twice(redis_server: RedisServer) -> None:
    body = b"Message-ID: <retry@example.org>\r\nSubject: retry\r\n\r\nsame\r\n"
    replies: list[str] = []

    def client(port: int) -> None:
        for payload in (body, body, body + b"different\r\n"):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:  # a new connection, as a retry is
                smtp.ehlo()
                code, reply = attempt(smtp, payload)
                assert code == 250, reply
                replies.append(reply)

    run_server_and(redis_server.url, client)
    first, retry, other = (r.rsplit(" ", 1)[1] for r in replies)
    assert first == retry != other  # the retry is answered with the original entry id
    assert len(entries(redis_server.url)) == 2


def test_dedup_can_be_turned_off(redis_server: RedisServer) -> None:
    async def main() -> None:
        sink = RedisStreamSink(redis_server.url, dedup_window=0)
        await sink.start()
        for _ in range(2):
            writer = sink.open(envelope())
            writer.write(memoryview(b"same body\r\n"))
            await writer.commit()
        await sink.close()

    asyncio.run(main())
    assert len(entries(redis_server.url)) == 2


def test_past_the_high_water_mark_new_transactions_get_452(redis_server: RedisServer) -> None:
    sink = RedisStreamSink(redis_server.url, high_water=2, monitor_interval=0.05)

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            for n in range(3):
                smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: %d\r\n\r\nx\r\n" % n)
            time.sleep(0.3)  # the monitor sees 3 > 2
            code, reply = smtp.mail("a@example.org")
            assert (code, reply[:5]) == (452, b"4.3.1"), (code, reply)
            redis.Redis.from_url(redis_server.url).xtrim(STREAM, maxlen=0)  # consumers caught up
            time.sleep(0.3)
            assert smtp.mail("a@example.org")[0] == 250

    async def main() -> None:
        async with SMTPServer(port=0, sink=sink, tls=False) as server:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)

    asyncio.run(main())


def test_inflight_budget_pauses_and_resumes_without_losing_mail(redis_server: RedisServer) -> None:
    waited = 0

    async def main() -> RedisStreamSink:
        nonlocal waited
        sink = RedisStreamSink(redis_server.url, inflight_budget=20_000, dedup_window=0)
        await sink.start()
        control = redis.Redis.from_url(redis_server.url)
        control.execute_command("CLIENT", "PAUSE", "400", "WRITE")  # Redis slow: commits pile up
        control.close()

        async def one(n: int) -> None:
            nonlocal waited
            await asyncio.sleep(n * 0.005)  # later writers arrive while earlier commits wait
            writer = sink.open(envelope(n))
            writer.write(memoryview(b"y" * 4096))
            pressure = writer.pressure()
            if pressure is not None:
                waited += 1
                await asyncio.wait_for(pressure, 10)
            await writer.commit()

        await asyncio.gather(*(one(n) for n in range(40)))
        assert sink.inflight == 0
        await sink.close()
        return sink

    sink = asyncio.run(main())
    assert waited > 0  # the budget made writers wait instead of buffering without bound
    assert sink.entries == 40 and len(entries(redis_server.url)) == 40


def test_identical_messages_without_a_message_id_are_all_queued(redis_server: RedisServer) -> None:
    # A monitoring script may send the same alert twice: without a Message-ID a retry cannot
    # be told from a new message, so neither may be dropped.
    body = b"Subject: disk full\r\n\r\n/var is at 99%\r\n"

    def client(port: int) -> None:
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail("monitor@example.org", ["ops@example.net"], body)

    run_server_and(redis_server.url, client)
    assert len(entries(redis_server.url)) == 2


def test_gauges_backlog_and_full_from_the_monitor_inflight_sampled(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    m = record_metrics(monkeypatch)

    async def main() -> None:
        sink = RedisStreamSink(redis_server.url, high_water=2, monitor_interval=0.05, dedup_window=0)
        await sink.start()
        try:
            assert (m.queue_backlog.last, m.queue_full.last) == (0, 0)  # measured once at start
            with redis.Redis.from_url(redis_server.url) as control:  # Redis slow: the bytes wait
                control.execute_command("CLIENT", "PAUSE", "400", "WRITE")  # type: ignore[no-untyped-call]
            await asyncio.gather(*(commit(sink, n, b"y" * 1000) for n in range(3)))
            assert max(m.inflight_bytes.values) >= 3000  # sampled while they waited
            await until(lambda: m.inflight_bytes.last == 0)
            assert sink.batches >= 1 and len(m.inflight_bytes.values) < 40  # sampled, not per batch
            await until(lambda: m.queue_full.last == 1)
            assert m.queue_backlog.last == 3 and sink.full
            with redis.Redis.from_url(redis_server.url) as control:
                control.xtrim(STREAM, maxlen=0)  # consumers caught up
            await until(lambda: m.queue_full.last == 0)
            assert m.queue_backlog.last == 0 and not sink.full
        finally:
            await sink.close()

    asyncio.run(main())
