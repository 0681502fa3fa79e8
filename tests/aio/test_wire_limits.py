"""Limits on the wire: max_clients, the idle and whole-command deadlines, min_data_rate, pregreet."""

from __future__ import annotations

import contextlib
import time

from smtpfront.config import TimeoutsConfig
from smtpfront.server import SMTPServer

from .conftest import Client, Running, StartServer, send_message


def test_max_clients(start_server: StartServer) -> None:
    server = start_server(max_clients=2)
    first, second = Client(server.port), Client(server.port)
    try:
        first.expect(220)
        second.expect(220)
        with Client(server.port) as third:
            r = third.reply()
            # Refused before any EHLO, so without an enhanced code (RFC 2034).
            assert r.raw == b"421 Too many connections, try again later\r\n"
            assert third.closed()
        assert server.connections() == 2
        first.cmd("QUIT")
        assert first.closed()
        server.wait_connections(1)
        with Client(server.port) as fourth:
            fourth.greet()
            assert send_message(fourth).code == 250
        # The one that stayed is still served.
        assert second.ehlo().code == 250
        assert send_message(second).code == 250
    finally:
        first.close()
        second.close()
    server.wait_for(2)


def test_idle_timeout(start_server: StartServer) -> None:
    server = start_server(socket_timeout=0.5)
    with Client(server.port) as c:
        c.greet()
        started = time.monotonic()
        r = c.reply()
        elapsed = time.monotonic() - started
        assert (r.code, r.enhanced) == (421, "4.4.2")
        assert c.closed()
    assert 0.4 < elapsed < 2.0, elapsed


def test_idle_timeout_before_ehlo(start_server: StartServer) -> None:
    server = start_server(socket_timeout=0.5)
    with Client(server.port) as c:
        c.expect(220)
        started = time.monotonic()
        r = c.reply()
        assert r.code == 421 and "timeout" in r.text
        assert time.monotonic() - started < 2.0
        assert c.closed()


def test_activity_keeps_the_session_alive(start_server: StartServer) -> None:
    server = start_server(socket_timeout=0.5)
    with Client(server.port) as c:
        c.greet()
        for _ in range(5):  # 1.5 s in all, each command well inside the deadline
            time.sleep(0.3)
            assert c.cmd("NOOP").code == 250
        assert send_message(c).code == 250
    server.wait_for(1)


def test_whole_command_deadline(start_server: StartServer) -> None:
    # One octet every 0.2 s is activity, but no command ever completes within 0.5 s.
    server = start_server(socket_timeout=0.5)
    with Client(server.port) as c:
        c.greet()
        started = time.monotonic()
        cut = False
        for octet in b"NOOP and a long, long argument that takes its time\r\n":
            try:
                c.send(bytes([octet]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 1.5:
                break
        r = c.reply()
        assert (r.code, r.enhanced) == (421, "4.4.2"), (r, cut)
        assert c.closed()
        assert time.monotonic() - started < 3.0


def _slow_data(server: SMTPServer) -> None:
    server.with_settings(timeouts=TimeoutsConfig(idle=5.0, data=0.5, min_data_rate=1_000_000))


def test_min_data_rate(start_server: StartServer) -> None:
    server = start_server(setup=_slow_data)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        started = time.monotonic()
        try:
            for _ in range(30):  # 10 octets/s: far below the minimum rate
                c.send(b"x")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.reply()
        assert (r.code, r.enhanced) == (421, "4.4.2")
        assert time.monotonic() - started < 2.5
        assert c.closed()
    assert server.sink.messages == []
    assert server.sink.aborted == 1


def test_fast_data_is_not_cut(start_server: StartServer) -> None:
    server = start_server(setup=_slow_data)
    with Client(server.port) as c:
        c.greet()
        body = b"Subject: fast\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2000  # 2 MB at once
        assert send_message(c, body=body).code == 250
    [message] = server.wait_for(1)
    assert message.body.endswith(body)


def test_early_talker_is_refused(start_server: StartServer) -> None:
    server = start_server(greeting_delay=0.3)
    with Client(server.port) as c:
        c.send(b"EHLO client.test\r\n")  # before the greeting
        data = c.rest()
    # The greeting, then the refusal (no enhanced code: no EHLO was accepted).
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"220 ")
    assert lines[1].startswith(b"554 ") and b"greeting" in lines[1]
    assert lines[2:] == [b""]


def test_flood_before_the_greeting(start_server: StartServer) -> None:
    # More than the receive buffer holds, before the greeting: refused as early talk, not
    # an internal error (uvloop reads right after connect even if the protocol paused).
    server = start_server(greeting_delay=0.3)
    with Client(server.port) as c:
        with contextlib.suppress(OSError):
            c.send(b"NOOP\r\n" * 50000)
        data = c.rest()
    assert data.startswith(b"220 ")
    assert data.split(b"\r\n")[1].startswith(b"554 ")


def test_greeting_delay_honoured(start_server: StartServer) -> None:
    server = start_server(greeting_delay=0.3)
    with Client(server.port) as c:
        started = time.monotonic()
        c.expect(220)
        assert time.monotonic() - started >= 0.25
        c.ehlo()
        assert send_message(c).code == 250
    server.wait_for(1)


def test_too_many_errors(start_server: StartServer) -> None:
    server = start_server(max_errors=3)
    with Client(server.port) as c:
        c.greet()
        for _ in range(2):
            assert c.cmd("BOGUS").code == 500
        r = c.cmd("BOGUS")
        assert r.code == 500
        r = c.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert c.closed()


def test_too_many_recipients(start_server: StartServer) -> None:
    server = start_server(max_recipients=2)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<1@mx.test>").code == 250
        assert c.cmd("RCPT TO:<2@mx.test>").code == 250
        r = c.cmd("RCPT TO:<3@mx.test>")
        assert (r.code, r.enhanced) == (452, "4.5.3")
        assert c.cmd("DATA").code == 354
        c.send(b"x\r\n.\r\n")
        assert c.reply().code == 250
    [message] = server.wait_for(1)
    assert len(message.envelope.recipients) == 2


def test_command_line_too_long(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("NOOP " + "x" * 600)
        assert (r.code, r.enhanced) == (500, "5.5.2")
        assert c.cmd("NOOP").code == 250
