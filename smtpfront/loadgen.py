"""A fast pipelined SMTP load generator: ``python -m smtpfront.loadgen HOST:PORT``.

Each session connects, reads the greeting, sends EHLO (then STARTTLS and EHLO again with
``--tls``, then AUTH PLAIN with ``--auth``), and for every message writes MAIL, RCPT… and
DATA as one write (RFC 2920 PIPELINING; lock-step when the server does not offer it),
then the body and the final dot as one write, and times final dot → reply. Sessions are
raw ``asyncio.Protocol`` state machines on uvloop; ``--procs N`` runs N processes, each
with its own loop and a share of the sessions, and merges their results over a pipe.

The body is ``--size`` octets of realistic text (headers, lines of words ending CRLF, some
lines starting with a dot, dot-stuffed on the wire); it has no Message-ID, so a queue that
deduplicates retries stores every copy. A run stops at ``--seconds`` or after
``--messages`` per session, finishing the messages in flight; a reply that takes longer
than ``--timeout`` aborts its connection. The report gives msgs/s, MB/s (message octets),
reply codes, final-dot → reply latency percentiles, connections/s and errors; ``--json``
prints it as one JSON line.

Size (over 500 lines): one self-contained tool (options, the session state machine, the
body, the report, the multi-process merge) that a load test runs as a single file.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import collections
import json
import math
import multiprocessing
import multiprocessing.connection
import random
import resource
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = ["Options", "make_body", "main", "percentile", "run"]

_SETUP, _ENVELOPE, _BODY, _RSET, _QUIT = range(5)
_STATE_NAMES = ("setup", "envelope", "body", "rset", "quit")


@dataclass(frozen=True)
class Options:
    """What to send, where, and for how long (the command-line flags)."""

    host: str = "127.0.0.1"
    port: int = 25
    procs: int = 1
    sessions: int = 10
    messages: int = 0  # per session (per session slot with per_connection); 0: until `seconds`
    seconds: float = 10.0
    size: int = 1024
    rcpts: int = 1
    per_connection: bool = False
    tls: bool = False
    auth: str | None = None  # "user:pass", AUTH PLAIN
    helo: str = "loadgen.example"
    sender: str = "load@example.org"
    timeout: float = 30.0  # longest wait for one reply
    progress: bool = False


@dataclass
class Stats:
    """One process's counts; merged across processes."""

    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    connections: int = 0
    connect_errors: int = 0
    started: float = 0.0
    finished: float = 0.0
    cpu: float = 0.0  # user + system seconds of the load processes

    @property
    def accepted(self) -> int:
        return sum(n for code, n in self.codes.items() if 200 <= code < 300)

    def merge(self, other: Stats) -> None:
        self.codes.update(other.codes)
        self.errors.update(other.errors)
        self.latencies.extend(other.latencies)
        self.connections += other.connections
        self.connect_errors += other.connect_errors
        self.started = min(self.started or other.started, other.started)
        self.finished = max(self.finished, other.finished)
        self.cpu += other.cpu

    def to_wire(self) -> dict[str, Any]:
        return {"codes": dict(self.codes), "errors": dict(self.errors), "latencies": self.latencies.tobytes(),
                "connections": self.connections, "connect_errors": self.connect_errors,
                "started": self.started, "finished": self.finished, "cpu": self.cpu}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Stats:
        latencies = array.array("d")
        latencies.frombytes(data["latencies"])
        return cls(collections.Counter(data["codes"]), collections.Counter(data["errors"]), latencies,
                   data["connections"], data["connect_errors"], data["started"], data["finished"], data["cpu"])


# -- the message ----------------------------------------------------------------------------

_WORDS = (b"the of and to in is that for it as was with be by on not he this are or his from at which but "
          b"have an they you were their one all we can her has there been if more when will would who so "
          b"no order invoice shipment meeting schedule report quarterly attached please review thanks "
          b"regards tomorrow morning update project budget approval customer account delivery").split()


def _line(rng: random.Random, length: int) -> bytes:
    """Words up to exactly ``length`` octets; now and then a line that starts with a dot."""
    words: list[bytes] = [b"." if rng.random() < 0.02 else rng.choice(_WORDS)]
    total = len(words[0])
    while total < length:
        word = rng.choice(_WORDS)
        words.append(word)
        total += len(word) + 1
    return b" ".join(words)[:length]


def _text(rng: random.Random, octets: int) -> bytes:
    """Lines of words ending CRLF, exactly ``octets`` in all (0, or 2 and more); past 64 KiB a block repeats."""
    block = 65536
    if octets > block:
        repeats, rest = divmod(octets, block)
        if rest == 1:
            repeats, rest = repeats - 1, rest + block
        return _text(rng, block) * repeats + _text(rng, rest)
    lines: list[bytes] = []
    used = 0
    while used + 2 <= octets:
        room = octets - used - 2  # text octets left for one more line and its CRLF
        length = min(room, rng.randrange(30, 77))
        if room - length == 1:  # would leave one octet, too few for another line
            length = room
        lines.append(_line(rng, length) + b"\r\n")
        used += length + 2
    return b"".join(lines)


def make_body(size: int, seed: int = 5321) -> tuple[bytes, int]:
    """``(wire bytes, message octets)``: a text message of ``size`` octets, dot-stuffed, ending ``.\\r\\n``.

    The message is exactly ``size`` octets (lines ending CRLF, none longer than 78) unless
    ``size`` is below the smallest header block, which is then sent as it is.
    """
    head = (b"From: Load Generator <load@example.org>\r\nTo: <sink@example.net>\r\nSubject: load test\r\n"
            b"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
    if size < len(head) + 2:
        head = b"Subject: load test\r\n\r\n"
    if size == len(head) + 1:  # one octet cannot hold a line: lengthen the subject instead
        head = head.replace(b"load test", b"load test.")
    message = head + _text(random.Random(seed), max(0, size - len(head)))
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n", len(message)


def percentile(ordered: array.array[float] | list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of an ascending sequence; 0.0 when empty."""
    if not ordered:
        return 0.0
    return float(ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))])


# -- one connection ---------------------------------------------------------------------------


class _SessionError(Exception):
    """The session could not reach the message loop (a refusal during setup, a lost connection)."""


class _Client(asyncio.Protocol):
    """One SMTP connection: awaitable replies during setup, then a callback-driven message loop."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = _SETUP
        self.lines: list[bytes] = []
        self.inbox: collections.deque[tuple[int, list[bytes]]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pipelining = False
        self.pending = 0  # envelope replies still expected
        self.failed = 0  # first envelope reply >= 400
        self.left = 0  # messages still to send on this connection
        self.sent = 0  # transactions finished on this connection
        self.t0 = 0.0
        self.failed_why = ""
        self.reads = 0  # for the watchdog
        self.seen = -1
        self.idle = 0
        self.codes = run.stats.codes
        self.record = run.stats.latencies.append

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.run.active.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.active.discard(self)
        if self.state != _QUIT:
            self.fail(f"connection lost in {_STATE_NAMES[self.state]}")
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_SessionError("connection lost in setup"))
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        buf = self.buf + data if self.buf else data
        start = 0
        find = buf.find
        while (end := find(b"\n", start)) >= 0:
            if self.state == _SETUP:
                self.lines.append(buf[start + 4:end].rstrip(b"\r"))
            if end - start > 3 and buf[start + 3] == 45:  # "NNN-": a continuation line
                start = end + 1
                continue
            try:
                code = int(buf[start:start + 3])
            except ValueError:
                self.abort(f"not a reply: {buf[start:end][:40]!r}")
                return
            start = end + 1
            self.reply(code)
            if self.transport is None:
                return
        self.buf = buf[start:]

    # the message loop
    def reply(self, code: int) -> None:
        state = self.state
        if state == _ENVELOPE:
            self.pending -= 1
            if code >= 400 and not self.failed:
                self.failed = code
            if self.pending:
                if not self.pipelining:
                    commands = self.run.commands
                    self._write(commands[len(commands) - self.pending])
                return
            if code == 354:
                self.state = _BODY
                self.t0 = time.perf_counter()
                self._write(self.run.body)
                return
            self.codes[self.failed or code] += 1
            self.sent += 1
            self.state = _RSET
            self._write(b"RSET\r\n")
        elif state == _BODY:
            self.record(time.perf_counter() - self.t0)
            self.codes[code] += 1
            self.sent += 1
            self.next()
        elif state == _RSET:
            self.next()
        elif state == _QUIT:
            if self.transport is not None:
                self.transport.close()
        else:
            self.inbox.append((code, self.lines))
            self.lines = []
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def next(self) -> None:
        """Start the next transaction, or QUIT when this connection's share or the time is up."""
        self.left -= 1
        if self.left > 0 and time.monotonic() < self.run.deadline:
            self.state = _ENVELOPE
            self.failed = 0
            self.pending = len(self.run.commands)
            self._write(self.run.envelope if self.pipelining else self.run.commands[0])
        else:
            self.state = _QUIT
            self._write(b"QUIT\r\n")

    def start(self, messages: int) -> None:
        """Leave setup: send ``messages`` messages (at least one is attempted), then QUIT."""
        self.left = messages + 1
        self.next()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def fail(self, why: str) -> None:
        """Count the first reason this connection failed (later ones follow from it)."""
        if not self.failed_why:
            self.failed_why = why
            self.run.stats.errors[why] += 1

    def abort(self, why: str) -> None:
        self.fail(why)
        self.state = _QUIT
        if self.transport is not None:
            self.transport.abort()

    # setup (once per connection)
    async def command(self, line: bytes | None) -> tuple[int, list[bytes]]:
        """Send ``line`` (None: just read, for the greeting) and wait for one whole reply."""
        if line is not None:
            self._write(line)
        while not self.inbox:
            if self.transport is None:
                raise _SessionError("connection lost in setup")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.inbox.popleft()

    async def setup(self) -> None:
        """Greeting, EHLO, STARTTLS + EHLO (``tls``), AUTH PLAIN (``auth``)."""
        opts = self.run.opts
        code, _ = await self.command(None)
        if code != 220:
            raise _SessionError(f"greeting {code}")
        caps = await self.ehlo()
        if opts.tls:
            if b"STARTTLS" not in caps:
                raise _SessionError("STARTTLS not offered")
            code, _ = await self.command(b"STARTTLS\r\n")
            if code != 220:
                raise _SessionError(f"STARTTLS {code}")
            assert self.transport is not None
            self.buf = b""
            loop = asyncio.get_running_loop()
            tls = await loop.start_tls(self.transport, self, self.run.tls_context, server_hostname=opts.host)
            if tls is None:
                raise _SessionError("TLS handshake failed")
            self.transport = tls
            caps = await self.ehlo()
        if opts.auth is not None:
            user, _, password = opts.auth.partition(":")
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            code, _ = await self.command(b"AUTH PLAIN " + token + b"\r\n")
            if code != 235:
                raise _SessionError(f"AUTH {code}")
        self.pipelining = b"PIPELINING" in caps

    async def ehlo(self) -> set[bytes]:
        code, lines = await self.command(b"EHLO " + self.run.opts.helo.encode() + b"\r\n")
        if code != 250:
            code, lines = await self.command(b"HELO " + self.run.opts.helo.encode() + b"\r\n")
            if code != 250:
                raise _SessionError(f"HELO {code}")
            return set()
        return {line.split(b" ", 1)[0].upper() for line in lines[1:]}


# -- one process --------------------------------------------------------------------------------


class _Run:
    """One process's share of the sessions, on one event loop."""

    def __init__(self, opts: Options, body: bytes, sessions: int, publish: Callable[[Stats], None] | None) -> None:
        self.opts = opts
        self.sessions = sessions
        self.publish = publish
        self.stats = Stats()
        self.active: set[_Client] = set()
        self.body = body
        rcpts = [f"RCPT TO:<user{i}@example.net>\r\n".encode() for i in range(max(1, opts.rcpts))]
        self.commands = [f"MAIL FROM:<{opts.sender}>\r\n".encode(), *rcpts, b"DATA\r\n"]
        self.envelope = b"".join(self.commands)
        self.deadline = 0.0
        self.tls_context = ssl.create_default_context()
        self.tls_context.check_hostname = False
        self.tls_context.verify_mode = ssl.CERT_NONE

    async def main(self) -> Stats:
        loop = asyncio.get_running_loop()
        cpu = _cpu()
        self.stats.started = time.perf_counter()
        self.deadline = time.monotonic() + self.opts.seconds
        tick = loop.create_task(self.ticker())
        tasks = [loop.create_task(self.session()) for _ in range(self.sessions)]
        try:
            _, late = await asyncio.wait(tasks, timeout=self.opts.seconds + self.opts.timeout + 5)
            for task in late:
                task.cancel()
            for client in list(self.active):
                client.abort("not finished in time")
        finally:
            tick.cancel()
        self.stats.finished = time.perf_counter()
        self.stats.cpu = _cpu() - cpu
        return self.stats

    async def ticker(self) -> None:
        """Once a second: abort connections silent past ``timeout``; publish progress."""
        while True:
            await asyncio.sleep(1.0)
            for client in list(self.active):
                if client.reads != client.seen:
                    client.seen, client.idle = client.reads, 0
                    continue
                client.idle += 1
                if client.idle >= self.opts.timeout:
                    client.abort(f"timeout in {_STATE_NAMES[client.state]}")
            if self.publish is not None:
                self.publish(self.stats)

    async def session(self) -> None:
        """One session slot: a kept connection, or a connection per message; reconnects on loss."""
        opts, loop = self.opts, asyncio.get_running_loop()
        quota = opts.messages or sys.maxsize
        made = 0
        while made < quota and time.monotonic() < self.deadline:
            try:
                async with asyncio.timeout(opts.timeout):
                    _, client = await loop.create_connection(lambda: _Client(self), opts.host, opts.port)
            except (OSError, TimeoutError) as exc:
                self.stats.connect_errors += 1
                self.stats.errors[f"connect: {getattr(exc, 'strerror', None) or type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
                continue
            self.stats.connections += 1
            try:
                await client.setup()
            except (_SessionError, OSError) as exc:
                client.abort(str(exc) or type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            client.start(1 if opts.per_connection else quota - made)
            await client.done
            made += client.sent
            if client.sent == 0 and made < quota and time.monotonic() < self.deadline:
                await asyncio.sleep(0.05)  # a connection that carried nothing must not spin


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_one(opts: Options, body: bytes, sessions: int, publish: Callable[[Stats], None] | None) -> Stats:
    import uvloop

    return uvloop.run(_Run(opts, body, sessions, publish).main())


def _child(opts: Options, body: bytes, sessions: int, index: int, shared: Any,
           conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides

    def publish(stats: Stats) -> None:
        shared[index * 3:index * 3 + 3] = [stats.accepted, stats.connections, sum(stats.errors.values())]

    conn.send(_run_one(opts, body, sessions, publish).to_wire())
    conn.close()


class _Progress:
    """The live line on stderr: totals, rate over the last second, connections, errors."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = self.last_t = time.perf_counter()
        self.last_n = 0

    def show(self, accepted: int, connections: int, errors: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (accepted - self.last_n) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_n = now, accepted
        line = (f"{now - self.start:6.1f}s {accepted:>11,} accepted {rate:>10,.0f} msgs/s "
                f"{connections:>8,} conns {errors:>6,} errors")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def run(opts: Options) -> dict[str, Any]:
    """Run the load (``opts.procs`` processes; more than one forks) and return the report."""
    procs = max(1, min(opts.procs, opts.sessions))
    progress = _Progress(opts.progress)
    body, octets = make_body(opts.size)
    if procs == 1:
        stats = _run_one(opts, body, opts.sessions,
                         lambda s: progress.show(s.accepted, s.connections, sum(s.errors.values())))
        progress.end()
        return report(opts, stats, procs, octets)
    ctx = multiprocessing.get_context("fork")
    shared = ctx.RawArray("q", procs * 3)
    children: list[tuple[Any, multiprocessing.connection.Connection]] = []
    stats = Stats()
    try:
        for i in range(procs):
            ours, theirs = ctx.Pipe(duplex=False)
            share = opts.sessions // procs + (i < opts.sessions % procs)
            child = ctx.Process(target=_child, args=(opts, body, share, i, shared, theirs), daemon=True)
            child.start()
            theirs.close()
            children.append((child, ours))
        waiting = {conn for _, conn in children}
        limit = time.monotonic() + opts.seconds + opts.timeout + 30
        shown = time.monotonic()
        while waiting and time.monotonic() < limit:
            for conn in multiprocessing.connection.wait(list(waiting), timeout=1.0):
                assert isinstance(conn, multiprocessing.connection.Connection)
                try:
                    stats.merge(Stats.from_wire(conn.recv()))
                except EOFError:
                    stats.errors["load process died"] += 1
                waiting.discard(conn)
            if waiting and time.monotonic() - shown >= 0.9:
                shown = time.monotonic()
                totals = [sum(shared[i::3]) for i in range(3)]
                progress.show(totals[0], totals[1], totals[2])
        stats.errors.update({"load process did not finish": len(waiting)} if waiting else {})
    except BaseException:  # Ctrl-C: the children must not run on
        for child, _ in children:
            child.kill()
        raise
    finally:
        progress.end()
        for child, conn in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)
            conn.close()
    return report(opts, stats, procs, octets)


def report(opts: Options, stats: Stats, procs: int, octets: int) -> dict[str, Any]:
    """The report of a run (what ``--json`` prints)."""
    elapsed = max(stats.finished - stats.started, 1e-9)
    ordered = sorted(stats.latencies)
    accepted = stats.accepted

    def ms(value: float) -> float:
        return round(value * 1000, 3)

    return {
        "target": f"{opts.host}:{opts.port}", "procs": procs, "sessions": opts.sessions, "size": octets,
        "rcpts": max(1, opts.rcpts), "per_connection": opts.per_connection, "tls": opts.tls,
        "seconds": round(elapsed, 3), "transactions": sum(stats.codes.values()), "accepted": accepted,
        "msgs_per_s": round(accepted / elapsed, 1), "mb_per_s": round(accepted * octets / elapsed / 1e6, 2),
        "connections": stats.connections, "connections_per_s": round(stats.connections / elapsed, 1),
        "connect_errors": stats.connect_errors, "cpu_s": round(stats.cpu, 3),
        "cpu_us_per_msg": round(stats.cpu / accepted * 1e6, 1) if accepted else 0.0,
        "codes": {str(code): n for code, n in sorted(stats.codes.items())},
        "errors": dict(sorted(stats.errors.items())),
        "p50_ms": ms(percentile(ordered, 50)), "p90_ms": ms(percentile(ordered, 90)),
        "p99_ms": ms(percentile(ordered, 99)), "max_ms": ms(ordered[-1]) if ordered else 0.0,
    }


def parse_args(argv: list[str] | None = None) -> tuple[Options, bool]:
    """``(options, json output)`` from the command line."""
    p = argparse.ArgumentParser(prog="python -m smtpfront.loadgen", description=(__doc__ or "").split("\n")[0])
    p.add_argument("target", help="HOST:PORT")
    p.add_argument("--procs", type=int, default=1, help="load processes, each with its own event loop (1)")
    p.add_argument("--sessions", type=int, default=10, help="concurrent sessions in all (10)")
    p.add_argument("--messages", type=int, default=0, help="messages per session; 0: until --seconds (0)")
    p.add_argument("--seconds", type=float, default=10.0, help="stop starting messages after this long (10)")
    p.add_argument("--size", type=int, default=1024, help="message octets (1024)")
    p.add_argument("--rcpts", type=int, default=1, help="recipients per message (1)")
    p.add_argument("--per-connection", action="store_true", help="one message per connection (connections/s)")
    p.add_argument("--tls", action="store_true", help="STARTTLS (the certificate is not verified)")
    p.add_argument("--auth", metavar="USER:PASS", help="AUTH PLAIN with these credentials")
    p.add_argument("--helo", default="loadgen.example", help="EHLO name (loadgen.example)")
    p.add_argument("--from", dest="sender", default="load@example.org", help="envelope sender")
    p.add_argument("--timeout", type=float, default=30.0, help="longest wait for one reply, seconds (30)")
    p.add_argument("--progress", action="store_true", help="live progress on stderr even when it is not a TTY")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    a = p.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    if not port.isdigit():
        p.error(f"target {a.target!r}: want HOST:PORT")
    if a.seconds <= 0 or a.sessions < 1 or a.procs < 1 or a.size < 1 or a.rcpts < 1 or a.messages < 0:
        p.error("--seconds, --sessions, --procs, --size and --rcpts must be positive, --messages >= 0")
    if a.auth is not None and ":" not in a.auth:
        p.error("--auth wants USER:PASS")
    opts = Options(host=host.strip("[]") or "127.0.0.1", port=int(port), procs=a.procs, sessions=a.sessions,
                   messages=a.messages, seconds=a.seconds, size=a.size, rcpts=a.rcpts,
                   per_connection=a.per_connection, tls=a.tls, auth=a.auth, helo=a.helo, sender=a.sender,
                   timeout=a.timeout, progress=a.progress or sys.stderr.isatty())
    return opts, a.json


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m smtpfront.loadgen``; exits 1 when nothing was accepted."""
    opts, as_json = parse_args(argv)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = opts.sessions * 2 + 64
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    except (ValueError, OSError):
        pass
    try:
        result = run(opts)
    except KeyboardInterrupt:
        return 130
    if as_json:
        print(json.dumps(result, separators=(",", ":")))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0 if result["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
