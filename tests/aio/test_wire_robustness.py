"""Robustness on the wire: resets, smuggling, sink failures, crashes, graceful close."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from smtpfront.core.events import Address, MailParams
from smtpfront.hooks import Hooks, Session

from .conftest import Client, Running, StartServer, send_message


def _wait(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_reset_mid_data(server: Running) -> None:
    c = Client(server.port)
    c.greet()
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@mx.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: cut\r\n\r\n" + b"partial line\r\n" * 1000 + b"no end")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()  # RST, mid-body
    server.wait_connections(0)
    _wait(lambda: server.sink.aborted == 1)
    with Client(server.port) as again:
        again.greet()
        assert send_message(again).code == 250
    [message] = server.wait_for(1)
    assert b"partial line" not in message.body
    assert server.sink.aborted == 1


def test_eof_mid_data(server: Running) -> None:
    c = Client(server.port)
    c.greet()
    c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert [c.reply().code for _ in range(3)] == [250, 250, 354]
    c.send(b"Subject: half\r\n\r\nhalf a message")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.rest() == b""
    c.close()
    server.wait_connections(0)
    _wait(lambda: server.sink.aborted == 1)
    assert server.sink.messages == []


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\rX"]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=[s.decode().encode("unicode_escape").decode() for s in SMUGGLING])
def test_smuggling_sequences_do_not_end_data(server: Running, fake_end: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\nSubject: forged\r\n\r\nx\r\n"
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: real\r\n\r\nhello" + fake_end + smuggled + b".\r\n")
        r = c.reply()
        assert (r.code, r.enhanced) == (550, "5.5.2"), r
        # Exactly one reply: the smuggled MAIL/RCPT/DATA were body, never commands.
        assert c.cmd("NOOP").raw == b"250 2.0.0 OK\r\n"
        assert send_message(c).code == 250  # the session goes on
    messages = server.wait_for(1)
    assert len(messages) == 1
    assert all(b"forged" not in m.body and m.envelope.recipients[0].address.local_part != "victim"
               for m in messages)


def test_bare_lf_accepted_policy_keeps_one_message(start_server: StartServer) -> None:
    # Under "accept" a bare LF is content; still only CRLF.CRLF ends the message.
    server = start_server(bare_line_endings="accept")
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"hello\n.\nMAIL FROM:<evil@attacker.test>\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("NOOP").raw == b"250 2.0.0 OK\r\n"
    [message] = server.wait_for(1)
    assert message.body.endswith(b"hello\n.\nMAIL FROM:<evil@attacker.test>\r\n")


def test_sink_failure_then_success(server: Running) -> None:
    server.sink.fail_next = 1
    with Client(server.port) as c:
        c.greet()
        r = send_message(c)
        assert (r.code, r.enhanced) == (451, "4.3.0")
        r = send_message(c)
        assert (r.code, r.enhanced) == (250, "2.0.0")
    [message] = server.wait_for(1)
    assert server.sink.aborted == 1
    assert message.body.endswith(b"hello\r\n")


class Buggy(Hooks):
    async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> None:
        if address.local_part == "crash":
            raise RuntimeError("a bug in a hook")


def test_hook_bug_closes_only_that_connection(start_server: StartServer) -> None:
    server = start_server(Buggy())
    server.expect_errors = True  # the traceback is logged on purpose
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("MAIL FROM:<crash@client.test>")
        assert (r.code, r.enhanced) == (421, "4.3.0")
        assert c.closed()
    with Client(server.port) as c:
        c.greet()
        assert send_message(c).code == 250
    server.wait_for(1)


def test_graceful_close(start_server: StartServer) -> None:
    server = start_server(close_timeout=5.0)
    busy, idle = Client(server.port), Client(server.port)
    try:
        busy.greet()
        idle.greet()
        assert busy.cmd("MAIL FROM:<a@client.test>").code == 250
        assert busy.cmd("RCPT TO:<b@mx.test>").code == 250
        closing = server.submit(server.server.close(5.0))
        server.stopped = True
        r = idle.reply()
        assert (r.code, r.enhanced) == (421, "4.3.2")
        assert idle.closed()
        # The transaction in progress may finish.
        assert busy.cmd("DATA").code == 354
        busy.send(b"Subject: last\r\n\r\nfinished\r\n.\r\n")
        done = busy.reply()
        assert (done.code, done.enhanced) == (250, "2.0.0")
        bye = busy.reply()
        assert (bye.code, bye.enhanced) == (421, "4.3.2")
        assert busy.closed()
        closing.result(10)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        busy.close()
        idle.close()
    assert [m.body.endswith(b"finished\r\n") for m in server.sink.messages] == [True]
    server.loop.call_soon_threadsafe(server.loop.stop)
    server.thread.join(10)


def test_graceful_close_timeout_aborts_stragglers(start_server: StartServer) -> None:
    server = start_server()
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        started = time.monotonic()
        server.stop(timeout=0.3)
        r = c.reply()
        assert (r.code, r.enhanced) == (421, "4.3.2")
        assert c.closed()
        assert time.monotonic() - started < 3.0


def test_an_ended_session_is_freed_without_the_cycle_collector(server: Running) -> None:
    """A session that ended with nothing left to run leaves no reference cycle behind: the
    protocol and its parts are freed by reference counting, not by a later collection (which
    cost ~5 % of a one-message connection's CPU)."""
    import gc

    from smtpfront.aio.protocol import SMTPProtocol
    from smtpfront.aio.transaction import Transaction

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, (SMTPProtocol, Transaction)))

    gc.collect()
    gc.disable()
    try:
        before = alive()
        for _ in range(20):
            with Client(server.port) as client:
                client.greet()
                send_message(client)
                client.cmd("QUIT")
        server.wait_connections(0)
        server.call(asyncio.sleep(0.2))  # the loop lets go of the closed transports
        left = alive() - before
    finally:
        gc.enable()
    assert left == 0, f"{left} protocol or transaction objects of ended sessions wait for the cycle collector"
