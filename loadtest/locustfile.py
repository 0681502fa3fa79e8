"""Locust scenarios for an SMTP server, with every protocol phase as its own request row.

    locust -f loadtest/locustfile.py --headless -u 11 -r 11 -t 60s --host smtp://127.0.0.1:2525 --csv out

Each phase is reported as a request of type ``SMTP`` named after it: ``connect`` (TCP
connect to the 220 greeting), ``EHLO``, ``STARTTLS`` (the command and the handshake),
``AUTH``, ``MAIL/RCPT`` (MAIL and every RCPT), ``DATA→250`` (DATA, the body, the final
reply), and ``bad: …`` for the malformed inputs. A reply other than the one expected, a
timeout or a lost connection is a failure of that phase, and the session starts over.

Scenarios are user classes; name some on the command line to run only those
(``locust -f loadtest/locustfile.py KeptSession PerConnection …``):

    KeptSession      1 KB messages on a session kept open
    PerConnection    connect, EHLO, one 1 KB message, QUIT
    Large100K        100 KB messages on a kept session
    Huge10M          one 10 MB message per connection
    Submission       STARTTLS, AUTH PLAIN, one message per connection (port 587 style)
    ManyRecipients   1 KB messages to 50 recipients each
    SlowSender       a 20 KB body trickled in 1 KB pieces, 50 ms apart
    BadInput         malformed commands and a bare-LF body, each expecting a 5xx, then a good message

Options: ``--smtp-auth USER:PASS`` (Submission's credentials; ``none`` skips AUTH),
``--submission-host smtp://HOST:PORT`` (where Submission connects; default ``--host``),
``--smtp-timeout S`` (per reply, default 30). ``smtpfront serve`` has no credential store
(AUTH is decided by a hook), so point Submission at an embedded server that accepts it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Container, Iterator
from typing import Any
from urllib.parse import urlsplit

from locust import User, between, constant, events, task

from smtpfront.loadgen import make_body

ANY_5XX = range(500, 600)


class SMTPReplyError(Exception):
    """The server answered something other than what the phase expects."""


class SessionFailed(Exception):
    """A phase failed (already reported); the connection is closed."""


@functools.cache
def body(size: int) -> bytes:
    """A ``size``-octet text message, dot-stuffed, with the final dot."""
    return make_body(size)[0]


def target(url: str) -> tuple[str, int]:
    """``smtp://HOST:PORT`` (or ``HOST:PORT``) → (host, port); the port defaults to 25."""
    parts = urlsplit(url if "://" in url else f"smtp://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 25


class SMTPClient:
    """A lock-step SMTP client on a stdlib socket (cooperative under locust's gevent patching)."""

    def __init__(self, user: User, host: str, port: int, timeout: float) -> None:
        self.events = user.environment.events
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    @contextlib.contextmanager
    def phase(self, name: str, length: int = 0) -> Iterator[None]:
        """Time the block as one request named ``name``; on failure close and raise SessionFailed."""
        start = time.perf_counter()
        error: Exception | None = None
        try:
            yield
        except (OSError, SMTPReplyError, EOFError) as exc:
            error = exc
        self.events.request.fire(request_type="SMTP", name=name, response_time=(time.perf_counter() - start) * 1000,
                                 response_length=length, exception=error, context={})
        if error is not None:
            self.close()
            raise SessionFailed(name) from error

    def reply(self, expect: Container[int]) -> tuple[int, str]:
        """Read one whole reply; raise SMTPReplyError unless its code is in ``expect``."""
        assert self.sock is not None
        text = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("connection closed by the server")
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            text.append(line.decode("utf-8", "replace"))
            if line[3:4] != b"-":
                break
        try:
            code = int(line[:3])
        except ValueError:
            raise SMTPReplyError(f"not an SMTP reply: {line[:80]!r}") from None
        if code not in expect:
            raise SMTPReplyError(" / ".join(text)[:200])
        return code, text[-1]

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def command(self, line: bytes, expect: Container[int]) -> tuple[int, str]:
        self.send(line + b"\r\n")
        return self.reply(expect)

    # phases
    def connect(self) -> None:
        with self.phase("connect"):
            self.buf = b""
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.reply((220,))

    def ehlo(self) -> None:
        with self.phase("EHLO"):
            self.command(b"EHLO locust.example", (250,))

    def starttls(self) -> None:
        with self.phase("STARTTLS"):
            self.command(b"STARTTLS", (220,))
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            assert self.sock is not None
            self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
            self.buf = b""

    def auth_plain(self, user: str, password: str) -> None:
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        with self.phase("AUTH"):
            self.command(b"AUTH PLAIN " + token, (235,))

    def send_message(self, data: bytes, rcpts: int = 1, trickle: float = 0.0) -> None:
        """MAIL/RCPT, then DATA→250; ``trickle`` sends the body in 1 KB pieces that far apart."""
        with self.phase("MAIL/RCPT"):
            self.command(b"MAIL FROM:<locust@example.org>", (250,))
            for i in range(rcpts):
                self.command(b"RCPT TO:<user%d@example.net>" % i, (250, 251))
        with self.phase("DATA→250", len(data)):
            self.command(b"DATA", (354,))
            if trickle:
                for at in range(0, len(data), 1024):
                    self.send(data[at:at + 1024])
                    time.sleep(trickle)
            else:
                self.send(data)
            self.reply((250,))

    def quit(self) -> None:
        """QUIT without a phase of its own; errors only close the socket."""
        with contextlib.suppress(OSError, SMTPReplyError, EOFError):
            if self.sock is not None:
                self.command(b"QUIT", (221,))
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None


def _bodies(**_: Any) -> None:
    for size in (1024, 20 * 1024, 100 * 1024, 10 * 1024 * 1024):  # built before the clock runs, not mid-test
        body(size)


def _options(parser: Any) -> None:
    parser.add_argument("--smtp-auth", default="loadtest:loadtest", help="Submission's USER:PASS ('none': no AUTH)")
    parser.add_argument("--submission-host", default="", help="smtp://HOST:PORT for Submission (default: --host)")
    parser.add_argument("--smtp-timeout", type=float, default=30.0, help="seconds per reply (30)")


events.test_start.add_listener(_bodies)
events.init_command_line_parser.add_listener(_options)


class SMTPUser(User):
    """Base: an SMTPClient for ``--host``; subclasses run one scenario."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        host, port = target(self.host or "smtp://127.0.0.1:25")
        self.client = SMTPClient(self, host, port, getattr(options, "smtp_timeout", 30.0))

    def on_stop(self) -> None:
        self.client.quit()

    def one_message(self, size: int = 1024, rcpts: int = 1) -> None:
        """connect, EHLO, one message, QUIT."""
        with contextlib.suppress(SessionFailed):
            self.client.connect()
            self.client.ehlo()
            self.client.send_message(body(size), rcpts)
            self.client.quit()

    def kept_message(self, size: int = 1024, rcpts: int = 1) -> None:
        """One message on the kept session, connecting (and EHLO) first when there is none."""
        with contextlib.suppress(SessionFailed):
            if self.client.sock is None:
                self.client.connect()
                self.client.ehlo()
            self.client.send_message(body(size), rcpts)


class KeptSession(SMTPUser):
    weight = 3

    @task
    def small(self) -> None:
        self.kept_message(1024)


class PerConnection(SMTPUser):
    weight = 2

    @task
    def connection(self) -> None:
        self.one_message(1024)


class Large100K(SMTPUser):
    weight = 1

    @task
    def large(self) -> None:
        self.kept_message(100 * 1024)


class Huge10M(SMTPUser):
    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def huge(self) -> None:
        self.one_message(10 * 1024 * 1024)


class ManyRecipients(SMTPUser):
    weight = 1

    @task
    def many(self) -> None:
        self.kept_message(1024, rcpts=50)


class SlowSender(SMTPUser):
    weight = 1

    @task
    def slow(self) -> None:
        with contextlib.suppress(SessionFailed):
            self.client.connect()
            self.client.ehlo()
            self.client.send_message(body(20 * 1024), trickle=0.05)
            self.client.quit()


class Submission(SMTPUser):
    """STARTTLS and AUTH PLAIN, then one message per connection."""

    weight = 1

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        if getattr(options, "submission_host", ""):
            self.client.host, self.client.port = target(options.submission_host)
        self.credentials = getattr(options, "smtp_auth", "loadtest:loadtest")

    @task
    def submit(self) -> None:
        client = self.client
        with contextlib.suppress(SessionFailed):
            client.connect()
            client.ehlo()
            client.starttls()
            client.ehlo()
            if self.credentials.lower() != "none":
                user, _, password = self.credentials.partition(":")
                client.auth_plain(user, password)
            client.send_message(body(1024))
            client.quit()


BAD_INPUTS: list[tuple[str, bytes]] = [
    ("bad: unknown command", b"XYZZY frobnicate"),
    ("bad: MAIL syntax", b"MAIL FROM:<unterminated@example.org"),
    ("bad: RCPT before MAIL", b"RCPT TO:<user@example.net>"),
    ("bad: line too long", b"NOOP " + b"x" * 1000),
]


class BadInput(SMTPUser):
    """Per connection: two malformed commands in turn (each must get a 5xx), every other time a
    bare-LF body (5xx after the dot; smtpfront refuses it, servers that accept it show failures),
    then a good message."""

    weight = 1

    def on_start(self) -> None:
        self.turn = 0

    @task
    def bad(self) -> None:
        client = self.client
        self.turn += 1
        with contextlib.suppress(SessionFailed):
            client.connect()
            client.ehlo()
            for i in (2 * self.turn, 2 * self.turn + 1):
                name, line = BAD_INPUTS[i % len(BAD_INPUTS)]
                with client.phase(name):
                    client.command(line, ANY_5XX)
            if self.turn % 2:
                with client.phase("MAIL/RCPT"):
                    client.command(b"MAIL FROM:<locust@example.org>", (250,))
                    client.command(b"RCPT TO:<user@example.net>", (250,))
                with client.phase("bad: bare LF in DATA"):
                    client.command(b"DATA", (354,))
                    client.send(b"Subject: smuggle\r\n\r\nbare\nline feed\r\n.\r\n")
                    client.reply(ANY_5XX)
            client.send_message(body(1024))
            client.quit()
