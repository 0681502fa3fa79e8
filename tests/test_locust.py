"""``locust --headless`` with loadtest/locustfile.py against a real ``smtpfront serve --queue null:``.

Submission (STARTTLS + AUTH PLAIN) goes to an embedded SMTPServer in this process whose hook
accepts one user, since ``smtpfront serve`` has no credential store.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from smtpfront.aio.tls import generate_self_signed
from smtpfront.core.events import SaslCredentials
from smtpfront.hooks import Hooks, Session
from smtpfront.server import SMTPServer
from smtpfront.sink.null import NullSink

from .conftest import free_port, terminate, wait_greeting

ROOT = Path(__file__).resolve().parent.parent
PHASES = {"connect", "EHLO", "STARTTLS", "AUTH", "MAIL/RCPT", "DATA→250", "bad: unknown command", "bad: MAIL syntax",
          "bad: RCPT before MAIL", "bad: line too long", "bad: bare LF in DATA"}


@pytest.fixture
def serve_null(tmp_path: Path) -> Iterator[int]:
    """``smtpfront serve --queue null:`` with one worker on a free port."""
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "smtpfront", "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1",
         "--queue", "null:", "--metrics-listen", "127.0.0.1:0", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")},
             "SMTPFRONT_TLS__SELF_SIGNED_DIR": str(tmp_path / "tls")},
    )
    try:
        wait_greeting(port, 15)
        yield port
    finally:
        terminate(process)
        log.close()


class _OneUser(Hooks):
    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool:
        return (credentials.username, credentials.password) == ("sub", "secret")


@pytest.fixture
def submission(tmp_path: Path) -> Iterator[int]:
    """An embedded server offering STARTTLS and AUTH PLAIN for sub/secret, on its own loop thread."""
    cert, key = generate_self_signed(str(tmp_path / "certs"), "mx.test")
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def make() -> SMTPServer:
        server = SMTPServer(_OneUser(), host="127.0.0.1", port=0, sink=NullSink(), name="mx.test",
                           cert_file=cert, key_file=key, auth_methods=["PLAIN"], auth_failure_delay=0,
                           log_sessions=False)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(make(), loop).result(10)
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(1.0), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_every_phase_is_a_request_row_without_failures(serve_null: int, submission: int, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
         "-u", "11", "-r", "11", "-t", "4s", "--stop-timeout", "1", "--host", f"smtp://127.0.0.1:{serve_null}",
         "--submission-host", f"smtp://127.0.0.1:{submission}", "--smtp-auth", "sub:secret",
         "--csv", str(tmp_path / "out"), "--only-summary", "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with (tmp_path / "out_stats.csv").open(encoding="utf-8") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f) if row["Type"] == "SMTP"}
    assert set(rows) == PHASES
    for name, row in rows.items():
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0, (name, row)
        assert float(row["Average Response Time"]) > 0, (name, row)
    with (tmp_path / "out_failures.csv").open(encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == []
