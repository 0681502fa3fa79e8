"""``smtpfront serve``: handshakes reset by their clients leave no session behind.

The worker's connection gauge (``smtpfront_connections_active`` on ``/metrics``) comes back
to 0, ``max_clients`` lets new clients in on both listeners (implicit TLS and STARTTLS), and
SIGTERM ends the server at once instead of waiting its whole drain window for sessions
that are gone. The resets themselves are those of ``tests/aio/test_wire_tls_reset.py``.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from ..aio.test_wire_tls_reset import abandon_handshake, client_hello
from ..conftest import free_port
from .test_serve import TIMEOUT
from .test_serve_outcomes import ready, scrape

MAX_CLIENTS = 20
DRAIN = 20.0  # timeouts.close and supervisor.graceful_timeout


def greeting(port: int, context: ssl.SSLContext | None) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock = raw if context is None else context.wrap_socket(raw, server_hostname="mx.test")
    with sock:
        return sock.recv(512)


def test_reset_handshakes_leave_no_session_in_serve(tmp_path: Path) -> None:
    implicit, starttls, metrics = free_port(), free_port(), free_port()
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"""
workers = 1
queue = "maildir:{tmp_path / 'spool'}"
hostname = "mx.test"

[[listeners]]
address = "127.0.0.1:{implicit}"
tls = "implicit"
max_clients = {MAX_CLIENTS}

[[listeners]]
address = "127.0.0.1:{starttls}"
max_clients = {MAX_CLIENTS}

[tls]
self_signed_dir = "{tmp_path / 'tls'}"

[timeouts]
close = {DRAIN}

[supervisor]
graceful_timeout = {DRAIN}

[metrics]
listen = "127.0.0.1:{metrics}"
""")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "smtpfront", "serve", "--config", str(config)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready(metrics):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "selfsigned-mx.test.pem"))
        hello = client_hello(context)
        resets = 0
        for point in ("before-hello", "half-hello", "whole-hello", "server-flight"):
            for _ in range(MAX_CLIENTS):
                abandon_handshake(socket.create_connection(("127.0.0.1", implicit), timeout=TIMEOUT),
                                  point, hello, "rst")
                with socket.create_connection(("127.0.0.1", starttls), timeout=TIMEOUT) as plain, \
                        plain.makefile("rb") as file:  # the socket closes (RST) when both are closed
                    if not file.readline().startswith(b"220 "):
                        continue  # 421: the worker believes it is full (counted below)
                    plain.sendall(b"EHLO client.test\r\n")
                    while (line := file.readline()).startswith(b"250-"):
                        pass
                    assert line.startswith(b"250 "), line
                    plain.sendall(b"STARTTLS\r\n")
                    assert file.readline().startswith(b"220 ")
                    abandon_handshake(plain, point, hello, "rst")
                resets += 2

        deadline = time.monotonic() + 5
        active = scrape(metrics).get(("smtpfront_connections_active", ()), -1.0)
        while active != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            active = scrape(metrics).get(("smtpfront_connections_active", ()), -1.0)
        print(f"\n{resets} handshakes reset in serve: smtpfront_connections_active {active:.0f}")
        assert active == 0, f"{active:.0f} sessions still counted open after {resets} reset handshakes"
        assert greeting(implicit, context).startswith(b"220 ")  # max_clients is free
        assert greeting(starttls, None).startswith(b"220 ")

        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=DRAIN + 10)
        took = time.monotonic() - stopping
        assert code == 0 and took < DRAIN / 3, f"SIGTERM took {took:.1f} s (exit {code}):\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
