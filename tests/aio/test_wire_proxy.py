"""Trust on the wire: PROXY v1/v2 (as HAProxy sends them), XCLIENT and XFORWARD."""

from __future__ import annotations

import contextlib
import socket
import ssl

from smtpfront.config import TimeoutsConfig
from smtpfront.core.events import Address, MailParams
from smtpfront.core.proxy import encode_proxy_v1, encode_proxy_v2
from smtpfront.hooks import Hooks, Session
from smtpfront.server import SMTPServer

from .conftest import HOSTNAME, TIMEOUT, Client, StartServer, send_message

TRUSTED = ["127.0.0.1/32"]
UNTRUSTED = ["10.0.0.0/8"]


def test_proxy_v1_from_trusted_peer(start_server: StartServer) -> None:
    server = start_server(use_proxy=TRUSTED)
    with Client(server.port) as c:
        c.send(encode_proxy_v1(("203.0.113.7", 40001), ("192.0.2.1", 25)))
        c.greet()
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    env = message.envelope
    assert (env.client_address, env.client_port) == ("203.0.113.7", 40001)
    assert b"[203.0.113.7]" in message.body.split(b"\r\n\r\n")[0]
    assert env.proxy is not None and env.proxy["version"] == 1


def test_proxy_v1_with_the_greeting_wait(start_server: StartServer) -> None:
    # The header and the first command in one packet: the command waits for the greeting
    # and is then early talk, refused like any client that speaks before the greeting.
    server = start_server(use_proxy=TRUSTED)
    with Client(server.port) as c:
        c.send(encode_proxy_v1(("203.0.113.7", 40001), ("192.0.2.1", 25)) + b"EHLO client.test\r\n")
        assert c.expect(220)
        r = c.reply()
        assert r.code == 554
        assert c.closed()


def test_proxy_v2_ipv6_from_trusted_peer(start_server: StartServer) -> None:
    server = start_server(use_proxy=TRUSTED)
    with Client(server.port) as c:
        c.send(encode_proxy_v2(("2001:db8::7", 50123), ("2001:db8::1", 25), tlvs=[(0x02, b"mx.example")],
                               crc=True))
        c.greet()
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    env = message.envelope
    assert (env.client_address, env.client_port) == ("2001:db8::7", 50123)
    assert b"[IPv6:2001:db8::7]" in message.body
    assert env.proxy is not None and env.proxy["version"] == 2 and env.proxy["authority"] == "mx.example"


def test_proxy_v2_local_keeps_the_socket_address(start_server: StartServer) -> None:
    server = start_server(use_proxy=TRUSTED)
    with Client(server.port) as c:
        c.send(encode_proxy_v2(None, None))  # a health check from the proxy itself
        c.greet()
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    assert message.envelope.client_address == "127.0.0.1"


def test_proxy_header_from_untrusted_peer_is_a_bad_command(start_server: StartServer) -> None:
    server = start_server(use_proxy=UNTRUSTED)
    with Client(server.port) as c:
        c.greet()
        r = c.cmd(encode_proxy_v1(("203.0.113.7", 40001), ("192.0.2.1", 25))[:-2])
        assert (r.code, r.enhanced) == (500, "5.5.1")
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    assert message.envelope.client_address == "127.0.0.1"
    assert message.envelope.proxy is None


def test_trusted_peer_without_header_is_refused(start_server: StartServer) -> None:
    server = start_server(use_proxy=TRUSTED)
    with Client(server.port) as c:
        c.send(b"EHLO client.test\r\n")
        r = c.reply()
        assert r.code == 421  # no session, so no enhanced code (RFC 2034)
        assert "PROXY" in r.text
        assert c.closed()


def test_trusted_peer_that_sends_nothing_times_out(start_server: StartServer) -> None:
    def setup(server: SMTPServer) -> None:
        server.with_settings(timeouts=TimeoutsConfig(greeting=0.3))

    server = start_server(use_proxy=TRUSTED, setup=setup)
    with Client(server.port) as c:
        r = c.reply()
        assert r.code == 421 and "timeout" in r.text
        assert c.closed()


def test_proxy_v2_then_implicit_tls(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    server = start_server(use_proxy=TRUSTED, secure=True)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    raw.sendall(encode_proxy_v2(("198.51.100.20", 61000), ("192.0.2.1", 465)))
    with Client(server.port, sock=client_context.wrap_socket(raw, server_hostname=HOSTNAME)) as c:
        c.greet()
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    env = message.envelope
    assert env.client_address == "198.51.100.20" and env.tls is not None
    assert env.protocol == "ESMTPS"


def test_proxy_v1_and_tls_client_hello_in_one_packet(start_server: StartServer,
                                                      client_context: ssl.SSLContext) -> None:
    # The header is read octet by octet, so not one byte of the ClientHello is lost to it.
    server = start_server(use_proxy=TRUSTED, secure=True)
    header = encode_proxy_v1(("198.51.100.21", 61001), ("192.0.2.1", 465))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()  # produces the ClientHello
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    raw.sendall(header + outgoing.read())  # PROXY header + ClientHello, one send
    while True:
        data = raw.recv(65536)
        assert data, "server closed during the handshake"
        incoming.write(data)
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
    raw.sendall(outgoing.read())
    while True:
        try:
            greeting = tls.read(1024)
            break
        except ssl.SSLWantReadError:
            incoming.write(raw.recv(65536))
    assert greeting.startswith(b"220 ")
    raw.close()


# -- XCLIENT and XFORWARD -----------------------------------------------------------------


def test_xclient_from_trusted_network(start_server: StartServer) -> None:
    server = start_server(use_xclient=TRUSTED)
    with Client(server.port) as c:
        c.expect(220)
        caps = c.ehlo().lines
        assert any(line.startswith("XCLIENT ") and "ADDR" in line for line in caps)
        r = c.cmd("XCLIENT ADDR=192.0.2.55 PORT=4242 NAME=relay.example HELO=relay.example")
        assert r.code == 220 and r.text.startswith(HOSTNAME)
        # The session restarted: EHLO again (enhanced codes only after it).
        c.ehlo("relay.example")
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    env = message.envelope
    assert (env.client_address, env.client_port, env.client_name) == ("192.0.2.55", 4242, "relay.example")
    assert b"(relay.example [192.0.2.55])" in message.body


def test_xclient_from_untrusted_network(start_server: StartServer) -> None:
    server = start_server(use_xclient=UNTRUSTED)
    with Client(server.port) as c:
        c.expect(220)
        caps = c.ehlo().lines
        assert not any(line.startswith("XCLIENT") for line in caps)
        r = c.cmd("XCLIENT ADDR=192.0.2.55")
        assert (r.code, r.enhanced) == (550, "5.7.0")
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    assert message.envelope.client_address == "127.0.0.1"


class SeeForwarded(Hooks):
    def __init__(self) -> None:
        self.xforward: list[dict[str, str]] = []

    async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> None:
        self.xforward.append(dict(session.xforward))


def test_xforward_from_trusted_network(start_server: StartServer) -> None:
    hooks = SeeForwarded()
    server = start_server(hooks, use_xforward=TRUSTED)
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("XFORWARD ADDR=192.0.2.66 NAME=orig.example")
        assert (r.code, r.enhanced) == (250, "2.0.0")
        r = c.cmd("XFORWARD HELO=orig-helo.example")
        assert (r.code, r.enhanced) == (250, "2.0.0")
        assert send_message(c).code == 250
    assert hooks.xforward == [{"ADDR": "192.0.2.66", "NAME": "orig.example", "HELO": "orig-helo.example"}]
    server.wait_for(1)


def test_xforward_from_untrusted_network(start_server: StartServer) -> None:
    hooks = SeeForwarded()
    server = start_server(hooks, use_xforward=UNTRUSTED)
    with Client(server.port) as c:
        c.greet()
        r = c.cmd("XFORWARD ADDR=192.0.2.66")
        assert (r.code, r.enhanced) == (550, "5.7.0")
        assert send_message(c).code == 250
    assert hooks.xforward == [{}]


def test_xclient_trust_follows_the_client_the_proxy_header_names(start_server: StartServer) -> None:
    """A relay behind a trusted proxy is trusted by its own address (the proxy's is not listed)."""
    server = start_server(use_proxy=TRUSTED, use_xclient=["203.0.113.0/24"], use_xforward=["203.0.113.0/24"])
    for source, trusted in (("203.0.113.7", True), ("198.51.100.9", False)):
        with Client(server.port) as c:
            c.send(encode_proxy_v1((source, 40001), ("192.0.2.1", 25)))
            c.greet()
            caps = c.ehlo().lines
            assert any(line.startswith("XCLIENT ") for line in caps) is trusted, caps
            assert any(line.startswith("XFORWARD ") for line in caps) is trusted, caps
            r = c.cmd("XCLIENT ADDR=192.0.2.55")
            assert (r.code, r.enhanced) == ((220, None) if trusted else (550, "5.7.0")), r
