"""Every outcome is counted where it happens, as ``/metrics`` of a real ``smtpfront serve`` shows.

- A message refused at ``DATA`` because the queue is away (Redis stopped) is a
  ``tempfailed`` message, like one refused after its body.
- A full disk under the Maildir queue answers ``452 4.3.1`` (RFC 3463: mail system full),
  not ``451 4.3.0``, and each failed write counts in ``smtpfront_queue_errors_total`` (its
  alert must be able to fire). The disk is made full for the message files only: the
  server runs with its message files' writes going to ``/dev/full`` (a real ENOSPC from the
  kernel, as in ``tests/sink/test_maildir.py``), everything else on the real disk.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ..conftest import RedisServer, free_port
from .test_serve import TIMEOUT, Serve, http_get

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics_port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(metrics_port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def settle(metrics_port: int, name: str, labels: tuple[tuple[str, str], ...], want: float) -> float:
    """The metric's value once it reaches ``want`` (held counts are flushed once a second), or
    whatever it is after a bounded wait."""
    deadline = time.monotonic() + TIMEOUT
    value = scrape(metrics_port).get((name, labels), 0.0)
    while value < want and time.monotonic() < deadline:
        time.sleep(0.1)
        value = scrape(metrics_port).get((name, labels), 0.0)
    time.sleep(1.2)  # one more flush: a count past want would show now
    return scrape(metrics_port).get((name, labels), 0.0)


def transaction(smtp: smtplib.SMTP, body: bytes) -> tuple[str, int, bytes]:
    """MAIL, RCPT, DATA, body; returns where it ended ("data" or "dot"), the code and the text."""
    smtp.rset()
    assert smtp.mail("a@example.org")[0] == 250
    assert smtp.rcpt("b@example.net")[0] == 250
    code, text = smtp.docmd("DATA")
    if code != 354:
        return "data", code, text
    smtp.send(body.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
    code, text = smtp.getreply()
    return "dot", code, text


def test_a_message_refused_at_data_while_the_queue_is_away_is_counted_tempfailed(
        tmp_path: Path, redis_server: RedisServer) -> None:
    sent = 12
    # Serve puts a Maildir queue on its command line; the --queue given here comes last and wins.
    server = Serve(tmp_path, "--queue", redis_server.url, "--workers", "1")
    try:
        assert server.send(1)  # the queue works
        redis_server.stop()
        ends: list[tuple[str, int, bytes]] = []
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            for i in range(sent):
                ends.append(transaction(smtp, b"Subject: %d\r\n\r\nx" % i))
        assert [(code, text[:5]) for _, code, text in ends] == [(451, b"4.3.0")] * sent, ends
        at_data = sum(1 for where, _, _ in ends if where == "data")
        assert at_data >= sent - 2  # once the queue is known away, DATA itself is refused
        tempfailed = settle(server.metrics_port, "smtpfront_messages_total", (("outcome", "tempfailed"),), sent)
        print(f"\n{sent} messages refused with 451 ({at_data} at DATA): tempfailed counted {tempfailed:.0f}")
        assert tempfailed == sent
    finally:
        server.stop()


_FULL_DISK_SERVE = """
import os, sys
spool_tmp = os.path.realpath(sys.argv[1]) + "/tmp/"
real_fdopen = os.fdopen

def fdopen(fd, *args, **kwargs):
    # A message file (spool/tmp/...) writes to /dev/full: every write that reaches it is ENOSPC.
    if os.path.realpath(f"/proc/self/fd/{fd}").startswith(spool_tmp):
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
    return real_fdopen(fd, *args, **kwargs)

os.fdopen = fdopen
from smtpfront.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_answers_452_and_counts_queue_errors(tmp_path: Path) -> None:
    port, metrics_port, spool = free_port(), free_port(), tmp_path / "spool"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_FULL_DISK_SERVE), str(spool), "serve",
         "--listen", f"127.0.0.1:{port}", "--queue", f"maildir:{spool}", "--no-tls", "--workers", "1",
         "--log-format", "json", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready(metrics_port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        bodies = [b"Subject: small\r\n\r\nx", b"Subject: large\r\n\r\n" + b"y" * 200_000]  # written at commit / at once
        ends = []
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            for body in bodies * 3:
                ends.append(transaction(smtp, body))
        assert [(where, code, text[:5]) for where, code, text in ends] == [("dot", 452, b"4.3.1")] * 6, ends
        assert list((spool / "new").iterdir()) == [] and list((spool / "tmp").iterdir()) == []
        errors = settle(metrics_port, "smtpfront_queue_errors_total", (), 6)
        tempfailed = settle(metrics_port, "smtpfront_messages_total", (("outcome", "tempfailed"),), 6)
        print(f"\n6 messages on a full disk: 452 4.3.1 each, queue errors {errors:.0f}, tempfailed {tempfailed:.0f}")
        assert (errors, tempfailed) == (6, 6)
        # Logged as a full disk, and no traceback: a full disk is an expected fault.
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert any("disk full" in line.get("msg", "") for line in lines)
        assert not [line for line in lines if line.get("level") == "ERROR"], lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def ready(metrics_port: int) -> bool:
    try:
        return http_get(metrics_port, "/readyz")[0] == 200
    except OSError:  # not listening yet
        return False
