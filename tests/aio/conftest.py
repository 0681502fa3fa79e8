"""Wire-test fixtures: a real ``SMTPServer`` on 127.0.0.1 in a background uvloop thread.

pytest has no asyncio plugin here, so each server runs on its own uvloop event loop in a
thread; tests talk to it with real clients (``smtplib``, raw sockets, ``swaks``) over
loopback. Every wait is bounded: sockets time out after 10 s, sink waits take a timeout.

``start_server(hooks=None, setup=None, **options)`` starts one server and returns a
:class:`Running` handle (``.port``, ``.server``, ``.sink``); ``setup(server)`` runs before
``start()`` (for ``use``, ``middleware``, ``on``, ``with_settings``). Every server started
is closed after the test, and the test fails if smtpfront logged an unexpected error
(a crash answered with ``421 4.3.0``) unless the test set ``expect_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest
import uvloop

from smtpfront.aio.tls import generate_self_signed
from smtpfront.hooks import Hooks
from smtpfront.server import SMTPServer
from smtpfront.sink.memory import MemorySink, StoredMessage

T = TypeVar("T")
TIMEOUT = 10.0
HOSTNAME = "mx.test"


# -- replies and a raw client ------------------------------------------------------------

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply as it came off the wire."""

    code: int
    lines: list[str]  # text after "NNN-" / "NNN "
    raw: bytes

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code of the last line, if there is one."""
        first = self.lines[-1].split(" ", 1)[0]
        return first if _ENHANCED.match(first) else None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __repr__(self) -> str:
        return f"Reply({self.raw!r})"


class Client:
    """A raw SMTP client on a real socket: send exact bytes, read exact replies."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = TIMEOUT,
                 sock: socket.socket | None = None) -> None:
        self.sock = sock if sock is not None else socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    # context manager
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """One CRLF-terminated line (raises EOFError if the server closed first)."""
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; unread {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def reply(self) -> Reply:
        """Read one whole reply (all continuation lines)."""
        raw = b""
        lines: list[str] = []
        while True:
            line = self.line()
            raw += line
            text = line[:-2].decode("utf-8", "replace")
            assert len(text) >= 3 and text[:3].isdigit(), f"not a reply line: {line!r}"
            lines.append(text[4:])
            if len(text) == 3 or text[3] == " ":
                return Reply(int(text[:3]), lines, raw)
            assert text[3] == "-", f"bad reply separator: {line!r}"

    def expect(self, code: int, enhanced: str | None = None) -> Reply:
        reply = self.reply()
        assert reply.code == code, f"expected {code} {enhanced or ''}, got {reply!r}"
        if enhanced is not None:
            assert reply.enhanced == enhanced, f"expected {code} {enhanced}, got {reply!r}"
        return reply

    def cmd(self, line: str | bytes) -> Reply:
        data = line.encode("utf-8") if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.cmd(f"EHLO {name}")

    def greet(self, ehlo: str | None = "client.test") -> Reply:
        """Read the 220 greeting, then (unless ``ehlo`` is None) EHLO and expect 250."""
        greeting = self.expect(220)
        if ehlo is not None:
            reply = self.ehlo(ehlo)
            assert reply.code == 250, reply
        return greeting

    def closed(self) -> bool:
        """True if the server closes the connection with no further bytes (waits ≤ timeout)."""
        try:
            while True:
                if not self._fill():
                    return self.buf == b""
        except (ConnectionResetError, BrokenPipeError):
            return self.buf == b""

    def rest(self) -> bytes:
        """Everything until the server closes (what is still buffered included)."""
        try:
            while self._fill():
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        out, self.buf = self.buf, b""
        return out

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None = HOSTNAME) -> None:
        """Wrap the socket in TLS (after a 220 to STARTTLS). Buffered bytes must be none."""
        assert self.buf == b"", f"plaintext bytes after the 220: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock.settimeout(TIMEOUT)


def send_message(client: Client, sender: str = "a@client.test", rcpts: tuple[str, ...] = ("b@mx.test",),
                 body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> Reply:
    """MAIL, RCPT…, DATA, body, dot; returns the reply to the body (the caller checks it)."""
    r = client.cmd(f"MAIL FROM:<{sender}>")
    assert r.code == 250, r
    for rcpt in rcpts:
        r = client.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, r
    r = client.cmd("DATA")
    assert r.code == 354, r
    client.send(body + b".\r\n")
    return client.reply()


# -- the server in a thread -----------------------------------------------------------------


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("smtpfront"):
            self.records.append(record)


class Running:
    """A started server: ``port``, ``server``, ``sink``, and a way into its loop."""

    def __init__(self, server: SMTPServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.server = server
        self.loop = loop
        self.thread = thread
        self.port = server.port
        assert isinstance(server.sink, MemorySink)
        self.sink: MemorySink = server.sink
        self.expect_errors = False
        self.stopped = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run ``coro`` on the server's loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start ``coro`` on the server's loop; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[StoredMessage]:
        """Wait until the sink holds ``count`` messages; returns them all."""
        return self.call(self.sink.wait_for(count, timeout), timeout + 1)

    def connections(self) -> int:
        async def get() -> int:
            return self.server.connections

        return self.call(get())

    def wait_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the server has exactly ``count`` open connections."""
        async def poll() -> None:
            while self.server.connections != count:
                await asyncio.sleep(0.01)

        self.call(asyncio.wait_for(poll(), timeout), timeout + 1)

    def stop(self, timeout: float = 1.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self.call(self.server.close(timeout), timeout + TIMEOUT)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            if not self.thread.is_alive():
                self.loop.close()


class StartServer(Protocol):
    def __call__(self, hooks: Hooks | None = ..., setup: Callable[[SMTPServer], None] | None = ...,
                 **options: Any) -> Running: ...


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for mx.test (also valid for 127.0.0.1 and localhost)."""
    return generate_self_signed(str(tmp_path_factory.mktemp("certs")), HOSTNAME)


@pytest.fixture(scope="session")
def client_context(cert: tuple[str, str]) -> ssl.SSLContext:
    """A client context that trusts only the test certificate and checks the name."""
    ctx = ssl.create_default_context(cafile=cert[0])
    return ctx


@pytest.fixture
def start_server(cert: tuple[str, str]) -> Iterator[StartServer]:
    """Factory: ``start_server(hooks=None, setup=None, **SMTPServer options)``."""
    started: list[Running] = []
    errors = _ErrorLog()
    logging.getLogger().addHandler(errors)

    def start(hooks: Hooks | None = None, setup: Callable[[SMTPServer], None] | None = None,
              **options: Any) -> Running:
        options.setdefault("name", HOSTNAME)
        options.setdefault("auth_failure_delay", 0)
        options.setdefault("close_timeout", 1.0)
        options.setdefault("socket_timeout", TIMEOUT)
        if options.get("tls", True) and "cert_file" not in options:
            options["cert_file"], options["key_file"] = cert
        loop = uvloop.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="smtpfront-test-loop", daemon=True)
        thread.start()

        async def make() -> SMTPServer:
            server = SMTPServer(hooks, host="127.0.0.1", port=0, sink=MemorySink(), **options)
            if setup is not None:
                setup(server)
            await server.start()
            return server

        try:
            server = asyncio.run_coroutine_threadsafe(make(), loop).result(TIMEOUT)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT)
            raise
        running = Running(server, loop, thread)
        started.append(running)
        return running

    try:
        yield start
    finally:
        logging.getLogger().removeHandler(errors)
        for running in started:
            running.stop()
    unexpected = [r for r in errors.records if not any(s.expect_errors for s in started)]
    assert not unexpected, "smtpfront logged errors: " + "; ".join(
        f"{r.name}: {r.getMessage()}" + (f" [{r.exc_info[1]!r}]" if r.exc_info else "") for r in unexpected
    )


@pytest.fixture
def server(start_server: StartServer) -> Running:
    """A server with the default options (STARTTLS with the test certificate)."""
    return start_server()
