"""Lifecycle of ``smtpfront serve`` under load, with real processes on loopback (GitHub issue 5).

SIGTERM while 50 transactions are mid-DATA (Redis queue), SIGHUP with a new certificate while
clients keep connecting, and ``kill -9`` of a worker under load. Which worker process holds a
socket is read from ``/proc`` (``/proc/net/tcp`` inodes against ``/proc/PID/fd``), so the tests
know when a worker listens or stopped listening and which worker serves a session, without sleeps.

That connections land on both workers is proven by ``test_serve.py``'s
``test_workers_share_the_port_and_drain_on_sigterm`` (Maildir queue); the SIGTERM test below
shows it again for the Redis queue (its 50 messages came from both worker pids).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smtpfront.aio.tls import generate_self_signed

from ..conftest import RedisServer, free_port
from .test_serve import TIMEOUT, Serve

STREAM = "smtpfront:inbound"
GRACE = 10.0  # --graceful-timeout: far above what draining these sessions takes


# -- processes and sockets ----------------------------------------------------------------


class Master(Serve):
    """``smtpfront serve`` with exactly the given arguments (``Serve``'s waits, ``send`` and ``stop``)."""

    def __init__(self, tmp: Path, port: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = tmp / "serve.log"
        self.spool = tmp / "spool"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpfront", "serve", "--metrics-listen", f"127.0.0.1:{free_port()}", *args],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env,
        )


@contextlib.contextmanager
def serving(tmp: Path, port: int, *args: str) -> Iterator[Master]:
    """Start a master, wait until a worker greets; kill it and its workers afterwards."""
    master = Master(tmp, port, *args)
    try:
        master.ready()
        yield master
    finally:
        if master.proc.poll() is None:
            for pid in master.workers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            master.proc.kill()
            master.proc.wait(timeout=TIMEOUT)


@contextlib.contextmanager
def two_workers_on_redis(redis_server: RedisServer, tmp: Path) -> Iterator[tuple[Master, int, set[int]]]:
    """A master with two workers on the Redis queue, both listening: (master, port, worker pids)."""
    port = free_port()
    args = ("--listen", f"127.0.0.1:{port}", "--queue", redis_server.url, "--workers", "2", "--no-tls",
            "--graceful-timeout", str(GRACE), "--log-format", "plain")
    with serving(tmp, port, *args) as master:
        workers = master.wait_workers(2)
        wait_until(lambda: listening(workers, port) == workers, "both workers listen", master)
        yield master, port, workers


def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of each IPv4 TCP socket; state 0A is LISTEN."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        rows.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3], int(f[9])))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def listening_sockets(pids: set[int], port: int) -> set[int]:
    """The inodes of the listening sockets on ``port`` that ``pids`` hold."""
    listeners = {inode for local, _, state, inode in _tcp_table() if local == port and state == "0A"}
    return listeners & {inode for pid in pids for inode in _socket_inodes(pid)}


def listening(pids: set[int], port: int) -> set[int]:
    """Those of ``pids`` that hold a listening socket on ``port``."""
    return {pid for pid in pids if listening_sockets({pid}, port)}


def serving_pid(pids: set[int], port: int, client: socket.socket | None) -> int:
    """Which of ``pids`` accepted the connection of ``client`` (to ``port``)."""
    assert client is not None
    mine = client.getsockname()[1]
    inodes = {inode for local, remote, _, inode in _tcp_table() if local == port and remote == mine}
    (pid,) = [pid for pid in pids if _socket_inodes(pid) & inodes]
    return pid


def wait_until(condition: Callable[[], bool], what: str, master: Master, timeout: float = TIMEOUT) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails with the log after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s\n{master.log.read_text()}")
        time.sleep(0.01)
    return time.monotonic() - start


def stream_entries(server: RedisServer) -> dict[str, tuple[dict[str, object], bytes]]:
    """The queue: entry id → (envelope, body)."""
    client = redis.Redis(port=server.port)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(STREAM))
    finally:
        client.close()
    return {entry.decode(): (json.loads(fields[b"envelope"]), fields[b"body"]) for entry, fields in entries}


def worker_pid(envelope: dict[str, object]) -> int:
    """The pid of the worker that took a message: its transaction id is ``<pid hex><7 hex>.<n>``."""
    return int(str(envelope["id"]).split(".")[0][:-7], 16)


def assert_stored(stored: bytes, body: bytes) -> None:
    """``stored`` is exactly one ``Received:`` field (folded or not), then ``body`` byte for byte."""
    assert stored.endswith(body), stored[-200:]
    trace = stored[: len(stored) - len(body)]
    assert trace.startswith(b"Received: ") and trace.endswith(b"\r\n"), trace
    assert all(line[:1] in (b" ", b"\t") for line in trace.split(b"\r\n")[1:-1]), trace


def queue_id(reply: bytes) -> str:
    return reply.decode().rsplit(" ", 1)[1]  # "2.0.0 Ok: queued as <id>"


# -- SIGTERM while 50 transactions are mid-DATA ---------------------------------------------


@dataclass
class Outcome:
    body: bytes
    code: int | None = None
    reply: bytes = b""
    after: int | None = None  # the reply after the 250: the draining worker's 421
    error: str | None = None


def _body(i: int) -> bytes:
    lines = [b"Subject: drain %d" % i, b""]
    lines += [b"line %04d of message %d: %s" % (n, i, b"x" * 60) for n in range(100)]
    lines += [b".a line that begins with a dot", b"..and one with two", b"end of %d" % i]
    return b"\r\n".join(lines) + b"\r\n"


def _mid_data_client(port: int, outcome: Outcome, mid_data: threading.Barrier, go: threading.Event) -> None:
    """Open a transaction, send half the body, wait for SIGTERM to land, send the rest."""
    wire = outcome.body.replace(b"\r\n.", b"\r\n..") + b".\r\n"  # dot-stuffed, then the end
    half = len(wire) // 2
    smtp: smtplib.SMTP | None = None
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
        smtp.ehlo("client.test")
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.net")
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(wire[:half])
        mid_data.wait(TIMEOUT)
        if not go.wait(TIMEOUT):
            raise TimeoutError("never told to finish")
        smtp.send(wire[half:])
        outcome.code, outcome.reply = smtp.getreply()
        if outcome.code == 250:
            outcome.after = smtp.getreply()[0]
    except (OSError, smtplib.SMTPException, AssertionError, threading.BrokenBarrierError) as exc:
        outcome.error = repr(exc)
        mid_data.abort()  # the test fails at once instead of waiting for the others
    finally:
        if smtp is not None:
            smtp.close()


def test_sigterm_during_50_transactions_loses_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    with two_workers_on_redis(redis_server, tmp_path) as (master, port, workers):
        idle = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
        idle.ehlo("idle.test")
        outcomes = [Outcome(_body(i)) for i in range(50)]
        mid_data, go = threading.Barrier(len(outcomes) + 1), threading.Event()
        with ThreadPoolExecutor(len(outcomes)) as pool:
            try:
                for outcome in outcomes:
                    pool.submit(_mid_data_client, port, outcome, mid_data, go)
                try:
                    mid_data.wait(TIMEOUT)  # all 50 are inside DATA with half a body sent
                except threading.BrokenBarrierError:
                    errors = [o.error for o in outcomes if o.error]
                    raise AssertionError(f"{errors}\n{master.log.read_text()}") from None
                master.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                # Both workers got it: the port closed (the master let go of it too) while the 50
                # bodies are incomplete.
                wait_until(lambda: not listening(workers | {master.proc.pid}, port), "the port closes", master)
                code, text = idle.getreply()
                assert (code, text[:5]) == (421, b"4.3.2"), (code, text)  # the idle session is told at once
            finally:
                go.set()
                idle.close()
        master.proc.wait(timeout=GRACE + 5)
        took = time.monotonic() - signalled
    assert master.proc.returncode == 0, master.log.read_text()
    assert took < GRACE, f"the drain took {took:.1f} s"  # nobody waited for the graceful timeout

    assert [o.error for o in outcomes if o.error] == []  # no reset, no connection closed without a reply
    assert [(o.code, o.reply) for o in outcomes if o.code != 250] == []  # the drain let every one finish
    assert {o.after for o in outcomes} == {421}  # then each session was closed with 421
    stream = stream_entries(redis_server)
    ids = [queue_id(o.reply) for o in outcomes]
    assert sorted(ids) == sorted(stream)  # every acknowledged message is queued, once
    for outcome, entry in zip(outcomes, ids, strict=True):
        assert_stored(stream[entry][1], outcome.body)
    assert {worker_pid(envelope) for envelope, _ in stream.values()} == workers  # both workers took some


# -- SIGHUP with a new certificate ------------------------------------------------------------


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(Path(pem).read_bytes()).public_bytes(serialization.Encoding.DER)


def _install(pair: tuple[str, str], cert: Path, key: Path) -> None:
    """Replace the configured files the way deploy tools do: write aside, rename over."""
    for source, target in zip(pair, (cert, key), strict=True):
        aside = target.with_suffix(".new")
        aside.write_bytes(Path(source).read_bytes())
        os.replace(aside, target)


@dataclass
class Knocker:
    """Connects again and again while workers roll: every attempt must get a 220 greeting."""

    port: int
    context: ssl.SSLContext | None = None  # implicit TLS when set
    greeted: int = 0
    failures: list[str] = field(default_factory=list)
    certificates: set[bytes] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.done.is_set():
            local = None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as raw:
                    local = raw.getsockname()[1]
                    conn = raw
                    if self.context is not None:
                        conn = self.context.wrap_socket(raw, server_hostname="127.0.0.1")
                        self.certificates.add(conn.getpeercert(binary_form=True) or b"")
                    greeting = conn.recv(64)
                    if not greeting.startswith(b"220"):
                        self.failures.append(f"from port {local}: {greeting!r}")
                    else:
                        self.greeted += 1
            except OSError as exc:
                self.failures.append(f"from port {local}: {exc!r}")
            time.sleep(0.005)


def _begin(smtp: smtplib.SMTP) -> bytes:
    """EHLO, MAIL, RCPT on a TLS session; returns the server certificate it saw."""
    smtp.ehlo("client.test")
    assert smtp.mail("a@example.org")[0] == 250 and smtp.rcpt("b@example.net")[0] == 250
    assert isinstance(smtp.sock, ssl.SSLSocket)
    return smtp.sock.getpeercert(binary_form=True) or b""


def _starttls(port: int, context: ssl.SSLContext) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    smtp.ehlo("client.test")
    assert smtp.starttls(context=context)[0] == 220
    return smtp


def test_sighup_rolls_in_a_new_certificate(tmp_path: Path) -> None:
    a = generate_self_signed(str(tmp_path / "a"), "a.mx.test")
    b = generate_self_signed(str(tmp_path / "b"), "b.mx.test")
    cert_a, cert_b = _der(a[0]), _der(b[0])
    assert x509.load_der_x509_certificate(cert_a).serial_number != x509.load_der_x509_certificate(cert_b).serial_number
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _install(a, cert, key)
    starttls, implicit = free_port(), free_port()
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"""
workers = 2
queue = "maildir:{tmp_path / 'spool'}"
hostname = "mx.test"

[[listeners]]
address = "127.0.0.1:{starttls}"
tls = "starttls"

[[listeners]]
address = "127.0.0.1:{implicit}"
tls = "implicit"

[tls]
cert_file = "{cert}"
key_file = "{key}"

[supervisor]
graceful_timeout = {GRACE}

[logging]
format = "plain"
""")
    context = ssl.create_default_context(cafile=a[0])  # verifies the name too: 127.0.0.1 is in both
    context.load_verify_locations(cafile=b[0])
    with serving(tmp_path, starttls, "--config", str(config)) as master:
        ports = (starttls, implicit)
        old = master.wait_workers(2)
        wait_until(lambda: all(listening(old, port) == old for port in ports), "the first generation listens",
                   master)
        sockets = {port: listening_sockets(old, port) for port in ports}
        assert [len(s) for s in sockets.values()] == [2, 2]  # one per worker: the kernel spreads over them
        # Two sessions inside a transaction on the old generation, one per kind of TLS.
        before = [_starttls(starttls, context), smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=TIMEOUT,
                                                                context=context)]
        try:
            assert [_begin(smtp) for smtp in before] == [cert_a, cert_a]
            _install(b, cert, key)
            knockers = [Knocker(starttls), Knocker(implicit, context)]
            threads = [threading.Thread(target=k.run) for k in knockers]
            for thread in threads:
                thread.start()
            try:
                time.sleep(0.2)  # knocking before the roll, too
                master.proc.send_signal(signal.SIGHUP)
                new = master.wait_workers(2, exclude=old)
                wait_until(lambda: all(listening(new, port) == new and not listening(old, port) for port in ports),
                           "the new generation took over the ports", master)
                # The new generation serves the very sockets the old one did: none was closed, so no
                # connection waiting in an accept queue was reset.
                assert {port: listening_sockets(new, port) for port in ports} == sockets
                time.sleep(0.2)  # knocking after the roll, too
            finally:
                for k in knockers:
                    k.done.set()
                for thread in threads:
                    thread.join(TIMEOUT)
            assert [k.failures for k in knockers] == [[], []]  # not one connection refused during the roll
            assert all(k.greeted >= 10 for k in knockers), [k.greeted for k in knockers]
            assert knockers[1].certificates == {cert_a, cert_b}
            # New handshakes present B, on both kinds of listener.
            for _ in range(4):
                with _starttls(starttls, context) as smtp:
                    assert _begin(smtp) == cert_b
                with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=TIMEOUT, context=context) as smtp:
                    assert _begin(smtp) == cert_b
            # The sessions opened before the roll are still on the old workers and finish their message.
            for smtp, port in zip(before, ports, strict=True):
                assert serving_pid(old | new, port, smtp.sock) in old
            for n, smtp in enumerate(before):
                code, reply = smtp.data(b"Subject: before the roll %d\r\n\r\nstill delivered\r\n" % n)
                assert code == 250, reply
                assert smtp.getreply()[0] == 421  # then the draining worker closes the session
        finally:
            for smtp in before:
                smtp.close()
        wait_until(lambda: not master.workers() & old, "the old generation exits", master)
        assert master.stop() == 0
    delivered = b"".join(path.read_bytes() for path in (tmp_path / "spool" / "new").iterdir())
    assert b"Subject: before the roll 0" in delivered and b"Subject: before the roll 1" in delivered


# -- kill -9 of a worker under load --------------------------------------------------------------


@dataclass
class Sender:
    """One client session sending message after message; reconnects when its worker dies."""

    port: int
    smtp: smtplib.SMTP
    worker: int  # the worker serving the first session
    stop: threading.Event
    acknowledged: list[tuple[float, str]] = field(default_factory=list)  # (when sent, queue id)
    other: list[tuple[int, bytes]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (when it failed, what)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                self.smtp.mail("a@example.org")
                self.smtp.rcpt("b@example.net")
                code, reply = self.smtp.data(b"Subject: load %d\r\n\r\nmessage %d of %d\r\n" % (n, n, id(self)))
            except (OSError, smtplib.SMTPException) as exc:
                self.errors.append((time.monotonic(), repr(exc)))
                self.smtp.close()
                with contextlib.suppress(OSError, smtplib.SMTPException):  # if not, the next pass tries again
                    self.smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=TIMEOUT)
                    self.smtp.ehlo("client.test")
                time.sleep(0.01)
                continue
            if code == 250:
                self.acknowledged.append((sent, queue_id(reply)))
            else:
                self.other.append((code, reply))
        self.smtp.close()


def _sessions_on_both(port: int, workers: set[int], each: int) -> list[tuple[smtplib.SMTP, int]]:
    """Open sessions until ``each`` of them runs on every worker (the kernel's choice, by hash)."""
    sessions: list[tuple[smtplib.SMTP, int]] = []
    for _ in range(20 * each):
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
        smtp.ehlo("client.test")
        pid = serving_pid(workers, port, smtp.sock)
        if sum(p == pid for _, p in sessions) < each:
            sessions.append((smtp, pid))
        else:
            smtp.quit()
        if len(sessions) == each * len(workers):
            return sessions
    raise AssertionError(f"connections did not reach every worker: {[p for _, p in sessions]}")


def test_a_worker_killed_under_load_costs_only_its_own_sessions(redis_server: RedisServer, tmp_path: Path) -> None:
    with two_workers_on_redis(redis_server, tmp_path) as (master, port, workers):
        sockets = listening_sockets(workers, port)
        stop = threading.Event()
        senders = [Sender(port, smtp, pid, stop) for smtp, pid in _sessions_on_both(port, workers, 3)]
        victim = min(workers)
        (survivor,) = workers - {victim}
        threads = [threading.Thread(target=s.run) for s in senders]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)  # load running
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            respawn = wait_until(lambda: bool(master.workers() - workers), "a replacement worker", master)
            (replacement,) = master.workers() - workers
            wait_until(lambda: listening({replacement}, port) == {replacement}, "the replacement listens", master)
            # on the victim's socket, which the master kept: connections queued on it were not reset
            assert listening_sockets({survivor, replacement}, port) == sockets
            for smtp, _ in _sessions_on_both(port, {survivor, replacement}, 1):  # both serve
                with smtp:
                    assert smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: after\r\n\r\nx\r\n") == {}
            time.sleep(0.5)  # load still running
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT)
        assert respawn < 1.0, f"the replacement took {respawn:.2f} s"
        assert master.stop() == 0
    assert "killed by signal 9" in master.log.read_text()
    assert [s.other for s in senders] == [[]] * len(senders)  # no 4xx or 5xx, before or after the kill
    lucky = [s for s in senders if s.worker == survivor]
    assert [s.errors for s in lucky] == [[]] * len(lucky)  # the other worker's sessions did not notice
    assert all(any(sent > killed + respawn for sent, _ in s.acknowledged) for s in lucky)  # and kept going
    unlucky = [s for s in senders if s.worker == victim]
    assert all(any(sent < killed for sent, _ in s.acknowledged) for s in unlucky)  # served until the kill,
    assert all(s.errors and s.errors[0][0] > killed for s in unlucky)  # cut off by it,
    assert all(any(sent > killed + respawn for sent, _ in s.acknowledged) for s in unlucky)  # and reconnected
    stream = stream_entries(redis_server)
    acknowledged = [entry for s in senders for _, entry in s.acknowledged]
    assert acknowledged and set(acknowledged) <= set(stream)  # every 250 is in the queue
    assert len(set(acknowledged)) == len(acknowledged)
    assert {worker_pid(envelope) for envelope, _ in stream.values()} == {victim, survivor, replacement}


# -- the master keeps each slot's sockets, and only while the slot lives ---------------------------


def test_listening_sockets_follow_the_worker_slots(tmp_path: Path) -> None:
    port = free_port()
    args = ("--listen", f"127.0.0.1:{port}", "--queue", f"maildir:{tmp_path / 'spool'}", "--no-tls",
            "--workers", "2", "--graceful-timeout", str(GRACE), "--log-format", "plain")
    with serving(tmp_path, port, *args) as master:

        def settled(count: int, gone: frozenset[int] = frozenset()) -> set[int]:
            """Once ``count`` workers listen and ``gone`` have exited: the sockets they listen on."""
            wait_until(lambda: len(listening(master.workers(), port)) == count and not master.workers() & gone,
                       f"{count} workers listening", master)
            workers = master.workers()
            held = listening_sockets(workers, port)
            # Nothing the master holds is left without a worker to accept on it (that would hang clients).
            assert listening_sockets({master.proc.pid}, port) <= held
            master.send(4)
            return held

        first = master.wait_workers(2)
        sockets = settled(2)
        master.proc.send_signal(signal.SIGHUP)
        master.proc.send_signal(signal.SIGHUP)  # two reloads at once
        assert settled(2, gone=frozenset(first)) == sockets
        master.proc.send_signal(signal.SIGTTOU)  # one worker fewer: its slot's socket goes
        fewer = settled(1)
        assert len(fewer) == 1 and fewer < sockets
        master.proc.send_signal(signal.SIGTTIN)  # one more: a new slot, a new socket
        more = settled(2)
        assert fewer < more and len(more) == 2
        assert master.stop() == 0


@pytest.mark.parametrize("backoff", [0.1, 2.5])
def test_the_respawn_backoff_is_the_configured_one(tmp_path: Path, backoff: float) -> None:
    """supervisor.respawn_backoff is what the master waits before replacing a worker that died
    young (here: killed right after it started), doubling up to respawn_backoff_max."""
    port = free_port()
    env = {**os.environ, "SMTPFRONT_SUPERVISOR__RESPAWN_BACKOFF": str(backoff),
           "SMTPFRONT_SUPERVISOR__RESPAWN_BACKOFF_MAX": str(backoff * 2)}
    master = Master(tmp_path, port, "--listen", f"127.0.0.1:{port}", "--workers", "1", "--queue", "null:",
                    "--no-tls", env=env)
    try:
        master.ready()
        gaps = []
        for _ in range(2):
            [old] = master.wait_workers(1)
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            master.wait_workers(1, exclude={old}, timeout=TIMEOUT)
            gaps.append(time.monotonic() - killed)
        # The first wait is the backoff, the second twice it (the worker died young again).
        assert backoff <= gaps[0] < backoff + 3, gaps
        assert 2 * backoff <= gaps[1] < 2 * backoff + 3, gaps
    finally:
        for pid in master.workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        master.proc.kill()
        master.proc.wait(timeout=TIMEOUT)
