"""One memory budget per worker: 200 concurrent 10 MiB senders against a real ``smtpfront serve
--workers 1`` queueing into a real redis-server keep the worker's peak RSS within its budget plus
its baseline, and every message is queued byte for byte.

Baseline: the worker's RSS once it delivered one small message (Redis connected, code loaded),
read from ``/proc``. Peak: the kernel's own high-water mark (``VmHWM``, reset through
``clear_refs`` right before the senders start) and a sampling of ``VmRSS``, whichever is larger.

Margin, each term a thing the budget leaves out or a granularity it has on purpose:

- each connection's receive buffer (``limits.buffer_size``, 64 KiB, filled by the kernel
  whatever the budget): 200 x 64 KiB = 12.5 MiB, and per-session objects (~10 KiB each: 2 MiB);
- a sender stops after the read that crossed the limit: one read (64 KiB) each, 12.5 MiB, and
  small holders go on until the limit is passed by an eighth (4 MiB);
- 8 MiB for the allocator (freed body parts are not all given back to the kernel at once).

Measured on a 2-core machine (peak RSS over the baseline): before the budget 172-177 MiB; with
the budget 60-62 MiB (the budget counting nothing, only the batch no longer joined: 107 MiB).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import redis

from smtpfront.sink.record import chunk_keys

from ..conftest import RedisServer
from .test_serve import Serve

SENDERS = 200
PIECE = 64 * 1024
PIECES = 160  # 10 MiB a message
BUDGET = 32 * 1024 * 1024
MARGIN = SENDERS * (64 + 10 + 64) * 1024 + BUDGET // 8 + 8 * 1024 * 1024
WAIT = 300.0  # seconds the whole run may take on a loaded 2-core machine
_FILLER = b"".join(b"%-62s\r\n" % (b"line %04d " % n + b"x" * 40) for n in range(PIECE // 64 - 1))


def header(sender: int) -> bytes:
    return b"Subject: sender %d\r\nMessage-ID: <%d.budget@test>\r\n\r\n" % (sender, sender)


def piece(sender: int, n: int) -> bytes:
    """64 KiB of body, its first line naming the sender and the piece (a chunk out of place shows)."""
    return b"%-62s\r\n" % (b"sender %04d piece %05d " % (sender, n)) + _FILLER


def expected(sender: int) -> bytes:
    return header(sender) + b"".join(piece(sender, n) for n in range(PIECES))


def rss(pid: int, field: str = "VmRSS") -> int:
    """A field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """The next complete reply (its last line), read with the socket's timeout."""
    while True:
        lines = bytes(buffer).split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if line[3:4] == b" ":
                del buffer[: sum(len(x) + 2 for x in lines[: i + 1])]
                return line
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed")
        buffer += data


def send(port: int, sender: int, start: threading.Barrier, outcomes: dict[int, bytes]) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            buffer = bytearray()
            assert reply(sock, buffer).startswith(b"220")
            for command, code in ((b"EHLO test", b"250"), (b"MAIL FROM:<a@example.org>", b"250"),
                                  (b"RCPT TO:<b@example.net>", b"250")):
                sock.sendall(command + b"\r\n")
                answer = reply(sock, buffer)
                assert answer.startswith(code), answer
            start.wait(timeout=WAIT)
            sock.sendall(b"DATA\r\n")
            assert reply(sock, buffer).startswith(b"354")
            sock.sendall(header(sender))
            for n in range(PIECES):
                sock.sendall(piece(sender, n))
            sock.sendall(b".\r\n")
            outcomes[sender] = reply(sock, buffer)
            sock.sendall(b"QUIT\r\n")
    except Exception as exc:  # the main thread reports it
        outcomes[sender] = repr(exc).encode()


def test_200_senders_of_10_mib_stay_within_the_memory_budget(tmp_path: Path, redis_server: RedisServer) -> None:
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"[limits]\nmemory_budget = {BUDGET}\n")
    server = Serve(tmp_path, "--config", str(config), "--queue", redis_server.url, "--workers", "1")
    try:
        (worker,) = server.wait_workers(1)
        server.send(1)  # warm: Redis connected, every path of a small message loaded
        time.sleep(0.5)
        baseline = rss(worker)
        Path(f"/proc/{worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                try:
                    peak[0] = max(peak[0], rss(worker))
                except (OSError, AssertionError):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        outcomes: dict[int, bytes] = {}
        start = threading.Barrier(SENDERS)
        senders = [threading.Thread(target=send, args=(server.port, i, start, outcomes), daemon=True)
                   for i in range(SENDERS)]
        began = time.monotonic()
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(timeout=max(1.0, began + WAIT - time.monotonic()))
        took = time.monotonic() - began
        done.set()
        sampler.join(timeout=5)
        peak_rss = max(peak[0], rss(worker, "VmHWM"))
        refused = {i: o for i, o in outcomes.items() if not o.startswith(b"250")}
        assert len(outcomes) == SENDERS and not refused, (len(outcomes), list(refused.items())[:5])

        client = redis.Redis.from_url(redis_server.url)
        seen = set()
        for _, fields in client.xrange("smtpfront:inbound"):
            envelope = json.loads(fields[b"envelope"])
            if envelope["size"] < PIECE:
                continue  # the warm-up message
            if b"body" in fields:
                body = fields[b"body"]
            else:
                keys = chunk_keys(fields[b"body_key"], int(fields[b"body_chunks"]))
                body = b"".join(client.get(key) or b"" for key in keys)
                client.delete(*keys)
            sender = int(body.split(b"Subject: sender ", 1)[1].split(b"\r\n", 1)[0])
            want = expected(sender)
            assert body.startswith(b"Received: ") and body.endswith(want), sender
            assert envelope["size"] == len(want)
            seen.add(sender)
        assert seen == set(range(SENDERS))
        over = peak_rss - baseline
        print(f"\n{SENDERS} x 10 MiB in {took:.1f} s: worker baseline {baseline / 2**20:.1f} MiB, "
              f"peak {peak_rss / 2**20:.1f} MiB (+{over / 2**20:.1f} MiB; budget {BUDGET / 2**20:.0f} MiB, "
              f"margin {MARGIN / 2**20:.1f} MiB)")
        assert over <= BUDGET + MARGIN
    finally:
        server.stop()
