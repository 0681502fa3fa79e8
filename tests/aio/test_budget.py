"""The worker's memory budget (``aio/budget.py``) with the real writers that take part in it:
the Redis writer against a real redis-server, the Maildir writer on the real disk.

The protocol's part is replayed as it is written in ``Transaction.on_chunk``: add the
chunk to ``held``, ask the budget only past ``mark``.
"""

from __future__ import annotations

import asyncio
import functools
import smtplib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

import pytest
import redis

from smtpfront.aio.budget import READ, STEP, Account, MemoryBudget
from smtpfront.core.replies import Reply
from smtpfront.hooks import Hooks, IncomingMessage, Session
from smtpfront.server import SMTPServer
from smtpfront.sink.base import SinkError
from smtpfront.sink.maildir import MaildirSink
from smtpfront.sink.record import chunk_keys
from smtpfront.sink.redis.large import CHUNK_SIZE
from smtpfront.sink.redis.sink import RedisStreamSink

from ..conftest import RedisServer
from ..sink.test_redis_streams import envelope

KiB = 1024


def run(test: Callable[..., Coroutine[object, object, None]]) -> Callable[..., None]:
    """An async test body, run on its own event loop (no asyncio plugin here), 30 s at most."""
    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


class Held:
    """A writer that keeps what it is given until told to let it go, and spills on request."""

    def __init__(self, drains: bool = True) -> None:
        self.holding: Account | None = None
        self.drains = drains
        self.spilled = 0

    def account(self, holding: Account) -> None:
        self.holding = holding

    def spill(self) -> bool:
        self.spilled += 1
        return self.drains


def feed(account: Account, octets: int) -> Awaitable[None] | None:
    """What the protocol does per body chunk."""
    account.held += octets
    if account.held > account.mark:
        return account.more()
    return None


async def fill(budget: MemoryBudget, held: int) -> tuple[Account, Awaitable[None] | None]:
    account = budget.open(Held())
    assert account is not None
    return account, feed(account, held)


@pytest.mark.parametrize(("held", "paused"), [(-1, False), (0, False), (1, True)])
@run
async def test_reading_pauses_just_past_the_limit(held: int, paused: bool) -> None:
    limit = 1024 * KiB
    budget = MemoryBudget(limit)
    _, waiting = await fill(budget, limit + held)
    assert (waiting is not None) is paused, (held, budget.used)
    assert budget.used == limit + held  # exact once past the mark: no headroom left reserved
    if waiting is not None:
        assert not asyncio.ensure_future(waiting).done()


@run
async def test_a_paused_reader_resumes_as_octets_leave() -> None:
    limit = 1024 * KiB
    budget = MemoryBudget(limit)
    account, waiting = await fill(budget, limit + 1)
    assert waiting is not None
    future = asyncio.ensure_future(waiting)
    account.release(limit // 8)  # still over three quarters: it waits
    await asyncio.sleep(0)
    assert not future.done()
    account.release(limit // 8 + 1)  # at three quarters of the limit: it reads again
    await asyncio.wait_for(future, 1)
    account.close()
    account.release(account.held)
    assert budget.used == 0 and budget.accounts == 0


@run
async def test_the_senders_holding_the_most_pause_and_a_small_message_goes_on() -> None:
    limit = 4096 * KiB
    budget = MemoryBudget(limit)
    big, waiting = await fill(budget, limit + 1)
    assert waiting is not None and budget.pauses == 1
    small = budget.open(Held())
    assert small is not None and small.mark == 0  # no headroom left
    assert feed(small, 4 * KiB) is None  # under a quarter of an even share: it goes on
    assert budget.pauses == 1
    big.release(big.held)
    await asyncio.wait_for(asyncio.ensure_future(waiting), 1)


@run
async def test_a_writer_that_cannot_drain_is_not_paused_and_one_without_account_is_not_counted() -> None:
    budget = MemoryBudget(1024 * KiB)
    writer = Held(drains=False)
    account = budget.open(writer)
    assert account is not None
    assert feed(account, 2048 * KiB) is None and writer.spilled == 1
    assert budget.open(object()) is None
    assert MemoryBudget(0).open(Held()) is None  # no budget configured


@run
async def test_headroom_spares_a_small_message_the_budget_and_goes_back_at_close() -> None:
    budget = MemoryBudget(64 * 1024 * KiB)
    account = budget.open(Held())
    assert account is not None and account.mark == STEP and budget.used == STEP
    for _ in range(STEP // (16 * KiB)):
        assert feed(account, 16 * KiB) is None
    assert account.held == STEP and budget.used == STEP  # asked nothing on the way
    account.close()
    account.release(STEP)
    assert budget.used == 0


@run
async def test_woken_readers_get_one_read_of_room_each_in_the_order_they_paused() -> None:
    limit = 4 * READ
    budget = MemoryBudget(limit)
    first, one = await fill(budget, limit + 1)
    _, two = await fill(budget, READ)
    assert one is not None and two is not None
    futures = [asyncio.ensure_future(one), asyncio.ensure_future(two)]
    first.release(budget.used - budget.resume)  # at three quarters: room for one read, the first one's
    await asyncio.sleep(0)
    assert [f.done() for f in futures] == [True, False]
    first.release(first.held)
    await asyncio.wait_for(futures[1], 1)


@run
async def test_the_redis_writer_spills_below_the_threshold_and_counts_out_what_redis_answered(
        redis_server: RedisServer) -> None:
    sink = RedisStreamSink(redis_server.url)  # large_threshold 1 MiB
    await sink.start()
    try:
        budget = MemoryBudget(256 * KiB)
        writer = sink.open(envelope())
        account = budget.open(writer)
        assert account is not None
        body = b"Subject: spilled\r\n\r\n" + b"".join(b"%-78d\r\n" % n for n in range(4000))  # 320 KB
        waited = 0
        for start in range(0, len(body), 16 * KiB):
            chunk = body[start:start + 16 * KiB]
            writer.write(memoryview(chunk))
            waiting = feed(account, len(chunk))
            if waiting is not None:  # past the budget: the held parts went to Redis as chunks
                waited += 1
                await asyncio.wait_for(waiting, 10)
        assert waited and writer._upload is not None
        entry = await asyncio.wait_for(writer.commit(), 10)
        assert account.held == 0 and budget.used == 0 and budget.accounts == 0
        with redis.Redis.from_url(redis_server.url) as client:
            ((_, fields),) = client.xrange("smtpfront:inbound", entry, entry)
            keys = chunk_keys(fields[b"body_key"], int(fields[b"body_chunks"]))
            stored = b"".join(client.get(key) or b"" for key in keys)
        assert stored == b"Received: test\r\n" + body
    finally:
        await sink.close()


@run
async def test_a_spill_the_queue_refused_fails_the_message_even_after_the_queue_is_back(
        redis_server: RedisServer) -> None:
    """The parts a refused spill held are gone: the message must fail, never be queued without them."""
    sink = RedisStreamSink(redis_server.url, timeout=1.0)
    await sink.start()
    try:
        budget = MemoryBudget(64 * KiB)
        writer = sink.open(envelope())
        account = budget.open(writer)
        assert account is not None
        head = b"Subject: cut\r\n\r\n" + b"y" * (32 * KiB) + b"\r\n"
        writer.write(memoryview(head))
        assert feed(account, len(head)) is None
        redis_server.stop()
        other = sink.open(envelope(1))
        other.write(memoryview(b"x\r\n"))
        with pytest.raises(SinkError):  # the lost connection takes the lane down
            await asyncio.wait_for(other.commit(), 10)
        await other.abort()
        part = b"z" * (64 * KiB)
        writer.write(memoryview(part))
        assert feed(account, len(part)) is None  # full, but the spill was refused: not paused
        redis_server.start()
        for _ in range(200):  # the probe brings the lane back (bounded: 10 s)
            if sink.topology.available():
                break
            await asyncio.sleep(0.05)
        assert sink.topology.available()
        with pytest.raises(SinkError):
            writer.write(memoryview(b"w" * CHUNK_SIZE))
            await asyncio.wait_for(writer.commit(), 10)
        await writer.abort()
        with redis.Redis.from_url(redis_server.url) as client:
            assert client.xlen("smtpfront:inbound") == 0
    finally:
        await sink.close()


@run
async def test_the_redis_writer_counts_a_small_message_out_when_its_batch_is_answered(
        redis_server: RedisServer) -> None:
    sink = RedisStreamSink(redis_server.url)
    await sink.start()
    try:
        budget = MemoryBudget(64 * 1024 * KiB)
        writer = sink.open(envelope())
        account = budget.open(writer)
        assert account is not None
        body = b"Subject: small\r\n\r\nx\r\n"
        writer.write(memoryview(body))
        feed(account, len(body))
        future = writer.commit()
        assert account.held == len(body) and budget.used == len(body)  # in the batch, headroom back
        await asyncio.wait_for(future, 10)
        assert account.held == 0 and budget.used == 0
    finally:
        await sink.close()


@run
async def test_the_maildir_writer_counts_its_buffer_only(tmp_path: Path) -> None:
    sink = MaildirSink(tmp_path / "spool", fsync=False, buffer_size=32 * KiB)
    budget = MemoryBudget(64 * 1024 * KiB)
    writer = sink.open(envelope())
    account = budget.open(writer)
    assert account is not None
    for _ in range(10):
        writer.write(memoryview(b"x" * (10 * KiB)))
        feed(account, 10 * KiB)
        assert account.held <= 32 * KiB
    assert writer.spill() and account.held == 0  # flushed to the page cache
    await writer.commit()
    assert budget.used == 0 and budget.accounts == 0


class Digest(Hooks):
    """An ``on_data`` hook that reads the whole body stream."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def on_data(self, session: Session, message: IncomingMessage) -> Reply | None:
        self.seen.append(b"".join([chunk async for chunk in message]))
        return None


def test_a_chunk_read_just_before_a_pause_reaches_on_data(redis_server: RedisServer) -> None:
    """Paused by the queue (its in-flight budget, here 1 octet: every chunk after the first
    pauses), the client's last chunk still reaches the hook's body stream."""
    hooks = Digest()
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, int] = {}

    async def serve() -> None:
        sink = RedisStreamSink(redis_server.url, inflight_budget=1, large_threshold=64 * KiB)
        async with SMTPServer(hooks, port=0, sink=sink, tls=False, close_timeout=5) as server:
            box["port"] = server.port
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(serve(), 60)), daemon=True)
    thread.start()
    try:
        assert ready.wait(15)
        body = b"Subject: paused\r\n\r\n" + b"".join(b"%-78d\r\n" % n for n in range(20_000))  # 1.6 MB
        with smtplib.SMTP("127.0.0.1", box["port"], timeout=30) as client:
            assert client.sendmail("a@client.test", ["b@mx.test"], body) == {}
    finally:
        stop.set()
        thread.join(15)
    assert [len(seen) for seen in hooks.seen] == [len(body)]
    assert hooks.seen[0] == body
