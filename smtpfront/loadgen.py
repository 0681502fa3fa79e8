"""A pipelined SMTP load generator: ``python -m smtpfront.loadgen HOST:PORT``.

Each session sends EHLO once, then for every message MAIL+RCPT+DATA in one write (RFC 2920
PIPELINING), waits for the three replies, sends the body and the final dot, and times
final-dot → reply. Bounded by ``--messages`` per session and ``--seconds`` in all; it stops
by itself. Prints msgs/s, MB/s, reply codes, and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time

__all__ = ["run", "main"]


class _Session:
    def __init__(self, host: str, port: int, body: bytes, codes: collections.Counter[str],
                 latencies: list[float]) -> None:
        self.host, self.port, self.body = host, port, body
        self.codes, self.latencies = codes, latencies
        self.sent = 0

    async def _reply(self, reader: asyncio.StreamReader) -> str:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line[:3].decode()

    async def run(self, messages: int, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            await self._reply(reader)
            writer.write(b"EHLO loadgen.example\r\n")
            await self._reply(reader)
            envelope = b"MAIL FROM:<load@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n"
            for _ in range(messages):
                if time.monotonic() >= deadline:
                    break
                writer.write(envelope)
                codes = [await self._reply(reader) for _ in range(3)]
                if codes[2] != "354":
                    self.codes[codes[2]] += 1
                    writer.write(b"RSET\r\n")
                    await self._reply(reader)
                    continue
                start = time.perf_counter()
                writer.write(self.body)
                code = await self._reply(reader)
                self.latencies.append(time.perf_counter() - start)
                self.codes[code] += 1
                self.sent += 1
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()


def _body(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
    head = b"Subject: load test\r\nFrom: <load@example.org>\r\n\r\n"
    text = head + line * max(1, (size - len(head)) // len(line))
    return text + b".\r\n"


async def run(host: str, port: int, *, sessions: int, messages: int, size: int, seconds: float,
              per_connection: bool = False) -> dict[str, object]:
    """Drive the server; returns the report as a dict (also printed by :func:`main`)."""
    body = _body(size)
    codes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    started = time.perf_counter()

    async def worker() -> int:
        total = 0
        while total < messages and time.monotonic() < deadline:
            session = _Session(host, port, body, codes, latencies)
            try:
                await session.run(1 if per_connection else messages - total, deadline)
            except (ConnectionError, OSError) as exc:
                codes[f"error:{type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)  # a refused connection must not spin
            total += session.sent
        return total

    sent = sum(await asyncio.gather(*(worker() for _ in range(sessions))))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    ok = sum(n for code, n in codes.items() if code.startswith("2"))
    return {
        "messages": sent, "accepted": ok, "seconds": round(elapsed, 3), "msgs_per_s": round(ok / elapsed, 1),
        "mb_per_s": round(ok * len(body) / elapsed / 1e6, 2), "codes": dict(codes),
        "p50_ms": round(pct(0.50), 3), "p90_ms": round(pct(0.90), 3), "p99_ms": round(pct(0.99), 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m smtpfront.loadgen``."""
    parser = argparse.ArgumentParser(prog="python -m smtpfront.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000, help="messages per session")
    parser.add_argument("--size", type=int, default=1024, help="body octets")
    parser.add_argument("--seconds", type=float, default=10.0, help="stop after this long (max 600)")
    parser.add_argument("--per-connection", action="store_true", help="one message per connection")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    import uvloop

    report = uvloop.run(run(host or "127.0.0.1", int(port), sessions=args.sessions, messages=args.messages,
                             size=args.size, seconds=min(args.seconds, 600.0), per_connection=args.per_connection))
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0 if report["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
