"""``RedisStreamWriter``: one message on its way into the Redis queue.

It collects the body's parts until commit (one ``XADD``, or the dedup script's ``EVALSHA``,
joined into its lane's next batch: :mod:`smtpfront.sink.redis.lane`); past the large
threshold, or once the worker's memory budget asks it to spill, it uploads them into chunk
keys as they arrive (:mod:`smtpfront.sink.redis.large`). The dedup key is a SHA-256 over the
header block and the envelope: a message retried by a client that lost our ``250`` gets the
queue id it was given the first time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING

from ..base import Envelope, Holding, SinkError
from ..record import envelope_fields
from .large import Upload
from .topology import Target

if TYPE_CHECKING:
    from .sink import RedisStreamSink

__all__ = ["DEDUP_SCRIPT", "RedisStreamWriter"]


# Idempotent enqueue (DESIGN "Nothing lost", issue 4): one atomic step. If the key of this
# message was seen within the window, return the entry id stored under it (the client that
# lost our 250 gets the same queue id again); otherwise XADD and remember the id.
# KEYS[1] dedup key, KEYS[2] stream; ARGV[1] window s, ARGV[2] MAXLEN (0: none), ARGV[3..] fields.
DEDUP_SCRIPT = b"""
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
local id
if tonumber(ARGV[2]) > 0 then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
"""



# RFC 5322 §3.6.4: a Message-ID field in the header block (case-insensitive field name).
_MESSAGE_ID = re.compile(rb"\r\nmessage-id[ \t]*:", re.IGNORECASE)
_HEADER_LIMIT = 64 * 1024  # a header block longer than this is decided on what was seen


class RedisStreamWriter:
    """Collects one message's body parts until commit; past the large threshold, uploads them."""

    __slots__ = ("_sink", "_envelope", "_parts", "_size", "_digest", "_head", "_block", "_limit", "_upload",
                 "_target", "_holding", "_gone")

    def __init__(self, sink: RedisStreamSink, envelope: Envelope) -> None:
        self._sink = sink
        self._envelope = envelope
        self._parts: list[bytes] = [envelope.trace] if envelope.trace else []
        self._size = len(envelope.trace)
        self._digest = hashlib.sha256() if sink.dedup_window else None
        self._head: bytes | None = b"" if sink.dedup_window else None  # the header block, until decided
        self._block = b""  # the header block, once decided (it routes a large message in a cluster)
        # Octets (trace included) past which the body is uploaded: the threshold counts body octets.
        self._limit = sink.large_threshold + len(envelope.trace) if sink.large_threshold else 1 << 62
        self._upload: Upload | None = None
        self._target: Target | None = None
        self._holding: Holding | None = None  # the worker's memory budget (sink/base.py Holding)
        self._gone = 0  # octets given to write() and released from the budget

    # -- the worker's memory budget: what this message holds in memory (see sink/base.py Holding) --

    def account(self, holding: Holding) -> None:
        """Count this message's octets in the worker's memory budget until they leave memory."""
        self._holding = holding

    def spill(self) -> bool:
        """The budget is full: upload what is held now (as a version-2 record, even below the
        large threshold); True when nothing held stays without more input. False when the
        body cannot go out before its commit (``large_threshold = 0``, or its header block is
        not read whole yet), or when Redis refuses (the next write or the commit says so)."""
        if self._upload is None and (self._head is not None or not self._sink.large_threshold):
            return False
        try:
            if self._upload is None:
                self._start_upload()
            assert self._upload is not None
            self._upload.flush()
        except SinkError:
            return False
        return True

    def _release(self, octets: int) -> None:
        """``octets`` left memory (at most what write() was given and is not yet released:
        chunk sizes include the trace, counted out with the first chunk)."""
        holding = self._holding
        if holding is not None:
            octets = min(octets, self._size - len(self._envelope.trace) - self._gone)
            if octets > 0:
                self._gone += octets
                holding.release(octets)

    def _release_all(self, _: object = None) -> None:
        self._release(self._size)

    def write(self, data: memoryview) -> None:
        """Keep a copy of the chunk (the view points into the receive buffer), or upload it."""
        chunk = bytes(data)
        self._size += len(chunk)
        if self._digest is not None:
            self._digest.update(chunk)
            if self._head is not None:
                self._read_header(chunk)
        if self._upload is not None:
            self._upload.add(chunk)
            return
        self._parts.append(chunk)
        if self._size > self._limit and self._head is None:
            self._start_upload()

    def _start_upload(self) -> None:
        """The body passed the large threshold: from now on it goes to Redis as it comes."""
        sink = self._sink
        self._target = target = sink.topology.target(self)
        key = target.body_prefix + uuid.uuid4().hex.encode()
        self._upload = upload = Upload(partial(sink.topology.lane_for, target.shard), key, sink.upload_ttl,
                                       self._release)
        parts, self._parts = self._parts, []
        for part in parts:
            upload.add(part)

    def _read_header(self, chunk: bytes) -> None:
        """Decide whether this message can be deduplicated: only with a Message-ID.

        Without one, a retry cannot be told from a new message with the same text (a
        monitoring script sending the same alert twice): both must be queued.
        """
        assert self._head is not None
        head = self._head + chunk
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(head) < _HEADER_LIMIT:
            self._head = head
            return
        block = b"\r\n" + (head if end < 0 else head[: end + 2])
        if _MESSAGE_ID.search(block) is None:
            self._digest = None
        else:
            self._block = block
        self._head = None

    def pressure(self) -> Awaitable[None] | None:
        """Past the worker's in-flight budget (bytes queued for Redis): wait for it to drain.

        Only bytes sent to Redis count (committed messages, chunks of large ones): they drain
        by themselves as batches complete. Bytes of messages still arriving do not (their
        clients may be the ones waiting here); they are bounded by the large threshold (past
        it a body goes out as it comes) times the connection limit. A large message also
        waits while its own chunks in flight fill the window.
        """
        if self._upload is not None:
            waiting = self._upload.pressure()  # this message's own chunks in flight
            if waiting is not None:
                return waiting
        return self._sink._pressure()

    def commit(self) -> Awaitable[str]:
        """XADD the record (in the next batch); the awaitable gives the stream entry id.

        In a cluster the id is ``SHARD/ENTRY-ID``. A message under the large threshold gets
        the batch's own future: no coroutine or task per message (the server adds a
        callback to it). Raises SinkError at once while the lane is down.
        """
        if self._holding is not None:
            self._holding.close()
        if self._head is not None:  # the body ended inside its headers
            self._read_header(b"\r\n\r\n")
        if self._upload is not None:
            return self._commit_large(self._upload)
        lane, packed, shard = self._sink.topology.route(self)
        entry = lane.enqueue(packed, self._size)
        self._parts = []
        if self._holding is not None:  # the parts stay in the lane until its batch is answered
            entry.add_done_callback(self._release_all)
        return entry if shard is None else _prefixed(entry, f"{shard}/")

    async def _commit_large(self, upload: Upload) -> str:
        sink, target = self._sink, self._target
        assert target is not None
        dedup = None if self._digest is None else target.dedup_prefix + self._dedup_hash()
        try:
            ref = upload.finish()
            entry = await upload.commit(target.stream, dedup, sink.dedup_window, sink.maxlen,
                                        envelope_fields(self._envelope, ref))
        finally:
            self._release_all()  # every chunk was answered before the commit script (one connection)
        return entry if target.shard is None else f"{target.shard}/{entry}"

    async def abort(self) -> None:
        """Forget the parts; delete the chunk keys of an upload that was not committed."""
        self._parts = []
        if self._holding is not None:
            self._holding.close()
            self._release_all()  # a message aborted is counted out at once (its last chunks may still fly)
        if self._upload is not None:
            await self._upload.abort()

    def dedup_hash(self) -> bytes | None:
        """The message's idempotency hash, or None when it cannot be deduplicated (no
        Message-ID, or dedup off): a topology routes on it."""
        return None if self._digest is None else self._dedup_hash()

    def header_hash(self) -> int | None:
        """For a large message whose body is not complete yet: a hash of its envelope and header
        block (Message-ID included), so that a retry routes the same way; None without dedup."""
        if self._digest is None:
            return None
        env = self._envelope
        digest = hashlib.sha256(self._block + b"\0" + str(env.mail_from).encode() + b"\0"
                                + b"\0".join(str(r.address).encode() for r in env.recipients))
        return int(digest.hexdigest()[:8], 16)

    def _dedup_hash(self) -> bytes:
        """The idempotency hash: the envelope and the body (our trace, which is unique, excluded).

        A client that lost our 250 and retries sends the same sender, recipients and body
        (Message-ID included), so it maps to the same key within the window.
        """
        assert self._digest is not None
        digest = self._digest.copy()
        env = self._envelope
        digest.update(b"\0" + str(env.mail_from).encode() + b"\0")
        digest.update(b"\0".join(str(r.address).encode() for r in env.recipients))
        return digest.hexdigest().encode()

    def packed(self, xadd_head: bytes, stream: bytes, dedup_key: bytes | None) -> list[bytes]:
        """The XADD command in RESP (or the dedup script around it), the body as its parts."""
        sink = self._sink
        fields = envelope_fields(self._envelope)
        head = [b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(name), name, len(value), value) for name, value in fields]
        head.append(b"$4\r\nbody\r\n$%d\r\n" % self._size)
        if dedup_key is None:
            count = sink._xadd_args + 2 * len(fields) + 2
            prefix = b"*%d\r\n" % count + xadd_head
        else:
            # EVALSHA sha 2 dedup-key stream window maxlen field value ... (see DEDUP_SCRIPT)
            count = 7 + 2 * len(fields) + 2
            prefix = b"*%d\r\n%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
                count, sink.evalsha_head, len(dedup_key), dedup_key, len(stream), stream, sink.evalsha_args)
        return [prefix + b"".join(head), *self._parts, b"\r\n"]


def _prefixed(entry: asyncio.Future[str], prefix: str) -> asyncio.Future[str]:
    """A future of ``prefix + entry``'s result (its failure, its cancellation)."""
    out: asyncio.Future[str] = entry.get_loop().create_future()

    def done(f: asyncio.Future[str]) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(prefix + f.result())

    entry.add_done_callback(done)
    return out
