"""Maildir sink: one file per message, made visible by an atomic rename.

Rule (ARCHITECTURE.md "Nothing lost"): a message reaches ``new/`` only whole, and with
``fsync=True`` only after its data is on disk; ``commit`` returns (and the client gets
``250``) only after the ``new/`` directory entry is on disk too. A file in ``tmp/`` is
never a message: readers ignore it, and a failure or an abort unlinks it.

Delivery follows cr.yp.to/proto/maildir.html with Dovecot's names: write
``tmp/<unique>``, fsync, close, rename to ``new/<unique>,S=<size>``, fsync ``new/``, where
``unique`` is ``<seconds>.M<microseconds>P<pid>Q<counter>.<host>``. The file holds
``Return-Path:``, the ``Received:`` trace, then the body exactly as received (CRLF line
endings; Dovecot reads those as they are). There is no envelope sidecar: consumers read
plain messages.

Only page-cache work (creating the file, buffered writes) runs on the event loop. The
fsyncs, and the rename between them, run in an executor; a commit costs one executor
round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import time
from concurrent.futures import Executor
from typing import BinaryIO

from ..metrics import instruments
from .base import Envelope, Holding, SinkError, StorageFullError
from .trace import return_path_header

__all__ = ["MaildirSink", "MaildirWriter"]

_counter = itertools.count(1)  # Dovecot's Q: deliveries by this process


def _host() -> str:
    # The spec's escapes for "/" and ":"; "," too, since ",S=" follows the name.
    name = socket.gethostname() or "localhost"
    return name.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")


def _error(root: str, what: str, exc: OSError) -> SinkError:
    """A failed queue write: counted (``smtpfront_queue_errors_total``) and described; a full
    disk is a :class:`StorageFullError` (the client gets ``452 4.3.1``)."""
    instruments().queue_errors.inc()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"maildir {root}: {what}: disk full: {exc.strerror or exc}")
    return SinkError(f"maildir {root}: {what}: {exc.strerror or exc}")


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirSink:
    """Delivers each message into ``directory/new`` (creating ``tmp``, ``new``, ``cur``).

    Args:
        directory: the Maildir; created with mode 0o700 when missing.
        fsync: fsync each file and ``new/`` before ``commit`` returns. With ``False``
            a crash may lose messages acknowledged with 250.
        loop_executor: where the fsyncs run; ``None`` is the loop's default executor.
        buffer_size: bytes buffered per message before a write reaches the page cache.
    """

    full = False  # disk-full shows as a StorageFullError at open/write/commit (452), not as load shedding

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        loop_executor: Executor | None = None,
        buffer_size: int = 32 * 1024,
    ) -> None:
        self.directory = os.fspath(directory)
        self.fsync = fsync
        self._executor = loop_executor
        self._buffer_size = buffer_size
        self._tmp = os.path.join(self.directory, "tmp")
        self._new = os.path.join(self.directory, "new")
        self._host = _host()
        self._ready = False
        self._closed = False

    async def start(self) -> None:
        """Create the Maildir's directories; ``open`` does it when not yet done."""
        self._prepare()

    def _prepare(self) -> None:
        try:
            # The root first: makedirs gives intermediate directories the default mode.
            for sub in ("", "tmp", "new", "cur"):
                os.makedirs(os.path.join(self.directory, sub), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _error(self.directory, "cannot create the Maildir", exc) from exc
        self._ready = True

    def open(self, envelope: Envelope) -> MaildirWriter:
        """Create ``tmp/<unique>`` holding ``Return-Path:`` and ``envelope.trace``.

        Raises:
            SinkError: the sink is closed, or the file cannot be created.
        """
        if self._closed:
            raise SinkError(f"maildir {self.directory}: sink is closed")
        if not self._ready:
            self._prepare()
        for _ in range(3):
            ns = time.time_ns()
            unique = f"{ns // 10**9}.M{ns // 1000 % 10**6}P{os.getpid()}Q{next(_counter)}.{self._host}"
            path = os.path.join(self._tmp, unique)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # the spec's "try again later", without the sleep: the name changed
            except OSError as exc:
                raise _error(self.directory, "cannot create a message file", exc) from exc
            file = os.fdopen(fd, "wb", buffering=self._buffer_size)
            writer = MaildirWriter(self, unique, path, file)
            writer.write(memoryview(return_path_header(envelope) + envelope.trace))
            return writer
        raise SinkError(f"maildir {self.directory}: no unique file name in tmp/")

    async def close(self) -> None:
        """Refuse further messages; commits under way finish."""
        self._closed = True


class MaildirWriter:
    """One message in ``tmp/``; see :class:`MaildirSink`."""

    __slots__ = ("_sink", "_unique", "_path", "_file", "_failure", "_holding", "_buffered")

    def __init__(self, sink: MaildirSink, unique: str, path: str, file: BinaryIO) -> None:
        self._sink = sink
        self._unique = unique
        self._path = path
        self._file: BinaryIO | None = file
        self._failure = "maildir: message already committed or aborted"
        self._holding: Holding | None = None  # the worker's memory budget (sink/base.py Holding)
        self._buffered = 0  # octets given to write() that may still sit in the file's buffer

    def account(self, holding: Holding) -> None:
        """Count the octets the file's buffer may hold (at most ``buffer_size``) in the budget."""
        self._holding = holding

    def spill(self) -> bool:
        """The budget is full: the buffer goes to the page cache now."""
        file = self._file
        if file is None or self._holding is None:
            return True
        try:
            file.flush()
        except OSError:
            return False  # the next write or the commit reports it
        self._settle(self._buffered)
        return True

    def _settle(self, gone: int) -> None:
        if gone > 0 and self._holding is not None:
            self._buffered -= gone
            self._holding.release(gone)

    def _done(self) -> SinkError:
        # A fresh exception each time: re-raising one would grow its traceback per write.
        return SinkError(self._failure)

    def write(self, data: memoryview) -> None:
        """Buffer a chunk (page cache at most, never an fsync).

        Raises:
            SinkError: the write failed (the file is then removed), or an earlier one did,
                or the message was committed or aborted.
        """
        file = self._file
        if file is None:
            raise self._done()
        try:
            file.write(data)
        except OSError as exc:
            error = _error(self._sink.directory, "cannot write a message", exc)
            self._failure = str(error)
            self._discard()
            raise error from exc
        if self._holding is not None:  # a buffered writer keeps at most buffer_size octets back
            self._buffered += len(data)
            self._settle(self._buffered - self._sink._buffer_size)

    async def commit(self) -> str:
        """Flush, fsync, rename into ``new/``, fsync ``new/``; return the unique name.

        A commit cancelled while the executor works may still deliver the message (the
        client retries: at least once, as with any MTA timing out after the final dot).

        Raises:
            SinkError: any step failed; nothing is left in ``tmp/`` or ``new/``.
        """
        file, self._file = self._file, None
        self._close()
        if file is None:
            raise self._done()
        sink = self._sink
        try:
            if sink.fsync:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(sink._executor, self._finish, file, True)
            else:
                self._finish(file, False)
        except OSError as exc:
            error = _error(sink.directory, "cannot deliver a message", exc)
            self._failure = str(error)
            raise error from exc
        return self._unique

    def _finish(self, file: BinaryIO, durable: bool) -> None:
        """Flush, (fsync,) close, rename, (fsync ``new/``); on failure remove the file.

        Each commit fsyncs ``new/`` itself: ext4 joins concurrent fsyncs into one
        journal commit, and coalescing them here measured no faster.
        """
        target = os.path.join(self._sink._new, f"{self._unique},S=")
        try:
            try:
                file.flush()
                target += str(file.tell())
                if durable:
                    os.fsync(file.fileno())
            finally:
                file.close()
            os.rename(self._path, target)
        except BaseException:
            _unlink(self._path)
            raise
        if durable:
            try:
                _fsync_dir(self._sink._new)
            except BaseException:
                _unlink(target)  # not durable, and the client will retry: no duplicate
                raise

    def pressure(self) -> None:
        """No backpressure: the data is already where it goes."""
        return None

    async def abort(self) -> None:
        """Close and unlink the tmp file; a no-op after commit, failure or a second abort."""
        if self._file is not None:
            self._failure = "maildir: message aborted"
            self._discard()

    def _close(self) -> None:
        """No more writes: out of the memory budget (what the buffer holds is flushed or dropped now)."""
        if self._holding is not None:
            self._holding.close()
            self._settle(self._buffered)

    def _discard(self) -> None:
        self._close()
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # flushing the rest may fail again
                file.close()
            _unlink(self._path)
