"""Benchmarks (not tests): ``python -m smtpfront.bench core``.

``core`` pushes pipelined transactions and large bodies through the sans-IO core alone:
each read's bytes are copied into the connection's receive buffer once (``receive_data``
for the small reads of the transactions, ``writable``/``commit`` in place for the large
body, the way ``recv_into`` fills it), every event is answered with a constant reply, and
the replies are collected as one write per read. It runs for a bounded time and ends with two machine-readable lines::

    core.transactions_per_s=N
    core.unstuff_mb_per_s=N
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time

from .core import replies as R
from .core.connection import NEED_DATA, PAUSED, ServerConnection
from .core.events import BodyChunk, BodyEnd, Data, Event, Helo, MailFrom, RcptTo
from .core.options import Limits

_WORDS = (
    "the of and to in is was that for on with as by at from his her which are this be had not but have "
    "message delivery mail server queue recipient sender transfer protocol network system report example "
    "a an it they we you he she there their were been would could about into than then them these"
).split()


@functools.lru_cache(maxsize=4)  # 16 MiB of it takes seconds to make; both read sizes share it
def english_body(size: int, seed: int = 5321) -> bytes:
    """Realistic text: 60-78 character lines of common words, ~1% starting with a dot."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    total = 0
    while total < size:
        words: list[str] = []
        width = rng.randint(60, 78)
        while sum(map(len, words)) + len(words) < width:
            words.append(rng.choice(_WORDS))
        line = " ".join(words).encode()
        if rng.random() < 0.01:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def stuff(body: bytes) -> bytes:
    """Dot-stuff a CRLF body the way a client does (RFC 5321 §4.5.2)."""
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


class _Answerer:
    """Answers every event at once with a constant reply, like a server with no hooks."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.messages = 0
        self.body_octets = 0

    def feed(self, data: bytes) -> bytes:
        """One read: copy into the buffer in place, drain every event, return the one write."""
        conn = self.conn
        view = memoryview(data)  # one copy per read, into the buffer, as recv_into makes
        pos, end = 0, len(data)
        while pos < end:
            room = conn.writable()
            n = min(len(room), end - pos)
            room[:n] = view[pos : pos + n]
            conn.commit(n)
            pos += n
            self._drain()
        return conn.data_to_send()

    def push(self, data: bytes) -> bytes:
        """One small read through ``receive_data``: the same single copy into the buffer, made
        by the core in one call instead of by slicing here (``feed``'s slicing, interpreted,
        costs more than the kernel's copy into the buffer that it stands for)."""
        self.conn.receive_data(data)
        self._drain()
        return self.conn.data_to_send()

    def _drain(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            assert isinstance(event, Event)
            kind = type(event)
            if kind is BodyChunk:
                self.body_octets += len(event.data)  # type: ignore[attr-defined]
            elif kind is RcptTo:
                conn.send(R.RECIPIENT_OK)
            elif kind is MailFrom:
                conn.send(R.SENDER_OK)
            elif kind is Data:
                conn.send(R.START_DATA)
            elif kind is BodyEnd:
                self.messages += 1
                conn.send(_QUEUED)
            elif kind is Helo:
                conn.send(conn.hello_reply(event))  # type: ignore[arg-type]
            else:
                raise RuntimeError(f"unexpected event in benchmark: {event!r}")


_QUEUED = R.Reply(250, "2.0.0", "Ok: queued as 1732262400000-0")


def _connection(max_size: int) -> tuple[ServerConnection, _Answerer]:
    conn = ServerConnection(hostname="bench.example", limits=Limits(max_message_size=max_size),
                            buffer_size=256 * 1024)
    conn.send(conn.greeting_reply())
    conn.data_to_send()
    answerer = _Answerer(conn)
    answerer.feed(b"EHLO client.example\r\n")
    return conn, answerer


def bench_transactions(seconds: float) -> tuple[float, int]:
    """Pipelined 1 KB transactions: (transactions per second, count)."""
    _, answerer = _connection(10 * 1024 * 1024)
    envelope = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<recipient@example.net>\r\nDATA\r\n"
    body = stuff(english_body(1024)) + b".\r\n"
    push = answerer.push
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            push(envelope)
            push(body)
        count += 1000
        now = time.perf_counter()
        if now >= deadline:
            break
    if answerer.messages != count:
        raise RuntimeError(f"{answerer.messages} messages accepted, {count} sent")
    return count / (now - start), count


def bench_unstuff(seconds: float, read_size: int) -> tuple[float, int]:
    """A large realistic body through the connection in ``read_size`` reads: (MB/s, octets)."""
    body = english_body(16 * 1024 * 1024)
    wire = stuff(body)
    reads = [wire[i : i + read_size] for i in range(0, len(wire), read_size)]
    _, answerer = _connection(64 * 1024 * 1024)
    envelope = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<recipient@example.net>\r\nDATA\r\n"
    octets = 0
    elapsed = 0.0
    while elapsed < seconds:
        answerer.feed(envelope)
        start = time.perf_counter()
        for chunk in reads:
            answerer.feed(chunk)
        answerer.feed(b".\r\n")
        elapsed += time.perf_counter() - start
        octets += len(body)
    if answerer.body_octets != octets:
        raise RuntimeError(f"unstuffed {answerer.body_octets} octets, expected {octets}")
    return octets / elapsed / 1e6, octets


def run_core(seconds: float) -> None:
    """The core benchmark; prints a summary and the two machine-readable lines."""
    tps, count = bench_transactions(seconds)
    print(f"pipelined 1 KB transactions: {count} in {count / tps:.2f} s -> {tps:,.0f} transactions/s")
    best = 0.0
    for read_size in (64 * 1024, 256 * 1024):
        mbps, octets = bench_unstuff(seconds / 2, read_size)
        print(f"unstuffing realistic text, {read_size // 1024} KiB reads: {octets / 1e6:,.0f} MB -> {mbps:,.0f} MB/s")
        best = max(best, mbps)
    print(f"core.transactions_per_s={tps:.0f}")
    print(f"core.unstuff_mb_per_s={best:.0f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m smtpfront.bench``."""
    parser = argparse.ArgumentParser(prog="python -m smtpfront.bench", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["core"], help="what to measure")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement (max 10)")
    args = parser.parse_args(argv)
    run_core(min(args.seconds, 10.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
