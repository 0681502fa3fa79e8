"""Consumer names of consumers gone leave the group (``smtpfront.idle_consumers``), against a
real redis-server: idle past the configured time with nothing pending, never the caller's
own name, never a name that still has pending entries."""

from __future__ import annotations

import asyncio
import time

import redis

from smtpfront.idle_consumers import forget_idle

from .conftest import RedisServer
from .test_consumer import GROUP, STREAM, collector, consumer, fields, running, until, xadd


def names(server: RedisServer) -> set[str]:
    with redis.Redis.from_url(server.url) as client:
        return {info["name"].decode() for info in client.xinfo_consumers(STREAM, GROUP)}


def members(server: RedisServer) -> None:
    """``gone`` read an entry and acknowledged it; ``holding`` read one and holds it (pending)."""
    with redis.Redis.from_url(server.url) as client:
        client.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        first = xadd(server, fields(queue_id="Q1"))
        assert client.xreadgroup(GROUP, "gone", {STREAM: ">"}, count=1)
        client.xack(STREAM, GROUP, first)
        xadd(server, fields(queue_id="Q2"))
        assert client.xreadgroup(GROUP, "holding", {STREAM: ">"}, count=1)


def test_the_consumer_removes_names_idle_with_nothing_pending(redis_server: RedisServer) -> None:
    members(redis_server)
    time.sleep(0.5)  # both idle past forget_idle_ms
    assert names(redis_server) == {"gone", "holding"}
    xadd(redis_server, fields(queue_id="Q3"))  # B joins the group by reading it
    got, handler = collector()

    async def main() -> None:
        # claim_idle_ms long: "holding" keeps its entry pending for the whole test.
        c = consumer(redis_server, name="B", forget_idle_ms=300, claim_idle_ms=60_000)
        await running(c, handler, lambda: until(lambda: names(redis_server) == {"holding", "B"}))

    asyncio.run(main())
    assert names(redis_server) == {"holding", "B"} and [m.envelope["id"] for m in got] == ["Q3"]


def test_forget_idle_keeps_fresh_names_its_own_and_pending_ones(redis_server: RedisServer) -> None:
    members(redis_server)

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            assert await forget_idle(client, "no-such-stream", GROUP, 1, "B") == []
            assert await forget_idle(client, STREAM, GROUP, 60_000, "B") == []  # not idle that long
            await asyncio.sleep(0.5)
            assert await forget_idle(client, STREAM, GROUP, 0, "B") == []  # 0: never
            assert await forget_idle(client, STREAM, GROUP, 300, "gone") == []  # its own name stays
            assert await forget_idle(client, STREAM, GROUP, 300, "B") == ["gone"]
        finally:
            await client.aclose()

    asyncio.run(main())
    assert names(redis_server) == {"holding"}
