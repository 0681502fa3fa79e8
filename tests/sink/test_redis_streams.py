"""RedisStreamSink against a real redis-server: byte-exact records, group commit, 451 when Redis is away."""

from __future__ import annotations

import asyncio
import smtplib
import time

import orjson
import pytest
import redis

from smtpfront.core.events import Address, MailParams, RcptParams, Recipient
from smtpfront.server import SMTPServer
from smtpfront.sink.base import Envelope, SinkError
from smtpfront.sink.record import FORMAT_VERSION, decode_record
from smtpfront.sink.redis_streams import RedisStreamSink

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


def test_redis_away_gives_451_and_recovers(redis_server: RedisServer) -> None:
    def attempt(smtp: smtplib.SMTP, subject: bytes) -> tuple[int, bytes]:
        """One transaction; the 451 may come at DATA (sink backing off) or after the dot."""
        smtp.rset()
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.net")
        try:
            return smtp.data(b"Subject: " + subject + b"\r\n\r\nx\r\n")
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.ehlo()
            assert attempt(smtp, b"before")[0] == 250
            redis_server.stop()
            code, reply = attempt(smtp, b"while down")
            assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
            redis_server.start()
            deadline = time.monotonic() + 10
            while True:  # the sink backs off (at most 5 s), then takes mail again
                code, reply = attempt(smtp, b"after")
                if code == 250 or time.monotonic() > deadline:
                    break
                assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
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
