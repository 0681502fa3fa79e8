"""The pre-fork master with real processes: ``smtpfront serve --workers N`` on loopback."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import free_port, wait_greeting

TIMEOUT = 10


class Serve:
    """A running ``smtpfront serve`` master and what it wrote."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.spool = tmp / "spool"
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpfront", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--queue", f"maildir:{self.spool}", "--no-tls", "--log-format", "plain",
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *args],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )
        self.ready()

    def workers(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False)
        return {int(pid) for pid in out.stdout.split()}

    def wait_workers(self, count: int, exclude: set[int] = frozenset(), timeout: float = TIMEOUT) -> set[int]:  # type: ignore[assignment]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.workers() - exclude
            if len(pids) >= count:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"expected {count} workers, have {self.workers()}:\n{self.log.read_text()}")

    def ready(self) -> None:
        """Wait until a worker answers with a greeting (fails at once if the master exited)."""
        wait_greeting(self.port, TIMEOUT, self.proc, self.log)

    def send(self, n: int = 1) -> list[str]:
        """Deliver n messages, one per connection; returns the replies' queue ids."""
        ids = []
        for i in range(n):
            with smtplib.SMTP("127.0.0.1", self.port, timeout=TIMEOUT) as smtp:
                smtp.ehlo()
                smtp.mail("a@example.org")
                smtp.rcpt("b@example.net")
                code, reply = smtp.data(b"Subject: %d\r\n\r\nx\r\n" % i)
                assert code == 250, reply
                ids.append(reply.decode().rsplit(" ", 1)[1])
        return ids

    def delivering_pids(self) -> set[int]:
        """Which worker pids wrote the delivered messages (session ids begin with the pid)."""
        pids = set()
        for path in (self.spool / "new").iterdir():
            match = re.search(rb"\bid ([0-9a-f]+)[0-9a-f]{7}\.\d+", path.read_bytes())  # pid, then a counter
            assert match, path.read_bytes()[:300]
            pids.add(int(match.group(1), 16))
        return pids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Serve]]:
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        server = Serve(tmp_path, *args)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def test_workers_share_the_port_and_drain_on_sigterm(serve: type[Serve]) -> None:
    server = serve("--workers", "2")
    workers = server.wait_workers(2)
    server.send(30)
    assert server.delivering_pids() == workers  # the kernel spread connections over both
    assert server.stop() == 0
    assert "master stopped" in server.log.read_text()


def test_a_killed_worker_is_replaced(serve: type[Serve]) -> None:
    server = serve("--workers", "2")
    workers = server.wait_workers(2)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replacement = server.wait_workers(1, exclude=workers)
    assert victim not in server.workers() and replacement
    server.send(5)
    assert "killed by signal 9" in server.log.read_text()
    assert server.stop() == 0


def test_reload_rolls_workers_without_refusing_connections(serve: type[Serve]) -> None:
    server = serve("--workers", "2", "--graceful-timeout", "5")
    old = server.wait_workers(2)
    refused: list[Exception] = []
    done = threading.Event()

    def knock() -> None:  # connect continuously while the generations change
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as conn:
                    greeting = conn.recv(64)
                    if not greeting.startswith(b"220"):
                        refused.append(AssertionError(greeting))
            except OSError as exc:
                refused.append(exc)
            time.sleep(0.01)

    thread = threading.Thread(target=knock)
    thread.start()
    try:
        server.proc.send_signal(signal.SIGHUP)
        new = server.wait_workers(2, exclude=old)
        deadline = time.monotonic() + TIMEOUT
        while server.workers() & old and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        thread.join(TIMEOUT)
    assert not server.workers() & old and len(new) == 2
    assert refused == []
    server.send(3)
    assert server.stop() == 0


def test_sigterm_lets_an_open_transaction_finish(serve: type[Serve]) -> None:
    server = serve("--workers", "1", "--graceful-timeout", "10")
    server.wait_workers(1)
    smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    smtp.ehlo()
    smtp.mail("a@example.org")
    smtp.rcpt("b@example.net")
    server.proc.send_signal(signal.SIGTERM)  # mid-transaction
    time.sleep(0.3)
    code, reply = smtp.data(b"Subject: last\r\n\r\nfinished during the drain\r\n")
    assert code == 250, reply
    assert smtp.getreply()[0] == 421  # then the drain closes the session: 421 4.3.2
    smtp.close()
    assert server.stop() == 0
    (delivered,) = list((server.spool / "new").iterdir())
    assert delivered.read_bytes().endswith(b"finished during the drain\r\n")


def test_a_port_in_use_stops_with_a_clear_message(serve: type[Serve], tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "smtpfront", "serve", "--listen", f"127.0.0.1:{port}", "--workers", "2",
             "--queue", f"maildir:{tmp_path / 's'}", "--no-tls"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_a_stuck_worker_is_replaced(serve: type[Serve]) -> None:
    server = serve("--workers", "1", "--heartbeat-timeout", "2")
    (stuck,) = server.wait_workers(1)
    time.sleep(2.2)  # past the start-up grace period
    os.kill(stuck, signal.SIGSTOP)  # alive but silent: its event loop no longer beats
    try:
        server.wait_workers(1, exclude={stuck}, timeout=8)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    assert "silent for" in server.log.read_text()
    server.ready()
    server.send(2)
    assert server.stop() == 0


def test_a_config_file_with_two_listeners(tmp_path: Path) -> None:
    plain, implicit = free_port(), free_port()
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"""
workers = 1
queue = "maildir:{tmp_path / 'spool'}"
hostname = "mx.test"

[[listeners]]
address = "127.0.0.1:{plain}"
tls = "none"

[[listeners]]
address = "127.0.0.1:{implicit}"
tls = "implicit"

[tls]
self_signed_dir = "{tmp_path / 'tls'}"

[metrics]
listen = "127.0.0.1:0"
""")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "smtpfront", "serve", "--config", str(config)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", implicit), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", plain, timeout=TIMEOUT) as smtp:
            smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: plain\r\n\r\nx\r\n")
        context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "selfsigned-mx.test.pem"))
        with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=TIMEOUT, context=context,
                              local_hostname="client.test") as smtp:
            smtp.sock.getpeercert()  # verified against the generated certificate
            smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: implicit\r\n\r\nx\r\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT + 5) == 0, log.read_text()
    bodies = b"".join(path.read_bytes() for path in (tmp_path / "spool" / "new").iterdir())
    assert b"Subject: plain" in bodies and b"Subject: implicit" in bodies
    assert b"with ESMTPS" in bodies  # the implicit-TLS message says so in its trace


def test_check_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('queue = "redis://user:hunter2@127.0.0.1:6379/0"\n[limits]\nmessage_size = 1000000\n')
    out = subprocess.run([sys.executable, "-m", "smtpfront", "check-config", str(good)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "message_size = 1000000" in out.stdout and "hunter2" not in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nbare_line_endings = "maybe"\n')
    out = subprocess.run([sys.executable, "-m", "smtpfront", "check-config", str(bad)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2
    assert "limits.bare_line_endings" in out.stderr and "reject" in out.stderr


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_endpoints(serve: type[Serve]) -> None:
    server = serve("--workers", "2", "--graceful-timeout", "10")
    server.wait_workers(2)
    deadline = time.monotonic() + TIMEOUT
    while http_get(server.metrics_port, "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_get(server.metrics_port, "/healthz") == (200, "ok\n")
    assert http_get(server.metrics_port, "/readyz") == (200, "ready\n")
    server.send(3)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = http_get(server.metrics_port, "/metrics")
        assert status == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    # A session is counted when its connection is gone; per-message and per-command tallies
    # reach the registry when the worker flushes them (once a second): wait for all of them.
    settled = {
        ("smtpfront_sessions_total", (("auth", "no"), ("tls", "no"))): 3,
        ("smtpfront_messages_total", (("outcome", "accepted"),)): 3,
        ("smtpfront_message_size_bytes_count", ()): 3,
        ("smtpfront_commands_total", (("verb", "MAIL"),)): 3,
        ("smtpfront_replies_total", (("class", "2xx"), ("verb", "DATA"))): 3,
    }
    samples = scrape()
    deadline = time.monotonic() + TIMEOUT
    while any(samples.get(key, 0) < n for key, n in settled.items()):
        assert time.monotonic() < deadline, {key: samples.get(key) for key in settled}
        time.sleep(0.05)
        samples = scrape()
    assert samples[("smtpfront_messages_total", (("outcome", "accepted"),))] == 3  # summed over both workers
    assert samples[("smtpfront_connections_total", ())] >= 3
    assert samples[("smtpfront_message_size_bytes_count", ())] == 3
    assert samples[("smtpfront_commands_total", (("verb", "MAIL"),))] == 3
    assert samples[("smtpfront_replies_total", (("class", "2xx"), ("verb", "CONNECT")))] >= 3  # + ready() probes
    assert samples[("smtpfront_replies_total", (("class", "3xx"), ("verb", "DATA")))] == 3
    assert samples[("smtpfront_replies_total", (("class", "2xx"), ("verb", "DATA")))] == 3
    assert samples[("smtpfront_greeting_seconds_count", ())] >= 3
    assert samples[("smtpfront_workers", ())] == samples[("smtpfront_workers_ready", ())] == 2
    assert samples[("smtpfront_draining", ())] == 0
    assert samples[("smtpfront_queue_up", ())] == 1  # the Maildir queue is always reachable
    # Draining: a transaction is open, SIGTERM arrives, /readyz says not ready while it finishes.
    smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    smtp.ehlo()
    smtp.mail("a@example.org")
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert http_get(server.metrics_port, "/readyz")[0] == 503
    assert scrape()[("smtpfront_draining", ())] == 1
    smtp.rcpt("b@example.net")
    assert smtp.data(b"Subject: last\r\n\r\nx\r\n")[0] == 250
    smtp.close()
    assert server.stop() == 0


def agent_answer(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        return conn.recv(64).decode().strip()


def test_agent_status_from_capacity() -> None:
    from smtpfront.metrics import agent_status

    assert agent_status(ready=True, draining=False, active=0, capacity=4) == "up ready 100%"
    assert agent_status(ready=True, draining=False, active=3, capacity=4) == "up ready 25%"
    assert agent_status(ready=True, draining=False, active=9, capacity=4) == "up ready 1%"  # never 0: still up
    assert agent_status(ready=True, draining=False, active=9, capacity=0) == "up ready 100%"  # unlimited
    assert agent_status(ready=False, draining=False, active=0, capacity=4) == "down"
    assert agent_status(ready=True, draining=True, active=0, capacity=4) == "drain"


def test_haproxy_agent_check_follows_load_and_drain(serve: type[Serve], monkeypatch: pytest.MonkeyPatch) -> None:
    agent = free_port()
    monkeypatch.setenv("SMTPFRONT_METRICS__AGENT_CHECK_LISTEN", f"127.0.0.1:{agent}")
    server = serve("--workers", "1", "--max-clients", "2", "--graceful-timeout", "10")
    server.wait_workers(1)
    deadline = time.monotonic() + TIMEOUT
    while agent_answer(agent) != "up ready 100%" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_answer(agent) == "up ready 100%"
    smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)  # one of the two slots
    smtp.ehlo()
    smtp.mail("a@example.org")
    deadline = time.monotonic() + 3  # the worker writes its connections gauge once a second
    while agent_answer(agent) != "up ready 50%" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_answer(agent) == "up ready 50%"
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert agent_answer(agent) == "drain"  # HAProxy stops sending before the pod goes away
    smtp.rcpt("b@example.net")
    assert smtp.data(b"Subject: last\r\n\r\nx\r\n")[0] == 250
    smtp.close()
    assert server.stop() == 0


def test_drain_delay_keeps_taking_sessions_while_the_agent_says_drain(
    serve: type[Serve], monkeypatch: pytest.MonkeyPatch
) -> None:
    """supervisor.drain_delay: from SIGTERM the agent says "drain" and /readyz 503 at once, yet
    new sessions are still served (a load balancer needs a few seconds to move them), until
    the delay ends and the workers stop."""
    agent, delay = free_port(), 2.5
    monkeypatch.setenv("SMTPFRONT_METRICS__AGENT_CHECK_LISTEN", f"127.0.0.1:{agent}")
    monkeypatch.setenv("SMTPFRONT_SUPERVISOR__DRAIN_DELAY", str(delay))
    server = serve("--workers", "1", "--graceful-timeout", "10")
    [worker] = server.wait_workers(1)
    server.proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    deadline = stopped_at + TIMEOUT
    while agent_answer(agent) != "drain" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_answer(agent) == "drain"
    assert http_get(server.metrics_port, "/readyz")[0] == 503
    assert server.send(1)  # still served while HAProxy moves new clients away
    assert server.workers() == {worker}
    assert server.proc.wait(timeout=TIMEOUT + delay) == 0  # (a second SIGTERM would end the delay)
    assert time.monotonic() - stopped_at >= delay  # the workers waited the delay out
