"""The shipped deploy/haproxy/haproxy.cfg, run by the real haproxy in front of a real
``smtpfront serve`` and redis-server, all on loopback.

The test runs the shipped file itself: its addresses are environment variables with the
compose defaults (``"${BACKEND_ADDR-smtpfront:2525}"``), set here to free loopback ports.
"""

from __future__ import annotations

import csv
import json
import signal
import smtplib
import socket
import subprocess
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


def test_haproxy_sends_the_client_address_and_drains_through_the_agent_check(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    haproxy = tool("haproxy", "haproxy")
    smtp_port, metrics_port, agent_port, front, stats = (free_port() for _ in range(5))
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
    sock = tmp_path / "haproxy.sock"
    env = {"FRONT_BIND": f"127.0.0.1:{front}", "STATS_BIND": f"127.0.0.1:{stats}", "STATS_SOCKET": str(sock),
           "BACKEND_ADDR": f"127.0.0.1:{smtp_port}", "BACKEND_METRICS_PORT": str(metrics_port),
           "BACKEND_AGENT_PORT": str(agent_port), "PATH": "/usr/bin:/bin"}
    serve_log, haproxy_log = tmp_path / "serve.log", tmp_path / "haproxy.log"
    proxy = None
    with serve(["--config", str(config), "--workers", "1", "--log-format", "plain"], serve_log) as server:
        try:
            wait_ready(server, metrics_port, serve_log)
            proxy = subprocess.Popen([haproxy, "-db", "-f", str(CFG)], env=env, stdout=haproxy_log.open("wb"),
                                     stderr=subprocess.STDOUT)

            def server_row() -> dict[str, str] | None:
                assert proxy is not None and proxy.poll() is None, haproxy_log.read_text()
                return show_stat(sock).get("smtpfront/smtpfront1")

            # Up through both checks: /readyz answered 200, the agent said "up ready 100%".
            row = wait_for("HAProxy's checks to pass", lambda: (
                (r := server_row()) and r["check_status"] == r["agent_status"] == "L7OK" and r
            ), log=haproxy_log)
            assert row["status"] == "UP" and row["last_agt"] == "via agent : up", row

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
        finally:
            stop(proxy)
