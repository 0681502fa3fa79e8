"""What a consumer hands to a handler, and the two ready-made handlers (``--maildir``, ``--exec``).

A handler is an async callable taking a :class:`Message`: it returns to have the entry
acknowledged, raises :class:`TemporaryError` (or anything) to leave it pending for a retry,
or :class:`PermanentError` to dead-letter it at once (see :mod:`smtpfront.consumer`, which
re-exports every name here). A handler marked with :func:`streaming` reads a large body
chunk by chunk through :meth:`Message.chunks`; the ready-made ones are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any

from .core.events import Address, MailParams
from .sink.base import Envelope
from .sink.maildir import MaildirSink
from .sink.record import BodyRef
from .streamops import Client

__all__ = [
    "EX_TEMPFAIL", "BodyChunks", "BodyMissingError", "Handler", "Message", "PermanentError", "TemporaryError",
    "exec_handler", "is_streaming", "maildir_handler", "streaming",
]

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"

class BodyMissingError(Exception):
    """A large message's chunk keys are not (all) there: the delivery fails, the entry stays pending."""


class BodyChunks:
    """A large body in Redis, read one chunk key per round trip."""

    __slots__ = ("_client", "ref")

    def __init__(self, client: Client, ref: BodyRef) -> None:
        self._client = client
        self.ref = ref

    async def read(self) -> AsyncIterator[bytes]:
        seen = 0
        for key in self.ref.chunk_keys():
            chunk = await self._client.get(key)
            if not isinstance(chunk, bytes):
                raise BodyMissingError(f"body chunk {key.decode(errors='replace')} is missing")
            seen += len(chunk)
            yield chunk
        if seen != self.ref.size:
            raise BodyMissingError(f"body is {seen} octets, the record says {self.ref.size}")


class Message:
    """One delivered queue record.

    Attributes:
        id: the stream entry id.
        stream: the stream it came from.
        envelope: the record's ``envelope`` object (see :mod:`smtpfront.sink.record`).
        body: the message with the front end's ``Received:`` header first. For a large
            message given to a :func:`streaming` handler, reading it raises RuntimeError:
            such a handler reads :meth:`chunks`.
        deliveries: how many times the entry was delivered, 1 the first time.
        size: the body's length in octets.
    """

    __slots__ = ("id", "stream", "envelope", "deliveries", "size", "_body", "_chunks")

    def __init__(self, id: str, stream: str, envelope: dict[str, Any], body: bytes, deliveries: int) -> None:
        self.id = id
        self.stream = stream
        self.envelope = envelope
        self.deliveries = deliveries
        self.size = len(body)
        self._body: bytes | None = body
        self._chunks: BodyChunks | None = None

    @classmethod
    def _streamed(cls, id: str, stream: str, envelope: dict[str, Any], chunks: BodyChunks, deliveries: int) -> Message:
        message = cls(id, stream, envelope, b"", deliveries)
        message.size, message._body, message._chunks = chunks.ref.size, None, chunks
        return message

    @property
    def body(self) -> bytes:
        if self._body is None:
            raise RuntimeError(f"message {self.id} is large ({self.size} octets) and its handler streams it: "
                               "read it with `async for chunk in message.chunks()`")
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces (a large one as it is read from Redis; raises BodyMissingError)."""
        if self._chunks is None:
            yield self.body
            return
        async for chunk in self._chunks.read():
            yield chunk

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, stream={self.stream!r}, size={self.size}, deliveries={self.deliveries})"


Handler = Callable[[Message], Awaitable[None]]
"""Returns to acknowledge; raises to leave the entry pending (retried later)."""


class _Streaming:
    """A handler that reads bodies with :meth:`Message.chunks` (see :func:`streaming`)."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, message: Message) -> Awaitable[None]:
        return self.handler(message)


def is_streaming(handler: Handler) -> bool:
    """Whether ``handler`` was marked with :func:`streaming`."""
    return isinstance(handler, _Streaming)


def streaming(handler: Handler) -> Handler:
    """Mark ``handler`` as reading bodies with :meth:`Message.chunks` only: a large body is then
    not loaded whole before the call (``message.body`` raises for it), so memory stays flat."""
    return handler if isinstance(handler, _Streaming) else _Streaming(handler)


class PermanentError(Exception):
    """Raised by a handler for a message that retrying cannot help: dead-letter it now."""


class TemporaryError(RuntimeError):
    """Raised by a handler for an expected, temporary failure (the entry stays pending and is
    retried): logged as one WARNING line, without the traceback an unexpected error gets."""


def _address(text: str) -> Address:
    local, at, domain = text.rpartition("@")
    return Address(local, domain) if at else Address(text, "")


def maildir_handler(directory: str, *, fsync: bool = True) -> Handler:
    """A handler delivering each body into a Maildir (``tmp/`` → fsync → ``new/``).

    The file holds ``Return-Path:`` (from the envelope's sender) and then the body as
    queued, ``Received:`` header included. A :class:`~smtpfront.sink.base.SinkError`
    (disk full, say) leaves the entry pending.
    """
    sink = MaildirSink(directory, fsync=fsync)

    @streaming
    async def deliver(message: Message) -> None:
        env = message.envelope
        params = env.get("mail_params") or {}
        envelope = Envelope(
            id=str(env.get("id") or message.id), mail_from=_address(str(env.get("mail_from") or "")),
            mail_params=MailParams(smtputf8=bool(params.get("smtputf8"))), recipients=[],
            received_at=float(env.get("received_at") or 0.0),
        )
        writer = sink.open(envelope)
        try:
            async for chunk in message.chunks():
                writer.write(memoryview(chunk))
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    return deliver


async def _feed(stdin: asyncio.StreamWriter, message: Message) -> None:
    # The command need not read it all: a broken pipe is a ConnectionError under asyncio,
    # a RuntimeError ("handler is closed") under uvloop; its exit status decides. A body
    # that cannot be read raises with stdin still open: the command is killed, not fed a
    # truncated message that it might take for a whole one.
    async for chunk in message.chunks():
        try:
            stdin.write(chunk)
            await stdin.drain()
        except (ConnectionError, RuntimeError):
            break
    stdin.close()


async def _drain(stream: asyncio.StreamReader, keep: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[: max(keep - len(kept), 0)]
    return bytes(kept)


def exec_handler(command: Sequence[str], *, timeout: float = 60, tempfail: Collection[int] = (EX_TEMPFAIL,)) -> Handler:
    """A handler piping each body into a command (no shell), like Postfix ``pipe(8)``.

    The command gets the body on stdin and ``SMTPFRONT_SENDER``, ``SMTPFRONT_RECIPIENTS``
    (comma-separated) and ``SMTPFRONT_QUEUE_ID`` in its environment; its stdout is
    discarded, the start of its stderr goes into the error.

    Exit 0 acknowledges. An exit status in ``tempfail`` (EX_TEMPFAIL, 75), death by a
    signal, or running past ``timeout`` seconds (its process group is then killed) raises
    :class:`TemporaryError`: the entry stays pending and is retried. Any other status raises
    :class:`PermanentError`: the entry is dead-lettered at once.
    """
    argv = list(command)
    if not argv:
        raise ValueError("exec_handler needs a command")

    @streaming
    async def deliver(message: Message) -> None:
        env = message.envelope
        rcpts = ",".join(str(r.get("address", "")) for r in env.get("rcpt_to") or ())
        environ = {
            **os.environ, "SMTPFRONT_SENDER": str(env.get("mail_from") or ""), "SMTPFRONT_RECIPIENTS": rcpts,
            "SMTPFRONT_QUEUE_ID": str(env.get("id") or ""),
        }
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=environ, start_new_session=True,
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(timeout):
                _, stderr, status = await asyncio.gather(_feed(proc.stdin, message), _drain(proc.stderr, 500),
                                                         proc.wait())
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if isinstance(exc, TimeoutError):
                raise TemporaryError(f"{argv[0]}: timed out after {timeout}s") from None
            raise
        if status == 0:
            return
        said = stderr.decode("utf-8", "replace").strip()
        what = f"{argv[0]}: " + (f"killed by signal {-status}" if status < 0 else f"exit status {status}")
        what += f": {said}" if said else ""
        if status < 0 or status in tempfail:
            raise TemporaryError(what)
        raise PermanentError(what)

    return deliver
