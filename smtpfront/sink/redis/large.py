"""Large messages: a body past ``large_threshold`` goes into chunk keys while it arrives.

Once a message's body passes the threshold, its writer stops collecting parts and writes
them as chunks of about :data:`CHUNK_SIZE` octets, each one ``SET <body_key>:<n> <chunk>
EX <ttl>`` sent through the lane (the connection and group commit of the message's node),
so a 50 MB message never sits whole in the worker and no command is larger than a chunk.
At most :data:`WINDOW` chunks of one message are unacknowledged: past that the writer's
``pressure()`` pauses its client until Redis caught up.

At commit one script (:data:`COMMIT_SCRIPT`) checks every chunk key exists, ``XADD``\\ s the
version-2 entry that names them (see :mod:`smtpfront.sink.record`), removes their TTL, and
does the dedup step, atomically. Until that script ran, consumers see nothing; the chunk
keys of a message that never got there either are deleted (the transaction was aborted,
or Redis refused the commit) or, when that is not possible (Redis away, the worker
crashed, the outcome of the commit unknown), expire after ``ttl`` seconds.

Chunk keys share the stream's hash slot (in a cluster ``STREAM:{i}:body:<uuid>:<n>``), so
the script may touch them and the stream together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Literal, Protocol

from ..base import SinkError
from ..record import BodyRef, chunk_keys
from .wire import bulk, command

__all__ = ["CHUNK_SIZE", "COMMIT_SCRIPT", "UPLOAD_TTL", "WINDOW", "RefusedError", "Upload"]

CHUNK_SIZE = 256 * 1024
"""Octets per chunk key (a chunk closes at the first body part that reaches this, or earlier
when the worker's memory budget asks the writer to spill)."""
WINDOW = 4
"""Chunks of one message written but not yet acknowledged before its client is paused."""
UPLOAD_TTL = 24 * 3600
"""Seconds a chunk key of a message not (yet) committed lives: a crash's leftovers go away."""

# KEYS[1] stream, KEYS[2] dedup key (KEYS[1] again when ARGV[2] is 0), KEYS[3..] chunk keys;
# ARGV[1] MAXLEN (0: none), ARGV[2] dedup window in seconds (0: no dedup), ARGV[3..] fields.
# XADD is the first write: under OOM it fails before anything changed (Redis refuses a
# script's first write only), and after it PERSIST and SET are let through.
COMMIT_SCRIPT = b"""
local window = tonumber(ARGV[2])
if window > 0 then
  local seen = redis.call('GET', KEYS[2])
  if seen then
    for i = 3, #KEYS do redis.call('UNLINK', KEYS[i]) end
    return seen
  end
end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('ERR smtpfront: body chunk ' .. KEYS[i] .. ' is missing')
  end
end
local id
if tonumber(ARGV[1]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
for i = 3, #KEYS do redis.call('PERSIST', KEYS[i]) end
if window > 0 then redis.call('SET', KEYS[2], id, 'EX', window) end
return id
"""


class RefusedError(SinkError):
    """Redis answered a command with an error: it did not execute (the connection is fine)."""


class Lane(Protocol):
    """What an upload needs of a lane: queue a packed command in its next batch, in order."""

    def enqueue(self, packed: list[bytes], size: int) -> asyncio.Future[str]: ...


async def _settle(future: asyncio.Future[str]) -> None:
    await asyncio.wait({future})


class Upload:
    """One large message's body on its way into chunk keys ``<key>:0``, ``<key>:1``, …

    ``lane`` returns the lane of the message's node (looked up per command: a cluster may
    move the slot; the commit script then finds chunks missing and the client retries).
    """

    __slots__ = ("_lane", "key", "_ttl", "_buffer", "_buffered", "chunks", "size", "_unsettled", "_failure",
                 "_final", "_gone")

    def __init__(self, lane: Callable[[], Lane], key: bytes, ttl: int = UPLOAD_TTL,
                 gone: Callable[[int], None] | None = None) -> None:
        self._lane = lane
        self._gone = gone  # told the size of each chunk once it is answered (or failed): out of memory
        self.key = key
        self._ttl = b"%d" % ttl
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.chunks = 0  # chunk keys sent
        self.size = 0  # octets taken
        self._unsettled: list[asyncio.Future[str]] = []
        self._failure: BaseException | None = None
        self._final: Literal["unsent", "unknown", "refused", "done"] = "unsent"

    def add(self, data: bytes) -> None:
        """Take the next part; a full chunk goes out. Raises SinkError once a chunk failed."""
        if self._failure is not None:
            raise SinkError(f"writing the body failed: {self._failure}")
        self._buffer.append(data)
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= CHUNK_SIZE:
            self._send()

    def flush(self) -> None:
        """Send the octets buffered for the next chunk now, as a shorter chunk (memory is short)."""
        if self._failure is not None:
            raise SinkError(f"writing the body failed: {self._failure}")
        if self._buffered:
            self._send()

    def _send(self) -> None:
        parts, size = self._buffer, self._buffered
        self._buffer, self._buffered = [], 0
        head = b"*5\r\n$3\r\nSET\r\n" + bulk(b"%b:%d" % (self.key, self.chunks)) + b"$%d\r\n" % size
        try:
            future = self._lane().enqueue([head, *parts, b"\r\n$2\r\nEX\r\n" + bulk(self._ttl)], size)
        except SinkError as exc:  # these octets are gone: the upload can never be whole again
            self._failure = exc
            raise
        self.chunks += 1
        self._unsettled.append(future)
        future.add_done_callback(partial(self._settled, size))

    def _settled(self, size: int, future: asyncio.Future[str]) -> None:
        self._unsettled.remove(future)
        if self._gone is not None:
            self._gone(size)
        failure = SinkError("cancelled") if future.cancelled() else future.exception()
        if failure is not None and self._failure is None:
            self._failure = failure

    def pressure(self) -> Awaitable[None] | None:
        """An awaitable while :data:`WINDOW` chunks are unacknowledged (it never raises)."""
        if len(self._unsettled) < WINDOW:
            return None
        return _settle(self._unsettled[0])

    def finish(self) -> BodyRef:
        """Send the last chunk; returns what the record names. Raises SinkError once a chunk failed."""
        if self._failure is not None:
            raise SinkError(f"writing the body failed: {self._failure}")
        if self._buffered or not self.chunks:
            self._send()
        return BodyRef(self.key, self.chunks, self.size)

    async def commit(self, stream: bytes, dedup_key: bytes | None, window: int, maxlen: int | None,
                     fields: Sequence[tuple[bytes, bytes]]) -> str:
        """After :meth:`finish`: the commit script (dedup, check, XADD); returns the entry id.

        The script follows the chunks on the same connection, so it needs no wait for them:
        a chunk that failed is a missing key there, and the commit is refused.
        """
        keys = chunk_keys(self.key, self.chunks)
        args = [b"EVAL", COMMIT_SCRIPT, b"%d" % (len(keys) + 2), stream, dedup_key or stream, *keys,
                b"%d" % (maxlen or 0), b"%d" % (window if dedup_key else 0)]
        for name, value in fields:
            args += [name, value]
        reply = self._lane().enqueue([command(*args)], 0)  # raises at once, nothing sent, while down
        self._final = "unknown"  # from here on the entry may appear even if we are cancelled
        try:
            entry = await reply
        except RefusedError:
            self._final = "refused"
            raise
        self._final = "done"
        return entry

    async def abort(self) -> None:
        """Delete the chunk keys, unless the commit may have gone through (then the TTL decides)."""
        if self._final not in ("unsent", "refused") or not self.chunks:
            return
        keys, self.chunks = chunk_keys(self.key, self.chunks), 0
        with contextlib.suppress(SinkError):  # Redis away: the keys expire
            await self._lane().enqueue([command(b"UNLINK", *keys)], 0)
