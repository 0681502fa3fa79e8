"""A worker's held counts (``aio/tally.py``: per-message metrics written once a second) reach
the master's ``/metrics`` before the worker exits when it can, and lose at most one interval
when it cannot. Real ``smtpfront serve --workers 1`` processes, real SMTP sessions.

- SIGTERM right after the last ``250`` (well inside the one-second interval): every message,
  its octets and every session are counted once the worker is gone.
- SIGTERM while a session stalls in DATA (so the drain cannot finish), then SIGKILL before the
  next one-second flush, as when a drain ends in the master's SIGKILL: every message counted
  before the SIGTERM is there (the stop path flushes first). Before: none of them.
- A reload (SIGHUP) while a session stalls in DATA, ``graceful_timeout`` 1 s: the old worker
  ends its drain before the master's SIGKILL and exits by itself, the stalled session counted.
- SIGKILL one interval (and some slack) after the last ``250``: nothing is lost either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import time
from pathlib import Path

from .test_serve import TIMEOUT, Serve
from .test_serve_outcomes import Samples, scrape

MESSAGES = 25
ACCEPTED = ("smtpfront_messages_total", (("outcome", "accepted"),))


def deliver(server: Serve, n: int) -> None:
    """n messages on one session (one session, so the counts the session holds matter too)."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        send(smtp, n)


def send(smtp: smtplib.SMTP, n: int) -> None:
    for i in range(n):
        assert smtp.sendmail("a@example.org", ["b@example.net"], b"Subject: %d\r\n\r\nx\r\n" % i) == {}


def stall(smtp: smtplib.SMTP) -> None:
    """Begin one more message and stop in the middle of its body: the drain cannot finish."""
    assert smtp.mail("a@example.org")[0] == 250 and smtp.rcpt("b@example.net")[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(b"Subject: stalled\r\n\r\nhalf a body")


def sessions(samples: Samples) -> float:
    return sum(value for (name, _), value in samples.items() if name == "smtpfront_sessions_total")


def after_exit(server: Serve, worker: int) -> Samples:
    """The master's /metrics once ``worker`` is gone and its replacement is up (bounded wait)."""
    deadline = time.monotonic() + TIMEOUT
    while worker in server.workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker not in server.workers(), server.log.read_text()
    server.wait_workers(1, exclude={worker})
    return scrape(server.metrics_port)


def test_sigterm_flushes_the_held_counts_before_the_worker_exits(tmp_path: Path) -> None:
    server = Serve(tmp_path, "--workers", "1")
    try:
        (worker,) = server.wait_workers(1)
        time.sleep(1.5)  # the start-up probes' sessions are counted (one interval)
        before = scrape(server.metrics_port)
        deliver(server, MESSAGES)
        os.kill(worker, signal.SIGTERM)  # within the interval: the counts are still held
        after = after_exit(server, worker)
        accepted = after.get(ACCEPTED, 0.0) - before.get(ACCEPTED, 0.0)
        print(f"\n{MESSAGES} messages, SIGTERM at once: {accepted:.0f} counted accepted, "
              f"{sessions(after) - sessions(before):.0f} session(s)")
        assert accepted == MESSAGES
        assert sessions(after) - sessions(before) == 1
        assert after.get(("smtpfront_received_bytes_total", ()), 0.0) > before.get(
            ("smtpfront_received_bytes_total", ()), 0.0)
    finally:
        server.stop()


def test_a_drain_ended_by_sigkill_keeps_what_was_counted_before_the_sigterm(tmp_path: Path) -> None:
    server = Serve(tmp_path, "--workers", "1")
    try:
        (worker,) = server.wait_workers(1)
        time.sleep(1.5)
        before = scrape(server.metrics_port)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            began = time.monotonic()
            send(smtp, MESSAGES)
            stall(smtp)
            os.kill(worker, signal.SIGTERM)
            time.sleep(0.3)  # the stop path's first steps; the next one-second flush is later
            os.kill(worker, signal.SIGKILL)
            took = time.monotonic() - began
            after = after_exit(server, worker)
        accepted = after.get(ACCEPTED, 0.0) - before.get(ACCEPTED, 0.0)
        print(f"\n{MESSAGES} messages, SIGTERM, SIGKILL {took:.2f} s after the session began: "
              f"{accepted:.0f} counted accepted")
        assert accepted == MESSAGES
    finally:
        server.stop()


def test_a_reloaded_worker_ends_its_drain_before_the_masters_sigkill(tmp_path: Path) -> None:
    config = tmp_path / "smtpfront.toml"
    config.write_text("[supervisor]\ngraceful_timeout = 1.0\n")
    server = Serve(tmp_path, "--config", str(config), "--workers", "1")
    try:
        (worker,) = server.wait_workers(1)
        time.sleep(1.5)
        before = scrape(server.metrics_port)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            send(smtp, MESSAGES)
            stall(smtp)
            server.proc.send_signal(signal.SIGHUP)
            after = after_exit(server, worker)
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.close()
        log = server.log.read_text()
        accepted = after.get(ACCEPTED, 0.0) - before.get(ACCEPTED, 0.0)
        print(f"\nreload with a stalled session: {accepted:.0f} counted accepted, "
              f"{sessions(after) - sessions(before):.0f} session(s), old worker "
              + ("killed" if f"(pid {worker}) killed by signal 9" in log else "exited by itself"))
        assert f"(pid {worker}) exited with 0" in log, log
        assert accepted == MESSAGES
        assert sessions(after) - sessions(before) == 1  # the stalled one, ended by the drain
    finally:
        server.stop()


def test_sigkill_loses_at_most_one_interval(tmp_path: Path) -> None:
    server = Serve(tmp_path, "--workers", "1")
    try:
        (worker,) = server.wait_workers(1)
        time.sleep(1.5)
        before = scrape(server.metrics_port)
        deliver(server, MESSAGES)
        time.sleep(2.5)  # one interval, and slack for a loaded machine
        os.kill(worker, signal.SIGKILL)
        after = after_exit(server, worker)
        accepted = after.get(ACCEPTED, 0.0) - before.get(ACCEPTED, 0.0)
        print(f"\n{MESSAGES} messages, SIGKILL 2.5 s later: {accepted:.0f} counted accepted")
        assert accepted == MESSAGES
        assert sessions(after) - sessions(before) == 1
    finally:
        server.stop()
