"""Redis's own CPU per queued message: a plain ``XADD`` against the sink's dedup script.

The queue deduplicates a retried message in one atomic step, a Lua script that is handed the
whole record (the body included) and calls ``XADD`` itself (``smtpfront.sink.redis.writer``
``DEDUP_SCRIPT``). This measures what that costs Redis, per message and size, from
``INFO cpu`` before and after ``--count`` calls on one connection:

    python loadtest/redis_dedup_cost.py                       # starts its own redis-server
    python loadtest/redis_dedup_cost.py --url redis://127.0.0.1:6379/15 --sizes 1024,102400

Against a server of yours it writes the streams ``dedup-cost:xadd`` and ``dedup-cost:script``
and the keys ``dedup-cost:key:*`` (and deletes them afterwards): use a database of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from smtpfront.sink.redis.writer import DEDUP_SCRIPT

STREAMS = (b"dedup-cost:xadd", b"dedup-cost:script")


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _measure(client: redis.Redis, count: int, call: Callable[[int], object]) -> float:
    """Redis CPU µs per call of ``call`` (given the call's number)."""
    before = _cpu(client)
    for i in range(count):
        call(i)
    return (_cpu(client) - before) / count * 1e6


def run(client: redis.Redis, sizes: list[int], count: int) -> None:
    sha = client.script_load(DEDUP_SCRIPT)
    print("| body octets | XADD µs | dedup script µs | script / XADD |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        body = os.urandom(size)
        fields: dict[Any, Any] = {b"v": b"1", b"envelope": b"{}", b"body": body}
        flat = [item for pair in fields.items() for item in pair]
        keys = [f"dedup-cost:key:{size}:{i}" for i in range(count)]

        def plain(_: int, fields: dict[Any, Any] = fields) -> object:
            return client.xadd(STREAMS[0], fields)

        def deduplicated(i: int, flat: list[Any] = flat, keys: list[str] = keys) -> object:
            return client.evalsha(sha, 2, keys[i], STREAMS[1], 900, 0, *flat)

        xadd, script = _measure(client, count, plain), _measure(client, count, deduplicated)
        print(f"| {size:,} | {xadd:.1f} | {script:.1f} | {script / xadd:.2f}x |")
        client.delete(*STREAMS, *keys)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a Redis to measure (default: start redis-server on a free port)")
    p.add_argument("--sizes", default="1024,102400", help="body octets, comma-separated (1024,102400)")
    p.add_argument("--count", type=int, default=2000, help="calls per size and command (2000)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.url:
        run(redis.Redis.from_url(args.url), sizes, args.count)
        return 0
    if shutil.which("redis-server") is None:
        print("redis_dedup_cost: redis-server not found (or give --url)", file=sys.stderr)
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        run(client, sizes, args.count)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
