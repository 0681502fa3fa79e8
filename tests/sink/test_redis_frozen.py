"""A Redis that stops answering (SIGSTOP) is detected once, and its return (SIGCONT, or a
restart after it was gone) at once, however much traffic kept coming.

A frozen Redis still accepts TCP connections (the kernel completes them) and takes the
octets sent, but never answers. After the first commit times out the lane is down: every
later message is refused with ``451 4.3.0`` at once, without a batch (and a fresh
connection) going out to wait another timeout, until the background probe gets an answer.
When Redis answers again (SIGCONT), mail flows within moments, however much traffic kept
coming meanwhile. Real redis-server, real SMTP clients, every wait bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field

import redis

from smtpfront.sink.redis.sink import RedisStreamSink

from ..conftest import RedisServer
from .test_redis_faults import QUEUED, read_reply, redis_client, smtp_server

TIMEOUT = 1.0  # the sink's redis timeout in this test
FROZEN = 5 * TIMEOUT  # how long Redis stays frozen
CLIENTS = 6  # concurrent senders, each sending one message after another


@dataclass
class Sent:
    started: float
    ended: float
    code: int
    line: bytes

    @property
    def waited(self) -> float:
        return self.ended - self.started


def connections_to(port: int) -> set[int]:
    """The local ports of this machine's TCP connections to ``port`` on 127.0.0.1 (the sink's,
    in this test: the SMTP server runs in this process and nothing else talks to this Redis)."""
    ports = set()
    with open("/proc/net/tcp") as table:
        for row in table.read().splitlines()[1:]:
            local, remote, state = row.split()[1:4]
            if int(remote.split(":")[1], 16) == port and state != "0A":  # 0A: LISTEN
                ports.add(int(local.split(":")[1], 16))
    return ports


@dataclass
class Traffic:
    stop: bool = False
    sent: list[Sent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def sender(port: int, n: int, traffic: Traffic) -> None:
    """Messages one after another (MAIL, RCPT, DATA pipelined) until told to stop."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        await read_reply(reader)
        writer.write(b"EHLO sender%d.example\r\n" % n)
        await read_reply(reader)
        seq = 0
        while not traffic.stop:
            seq += 1
            started = time.monotonic()
            writer.write(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            replies = [await read_reply(reader) for _ in range(3)]
            if replies[2][0] == 354:
                writer.write(b"Subject: %d-%d\r\n\r\nx\r\n.\r\n" % (n, seq))
                code, line = await read_reply(reader)
            else:
                code, line = replies[2]
                writer.write(b"RSET\r\n")
                await read_reply(reader)
            traffic.sent.append(Sent(started, time.monotonic(), code, line))
            if not (QUEUED.match(line) or line.startswith(b"451 4.3.0 ")):
                traffic.problems.append(f"sender {n}: {line!r}")
            await asyncio.sleep(0.01)  # a steady stream, not a busy loop
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    except (OSError, TimeoutError, ConnectionError) as exc:
        traffic.problems.append(f"sender {n}: {exc!r}")
    finally:
        writer.close()


def test_a_frozen_redis_is_waited_for_once_and_its_return_seen_at_once(redis_server: RedisServer) -> None:
    assert redis_server.process is not None
    pid = redis_server.process.pid
    traffic = Traffic()
    froze = thawed = 0.0
    before: set[int] = set()
    during: set[int] = set()

    async def drive(port: int) -> None:
        nonlocal froze, thawed
        tasks = [asyncio.create_task(sender(port, n, traffic)) for n in range(CLIENTS)]
        try:
            await asyncio.sleep(0.5)  # mail flows
            before.update(connections_to(redis_server.port))
            froze = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                while time.monotonic() < froze + FROZEN:
                    during.update(connections_to(redis_server.port))  # a connection lives ≥ a timeout
                    await asyncio.sleep(0.05)
            finally:
                thawed = time.monotonic()
                os.kill(pid, signal.SIGCONT)
            deadline = thawed + 10 * TIMEOUT
            while not any(s.code == 250 and s.started > thawed for s in traffic.sent):
                if time.monotonic() > deadline or all(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
        finally:
            traffic.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    try:
        with smtp_server(lambda: RedisStreamSink(redis_server.url, timeout=TIMEOUT)) as port:
            asyncio.run(drive(port))
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave a stopped redis-server behind

    assert not traffic.problems, traffic.problems
    assert any(s.code == 250 and s.ended < froze for s in traffic.sent), "no mail went through before the freeze"
    frozen = [s for s in traffic.sent if s.started >= froze and s.ended <= thawed]
    assert frozen and all(s.code == 451 for s in frozen), [s.line for s in frozen if s.code != 451]
    first_451 = min(s.ended for s in traffic.sent if s.code == 451)
    longest = max(s.waited for s in traffic.sent if s.ended > froze and s.started < thawed)
    # Once a commit has timed out, nothing waits on the frozen Redis again: no later batch
    # goes out to wait another timeout (a refusal takes milliseconds; slack for a loaded machine).
    waited_again = [round(s.waited, 2) for s in frozen if s.started >= first_451 and s.waited >= 0.8 * TIMEOUT]
    back = min((s.ended for s in traffic.sent if s.code == 250 and s.started > thawed), default=float("inf"))
    opened = len(during - before)
    print(f"\nfrozen {FROZEN:.0f} s, redis timeout {TIMEOUT:.0f} s, {CLIENTS} senders: {len(frozen)} refused, "
          f"first 451 after {first_451 - froze:.2f} s, longest wait {longest:.2f} s, "
          f"{len(waited_again)} waited again, {opened} connections opened, "
          f"first 250 {back - thawed:.2f} s after SIGCONT")
    assert not waited_again, f"after the first 451, {len(waited_again)} messages waited on Redis again: {waited_again}"
    # No connection per batch: only the probe's, one per attempt (each waits a timeout).
    assert before and opened <= FROZEN / TIMEOUT + 1, f"{opened} connections opened to the frozen Redis"
    assert longest < 2 * TIMEOUT, f"a client waited {longest:.2f} s (redis timeout {TIMEOUT} s)"
    assert back - thawed < 1.5, f"the first 250 came {back - thawed:.2f} s after Redis answered again"

    # Nothing acknowledged is lost: every 250's entry is in the stream.
    client: redis.Redis = redis_client(redis_server)
    try:
        ids = {entry.decode() for entry, _ in client.xrange("smtpfront:inbound")}
    finally:
        client.close()
    queued = [m.group(1).decode() for s in traffic.sent if (m := QUEUED.match(s.line))]
    assert queued and set(queued) <= ids


def test_a_redis_back_after_a_restart_takes_mail_at_once_despite_traffic(redis_server: RedisServer) -> None:
    # Redis gone: every attempt fails at once (connection refused), so traffic hammers the
    # sink. Only the probe paces the retries: once Redis answers, mail flows within moments.
    # (Before, traffic and probe both doubled one backoff: the lane stayed refusing for up to
    # 5 s after Redis was back, how long depending on when Redis came back; two rounds.)
    traffic = Traffic()
    answering: list[float] = []

    async def drive(port: int) -> None:
        tasks = [asyncio.create_task(sender(port, n, traffic)) for n in range(CLIENTS)]
        try:
            for _ in range(ROUNDS):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(redis_server.stop)
                await asyncio.sleep(GONE)
                await asyncio.to_thread(redis_server.start)  # returns once Redis answers PING
                answering.append(back := time.monotonic())
                deadline = back + 15
                while not any(s.code == 250 and s.started > back for s in traffic.sent):
                    if time.monotonic() > deadline or all(t.done() for t in tasks):
                        break
                    await asyncio.sleep(0.02)
        finally:
            traffic.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    with smtp_server(lambda: RedisStreamSink(redis_server.url, timeout=TIMEOUT)) as port:
        asyncio.run(drive(port))

    assert not traffic.problems, traffic.problems
    refused = [s for s in traffic.sent if s.code == 451]
    waits = [min((s.ended for s in traffic.sent if s.code == 250 and s.started > back), default=float("inf")) - back
             for back in answering]
    print(f"\nredis gone {GONE:.0f} s under {CLIENTS} senders, {ROUNDS} times: {len(refused)} refused, "
          f"first 250 {', '.join(f'{w:.2f}' for w in waits)} s after Redis answered again")
    assert len(answering) == ROUNDS and len(refused) > 100  # the senders kept sending while Redis was gone
    assert max(waits) < 1.5, f"the first 250 came {max(waits):.2f} s after Redis answered again"


ROUNDS = 2
GONE = 4.0
