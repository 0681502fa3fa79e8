"""TLS on the wire: STARTTLS with smtplib, the STARTTLS injection defence, implicit TLS with SNI."""

from __future__ import annotations

import smtplib
import socket
import ssl
from pathlib import Path

import pytest

from smtpfront.aio.tls import generate_self_signed

from .conftest import HOSTNAME, TIMEOUT, Client, Running, StartServer, send_message


def test_starttls_with_smtplib(server: Running, client_context: ssl.SSLContext) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, text = client.starttls(context=client_context)
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        client.ehlo()
        assert not client.has_extn("starttls")  # not offered twice
        code, text = client.docmd("STARTTLS")
        assert (code, text) == (503, b"5.5.1 Error: TLS already active")
        client.sendmail("a@client.test", ["b@mx.test"], b"Subject: tls\r\n\r\nsecret\r\n")
    [message] = server.wait_for(1)
    tls = message.envelope.tls
    assert tls is not None and tls["version"].startswith("TLSv1.")
    assert tls["cipher"]
    assert message.envelope.protocol == "ESMTPS"
    assert b"(using TLSv1." in message.body and b"with ESMTPS id" in message.body


def test_starttls_with_a_cert_given_as_files(start_server: StartServer, tmp_path: Path) -> None:
    cert_file, key_file = generate_self_signed(str(tmp_path), "files.test")
    server = start_server(cert_file=cert_file, key_file=key_file)
    context = ssl.create_default_context(cafile=cert_file)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.starttls(context=context)
        cert = client.sock.getpeercert()  # type: ignore[union-attr]
        assert cert["subject"] == ((("commonName", "files.test"),),)
        client.sendmail("a@client.test", ["b@mx.test"], b"Subject: tls\r\n\r\nx\r\n")
    assert server.wait_for(1)[0].envelope.tls is not None


def test_starttls_injection_is_discarded(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    server = start_server(unauthorized_pipelining="accept")
    with Client(server.port) as c:
        c.greet()
        c.send(b"STARTTLS\r\nRSET\r\n")  # one packet: the RSET is an injection attempt
        r = c.reply()
        assert (r.code, r.enhanced) == (220, "2.0.0")
        c.starttls(client_context)  # asserts that no plaintext reply to RSET came before TLS
        first = c.ehlo()
        assert first.code == 250 and first.lines[0] == HOSTNAME and len(first.lines) > 1
        assert "STARTTLS" not in first.lines
        noop = c.cmd("NOOP")
        assert noop.raw == b"250 2.0.0 OK\r\n"  # not the RSET's "Reset state"
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    assert message.envelope.tls is not None


def test_starttls_injection_pipelined_with_the_transaction(start_server: StartServer,
                                                          client_context: ssl.SSLContext) -> None:
    # The classic attack: commands after STARTTLS in the same packet, meant to run under TLS.
    server = start_server(unauthorized_pipelining="accept")
    with Client(server.port) as c:
        c.greet()
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@mx.test>\r\n")
        assert c.reply().code == 220
        c.starttls(client_context)
        assert c.ehlo().code == 250
        r = c.cmd("RCPT TO:<b@mx.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")  # no MAIL survived the handshake


def test_starttls_pipelined_under_default_policy_is_refused(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        c.send(b"STARTTLS\r\nRSET\r\n")
        r = c.reply()
        assert (r.code, r.enhanced) == (554, "5.5.0")
        assert c.closed()


def test_starttls_refused_inside_a_transaction(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        r = c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (503, "5.5.1")


def test_starttls_not_offered_without_tls(start_server: StartServer) -> None:
    server = start_server(tls=False)
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (502, "5.5.1")


def test_require_tls_refuses_mail_before_starttls(start_server: StartServer,
                                                  client_context: ssl.SSLContext) -> None:
    server = start_server(require_tls=True)
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("MAIL FROM:<a@client.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0")
        assert c.cmd("STARTTLS").code == 220
        c.starttls(client_context)
        c.ehlo()
        assert send_message(c).code == 250
    server.wait_for(1)


@pytest.fixture(scope="module")
def sni_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    d = str(tmp_path_factory.mktemp("sni"))
    return {name: generate_self_signed(d, name) for name in ("mail.a.test", "mail.b.test")}


def _tls_connect(port: int, context: ssl.SSLContext, server_hostname: str) -> Client:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return Client(port, sock=context.wrap_socket(raw, server_hostname=server_hostname))


def test_implicit_tls_with_sni(start_server: StartServer, cert: tuple[str, str],
                               sni_certs: dict[str, tuple[str, str]]) -> None:
    server = start_server(secure=True, sni=sni_certs)
    context = ssl.create_default_context(cafile=cert[0])
    for cert_file, _ in sni_certs.values():
        context.load_verify_locations(cafile=cert_file)
    seen = {}
    for name in ("mail.a.test", "mail.b.test", HOSTNAME):
        with _tls_connect(server.port, context, name) as c:
            peer = c.sock.getpeercert()  # type: ignore[attr-defined]
            seen[name] = dict(x[0] for x in peer["subject"])["commonName"]
            c.expect(220)
            caps = c.ehlo().lines
            assert "STARTTLS" not in caps
            assert send_message(c, rcpts=(f"x@{name}",)).code == 250
    assert seen == {"mail.a.test": "mail.a.test", "mail.b.test": "mail.b.test", HOSTNAME: HOSTNAME}
    messages = server.wait_for(3)
    assert [m.envelope.tls and m.envelope.tls.get("sni") for m in messages] == [
        "mail.a.test", "mail.b.test", HOSTNAME]
    assert all(m.envelope.protocol == "ESMTPS" for m in messages)


def test_implicit_tls_with_smtplib(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    server = start_server(secure=True)
    with smtplib.SMTP_SSL("127.0.0.1", server.port, context=client_context, timeout=TIMEOUT) as client:
        client.sendmail("a@client.test", ["b@mx.test"], b"Subject: 465\r\n\r\nx\r\n")
    [message] = server.wait_for(1)
    assert message.envelope.tls is not None


def test_implicit_tls_plaintext_client_is_dropped(start_server: StartServer) -> None:
    server = start_server(secure=True)
    with Client(server.port) as c:
        c.send(b"EHLO client.test\r\n")
        data = c.rest()
        assert not data.startswith(b"220")
    # The server lives on.
    server.wait_connections(0)


def test_implicit_tls_many_quick_handshakes(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    # The ClientHello is sent the moment the TCP connection is up; under uvloop it can be
    # read before the server hands the transport to TLS. Each handshake must still finish.
    server = start_server(secure=True)
    for _ in range(20):
        with _tls_connect(server.port, client_context, HOSTNAME) as c:
            c.expect(220)
            assert c.cmd("QUIT").code == 221
