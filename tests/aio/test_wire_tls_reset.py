"""Clients that vanish during the TLS handshake: every such session ends, once.

A client resets (RST, ``SO_LINGER`` 0) or closes (FIN) its connection at several points of
the handshake, on an implicit-TLS listener and after STARTTLS. Afterwards the server must
hold no session, ``max_clients`` must be free (a new client is greeted with ``220``, not
``421``), and a graceful close must finish at once instead of waiting its whole window.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

import pytest

from smtpfront.config import TimeoutsConfig
from smtpfront.server import SMTPServer

from .conftest import HOSTNAME, TIMEOUT, Client, Running, StartServer

MAX_CLIENTS = 50
CLOSE_TIMEOUT = 10.0
PER_POINT_RST = 60  # resets at each point of the handshake, per listener kind
PER_POINT_FIN = 15  # and plain closes
_POINTS = ("before-hello", "half-hello", "whole-hello", "server-flight")


def client_hello(context: ssl.SSLContext) -> bytes:
    """The ClientHello a real TLS client sends first (from an in-memory TLS client)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:8]  # a TLS handshake record
    return hello


def vanish(sock: socket.socket, how: str) -> None:
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def go_to(sock: socket.socket, point: str, hello: bytes) -> bool:
    """Go as far as ``point`` in the handshake.

    Returns False if the server answered the ClientHello with something else than TLS
    (a ``421`` when it believes it is full).
    """
    if point == "half-hello":
        sock.sendall(hello[: len(hello) // 2])
    elif point in ("whole-hello", "server-flight"):
        sock.sendall(hello)
    if point == "server-flight":
        # The server answered (ServerHello, certificate…) and waits for our Finished.
        return sock.recv(65536)[:1] == b"\x16"
    return True


def abandon_handshake(sock: socket.socket, point: str, hello: bytes, how: str) -> bool:
    """Go as far as ``point`` in the handshake, then reset (or close) the connection."""
    try:
        return go_to(sock, point, hello)
    finally:
        vanish(sock, how)


def _implicit(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def _after_starttls(port: int) -> socket.socket | None:
    c = Client(port)
    if c.reply().code != 220:  # 421: the server believes it is full
        c.close()
        return None
    assert c.ehlo().code == 250
    r = c.cmd("STARTTLS")
    assert (r.code, r.enhanced) == (220, "2.0.0"), r
    assert c.buf == b""
    return c.sock


def _wait_sessions(server: Running, count: int, timeout: float) -> int:
    """Poll (bounded) until the server holds ``count`` sessions; return what it holds."""
    deadline = time.monotonic() + timeout
    left = server.connections()
    while left != count and time.monotonic() < deadline:
        time.sleep(0.05)
        left = server.connections()
    return left


class _Events:
    """Counts the "connect" and "close" events a server emits (its session listeners)."""

    def __init__(self) -> None:
        self.opened = self.closed = 0

    def install(self, server: SMTPServer) -> None:
        server.on("connect", self._opened)
        server.on("close", self._closed)

    def _opened(self, *_: object) -> None:
        self.opened += 1

    def _closed(self, *_: object) -> None:
        self.closed += 1

    def settle(self, server: Running) -> None:
        """Wait (bounded) until every connect has its close, and a little more for extras."""
        deadline = time.monotonic() + 5.0
        while self.closed < self.opened and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # a second close, if there were one, would come in this time


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
def test_sessions_reset_during_the_handshake_all_end(start_server: StartServer, client_context: ssl.SSLContext,
                                                     kind: str) -> None:
    events = _Events()
    server = start_server(setup=events.install, secure=kind == "implicit", max_clients=MAX_CLIENTS,
                          close_timeout=CLOSE_TIMEOUT)
    connect: Callable[[int], socket.socket | None] = _implicit if kind == "implicit" else _after_starttls
    hello = client_hello(client_context)
    attempts = refused = 0
    for point in _POINTS:
        for how, times in (("rst", PER_POINT_RST), ("fin", PER_POINT_FIN)):
            for _ in range(times):
                sock = connect(server.port)
                attempts += 1
                if sock is None or not abandon_handshake(sock, point, hello, how):
                    refused += 1
    assert attempts == len(_POINTS) * (PER_POINT_RST + PER_POINT_FIN)

    left = _wait_sessions(server, 0, timeout=5.0)
    print(f"{kind}: {attempts} abandoned handshakes, sessions left: {left}, refused as full: {refused}")
    assert (left, refused) == (0, 0), (
        f"{left} sessions abandoned in the TLS handshake are still open; {refused} later clients refused")
    events.settle(server)
    assert events.closed == events.opened == attempts  # each session ended once (on_close listeners)

    # max_clients is free: as many clients as it allows are all greeted.
    clients: list[Client] = []
    try:
        for _ in range(MAX_CLIENTS):
            if kind == "implicit":
                raw = _implicit(server.port)
                clients.append(Client(server.port, sock=client_context.wrap_socket(raw, server_hostname=HOSTNAME)))
            else:
                clients.append(Client(server.port))
            r = clients[-1].reply()
            assert r.code == 220, f"client {len(clients)} of max_clients={MAX_CLIENTS} got {r!r}"
    finally:
        for c in clients:
            c.close()
    assert _wait_sessions(server, 0, timeout=5.0) == 0

    # A graceful close does not wait for handshakes that stalled (no transaction can be
    # open in them): it closes them at once, without a plain-text 421 inside the TLS stream.
    stalled = [connect(server.port) for _ in range(3)]
    try:
        for sock in stalled:
            assert sock is not None and go_to(sock, "server-flight", hello)
        assert _wait_sessions(server, len(stalled), timeout=5.0) == len(stalled)
        started = time.monotonic()
        server.stop(timeout=CLOSE_TIMEOUT)
        took = time.monotonic() - started
        assert took < CLOSE_TIMEOUT / 3, f"graceful close took {took:.1f} s (window {CLOSE_TIMEOUT} s)"
        for sock in stalled:
            assert sock is not None
            assert b"421" not in Client(server.port, sock=sock).rest()
    finally:
        for sock in stalled:
            if sock is not None:
                sock.close()


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
@pytest.mark.parametrize("point", ["before-hello", "half-hello", "server-flight"])
def test_a_handshake_that_times_out_ends_its_session(start_server: StartServer, client_context: ssl.SSLContext,
                                                     kind: str, point: str) -> None:
    handshake = 0.5

    events = _Events()

    def setup(server: SMTPServer) -> None:
        server.with_settings(timeouts=TimeoutsConfig(tls_handshake=handshake))
        events.install(server)

    server = start_server(setup=setup, secure=kind == "implicit")
    connect: Callable[[int], socket.socket | None] = _implicit if kind == "implicit" else _after_starttls
    sock = connect(server.port)
    assert sock is not None
    try:
        assert go_to(sock, point, client_hello(client_context))
        started = time.monotonic()
        assert Client(server.port, sock=sock).closed()  # the server gives up on the handshake
        assert time.monotonic() - started < 10 * handshake
        left = _wait_sessions(server, 0, timeout=5.0)
        assert left == 0, "the session of a timed-out handshake is still open"
        events.settle(server)
        assert (events.opened, events.closed) == (1, 1)  # the TLS layer reports this loss too: once
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
def test_a_handshake_under_way_at_a_graceful_stop_is_greeted_then_drained(
    start_server: StartServer, client_context: ssl.SSLContext, kind: str
) -> None:
    """A connection the kernel gave this worker just before a stop (a reload) is in its TLS
    handshake when the stop comes: it may finish it, is greeted (implicit TLS) and gets its
    421 inside TLS, not a closed connection (what a client saw during SIGHUP rolls)."""
    server = start_server(secure=kind == "implicit", close_timeout=CLOSE_TIMEOUT)
    if kind == "implicit":
        raw = _implicit(server.port)
    else:
        c = Client(server.port)
        assert c.reply().code == 220 and c.cmd("EHLO c.example").code == 250
        assert c.cmd("STARTTLS").code == 220
        assert c.sock is not None
        raw = c.sock
    assert _wait_sessions(server, 1, timeout=5.0) == 1
    stopping = threading.Thread(target=server.stop, kwargs={"timeout": CLOSE_TIMEOUT})
    stopping.start()
    try:
        time.sleep(0.2)  # the stop has begun: the session is told to drain mid-handshake
        tls = Client(server.port, sock=client_context.wrap_socket(raw, server_hostname=HOSTNAME))
        if kind == "implicit":
            assert tls.reply().code == 220
        r = tls.reply()
        assert r.code == 421 and "shutting down" in r.text, r  # no EHLO in this session: no enhanced code
    finally:
        stopping.join(TIMEOUT + CLOSE_TIMEOUT)
