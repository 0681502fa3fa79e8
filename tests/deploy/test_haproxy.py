"""The shipped deploy/haproxy/haproxy.cfg, run by the real haproxy in front of a real
``smtpfront serve`` and redis-server, all on loopback.

The test runs the shipped file itself: its addresses are environment variables with the
compose defaults (``"${BACKEND_ADDR-smtpfront:2525}"``), set here to free loopback ports.
"""

from __future__ import annotations

import contextlib
import csv
import email
import json
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from ..conftest import RedisServer, free_port
from .support import DEPLOY, TIMEOUT, serve, stop, terminate, tool, wait_for, wait_ready

CFG = DEPLOY / "haproxy" / "haproxy.cfg"


def show_stat(sock: Path) -> dict[str, dict[str, str]]:
    """HAProxy's ``show stat`` from the admin socket: the rows by "proxy/server"."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(TIMEOUT)
            conn.connect(str(sock))
            conn.sendall(b"show stat\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    except OSError:
        return {}
    rows = csv.DictReader(data.decode().removeprefix("# ").splitlines())
    return {f"{row['pxname']}/{row['svname']}": row for row in rows}


@contextlib.contextmanager
def haproxy_in_front(tmp_path: Path, smtp_port: int, metrics_port: int,
                     agent_port: int) -> Iterator[tuple[int, Callable[[], dict[str, str] | None]]]:
    """The shipped haproxy.cfg in front of one smtpfront; yields its front port and its server's row,
    once HAProxy's checks passed: /readyz answered 200 and the agent said "up ready 100%"."""
    haproxy = tool("haproxy", "haproxy")
    front, stats = free_port(), free_port()
    sock, log = tmp_path / "haproxy.sock", tmp_path / "haproxy.log"
    env = {"FRONT_BIND": f"127.0.0.1:{front}", "STATS_BIND": f"127.0.0.1:{stats}", "STATS_SOCKET": str(sock),
           "BACKEND_ADDR": f"127.0.0.1:{smtp_port}", "BACKEND_METRICS_PORT": str(metrics_port),
           "BACKEND_AGENT_PORT": str(agent_port), "PATH": "/usr/bin:/bin"}
    proxy = subprocess.Popen([haproxy, "-db", "-f", str(CFG)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        def server_row() -> dict[str, str] | None:
            assert proxy.poll() is None, log.read_text()
            return show_stat(sock).get("smtpfront/smtpfront1")

        row = wait_for("HAProxy's checks to pass", lambda: (
            (r := server_row()) and r["check_status"] == r["agent_status"] == "L7OK" and r
        ), log=log)
        assert row["status"] == "UP" and row["last_agt"] == "via agent : up", row
        yield front, server_row
    finally:
        stop(proxy)


def test_haproxy_sends_the_client_address_and_drains_through_the_agent_check(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    smtp_port, metrics_port, agent_port = (free_port() for _ in range(3))
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"""
queue = "{redis_server.url}"
hostname = "mx.test"

[[listeners]]
address = "127.0.0.1:{smtp_port}"
tls = "none"
proxy_protocol = true

[trust]
proxy = ["127.0.0.1/32"]

[metrics]
listen = "127.0.0.1:{metrics_port}"
agent_check_listen = "127.0.0.1:{agent_port}"

[supervisor]
graceful_timeout = 15
""")
    serve_log, haproxy_log = tmp_path / "serve.log", tmp_path / "haproxy.log"
    with serve(["--config", str(config), "--workers", "1", "--log-format", "plain"], serve_log) as server:
        wait_ready(server, metrics_port, serve_log)
        with haproxy_in_front(tmp_path, smtp_port, metrics_port, agent_port) as (front, server_row):
            # A message through HAProxy: smtpfront records the client's own address and port.
            with smtplib.SMTP("127.0.0.1", front, timeout=TIMEOUT) as smtp:
                client = smtp.sock.getsockname()
                smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: via haproxy\r\n\r\nHi.\r\n")
            entries = redis.Redis(port=redis_server.port).xrange("smtpfront:inbound")
            assert len(entries) == 1
            envelope = json.loads(entries[0][1][b"envelope"])
            assert envelope["client"]["address"] == client[0] == "127.0.0.1"
            assert envelope["client"]["port"] == client[1]  # HAProxy's own source port would differ
            assert envelope["proxy"] is not None, envelope

            # Graceful stop while a transaction is open: the agent says "drain" and HAProxy
            # marks the server DRAIN while smtpfront still runs and the session finishes.
            held = smtplib.SMTP("127.0.0.1", front, timeout=TIMEOUT)
            held.ehlo()
            assert held.mail("alice@example.org")[0] == 250
            server.send_signal(signal.SIGTERM)

            def draining() -> dict[str, str] | None:
                assert server.poll() is None, f"smtpfront exited before HAProxy saw the drain:\n{serve_log.read_text()}"
                row = server_row()
                return row if row and row["status"].startswith("DRAIN") else None

            row = wait_for("HAProxy to mark the server DRAIN", draining, log=haproxy_log)
            assert row["status"] == "DRAIN (agent)", row  # HAProxy names the agent as the cause
            assert held.rcpt("bob@example.net")[0] == 250
            assert held.data(b"Subject: during the drain\r\n\r\nlast\r\n")[0] == 250
            held.close()
            assert terminate(server, serve_log) == 0
            assert len(redis.Redis(port=redis_server.port).xrange("smtpfront:inbound")) == 2


def test_xclient_is_judged_on_the_client_behind_haproxy(tmp_path: Path) -> None:
    """HAProxy's own address is trusted for XCLIENT (the mistake check-config warns about): a client
    behind it may still not use XCLIENT (Postfix's 550 5.7.0), while a relay whose own address is
    trusted may, through the same proxy; the queued record names what each was entitled to."""
    smtp_port, metrics_port, agent_port = (free_port() for _ in range(3))
    spool = tmp_path / "spool"
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"""
queue = "maildir:{spool}"
hostname = "mx.test"

[[listeners]]
address = "127.0.0.1:{smtp_port}"
tls = "none"
proxy_protocol = true

[trust]
proxy = ["127.0.0.1/32"]
xclient = ["127.0.0.1/32", "127.0.0.3/32"]

[metrics]
listen = "127.0.0.1:{metrics_port}"
agent_check_listen = "127.0.0.1:{agent_port}"
""")
    checked = subprocess.run([sys.executable, "-m", "smtpfront", "check-config", str(config)],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert checked.returncode == 0, checked.stderr
    assert "warning: trust.xclient: 127.0.0.1/32 overlaps trust.proxy 127.0.0.1/32" in checked.stderr
    serve_log = tmp_path / "serve.log"
    with serve(["--config", str(config), "--workers", "1", "--log-format", "plain"], serve_log) as server:
        wait_ready(server, metrics_port, serve_log)
        with haproxy_in_front(tmp_path, smtp_port, metrics_port, agent_port) as (front, _):
            # A client behind HAProxy (127.0.0.2) is not offered XCLIENT and cannot use it.
            with smtplib.SMTP("127.0.0.1", front, timeout=TIMEOUT, source_address=("127.0.0.2", 0)) as smtp:
                code, _ = smtp.ehlo()
                assert code == 250 and not smtp.has_extn("xclient"), smtp.esmtp_features
                assert smtp.docmd("XCLIENT", "ADDR=10.1.2.3 NAME=trusted.internal LOGIN=admin") == (
                    550, b"5.7.0 Error: insufficient authorization")
                smtp.sendmail("spoof@example.org", ["bob@example.net"], b"Subject: spoof\r\n\r\nHi.\r\n")
            # A relay whose own address is trusted (127.0.0.3) uses XCLIENT through the same proxy.
            with smtplib.SMTP("127.0.0.1", front, timeout=TIMEOUT, source_address=("127.0.0.3", 0)) as smtp:
                smtp.ehlo()
                assert smtp.has_extn("xclient"), smtp.esmtp_features
                assert smtp.docmd("XCLIENT", "ADDR=10.9.9.9 NAME=client.example")[0] == 220
                smtp.ehlo_resp = None
                smtp.ehlo()
                smtp.sendmail("relay@example.org", ["bob@example.net"], b"Subject: relayed\r\n\r\nHi.\r\n")
        assert terminate(server, serve_log) == 0
    received = {}
    for path in (spool / "new").iterdir():
        message = email.message_from_bytes(path.read_bytes())
        received[message["Subject"]] = message["Received"]
    assert set(received) == {"spoof", "relayed"}
    assert "[127.0.0.2]" in received["spoof"] and "10.1.2.3" not in received["spoof"], received
    assert "client.example" in received["relayed"] and "[10.9.9.9]" in received["relayed"], received
