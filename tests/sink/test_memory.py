"""MemorySink (tests' and embedders' sink) and NullSink (benchmarks)."""

from __future__ import annotations

import asyncio

import pytest

from smtpfront.core.events import Address, MailParams, RcptParams
from smtpfront.sink.base import Envelope, MessageWriter, Recipient, Sink, SinkError
from smtpfront.sink.memory import MemorySink
from smtpfront.sink.null import NullSink

TRACE = b"Received: from a (b [192.0.2.1]) by c (smtpfront) with ESMTP id Q; x\r\n"


def envelope() -> Envelope:
    return Envelope(
        id="Q1", mail_from=Address("alice", "example.com"), mail_params=MailParams(),
        recipients=[Recipient(Address("bob", "example.org"), RcptParams())], received_at=0.0, trace=TRACE,
    )


async def deliver(sink: Sink, *chunks: bytes) -> str:
    writer: MessageWriter = sink.open(envelope())
    for chunk in chunks:
        writer.write(memoryview(chunk))
    return await writer.commit()


def test_happy_path_copies_chunks() -> None:
    async def main() -> None:
        sink = MemorySink()
        env = envelope()
        writer = sink.open(env)
        buffer = bytearray(b"Subject: hi\r\n\r\n")
        writer.write(memoryview(buffer))
        buffer[:] = b"X" * len(buffer)  # the view was valid only during the call
        writer.write(memoryview(b"body\r\n"))
        assert sink.messages == []
        queue_id = await writer.commit()
        [stored] = sink.messages
        assert stored.queue_id == queue_id and len(queue_id) == 20
        assert stored.envelope is env
        assert stored.body == TRACE + b"Subject: hi\r\n\r\nbody\r\n"
        with pytest.raises(SinkError):
            writer.write(memoryview(b"late"))
        with pytest.raises(SinkError):
            await writer.commit()
        await writer.abort()  # after commit: nothing to forget
        assert sink.aborted == 0

    asyncio.run(main())


def test_fail_next() -> None:
    async def main() -> None:
        sink = MemorySink()
        sink.fail_next = 2
        for _ in range(2):
            with pytest.raises(SinkError, match="injected"):
                await deliver(sink, b"x\r\n")
        assert sink.fail_next == 0 and sink.aborted == 2 and sink.messages == []
        await deliver(sink, b"y\r\n")
        assert [m.body for m in sink.messages] == [TRACE + b"y\r\n"]

    asyncio.run(main())


def test_abort() -> None:
    async def main() -> None:
        sink = MemorySink()
        writer = sink.open(envelope())
        writer.write(memoryview(b"x"))
        await writer.abort()
        await writer.abort()
        assert sink.aborted == 1 and sink.messages == []
        with pytest.raises(SinkError):
            writer.write(memoryview(b"x"))
        with pytest.raises(SinkError):
            await writer.commit()

    asyncio.run(main())


def test_wait_for() -> None:
    async def main() -> None:
        sink = MemorySink()

        async def later() -> None:
            for n in range(3):
                await asyncio.sleep(0.01)
                await deliver(sink, b"%d\r\n" % n)

        task = asyncio.create_task(later())
        messages = await sink.wait_for(2, timeout=5)
        assert len(messages) >= 2
        await task
        assert len(await sink.wait_for(3, timeout=0)) == 3  # already there: no wait

    asyncio.run(main())


def test_wait_for_timeout() -> None:
    async def main() -> None:
        sink = MemorySink()
        await deliver(sink, b"x")
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await sink.wait_for(2, timeout=0.05)
        assert 0.04 <= loop.time() - start < 2
        assert sink._waiters == []
        await deliver(sink, b"y")  # a late commit finds no stale waiter
        assert len(sink.messages) == 2

    asyncio.run(main())


def test_close() -> None:
    async def main() -> None:
        sink = MemorySink()
        writer = sink.open(envelope())
        await sink.close()
        with pytest.raises(SinkError, match="closed"):
            sink.open(envelope())
        writer.write(memoryview(b"x"))
        await writer.commit()  # a transaction under way still completes
        assert len(sink.messages) == 1

    asyncio.run(main())


def test_null_sink_counts() -> None:
    async def main() -> None:
        sink = NullSink()
        ids = {await deliver(sink, b"abc", b"de") for _ in range(3)}
        assert len(ids) == 3
        writer = sink.open(envelope())
        writer.write(memoryview(b"xyz"))
        await writer.abort()
        assert sink.messages == 3 and sink.octets == 18
        await sink.close()
        with pytest.raises(SinkError):
            sink.open(envelope())

    asyncio.run(main())
