"""[auth] backend = "dovecot": serve asks a real Dovecot (Debian's dovecot-core, started here as
root with its base_dir in a temporary directory, a passwd-file of users) over its auth-client
unix socket and over a loopback TCP listener, as Postfix's smtpd_sasl_type = dovecot does."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import free_port, terminate
from .support import TIMEOUT, Served, run_cli

PASSWORD = "dovecot's secret"
DOVECOT_CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols =
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={dir}
}}
service auth {{
  user = root
  unix_listener auth-client {{
    mode = 0600
  }}
  inet_listener auth-tcp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""
CONFIG = '''
    hostname = "mx.test"
    queue = "maildir:{spool}"
    [[listeners]]
    address = "127.0.0.1:{port}"
    mode = "submission"
    tls = "none"
    [limits]
    auth_failures = 20
    [auth]
    methods = ["PLAIN", "LOGIN"]
    allow_insecure = true
    failure_delay = 0.0
    backend = "dovecot"
    socket = "SOCKET"
    timeout = 5.0
'''


@dataclass
class Dovecot:
    dir: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> str:
        return str(self.dir / "run" / "auth-client")

    def stop(self) -> None:
        """Stop the master and its children (the auth process would serve open connections on)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: only the processes it started
        terminate(self.process)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A Dovecot auth service in the foreground; stopped (and its directory removed) after the test."""
    directory = Path(tempfile.mkdtemp(prefix="dovecot-"))  # short: a unix socket path has 108 octets
    port = free_port()
    (directory / "state").mkdir()
    (directory / "users").write_text(f"alice@example.com:{{PLAIN}}{PASSWORD}\n")
    (directory / "dovecot.conf").write_text(DOVECOT_CONF.format(dir=directory, port=port))
    process = subprocess.Popen(["dovecot", "-F", "-c", str(directory / "dovecot.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    server = Dovecot(directory, port, process)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (Path(server.socket).exists() and _listening(port)):
            if process.poll() is not None or time.monotonic() > deadline:
                log = directory / "dovecot.log"
                why = log.read_text() if log.exists() else process.returncode
                raise AssertionError(f"dovecot did not start: {why}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def login(port: int, mechanism: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = "alice@example.com", password
        try:
            reply = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, exc.smtp_error
        smtp.sendmail("alice@example.com", ["x@example.net"], b"Subject: t\r\n\r\nx\r\n")
        return reply


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_dovecot_checks_plain_and_login(dovecot: Dovecot, served: type[Served], transport: str) -> None:
    where = dovecot.socket if transport == "unix" else f"127.0.0.1:{dovecot.port}"
    server = served(CONFIG.replace("SOCKET", where))
    for mechanism in ("PLAIN", "LOGIN"):
        assert login(server.port, mechanism, PASSWORD)[0] == 235
        assert login(server.port, mechanism, "wrong") == (535, b"5.7.8 Error: authentication credentials invalid")
    assert len(server.queued()) == 2


def test_swaks_through_dovecot(dovecot: Dovecot, served: type[Served]) -> None:
    server = served(CONFIG.replace("SOCKET", dovecot.socket))
    for password, expected in ((PASSWORD, "235 2.7.0"), ("nope", "535 5.7.8")):
        result = subprocess.run(["swaks", "--server", f"127.0.0.1:{server.port}", "--from", "alice@example.com",
                                 "--to", "x@example.net", "--auth", "PLAIN", "--auth-user", "alice@example.com",
                                 "--auth-password", password, "--timeout", str(TIMEOUT)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert expected in result.stdout, result.stdout


def test_dovecot_away_is_a_temporary_failure(dovecot: Dovecot, served: type[Served]) -> None:
    server = served(CONFIG.replace("SOCKET", f"127.0.0.1:{dovecot.port}"))
    assert login(server.port, "PLAIN", PASSWORD)[0] == 235
    dovecot.stop()
    assert login(server.port, "PLAIN", PASSWORD) == (454, b"4.7.0 Temporary authentication failure")
    server.stop()
    assert PASSWORD not in server.log.read_text() and "dovecot auth at 127.0.0.1" in server.log.read_text()


def test_check_config_refuses_mechanisms_dovecot_cannot_check(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nmethods = ["PLAIN", "SCRAM-SHA-256"]\nbackend = "dovecot"\nsocket = "/run/x"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2 and "auth.methods" in result.stderr and "SCRAM-SHA-256" in result.stderr
    path.write_text('[auth]\nmethods = ["PLAIN"]\nbackend = "dovecot"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2 and "auth.socket" in result.stderr
