"""The Redis Streams consumer against a real redis-server: at-least-once, retries, dead letters.

Records are put into the stream with redis-py directly (the producer is tested on its
own). Every wait is bounded; a consumer runs as a task inside ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import uvloop

from smtpfront.consumer import Consumer, Handler, Message, PermanentError, TemporaryError, exec_handler, maildir_handler
from smtpfront.core.events import Address, MailParams, RcptParams
from smtpfront.sink.base import Envelope, Recipient
from smtpfront.sink.record import envelope_fields

from .conftest import RedisServer, free_port

STREAM = "smtpfront:inbound"
GROUP = "smtpfront"
DEAD = f"{STREAM}:dead"
BODY = b"Received: from c.example\r\n\tby mx.example; now\r\nSubject: hi\r\n\r\n\x00\xff\r\n..\r\nend\r\n"
ROOT = Path(__file__).resolve().parent.parent


def fields(body: bytes = BODY, queue_id: str = "Q1") -> dict[bytes, bytes]:
    env = Envelope(
        id=queue_id, mail_from=Address("alice", "example.com"), mail_params=MailParams(),
        recipients=[Recipient(Address("bob", "example.org"), RcptParams()),
                    Recipient(Address("carol", "example.net"), RcptParams())],
        received_at=1_700_000_000.0, size=len(body),
    )
    return {**dict(envelope_fields(env)), b"body": body}


def xadd(server: RedisServer, entry: dict[bytes, bytes], stream: str = STREAM) -> str:
    with redis.Redis.from_url(server.url) as client:
        return client.xadd(stream, entry).decode()  # type: ignore[no-any-return]


def pending(server: RedisServer) -> int:
    with redis.Redis.from_url(server.url) as client:
        return int(client.xpending(STREAM, GROUP)["pending"])


def dead_letters(server: RedisServer) -> list[tuple[bytes, dict[bytes, bytes]]]:
    with redis.Redis.from_url(server.url) as client:
        return client.xrange(DEAD)  # type: ignore[no-any-return]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def consumer(server: RedisServer, **kw: Any) -> Consumer:
    kw.setdefault("block_ms", 200)
    kw.setdefault("name", "B")
    return Consumer(server.url, **kw)


async def running(c: Consumer, handler: Handler, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``c`` while ``body`` runs, then stop it (promptly) and re-raise its error."""
    task = asyncio.create_task(c.run(handler))
    try:
        await body()
        assert not task.done()
    finally:
        c.stop()
        await asyncio.wait_for(task, c.block_ms / 1000 + 2)


def collector() -> tuple[list[Message], Handler]:
    got: list[Message] = []

    async def handler(message: Message) -> None:
        got.append(message)

    return got, handler


def test_delivers_byte_exact_and_acks(redis_server: RedisServer) -> None:
    bodies = [BODY, b"", b"x" * 300_000]
    ids = [xadd(redis_server, fields(b, f"Q{n}")) for n, b in enumerate(bodies)]
    got, handler = collector()

    async def main() -> None:
        await running(consumer(redis_server), handler, lambda: until(lambda: len(got) == 3))

    asyncio.run(main())
    assert sorted((m.id, m.body) for m in got) == sorted(zip(ids, bodies, strict=True))
    first = next(m for m in got if m.id == ids[0])
    assert (first.stream, first.deliveries, first.envelope["id"]) == (STREAM, 1, "Q0")
    assert first.envelope["mail_from"] == "alice@example.com"
    assert pending(redis_server) == 0 and dead_letters(redis_server) == []


def test_failing_handler_is_retried(redis_server: RedisServer) -> None:
    entry = xadd(redis_server, fields())
    seen: list[int] = []

    async def handler(message: Message) -> None:
        seen.append(message.deliveries)
        if len(seen) < 3:
            raise RuntimeError("try later")

    async def main() -> None:
        c = consumer(redis_server, claim_idle_ms=100)
        await running(c, handler, lambda: until(lambda: len(seen) == 3 and pending(redis_server) == 0))

    asyncio.run(main())
    assert seen == [1, 2, 3]
    assert dead_letters(redis_server) == [] and entry


def test_dead_letter_after_max_deliveries(redis_server: RedisServer) -> None:
    entry = xadd(redis_server, fields())
    calls: list[int] = []

    async def handler(message: Message) -> None:
        calls.append(message.deliveries)
        raise RuntimeError("mailbox exploded")

    async def main() -> None:
        c = consumer(redis_server, claim_idle_ms=100, max_deliveries=3)
        await running(c, handler, lambda: until(lambda: len(dead_letters(redis_server)) == 1))

    asyncio.run(main())
    assert calls == [1, 2, 3]
    [(_, letter)] = dead_letters(redis_server)
    assert letter[b"origin_id"] == entry.encode() and letter[b"deliveries"] == b"3"
    assert letter[b"reason"] == b"RuntimeError: mailbox exploded"
    assert letter[b"body"] == BODY and letter[b"v"] == b"1"
    assert pending(redis_server) == 0


def test_permanent_error_dead_letters_at_once(redis_server: RedisServer) -> None:
    xadd(redis_server, fields())

    async def handler(message: Message) -> None:
        raise PermanentError("no such mailbox")

    async def main() -> None:
        await running(consumer(redis_server), handler, lambda: until(lambda: len(dead_letters(redis_server)) == 1))

    asyncio.run(main())
    [(_, letter)] = dead_letters(redis_server)
    assert letter[b"deliveries"] == b"1" and b"no such mailbox" in letter[b"reason"]
    assert pending(redis_server) == 0


def test_malformed_records_dead_lettered_at_once(redis_server: RedisServer) -> None:
    newer = xadd(redis_server, {**fields(), b"v": b"3"})
    bodyless = xadd(redis_server, {b"v": b"1", b"envelope": b"{}"})
    unreferenced = xadd(redis_server, {**fields(), b"v": b"2"})  # large, but names no chunk keys
    foreign = xadd(redis_server, {b"v": b"2", b"envelope": b"{}", b"body_key": b"other:key", b"body_chunks": b"1",
                                  b"body_size": b"1"})
    got, handler = collector()

    async def main() -> None:
        await running(consumer(redis_server), handler, lambda: until(lambda: len(dead_letters(redis_server)) == 4))

    asyncio.run(main())
    assert got == []
    letters = {f[b"origin_id"].decode(): f for _, f in dead_letters(redis_server)}
    assert b"unknown record format version" in letters[newer][b"reason"]
    assert letters[newer][b"v"] == b"3" and letters[newer][b"body"] == BODY
    assert letters[bodyless][b"reason"] == b"malformed record: no body field"
    assert letters[unreferenced][b"reason"] == b"malformed record: no body_key field"
    assert b"is not one of smtpfront:inbound's" in letters[foreign][b"reason"]  # never deleted by an ack
    assert pending(redis_server) == 0


def test_reclaims_a_crashed_consumers_entry(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        client.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    entry = xadd(redis_server, fields())
    with redis.Redis.from_url(redis_server.url) as client:  # consumer A reads it, then "dies"
        assert client.xreadgroup(GROUP, "A", {STREAM: ">"}, count=10)
    got, handler = collector()

    async def main() -> None:
        c = consumer(redis_server, name="B", claim_idle_ms=300)
        await running(c, handler, lambda: until(lambda: pending(redis_server) == 0))

    asyncio.run(main())
    assert [(m.id, m.deliveries, m.body) for m in got] == [(entry, 2, BODY)]


def test_entry_past_max_deliveries_skips_the_handler(redis_server: RedisServer) -> None:
    """A message whose handling keeps killing its consumer process is dead-lettered when claimed."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        entry = xadd(redis_server, fields())
        client.xreadgroup(GROUP, "A", {STREAM: ">"}, count=10)
        for _ in range(2):  # two more deliveries to consumers that died
            client.xclaim(STREAM, GROUP, "A", 0, [entry])
    got, handler = collector()

    async def main() -> None:
        c = consumer(redis_server, claim_idle_ms=100, max_deliveries=3)
        await running(c, handler, lambda: until(lambda: len(dead_letters(redis_server)) == 1))

    asyncio.run(main())
    assert got == []
    [(_, letter)] = dead_letters(redis_server)
    assert (letter[b"deliveries"], letter[b"reason"]) == (b"4", b"delivered 4 times")
    assert pending(redis_server) == 0


def test_survives_a_redis_restart(redis_server: RedisServer) -> None:
    got, handler = collector()

    async def main() -> None:
        async def body() -> None:
            xadd(redis_server, fields(b"before\r\n"))
            await until(lambda: len(got) == 1)
            redis_server.stop()
            await asyncio.sleep(0.5)  # the consumer sees errors and backs off
            redis_server.start()  # empty: no stream, no group
            xadd(redis_server, fields(b"after\r\n"))  # creates the stream, not the group
            await until(lambda: len(got) == 2, timeout=10)
            with redis.Redis.from_url(redis_server.url) as client:  # the group vanishes, the connection stays
                client.delete(STREAM)
            await asyncio.sleep(0.3)
            xadd(redis_server, fields(b"recreated\r\n"))
            await until(lambda: len(got) == 3)

        await running(consumer(redis_server), handler, body)

    asyncio.run(main())
    assert [m.body for m in got] == [b"before\r\n", b"after\r\n", b"recreated\r\n"]
    assert pending(redis_server) == 0


def test_stop_is_prompt(redis_server: RedisServer) -> None:
    async def main() -> None:
        for url in (redis_server.url, f"redis://127.0.0.1:{free_port()}/0"):  # reading; backing off
            c = Consumer(url, block_ms=1000)
            task = asyncio.create_task(c.run(collector()[1]))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            c.stop()
            await asyncio.wait_for(task, 3)
            assert time.monotonic() - started < 1 + 1

    asyncio.run(main())


def message(body: bytes = BODY) -> Message:
    return Message("1-0", STREAM, orjson.loads(fields(body)[b"envelope"]), body, 1)


def test_maildir_handler_writes_into_new(redis_server: RedisServer, tmp_path: Path) -> None:
    xadd(redis_server, fields())
    new = tmp_path / "Maildir" / "new"

    async def main() -> None:
        handler = maildir_handler(str(tmp_path / "Maildir"))
        await running(consumer(redis_server), handler, lambda: until(lambda: new.is_dir() and any(new.iterdir())))

    asyncio.run(main())
    [path] = new.iterdir()
    assert path.read_bytes() == b"Return-Path: <alice@example.com>\r\n" + BODY
    assert not any((tmp_path / "Maildir" / "tmp").iterdir())
    assert pending(redis_server) == 0


def test_exec_handler_gets_body_and_environment(redis_server: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = 'cat > "$0" && printf "%s|%s|%s" "$SMTPFRONT_SENDER" "$SMTPFRONT_RECIPIENTS" "$SMTPFRONT_QUEUE_ID" ' \
        '> "$0.env"'
    xadd(redis_server, fields())

    async def main() -> None:
        handler = exec_handler(["sh", "-c", script, str(out)])
        await running(consumer(redis_server), handler, lambda: until(lambda: Path(f"{out}.env").exists()
                                                                      and pending(redis_server) == 0))

    asyncio.run(main())
    assert out.read_bytes() == BODY
    assert Path(f"{out}.env").read_text() == "alice@example.com|bob@example.org,carol@example.net|Q1"


def test_exec_handler_tempfail_leaves_entry_pending(redis_server: RedisServer) -> None:
    xadd(redis_server, fields())
    failures: list[BaseException] = []
    command = exec_handler(["sh", "-c", "cat >/dev/null; echo 'disk on fire' >&2; exit 75"])

    async def handler(message: Message) -> None:
        try:
            await command(message)
        except Exception as exc:
            failures.append(exc)
            raise

    async def main() -> None:
        await running(consumer(redis_server), handler, lambda: until(lambda: len(failures) == 1))

    asyncio.run(main())
    assert type(failures[0]) is TemporaryError and "exit status 75: disk on fire" in str(failures[0])
    assert pending(redis_server) == 1 and dead_letters(redis_server) == []


def test_an_expected_retry_is_one_warning_line(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 17 item 5: exit 75 of --exec is expected; it gets one WARNING line, no traceback."""
    xadd(redis_server, fields())
    xadd(redis_server, fields(queue_id="Q2"))
    calls: list[str] = []
    tempfail = exec_handler(["sh", "-c", "cat >/dev/null; echo 'try later' >&2; exit 75"])

    async def handler(message: Message) -> None:
        calls.append(message.envelope["id"])
        if message.envelope["id"] == "Q2":
            raise ValueError("a bug in the handler")  # unexpected: ERROR with its traceback
        await tempfail(message)

    async def main() -> None:
        await running(consumer(redis_server), handler, lambda: until(lambda: len(calls) == 2))

    with caplog.at_level(logging.INFO, logger="smtpfront.consumer"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage().startswith("handler failed")]
    [expected] = [r for r in failed if "exit status 75" in r.getMessage()]
    assert expected.levelno == logging.WARNING and not expected.exc_info
    assert "exit status 75: try later; it stays pending" in expected.getMessage()
    assert "\n" not in expected.getMessage()
    [bug] = [r for r in failed if r is not expected]
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert pending(redis_server) == 2


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_exec_handler_outcomes(loop: str) -> None:
    async def outcome(argv: list[str], timeout: float = 10) -> BaseException | None:
        try:
            await exec_handler(argv, timeout=timeout)(message(b"x" * 1_000_000))
        except Exception as exc:
            return exc
        return None

    async def main() -> None:
        assert await outcome(["true"]) is None  # reads nothing of its stdin: still success
        permanent = await outcome(["sh", "-c", "echo nope >&2; exit 1"])
        assert isinstance(permanent, PermanentError) and str(permanent) == "sh: exit status 1: nope"
        started = time.monotonic()
        slow = await outcome(["sh", "-c", "sleep 30; cat"], timeout=0.3)
        assert type(slow) is TemporaryError and "timed out" in str(slow)
        assert time.monotonic() - started < 3  # the process group was killed, sleep included
        killed = await outcome(["sh", "-c", "kill -9 $$"])
        assert type(killed) is TemporaryError and "killed by signal 9" in str(killed)

    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_cli_consume_maildir(redis_server: RedisServer, tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpfront", "consume", "--queue", redis_server.url, "--maildir", str(maildir),
         "--block-ms", "200", "--log-format", "plain"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        xadd(redis_server, fields())
        deadline = time.monotonic() + 10
        while not ((maildir / "new").is_dir() and any((maildir / "new").iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, output
    assert b"Warning" not in output, output  # e.g. redis-py's about a synchronous Retry on an asyncio client
    [path] = (maildir / "new").iterdir()
    assert path.read_bytes().endswith(BODY)
    assert pending(redis_server) == 0
