"""The queue's hot path to Redis at protocol level: hand-packed RESP out, hiredis replies in.

redis-py opens and prepares the connection (TCP or TLS, Sentinel's master discovery, AUTH,
SELECT, the dedup script): what it does well and rarely. Then :func:`adopt` takes the
connection's transport over with a :class:`Channel`, an ``asyncio.Protocol`` of our own: a
batch of commands goes out as one ``write``, its replies are parsed by a ``hiredis.Reader`` as
they arrive and handed over, all at once, to the batch's future, in order. No coroutine per
reply, no timeout object per read, no pool: redis-py's generic path cost ~20 % of a worker at
1 KB messages (ARCHITECTURE.md, performance facts).

Several batches may be in flight on one channel (Redis answers in order). One timer per
channel, re-armed lazily, fails every waiting batch when the oldest has waited ``timeout``
seconds: a Redis that stopped answering is noticed once, not per batch.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

__all__ = ["Channel", "ReplyError", "adopt", "bulk", "command", "xadd_head"]

ReplyError = hiredis.ReplyError  # an error reply (-ERR …) is returned in its place, not raised


class _Call:
    __slots__ = ("future", "count", "replies", "deadline")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []
        self.deadline = deadline


class Channel(asyncio.Protocol):
    """One Redis connection's replies, matched in order to the batches that asked for them."""

    def __init__(self, label: str, timeout: float) -> None:
        self.label = label
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None  # once set, every call fails with it
        self._reader = hiredis.Reader()
        self._calls: collections.deque[_Call] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def call(self, data: bytes | list[bytes], replies: int) -> asyncio.Future[list[Any]]:
        """Send ``data`` (``replies`` commands, RESP-packed; a list goes out as it is, with
        ``writelines``: uvloop sends and keeps the parts without joining them); the future gets
        their replies, in order (an error reply as a :data:`ReplyError`), or fails with the
        connection."""
        if self.lost is not None or self.transport is None:
            raise ConnectionError(f"redis queue {self.label}: {self.lost or 'not connected'}")
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._calls.append(_Call(future, replies, self._loop.time() + self.timeout))
        if isinstance(data, bytes):
            self.transport.write(data)
        else:
            self.transport.writelines(data)
        if self._timer is None:
            self._timer = self._loop.call_at(self._calls[0].deadline, self._check)
        return future

    @property
    def in_flight(self) -> int:
        """Batches sent and not answered yet."""
        return len(self._calls)

    def data_received(self, data: bytes) -> None:
        reader, calls = self._reader, self._calls
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"redis queue {self.label}: protocol error: {exc}"))
                return
            if reply is False:
                return
            if not calls:
                self._fail(ConnectionError(f"redis queue {self.label}: a reply no command asked for"))
                return
            call = calls[0]
            call.replies.append(reply)
            if len(call.replies) == call.count:
                calls.popleft()
                if not call.future.done():
                    call.future.set_result(call.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError(f"redis queue {self.label}: connection closed"))

    def close(self) -> None:
        """Close the connection; what waits fails."""
        self._fail(ConnectionError(f"redis queue {self.label}: connection closed"))

    def _check(self) -> None:
        self._timer = None
        if not self._calls:
            return
        oldest = self._calls[0].deadline
        if self._loop.time() >= oldest:
            self._fail(TimeoutError(f"redis queue {self.label}: no answer within {self.timeout} s"))
        else:
            self._timer = self._loop.call_at(oldest, self._check)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls, self._calls = self._calls, collections.deque()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(self.lost)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def adopt(conn: AbstractConnection, label: str, timeout: float) -> Channel:
    """Take over a connected, prepared redis-py connection's transport with a :class:`Channel`.

    From here the redis-py object is used only to ``disconnect(nowait=True)`` (it closes the
    transport). redis-py has no public accessor for its transport: the pinned version's
    ``_writer`` (an ``asyncio.StreamWriter``) is read here, and a version without it fails at
    once with this message, never silently (the tests run against the locked version).
    """
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None:
        raise ConnectionError(f"redis queue {label}: cannot take the connection over (redis-py changed?)")
    channel = Channel(label, timeout)
    channel.transport = transport
    transport.set_protocol(channel)
    return channel


def bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def command(*args: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def xadd_head(stream: bytes, maxlen: int | None) -> tuple[int, bytes]:
    """``XADD stream [MAXLEN ~ n] *`` in RESP, and how many arguments that is."""
    args: list[bytes] = [b"XADD", stream]
    if maxlen is not None:
        args += [b"MAXLEN", b"~", str(maxlen).encode()]
    args.append(b"*")
    return len(args), b"".join(bulk(a) for a in args)
