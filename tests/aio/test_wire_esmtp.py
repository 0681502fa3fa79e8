"""Plain ESMTP over real sockets: delivery, EHLO, HELO, PIPELINING, BDAT, SMTPUTF8, SIZE."""

from __future__ import annotations

import smtplib

from .conftest import HOSTNAME, TIMEOUT, Client, Running, StartServer, send_message


def smtp(server: Running) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=TIMEOUT)


def test_plain_delivery_with_smtplib(server: Running) -> None:
    body = b"From: a@client.test\r\nTo: b@mx.test\r\nSubject: one\r\n\r\nHello there.\r\n"
    with smtp(server) as client:
        code, _ = client.ehlo()
        assert code == 250
        code, text = client.mail("a@client.test")
        assert (code, text) == (250, b"2.1.0 Sender OK")
        code, text = client.rcpt("b@mx.test")
        assert (code, text) == (250, b"2.1.5 Recipient OK")
        code, text = client.data(body)
        assert code == 250
        assert text.startswith(b"2.0.0 Ok: queued as ")
        queue_id = text.split()[-1].decode()
    [message] = server.wait_for(1)
    env = message.envelope
    assert message.queue_id == queue_id
    assert str(env.mail_from) == "a@client.test"
    assert [str(r.address) for r in env.recipients] == ["b@mx.test"]
    assert env.helo == "client.test"
    assert env.client_address == "127.0.0.1"
    assert env.protocol == "ESMTP"
    assert env.tls is None and env.user is None
    assert message.body.startswith(b"Received: from client.test (unknown [127.0.0.1])")
    assert b"by mx.test (smtpfront)" in message.body
    assert message.body.endswith(b"\r\n" + body)  # the header block, then the body as sent


def test_ehlo_capabilities(server: Running) -> None:
    with Client(server.port) as c:
        greeting = c.expect(220)
        assert greeting.raw == f"220 {HOSTNAME} ESMTP smtpfront\r\n".encode()
        reply = c.ehlo()
        assert reply.code == 250
        assert reply.lines[0] == HOSTNAME
        caps = reply.lines[1:]
        assert caps == [
            "PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING",
            "BINARYMIME", "DSN", "STARTTLS", "LIMITS RCPTMAX=100",
        ]
        assert "AUTH" not in " ".join(caps)  # no mechanisms configured
        c.cmd("QUIT")
        assert c.closed()


def test_ehlo_hides_extensions(start_server: StartServer) -> None:
    server = start_server(size=1000, hide_pipelining=True, hide_chunking=True, hide_dsn=True, tls=False,
                          auth_methods=["PLAIN"], allow_insecure_auth=True)
    with Client(server.port) as c:
        c.expect(220)
        caps = c.ehlo().lines[1:]
        assert caps == ["SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "AUTH PLAIN",
                        "LIMITS RCPTMAX=100"]
        # An extension not offered is refused: BDAT without CHUNKING.
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        c.send(b"BDAT 3 LAST\r\nabc")
        r = c.reply()
        assert (r.code, r.enhanced) == (502, "5.5.1")
        assert c.cmd("NOOP").code == 250  # the refused chunk's octets were consumed


def test_multiple_recipients(server: Running) -> None:
    rcpts = ["one@mx.test", "two@mx.test", "three@other.test"]
    with smtp(server) as client:
        refused = client.sendmail("a@client.test", rcpts, b"Subject: many\r\n\r\nbody\r\n")
        assert refused == {}
    [message] = server.wait_for(1)
    assert [str(r.address) for r in message.envelope.recipients] == rcpts
    # With several recipients the Received header names none of them (no Bcc disclosure).
    header = message.body.split(b"\r\n\r\n", 1)[0]
    assert b" for <" not in header


def test_dot_stuffed_body_arrives_unstuffed_after_received(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        wire = b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n.. \r\nno dot\r\n"
        reply = send_message(c, body=wire)
        assert (reply.code, reply.enhanced) == (250, "2.0.0")
    [message] = server.wait_for(1)
    assert message.body.startswith(b"Received: ")
    head, sep, rest = message.body.partition(b"Subject: dots\r\n")
    assert sep and head.startswith(b"Received: ") and head.count(b"Received:") == 1
    assert rest == b"\r\n.leading dot\r\n..\r\n. \r\nno dot\r\n"
    # With exactly one recipient the trace field names it.
    assert b"for <b@mx.test>;" in head


def test_smtplib_dot_stuffing_roundtrip(server: Running) -> None:
    body = b"Subject: x\r\n\r\n.\r\n..\r\n.hidden\r\nend\r\n"
    with smtp(server) as client:
        client.sendmail("a@client.test", ["b@mx.test"], body)
    [message] = server.wait_for(1)
    assert message.body.endswith(b"\r\n" + body)


def test_helo_session_has_no_enhanced_codes(server: Running) -> None:
    with Client(server.port) as c:
        c.expect(220)
        reply = c.cmd("HELO client.test")
        assert reply.raw == f"250 {HOSTNAME}\r\n".encode()
        assert c.cmd("MAIL FROM:<a@client.test>").raw == b"250 Sender OK\r\n"
        assert c.cmd("RCPT TO:<b@mx.test>").raw == b"250 Recipient OK\r\n"
        assert c.cmd("BOGUS").raw == b"500 Error: command not recognized\r\n"
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: helo\r\n\r\nx\r\n.\r\n")
        done = c.reply()
        assert done.code == 250 and done.enhanced is None and done.text.startswith("Ok: queued as ")
        assert c.cmd("QUIT").raw == b"221 Bye\r\n"
    [message] = server.wait_for(1)
    assert message.envelope.protocol == "SMTP"
    assert b"with SMTP id" in message.body


def test_pipelining_all_replies_in_order(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<nobody>\r\n"
               b"RCPT TO:<c@mx.test>\r\nDATA\r\n")
        replies = [c.reply() for _ in range(5)]
        assert [(r.code, r.enhanced) for r in replies] == [
            (250, "2.1.0"), (250, "2.1.5"), (553, "5.1.3"), (250, "2.1.5"), (354, None),
        ]
        # The body, the dot and the next transaction's commands in one send, too.
        c.send(b"Subject: p\r\n\r\npipelined\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@mx.test>\r\nDATA\r\n")
        replies = [c.reply() for _ in range(4)]
        assert [(r.code, r.enhanced) for r in replies] == [(250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"),
                                                           (354, None)]
        c.send(b"second\r\n.\r\nQUIT\r\n")
        assert c.reply().code == 250
        assert c.reply().code == 221
        assert c.closed()
    messages = server.wait_for(2)
    assert [str(r.address) for r in messages[0].envelope.recipients] == ["b@mx.test", "c@mx.test"]
    assert messages[1].envelope.mail_from.is_null
    assert messages[1].body.endswith(b"\r\nsecond\r\n")


def test_bdat_chunks(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        c.send(b"MAIL FROM:<a@client.test> BODY=BINARYMIME\r\nRCPT TO:<b@mx.test>\r\n")
        assert c.reply().code == 250 and c.reply().code == 250
        # A chunk may hold anything, bare CR/LF and a lone dot line included.
        c.send(b"BDAT 20\r\nSubject: b\r\n\r\nab\n.\r\n")
        chunk = c.reply()
        assert (chunk.code, chunk.enhanced, chunk.lines[0]) == (250, "2.0.0", "2.0.0 20 octets received")
        # Two chunks in one send (pipelined), then an empty LAST chunk.
        c.send(b"BDAT 4\r\n\x00\x01\r\x02BDAT 3\r\nxyz")
        assert c.reply().code == 250 and c.reply().code == 250
        c.send(b"BDAT 0 LAST\r\n")
        last = c.reply()
        assert last.code == 250 and last.enhanced == "2.0.0" and "queued as" in last.text
        # A one-chunk message with LAST on it.
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<c@mx.test>\r\nBDAT 5 LAST\r\nhello")
        assert [c.reply().code for _ in range(3)] == [250, 250, 250]
    messages = server.wait_for(2)
    assert messages[0].body.startswith(b"Received: ")
    assert messages[0].body.endswith(b"Subject: b\r\n\r\nab\n.\r\n\x00\x01\r\x02xyz")
    assert messages[0].envelope.mail_params.body == "BINARYMIME"
    assert messages[1].body.endswith(b"\r\nhello")
    assert messages[1].body.startswith(b"Received: ")


def test_smtputf8_addresses(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        # Without SMTPUTF8 a non-ASCII address is refused.
        r = c.cmd("MAIL FROM:<josé@exemple.test>")
        assert (r.code, r.enhanced) == (553, "5.6.7")
        assert c.cmd("MAIL FROM:<josé@exemple.test> SMTPUTF8").code == 250
        assert c.cmd("RCPT TO:<δοκιμή@παράδειγμα.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send("Subject: ünïcödé\r\n\r\nnaïve\r\n.\r\n".encode())
        assert c.reply().code == 250
    [message] = server.wait_for(1)
    env = message.envelope
    assert env.mail_params.smtputf8
    assert str(env.mail_from) == "josé@exemple.test"
    assert str(env.recipients[0].address) == "δοκιμή@παράδειγμα.test"
    assert b"with UTF8SMTP id" in message.body
    assert message.body.endswith("naïve\r\n".encode())


def test_smtputf8_with_smtplib(server: Running) -> None:
    with smtp(server) as client:
        client.sendmail("josé@exemple.test", ["ñ@mx.test"], "Subject: é\r\n\r\né\r\n".encode(),
                        mail_options=["SMTPUTF8"])
    [message] = server.wait_for(1)
    assert str(message.envelope.recipients[0].address) == "ñ@mx.test"


def test_size_refused_when_declared(start_server: StartServer) -> None:
    server = start_server(size=1000)
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("MAIL FROM:<a@client.test> SIZE=1001")
        assert (r.code, r.enhanced) == (552, "5.3.4")
        assert c.cmd("MAIL FROM:<a@client.test> SIZE=1000").code == 250
    with smtp(server) as client:
        try:
            client.sendmail("a@client.test", ["b@mx.test"], b"x" * 1500)
        except smtplib.SMTPSenderRefused as exc:  # smtplib declares SIZE=1500 itself
            assert exc.smtp_code == 552 and exc.smtp_error.startswith(b"5.3.4 ")
        else:
            raise AssertionError("oversized message accepted")
    assert server.sink.messages == []


def test_size_refused_at_actual_size(start_server: StartServer) -> None:
    server = start_server(size=1000)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        # 20 lines of 60 octets: 1200 octets, over the limit; the server reads to the dot.
        c.send((b"y" * 58 + b"\r\n") * 20 + b".\r\n")
        r = c.reply()
        assert (r.code, r.enhanced) == (552, "5.3.4")
        # The session goes on: a message at the limit is accepted.
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"z" * 998 + b"\r\n.\r\n")  # 1000 octets with the CRLF
        assert c.reply().code == 250
        # BDAT over the limit.
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nBDAT 1001 LAST\r\n" + b"b" * 1001)
        replies = [c.reply() for _ in range(3)]
        assert [(r.code, r.enhanced) for r in replies] == [(250, "2.1.0"), (250, "2.1.5"), (552, "5.3.4")]
        assert c.cmd("NOOP").code == 250
    [message] = server.wait_for(1)
    assert message.body.endswith(b"z" * 998 + b"\r\n")
    assert len(server.sink.messages) == 1


def test_rset_noop_vrfy_help_quit(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        r = c.cmd("RSET")
        assert (r.code, r.enhanced) == (250, "2.0.0")
        r = c.cmd("RCPT TO:<b@mx.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        assert (c.cmd("NOOP").code, c.cmd("VRFY postmaster").code, c.cmd("HELP").code) == (250, 252, 214)
        r = c.cmd("QUIT")
        assert (r.code, r.enhanced) == (221, "2.0.0")
        assert c.closed()


def test_envelope_records_the_received_size(server: Running) -> None:
    body = b"Subject: size\r\n\r\n" + b"x" * 1000 + b"\r\n.dot\r\n"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.sendmail("a@example.org", ["b@example.net"], body)  # smtplib stuffs the dot line
    (stored,) = server.wait_for(1)
    assert stored.envelope.size == len(body)  # unstuffed octets, trace header not counted
