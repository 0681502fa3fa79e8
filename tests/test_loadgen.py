"""The load generator against a real smtpfront server on loopback (a uvloop thread in this process).

Most runs call :func:`smtpfront.loadgen.run` in-process; the ``--json``, ``--procs 2`` and text
report runs go through ``python -m smtpfront.loadgen`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from smtpfront.aio.tls import generate_self_signed
from smtpfront.core.events import SaslCredentials
from smtpfront.hooks import Hooks, IncomingMessage, Reply, Session
from smtpfront.loadgen import Options, make_body, percentile, run
from smtpfront.server import SMTPServer
from smtpfront.sink.memory import MemorySink
from smtpfront.sink.null import NullSink

ROOT = Path(__file__).resolve().parent.parent


class Served:
    """A started SMTPServer on its own loop thread."""

    def __init__(self, server: SMTPServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server, self.loop, self.port = server, loop, server.port
        self.connects = 0
        server.on("connect", self._connected)

    def _connected(self, *_: object) -> None:
        self.connects += 1


@contextlib.contextmanager
def serve(hooks: Hooks | None = None, sink: Any = None, **options: Any) -> Iterator[Served]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    options.setdefault("tls", False)

    async def make() -> SMTPServer:
        server = SMTPServer(hooks, host="127.0.0.1", port=0, sink=sink if sink is not None else NullSink(),
                            name="mx.test", log_sessions=False, auth_failure_delay=0, **options)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(make(), loop).result(10)
    try:
        yield Served(server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(1.0), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def cli(port: int, *args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "smtpfront.loadgen", f"127.0.0.1:{port}", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    return done.returncode, done.stdout


def check_report(report: dict[str, Any], accepted: int) -> None:
    """Internal consistency of a report whose server accepted ``accepted`` messages."""
    assert report["accepted"] == accepted > 0
    assert report["codes"] == {"250": accepted}
    assert report["transactions"] == accepted
    assert report["errors"] == {} and report["connect_errors"] == 0
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert accepted / report["msgs_per_s"] == pytest.approx(report["seconds"], rel=0.002, abs=0.001)
    assert report["mb_per_s"] == pytest.approx(report["msgs_per_s"] * report["size"] / 1e6, abs=0.01)


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [30, 80, 100, 233, 234, 235, 1024, 4097, 102400])
def test_body_is_exactly_size_dot_stuffed_text(size: int) -> None:
    wire, octets = make_body(size)
    assert octets == size and wire.endswith(b"\r\n.\r\n")
    message = wire[:-3].replace(b"\r\n..", b"\r\n.")
    assert len(message) == size
    lines = message[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    assert b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)  # no bare CR or LF
    stuffed = wire[:-3].split(b"\r\n")
    assert all(line == b"" or not line.startswith(b".") or line.startswith(b"..") for line in stuffed)


def test_body_has_dot_lines_to_stuff() -> None:
    wire, _ = make_body(102400)
    assert b"\r\n.." in wire and b"\r\n.\r\n" not in wire[:-5]


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([], 50) == 0.0 and percentile([7.0], 99) == 7.0


# -- against a server ---------------------------------------------------------------------------


def test_counts_match_what_the_server_accepted() -> None:
    sink = NullSink()
    with serve(sink=sink) as served:
        report = run(Options(port=served.port, sessions=4, seconds=1.0))
    check_report(report, sink.messages)
    assert report["connections"] == 4 == served.connects


def test_messages_per_session_bound_the_run_and_bodies_arrive_unstuffed() -> None:
    sink = MemorySink()
    with serve(sink=sink) as served:
        report = run(Options(port=served.port, sessions=3, messages=7, seconds=30, size=2000, rcpts=3))
    check_report(report, 21)
    assert len(sink.messages) == 21 and report["connections"] == 3
    message, _ = make_body(2000)
    for stored in sink.messages:
        assert stored.body[len(stored.envelope.trace):] == message[:-3].replace(b"\r\n..", b"\r\n.")
        assert len(stored.envelope.recipients) == 3


def test_per_connection_opens_one_connection_per_message() -> None:
    sink = NullSink()
    with serve(sink=sink) as served:
        report = run(Options(port=served.port, sessions=2, messages=5, seconds=30, per_connection=True))
    check_report(report, 10)
    assert report["connections"] == 10 == served.connects == sink.messages


def test_starttls_with_a_throwaway_certificate(tmp_path: Path) -> None:
    cert, key = generate_self_signed(str(tmp_path), "mx.test")
    sink = MemorySink()
    with serve(sink=sink, tls=True, cert_file=cert, key_file=key) as served:
        report = run(Options(port=served.port, sessions=2, messages=3, seconds=30, tls=True))
    check_report(report, 6)
    assert all(stored.envelope.tls for stored in sink.messages)


class _Policy(Hooks):
    """Accepts user u / password p; refuses every other message with 451 after the body."""

    def __init__(self) -> None:
        self.seen = 0

    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool:
        return (credentials.username, credentials.password) == ("u", "p")

    async def on_data(self, session: Session, message: IncomingMessage) -> Reply | None:
        await message.read()
        self.seen += 1
        return Reply(451, "4.3.0", "try later") if self.seen % 2 == 0 else None


def test_auth_plain_and_refusals_are_counted() -> None:
    sink = NullSink()
    with serve(_Policy(), sink=sink, auth_methods=["PLAIN"], allow_insecure_auth=True) as served:
        good = run(Options(port=served.port, sessions=2, messages=10, seconds=30, auth="u:p"))
        bad = run(Options(port=served.port, sessions=1, seconds=0.3, auth="u:wrong"))
    assert good["codes"] == {"250": 10, "451": 10} and good["accepted"] == 10 == sink.messages
    assert len(good["codes"]) == 2 and good["p99_ms"] > 0
    assert bad["accepted"] == 0 and set(bad["errors"]) == {"AUTH 535"}


def test_refused_recipients_count_the_refusal_not_a_message() -> None:
    class NoRcpt(Hooks):
        async def on_rcpt_to(self, session: Session, address: Any, params: Any) -> Reply:
            return Reply(550, "5.1.1", "no such user")

    with serve(NoRcpt()) as served:
        report = run(Options(port=served.port, sessions=1, messages=5, seconds=30))
    assert report["codes"] == {"550": 5} and report["accepted"] == 0 and report["p50_ms"] == 0.0


def test_connect_errors_are_counted_and_bounded() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        report = run(Options(port=port, sessions=2, seconds=0.3))
    assert report["accepted"] == 0 and report["connect_errors"] >= 2 == report["sessions"]
    assert report["connect_errors"] == sum(report["errors"].values())


def test_a_silent_server_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        held: list[socket.socket] = []

        def greet() -> None:  # 220, then silence
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = listener.accept()
                    conn.sendall(b"220 mute.test ESMTP\r\n")
                    held.append(conn)

        threading.Thread(target=greet, daemon=True).start()
        started = time.monotonic()
        report = run(Options(port=listener.getsockname()[1], sessions=1, seconds=0.2, timeout=1))
        for conn in held:
            conn.close()
    assert report["errors"] == {"timeout in setup": 1} and report["accepted"] == 0
    assert time.monotonic() - started < 5


def test_cli_json_with_two_processes() -> None:
    sink = NullSink()
    with serve(sink=sink) as served:
        code, out = cli(served.port, "--procs", "2", "--sessions", "4", "--seconds", "1", "--json")
    assert code == 0 and len(out.strip().splitlines()) == 1
    report = json.loads(out)
    check_report(report, sink.messages)
    assert report["procs"] == 2 and report["connections"] == 4 and report["cpu_s"] > 0


def test_cli_text_report_and_exit_status() -> None:
    with serve() as served:
        code, out = cli(served.port, "--sessions", "1", "--messages", "3", "--per-connection")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert code == 0 and lines["accepted"] == "3" and lines["connections"] == "3"
    assert lines["codes"] == "{'250': 3}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        code, _ = cli(probe.getsockname()[1], "--seconds", "0.2", "--sessions", "1")
    assert code == 1


# -- loadtest/compare.py: its pure parts ------------------------------------------------------


def _compare() -> Any:
    spec = importlib.util.spec_from_file_location("loadtest_compare", ROOT / "loadtest" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


compare = _compare()


@pytest.mark.parametrize(("output", "count"), [
    (b"", 0), (b"1\r2\r3\r", 3), (b"1\r2\r3\r4\r\n", 4), (b"9\r10\r1", 10), (b"\r\n", 0), (b"41\r42", 41),
])
def test_smtp_source_counter_is_the_last_complete_number(output: bytes, count: int) -> None:
    assert compare.parse_counter(output) == count


def test_smtp_source_flags() -> None:
    kept = compare.smtp_source_argv(compare.Case(1024, 10, True), 2525, messages=500)
    assert kept[0] == "smtp-source" and kept[-1] == "127.0.0.1:2525"
    flags = {kept[i]: kept[i + 1] for i in range(len(kept) - 1) if kept[i].startswith("-")}
    assert flags["-s"] == "10" and flags["-m"] == "500" and flags["-l"] == "1024" and "-c" in kept and "-d" in kept
    assert "-d" not in compare.smtp_source_argv(compare.Case(1024, 10, False), 2525)


def test_rate_and_ratio() -> None:
    assert compare.rate((10.0, 100), (12.0, 5100)) == 2500.0
    assert compare.rate((1.0, 5), (1.0, 9)) == 0.0
    assert compare.ratio(20000.0, 5000.0) == "4.00x" and compare.ratio(1000.0, 4000.0) == "0.25x"
    assert compare.ratio(None, 5.0) == "-" and compare.ratio(5.0, 0.0) == "-"


def test_matrix_sizes() -> None:
    assert len(compare.matrix(True)) == 2 and len(compare.matrix(False)) == 8
    assert {c.label for c in compare.matrix(True)} == {"1 KB, 10, many", "1 KB, 10, one per conn"}


def test_table_has_a_row_per_case_and_server_with_ratios_to_smtpfront() -> None:
    kept, once = compare.Case(1024, 10, True), compare.Case(102400, 100, False)
    results = [
        compare.Result(kept, "smtpfront-null", 20000.0, 20.48, 1.234, 41.0),
        compare.Result(kept, "nodemailer", 10000.0, 10.24, None, 60.5),
        compare.Result(once, "smtpfront-null", 3000.0, 307.2, 9.0, 44.0),
        compare.Result(once, "aiosmtpd", 0.0, 0.0, None, 0.0, note="failed: no greeting"),
    ]
    table = compare.build_table(results).splitlines()
    assert table[0].startswith("| case") and "smtpfront-null ÷ server" in table[0] and "÷ nodemailer" in table[0]
    assert table[1].count("|") == table[0].count("|") and len(table) == 2 + len(results)
    assert table[2] == "| 1 KB, 10, many | smtpfront-null | 20,000 | 20.5 | - | 1.23 | 41.0 | 2.00x | 1.00x |"
    assert table[3] == "| 1 KB, 10, many | nodemailer | 10,000 | 10.2 | - | - | 60.5 | 1.00x | 2.00x |"
    assert table[4].startswith("| 100 KB, 100, one per conn | smtpfront-null | 3,000 | 307.2 |")
    assert table[5].endswith("| aiosmtpd (failed: no greeting) | 0 | 0.0 | - | - | 0.0 | - | - |")
