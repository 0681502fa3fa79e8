"""Python function calls a worker makes per message (or per connection), counted, not timed.

Runs ``smtpfront serve`` (one worker, the given queue, the shipped INFO log) in this process
with a ``sys.setprofile`` counter that the forked worker inherits, warms it up with Postfix
``smtp-source``, counts the calls of a second ``smtp-source`` run of ``--messages`` messages,
and prints the calls per message: Python functions by ``file function``, and the total of C
calls. On a machine whose timings vary by a third, the count is what two versions compare on
(each Python call costs roughly 0.1 to 0.3 µs in CPython 3.11). Only interpreted code is
counted: the modules compiled by mypyc (``smtpfront.core.COMPILED_MODULES`` and
``COMPILED_WITH_CORE``) show as C calls into them, or not at all.

    python loadtest/calls_per_message.py --queue redis://127.0.0.1:6379/0            # kept sessions
    python loadtest/calls_per_message.py --queue null: --per-connection --top 60     # one per connection

Needs ``smtp-source`` (Debian package ``postfix``), or ``--driver loadgen`` (pipelined: fewer
reads and writes a message than smtp-source's one command per round trip). The counter slows
the worker tenfold:
the counts are exact, the rates meaningless.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

_counts: collections.Counter[tuple[str, str]] = collections.Counter()


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        _counts[(Path(code.co_filename).name, code.co_name)] += 1
    elif event == "c_call":
        _counts[("C", getattr(arg, "__qualname__", repr(arg)))] += 1


def _start(*_: object) -> None:
    _counts.clear()
    sys.setprofile(_profile)


def _dump(*_: object) -> None:
    sys.setprofile(None)
    out = Path(os.environ["CALLS_OUT"]) / f"{os.getpid()}.txt"
    out.write_text("".join(f"{n}\t{file}\t{name}\n" for (file, name), n in _counts.most_common()))
    os._exit(0)


def _serve(argv: list[str]) -> None:
    """The server side (``--serve``): a worker forked from here starts counting on SIGUSR1."""
    from smtpfront import cli

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
    sys.argv = ["smtpfront", *argv]
    cli.main()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _source(driver: str, port: int, messages: int, per_connection: bool) -> None:
    """``messages`` 1 KB messages over 10 sessions: Postfix ``smtp-source`` (a command, then its
    reply, as compare.py drives), or ``smtpfront.loadgen`` (pipelined)."""
    if driver == "smtp-source":
        argv = [shutil.which("smtp-source") or "/usr/sbin/smtp-source", "-s", "10", "-m", str(messages),
                "-l", "1024", "-f", "load@example.org", "-t", "sink@example.net", "-M", "loadgen.example",
                *([] if per_connection else ["-d"]), f"127.0.0.1:{port}"]
    else:
        argv = [sys.executable, "-m", "smtpfront.loadgen", f"127.0.0.1:{port}", "--sessions", "10",
                "--messages", str(max(1, messages // 10)), "--seconds", "600",
                *(["--per-connection"] if per_connection else [])]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=600)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queue", default="null:", help="the queue URL (null:)")
    p.add_argument("--messages", type=int, default=1000, help="messages counted (1000)")
    p.add_argument("--per-connection", action="store_true", help="one message per connection")
    p.add_argument("--driver", choices=("smtp-source", "loadgen"), default="smtp-source",
                   help="the client: Postfix smtp-source (compare.py's; package postfix) or smtpfront.loadgen")
    p.add_argument("--top", type=int, default=40, help="Python functions listed (40)")
    args = p.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", "serve", "--workers", "1", "--listen", f"127.0.0.1:{port}",
             "--queue", args.queue, "--no-tls"],
            env={**os.environ, "CALLS_OUT": tmp}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("calls_per_message: the server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            worker = int(Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()[0])
            _source(args.driver, port, 200, args.per_connection)  # warm up: imports, caches, the Redis connection
            os.kill(worker, signal.SIGUSR1)
            time.sleep(0.2)
            _source(args.driver, port, args.messages, args.per_connection)
            time.sleep(0.3)
            os.kill(worker, signal.SIGUSR2)
            result = Path(tmp) / f"{worker}.txt"
            for _ in range(100):
                if result.exists() and result.stat().st_size:
                    break
                time.sleep(0.1)
            rows = [line.split("\t") for line in result.read_text().splitlines()]
        finally:
            server.terminate()
            server.wait(timeout=30)
    per = args.messages
    python = [(int(n), f"{file} {name}") for n, file, name in rows if file != "C"]
    c_calls = sum(int(n) for n, file, _ in rows if file == "C")
    unit = "connection" if args.per_connection else "message"
    print(f"python calls per {unit}: {sum(n for n, _ in python) / per:.1f}; C calls: {c_calls / per:.1f}")
    for n, name in python[: args.top]:
        print(f"{n / per:7.2f}  {name}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(sys.argv[2:])
    else:
        sys.exit(main())
