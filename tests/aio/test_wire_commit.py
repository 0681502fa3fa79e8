"""The commit without a task: a sink's future (or coroutine) is waited on with a callback, the
connection's deadline bounds the wait, and pipelined commands wait in the receive buffer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from smtpfront.config import TimeoutsConfig
from smtpfront.server import SMTPServer
from smtpfront.sink.base import Envelope, SinkError
from smtpfront.sink.memory import MemorySink

from .conftest import Client, StartServer, send_message


class FutureWriter:
    """Resolves its future as the sink says: now, later, never, or raises at commit."""

    def __init__(self, sink: FutureSink, envelope: Envelope) -> None:
        self.sink, self.envelope, self.size = sink, envelope, 0

    def write(self, data: memoryview) -> None:
        self.size += len(data)

    def pressure(self) -> None:
        return None

    def commit(self) -> Awaitable[str]:
        mode = self.sink.modes.pop(0) if self.sink.modes else "now"
        if mode == "raise":
            raise SinkError("down")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.sink.futures.append(future)
        if mode == "now":
            future.set_result(f"F{len(self.sink.futures)}")
        elif mode == "later":
            asyncio.get_running_loop().call_later(0.2, future.set_result, f"L{len(self.sink.futures)}")
        return future  # "never": left pending

    async def abort(self) -> None:
        self.sink.aborted += 1


class FutureSink(MemorySink):
    def __init__(self, modes: list[str]) -> None:
        super().__init__()
        self.modes, self.futures, self.aborted = modes, [], 0
        self.futures: list[asyncio.Future[str]]

    def open(self, envelope: Envelope) -> FutureWriter:  # type: ignore[override]
        return FutureWriter(self, envelope)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """True once ``check()`` is (the server's loop runs in another thread), False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def start_with(start_server: StartServer, sink: FutureSink, sink_timeout: float = 10.0):  # type: ignore[no-untyped-def]
    def setup(server: SMTPServer) -> None:
        server.sink = sink
        server.with_settings(timeouts=TimeoutsConfig(sink=sink_timeout))

    return start_server(setup=setup)


def test_a_future_the_sink_resolves_later_gives_the_250_with_its_id(start_server: StartServer) -> None:
    sink = FutureSink(["later", "now"])
    server = start_with(start_server, sink)
    with Client(server.port) as c:
        c.greet()
        # The next transaction is pipelined behind the final dot: it waits in the buffer.
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(b"one\r\n.\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
        assert c.reply().raw == b"250 2.0.0 Ok: queued as L1\r\n"
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(b"two\r\n.\r\n")
        assert c.reply().raw == b"250 2.0.0 Ok: queued as F2\r\n"


def test_a_commit_that_never_ends_is_451_at_the_sink_timeout_and_the_session_goes_on(
    start_server: StartServer
) -> None:
    sink = FutureSink(["never", "now"])
    server = start_with(start_server, sink, sink_timeout=0.3)
    with Client(server.port) as c:
        c.greet()
        r = send_message(c)
        assert (r.code, r.enhanced) == (451, "4.3.0")
        assert sink.futures[0].cancelled() and eventually(lambda: sink.aborted == 1)
        assert send_message(c).code == 250


def test_a_sink_error_raised_at_commit_is_451(start_server: StartServer) -> None:
    sink = FutureSink(["raise", "now"])
    server = start_with(start_server, sink)
    with Client(server.port) as c:
        c.greet()
        r = send_message(c)
        assert (r.code, r.enhanced) == (451, "4.3.0")
        assert eventually(lambda: sink.aborted == 1)
        assert send_message(c).code == 250
