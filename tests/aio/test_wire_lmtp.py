"""LMTP on the wire (RFC 2033): LHLO, and one reply per recipient after the body."""

from __future__ import annotations

import smtplib
from collections.abc import Sequence

from smtpfront.core.replies import Reply
from smtpfront.hooks import Hooks, IncomingMessage, Session

from .conftest import HOSTNAME, TIMEOUT, Client, StartServer


class Mailboxes(Hooks):
    """Delivers to every mailbox except ``full@``, which is over quota."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def on_data(self, session: Session, message: IncomingMessage) -> Sequence[Reply]:
        self.bodies.append(await message.read())
        return [Reply(550, "5.2.2", "Mailbox full") if r.address.local_part == "full"
                else Reply(250, "2.0.0", "Delivered") for r in session.recipients]


def test_lhlo_and_per_recipient_replies(start_server: StartServer) -> None:
    hooks = Mailboxes()
    server = start_server(hooks, lmtp=True, tls=False)
    with Client(server.port) as c:
        greeting = c.expect(220)
        assert greeting.raw == f"220 {HOSTNAME} LMTP smtpfront\r\n".encode()
        r = c.cmd("EHLO client.test")  # LMTP has only LHLO
        assert r.code == 500
        lhlo = c.cmd("LHLO client.test")
        assert lhlo.code == 250 and lhlo.lines[0] == HOSTNAME and "PIPELINING" in lhlo.lines
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<one@mx.test>").code == 250
        assert c.cmd("RCPT TO:<full@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: lmtp\r\n\r\nhello\r\n.\r\n")
        first, second = c.reply(), c.reply()
        assert (first.code, first.enhanced) == (250, "2.0.0") and "queued as" in first.text
        assert (second.code, second.enhanced, second.lines[0]) == (550, "5.2.2", "5.2.2 Mailbox full")
        # Nothing more was sent: the next reply is the NOOP's.
        assert c.cmd("NOOP").raw == b"250 2.0.0 OK\r\n"
    assert hooks.bodies == [b"Subject: lmtp\r\n\r\nhello\r\n"]
    [message] = server.wait_for(1)
    assert message.envelope.protocol == "LMTP"
    assert b"with LMTP id" in message.body
    # The stored message is for the recipients it was accepted for, not for full@.
    assert [str(r.address) for r in message.envelope.recipients] == ["one@mx.test"]


def test_lmtp_all_refused_stores_nothing(start_server: StartServer) -> None:
    server = start_server(Mailboxes(), lmtp=True, tls=False)
    with Client(server.port) as c:
        c.expect(220)
        c.cmd("LHLO client.test")
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<full@mx.test>\r\nRCPT TO:<full@other.test>\r\nDATA\r\n")
        assert [c.reply().code for _ in range(4)] == [250, 250, 250, 354]
        c.send(b"x\r\n.\r\n")
        assert [(r.code, r.enhanced) for r in (c.reply(), c.reply())] == [(550, "5.2.2"), (550, "5.2.2")]
        assert c.cmd("NOOP").code == 250
    assert server.sink.messages == []


def test_lmtp_with_smtplib(start_server: StartServer) -> None:
    server = start_server(lmtp=True, tls=False)
    client = smtplib.LMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=TIMEOUT)
    try:
        # smtplib reads a single reply after the body, so send to one recipient.
        assert client.sendmail("a@client.test", ["one@mx.test"], b"Subject: x\r\n\r\nx\r\n") == {}
    finally:
        client.quit()
    [message] = server.wait_for(1)
    assert message.envelope.helo == "client.test"


def test_lmtp_bdat_per_recipient(start_server: StartServer) -> None:
    server = start_server(Mailboxes(), lmtp=True, tls=False)
    with Client(server.port) as c:
        c.expect(220)
        c.cmd("LHLO client.test")
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<full@mx.test>\r\nRCPT TO:<two@mx.test>\r\n")
        assert [c.reply().code for _ in range(3)] == [250, 250, 250]
        c.send(b"BDAT 3\r\nabc")
        assert c.reply().code == 250  # a non-LAST chunk gets one reply
        c.send(b"BDAT 2 LAST\r\nde")
        assert [(r.code, r.enhanced) for r in (c.reply(), c.reply())] == [(550, "5.2.2"), (250, "2.0.0")]
    [message] = server.wait_for(1)
    assert message.body.endswith(b"\r\nabcde")
    assert [str(r.address) for r in message.envelope.recipients] == ["two@mx.test"]
