"""Helpers of the topology rig (``loadtest/topology/run.sh``): the recording client, the count,
HAProxy's server states.

``python topo.py send``   a bounded, rate-paced SMTP client. Every message has a unique token
                          (``X-Topology-Token:`` header, the body, and the Message-ID), is
                          retried like an MTA would (4xx or a lost connection: the same message
                          again, at most ``--attempts`` times, within ``--seconds`` + ``--grace``),
                          and every attempt's outcome is recorded with its time.
``python topo.py count``  waits (bounded) for the consumers to deliver every acknowledged token,
                          then prints the scenario's line: sent, acked, delivered, lost, duplicates.
``python topo.py stat``   HAProxy's server rows (``show stat`` on the admin socket) as JSON.

``smtpfront.loadgen`` is built for speed and counts reply codes only; this client is lock-step
and slow on purpose so that each message's fate can be followed to a Maildir.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- send ---------------------------------------------------------------------------------------


@dataclass
class Msg:
    token: str
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (epoch, "250" | "451" | "error: …")

    @property
    def acked(self) -> bool:
        return any(code == "250" for _, code in self.attempts)


def body_of(token: str, size: int) -> bytes:
    head = (f"From: Topology <load@topology.test>\r\nTo: <sink@topology.test>\r\n"
            f"Subject: topology {token}\r\nMessage-ID: <{token}@topology.test>\r\n"
            f"X-Topology-Token: {token}\r\n\r\n").encode()
    line = f"token {token} " + "lorem ipsum dolor sit amet " * 2
    lines = []
    total = len(head)
    while total < size:
        lines.append(line.encode() + b"\r\n")
        total += len(lines[-1])
    return head + b"".join(lines)


class Session:
    """One SMTP connection, lock-step; every wait bounded by ``timeout``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.carried = 0
        self.stage = ""

    async def reply(self) -> int:
        assert self.reader is not None
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return int(line[:3])

    async def command(self, data: bytes) -> int:
        assert self.writer is not None
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)
        return await self.reply()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        self.carried = 0
        if (code := await self.reply()) != 220:
            raise ConnectionError(f"greeting {code}")
        if (code := await self.command(b"EHLO client.topology.test\r\n")) != 250:
            raise ConnectionError(f"EHLO {code}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def quit(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError, ConnectionError, TimeoutError, ValueError):
                await self.command(b"QUIT\r\n")
        self.close()

    async def send(self, token: str, size: int) -> str:
        """One transaction; the outcome as a reply code, or "error: …" when the connection failed."""
        if self.writer is None:
            self.stage = "connect"
            await self.open()
        self.carried += 1
        self.stage = "envelope"
        for line in (b"MAIL FROM:<load@topology.test>\r\n", b"RCPT TO:<sink@topology.test>\r\n"):
            if (code := await self.command(line)) >= 400:
                await self.command(b"RSET\r\n")
                return str(code)
        self.stage = "data"
        if (code := await self.command(b"DATA\r\n")) != 354:
            await self.command(b"RSET\r\n")  # the envelope stays open after a refused DATA
            return str(code)
        data = body_of(token, size).replace(b"\r\n.", b"\r\n..") + b".\r\n"
        self.stage = "dot"  # from here on a lost reply leaves the outcome unknown
        return str(await self.command(data))


async def send(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = time.time()
    t0 = loop.time()
    stop_new = t0 + args.seconds
    hard_stop = stop_new + args.grace
    total = int(args.rate * args.seconds)
    msgs = [Msg(f"{args.scenario}-{args.run}-{i:06d}") for i in range(total)]
    queue: asyncio.Queue[Msg | None] = asyncio.Queue()
    outstanding = 0

    async def pace() -> None:
        nonlocal outstanding
        for i, msg in enumerate(msgs):
            delay = t0 + i / args.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            outstanding += 1
            queue.put_nowait(msg)

    async def later(msg: Msg) -> None:
        await asyncio.sleep(min(0.5 * 2 ** (len(msg.attempts) - 1), 4.0))  # 0.5 s doubling to 4 s
        queue.put_nowait(msg)

    retries: set[asyncio.Task[None]] = set()

    async def worker() -> None:
        nonlocal outstanding
        session = Session(args.host, args.port, args.timeout)
        try:
            while loop.time() < hard_stop:
                try:
                    msg = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    continue
                if msg is None:
                    return
                try:
                    outcome = await session.send(msg.token, args.size)
                except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                    outcome = f"error: {type(exc).__name__} {str(exc)[:40]} ({session.stage})".replace("  ", " ")
                    session.close()
                msg.attempts.append((time.time(), outcome))
                if outcome.startswith("421"):
                    session.close()
                if outcome == "250" or outcome.startswith("5") or len(msg.attempts) >= args.attempts:
                    outstanding -= 1
                else:
                    task = loop.create_task(later(msg))
                    retries.add(task)
                    task.add_done_callback(retries.discard)
                if session.writer is not None and session.carried >= args.per_connection:
                    await session.quit()
        finally:
            session.close()

    pacer = loop.create_task(pace())
    workers = [loop.create_task(worker()) for _ in range(args.sessions)]
    while loop.time() < hard_stop and not (pacer.done() and outstanding == 0):
        await asyncio.sleep(0.2)
    pacer.cancel()
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.wait(workers, timeout=args.timeout + 2)
    for task in (*workers, *retries):
        task.cancel()
    return {"scenario": args.scenario, "started": started, "finished": time.time(), "rate": args.rate,
            "messages": {m.token: m.attempts for m in msgs if m.attempts}}


# -- count --------------------------------------------------------------------------------------

TOKEN = re.compile(rb"^X-Topology-Token: (\S+)", re.M)


def scan(dirs: list[Path], seen: dict[Path, str]) -> None:
    """Add each new Maildir file's token to ``seen`` (files are read once)."""
    for d in dirs:
        for sub in ("new", "cur"):
            try:
                names = os.listdir(d / sub)
            except FileNotFoundError:
                continue
            for name in names:
                path = d / sub / name
                if path in seen:
                    continue
                try:
                    head = path.read_bytes()[:4096]
                except FileNotFoundError:
                    continue
                if m := TOKEN.search(head):
                    seen[path] = m.group(1).decode()


def redis_client(sentinels: list[str], service: str) -> Any:
    from redis.sentinel import Sentinel

    nodes = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in sentinels)]
    return Sentinel(nodes, socket_timeout=3, sentinel_kwargs={"socket_timeout": 2}).master_for(
        service, socket_timeout=5)


def stream_tokens(client: Any, stream: str, prefix: str) -> collections.Counter[str]:
    """Tokens of the stream's entries that belong to this scenario (the body is read for them)."""
    found: collections.Counter[str] = collections.Counter()
    last = "-"
    while True:
        entries = client.xrange(stream, min=last, max="+", count=2000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            return found
        for _entry_id, fields in entries:
            if m := TOKEN.search(fields.get(b"body", b"")[:4096]):
                token = m.group(1).decode()
                if token.startswith(prefix):
                    found[token] += 1
        last = entries[-1][0].decode()


def group_state(client: Any, stream: str, group: str) -> tuple[int, int]:
    """``(pending, lag)`` of the consumer group (lag -1 when Redis cannot tell)."""
    for info in client.xinfo_groups(stream):
        if info["name"] in (group, group.encode()):
            lag = info.get("lag")
            return int(info["pending"]), -1 if lag is None else int(lag)
    return 0, -1


def count(args: argparse.Namespace) -> int:
    sent = json.loads(Path(args.sent).read_text())
    prefix = f"{sent['scenario']}-"
    messages: dict[str, list[list[Any]]] = sent["messages"]
    acked = {t for t, attempts in messages.items() if any(c == "250" for _, c in attempts)}
    dirs = [Path(d) for d in args.maildir]
    seen: dict[Path, str] = {}
    client = redis_client(args.sentinel, args.service)
    deadline = time.monotonic() + args.wait
    pending, lag = -1, -1
    while True:
        scan(dirs, seen)
        delivered = {t for t in seen.values() if t.startswith(prefix)}
        try:
            pending, lag = group_state(client, args.stream, args.group)
        except Exception as exc:  # Redis moving: look again
            print(f"  (redis: {exc})", file=sys.stderr)
            pending, lag = -1, -1
        if (acked <= delivered and pending == 0 and lag <= 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    try:
        in_stream = stream_tokens(client, args.stream, prefix)
    except Exception as exc:
        print(f"  (redis: {exc})", file=sys.stderr)
        in_stream = collections.Counter()
    copies = collections.Counter(t for t in seen.values() if t.startswith(prefix))
    lost = sorted(acked - delivered)
    dups = {t: n for t, n in copies.items() if n > 1}
    codes: collections.Counter[str] = collections.Counter()
    during: collections.Counter[str] = collections.Counter()
    fault = args.fault_at or 0.0
    last_bad = 0.0
    for attempts in messages.values():
        for at, code in attempts:
            codes["error" if code.startswith("error") else code[0] + "xx"] += 1
            if fault and at >= fault:
                during[code] += 1
                if code != "250":
                    last_bad = max(last_bad, at)
    recover = max(0.0, last_bad - fault) if fault and last_bad else 0.0
    print(f"scenario={sent['scenario']} sent={len(messages)} acked={len(acked)} delivered={len(delivered)} "
          f"lost={len(lost)} duplicates={sum(n - 1 for n in dups.values())} "
          f"attempts={sum(len(a) for a in messages.values())} 250={codes['2xx']} 4xx={codes['4xx']} "
          f"5xx={codes['5xx']} errors={codes['error']} stream={sum(in_stream.values())} "
          f"recover={recover:.1f}s")
    sys.stdout.flush()
    detail = sys.stderr
    print(f"  replies from the fault on: {dict(sorted(during.items()))}", file=detail)
    print(f"  consumer group at the end: pending={pending} lag={lag}; in the stream, not acked: "
          f"{len(set(in_stream) - acked)} (a 4xx or lost reply after the XADD), acked but not in the stream: "
          f"{len(acked - set(in_stream))}", file=detail)
    for token in lost[:20]:
        print(f"  LOST {token}: attempts {messages[token]}, stream entries {in_stream.get(token, 0)}", file=detail)
    for token, n in sorted(dups.items())[:20]:
        why = ("enqueued twice: a retry the front end's dedup did not recognise" if in_stream.get(token, 0) > 1
               else "one entry delivered twice: at-least-once, the consumer's XACK did not land (lost with a "
                    "Redis primary, or the consumer died first) and the entry was delivered again; the Maildir "
                    "handler does not deduplicate")
        where = sorted(f"{path.parent.parent.name}/{path.parent.name}" for path, t in seen.items() if t == token)
        print(f"  DUPLICATE {token}: {n} copies ({', '.join(where)}), {in_stream.get(token, 0)} stream entries: {why}",
              file=detail)
    enqueued_twice = sum(1 for t in dups if in_stream.get(t, 0) > 1)
    if dups:
        print(f"  duplicates: {len(dups) - enqueued_twice} redelivered by a consumer, {enqueued_twice} enqueued "
              "twice", file=detail)
    return 1 if lost else 0


# -- stat ---------------------------------------------------------------------------------------


def show_stat(sock: str) -> dict[str, dict[str, str]]:
    """HAProxy's ``show stat`` rows by "proxy/server" ({} when the socket does not answer)."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(3)
            conn.connect(sock)
            conn.sendall(b"show stat\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    except OSError:
        return {}
    rows = csv.DictReader(data.decode().removeprefix("# ").splitlines())
    return {f"{row['pxname']}/{row['svname']}": row for row in rows}


def stat(args: argparse.Namespace) -> int:
    rows = show_stat(args.socket)
    for name in args.server:
        row = rows.get(f"smtpfront/{name}", {})
        print(f"{name} {row.get('status', '?').replace(' ', '_')} {row.get('last_agt', '?').replace(' ', '_')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="topo.py")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=25)
    s.add_argument("--scenario", required=True)
    s.add_argument("--run", default=str(os.getpid()))
    s.add_argument("--rate", type=float, default=50.0, help="new messages per second")
    s.add_argument("--seconds", type=float, default=20.0, help="how long new messages start")
    s.add_argument("--grace", type=float, default=20.0, help="how much longer retries may go on")
    s.add_argument("--sessions", type=int, default=8)
    s.add_argument("--per-connection", type=int, default=20, help="messages per connection, then QUIT")
    s.add_argument("--attempts", type=int, default=12, help="tries per message")
    s.add_argument("--size", type=int, default=1024)
    s.add_argument("--timeout", type=float, default=15.0, help="longest wait for one reply")
    s.add_argument("--out", required=True)
    c = sub.add_parser("count")
    c.add_argument("--sent", required=True)
    c.add_argument("--maildir", action="append", required=True)
    c.add_argument("--sentinel", action="append", required=True, help="HOST:PORT")
    c.add_argument("--service", default="mymaster")
    c.add_argument("--stream", default="smtpfront:inbound")
    c.add_argument("--group", default="smtpfront")
    c.add_argument("--fault-at", type=float, default=0.0)
    c.add_argument("--wait", type=float, default=60.0)
    st = sub.add_parser("stat")
    st.add_argument("--socket", required=True)
    st.add_argument("server", nargs="+")
    args = p.parse_args(argv)
    if args.command == "send":
        result = asyncio.run(send(args))
        Path(args.out).write_text(json.dumps(result))
        codes = collections.Counter(c for a in result["messages"].values() for _, c in a)
        print(f"sent {len(result['messages'])} messages: {dict(codes)}", file=sys.stderr)
        return 0
    if args.command == "count":
        return count(args)
    return stat(args)


if __name__ == "__main__":
    sys.exit(main())
