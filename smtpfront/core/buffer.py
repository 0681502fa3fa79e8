"""The receive buffer: one ``bytearray`` per connection, filled in place.

An asyncio ``BufferedProtocol`` reads straight into :meth:`ReceiveBuffer.writable` and
reports the count with :meth:`ReceiveBuffer.commit`. Lines are found with ``find`` from a
remembered offset, so no byte is searched twice (h11's ``ReceiveBuffer`` rule: O(n) in the
worst case), and a complete line is copied out once. Room is made by moving the unread
bytes to the front (:meth:`compact`).

The buffer starts small (4 KiB: an idle session costs little) and doubles, up to its
``size``, each time a read filled all the room it had (a body is streaming in). A
``bytearray`` with an exported ``memoryview`` cannot be resized, so growing means a new
``bytearray`` with the unread bytes copied over; views handed out earlier keep the old one
alive until they are released.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["ReceiveBuffer", "LineTooLong"]


def _find_lf_py(buf: bytearray, start: int, end: int) -> int:
    """The index of the first LF in ``buf[start:end]``, or -1."""
    return buf.find(b"\n", start, end)


_find_lf: Callable[[bytearray, int, int], int]
try:  # the same call in C, without bytearray.find's method lookup and argument parsing
    _find_lf = importlib.import_module("smtpfront.core._scan").find_lf
except ImportError:  # built without a C compiler (data.ACCELERATED says so)
    _find_lf = _find_lf_py


class LineTooLong(Exception):
    """A line grew past its limit.

    ``length`` is how many octets were seen; ``complete`` says whether the whole line
    (terminator included) was there and has been consumed.
    """

    def __init__(self, length: int, complete: bool) -> None:
        super().__init__(length)
        self.length = length
        self.complete = complete


class ReceiveBuffer:
    """A byte buffer with read (``start``) and write (``end``) offsets, growing up to ``size``.

    Args:
        size: the largest capacity in octets. It must hold the longest line the connection accepts.
        initial: the capacity to start with (at least 1024, at most ``size``).
    """

    __slots__ = ("_buf", "_view", "start", "end", "_search", "_limit", "_grow")

    def __init__(self, size: int = 64 * 1024, initial: int = 4096) -> None:
        if size < 1024:
            raise ValueError("receive buffer must be at least 1024 octets")
        self._limit = size
        self._grow = False  # a read filled all the room: double before the next one
        self._buf = bytearray(min(size, max(initial, 1024)))
        self._view = memoryview(self._buf)
        self.start = 0  # first unread octet
        self.end = 0  # one past the last received octet
        self._search = 0  # where the next line-end search resumes

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def capacity(self) -> int:
        """The largest size the buffer grows to."""
        return self._limit

    @property
    def free(self) -> int:
        """Octets that can be received without compacting or growing."""
        return len(self._buf) - self.end

    def writable(self) -> memoryview:
        """The free tail to receive into; compacts first when the tail is short.

        The result is empty only when the buffer is full of unread bytes: the caller
        must then stop reading (``pause_reading``) instead of offering it.
        """
        if self._grow:
            self._enlarge()
        if self.start and (self.free < 4096 or self.start == self.end):
            self.compact()
        return self._view[self.end :]

    def commit(self, n: int) -> None:
        """Record that ``n`` octets were written at the start of :meth:`writable`."""
        size = len(self._buf)
        if n < 0 or self.end + n > size:
            raise ValueError(f"commit of {n} octets overflows the buffer")
        self.end += n
        if self.end == size and size < self._limit:
            self._grow = True

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits; returns how many octets were taken."""
        room = self.writable()
        n = min(len(room), len(data))
        room[:n] = data[:n]
        self.commit(n)
        return n

    def _enlarge(self) -> None:
        """Double the capacity (up to ``size``); the unread bytes move to the front."""
        self._grow = False
        start, end = self.start, self.end
        new = bytearray(min(self._limit, 2 * len(self._buf)))
        new[: end - start] = self._view[start:end]
        self._buf, self._view = new, memoryview(new)
        self._search -= start
        self.start, self.end = 0, end - start

    def compact(self) -> None:
        """Move the unread bytes to the front of the buffer (no reallocation)."""
        start, end = self.start, self.end
        if start == 0:
            return
        if end > start:
            self._view[: end - start] = self._view[start:end]
        self._search -= start
        self.start = 0
        self.end = end - start

    def clear(self) -> None:
        """Drop every unread byte (after STARTTLS, RFC 3207 §4.2: no pre-TLS leftovers)."""
        self.start = self.end = self._search = 0

    def view(self) -> memoryview:
        """The unread bytes, without copying. Valid until the buffer is next changed."""
        return self._view[self.start : self.end]

    def consume(self, n: int) -> memoryview:
        """Take ``n`` unread octets (a view) and advance past them."""
        start = self.start
        self.start = start + n
        if self._search < self.start:
            self._search = self.start
        return self._view[start : start + n]

    def next_line(self, max_len: int) -> bytearray | None:
        """A copy of the next LF-terminated line (terminator included), or None if incomplete.

        Raises:
            LineTooLong: the line (complete or not) exceeds ``max_len`` octets. A
                complete over-long line has been consumed; an incomplete one has not.
        """
        start = self.start
        search = self._search if self._search > start else start
        i = _find_lf(self._buf, search, self.end)
        if i < 0:
            self._search = self.end
            if self.end - start > max_len:
                raise LineTooLong(self.end - start, complete=False)
            return None
        self.start = self._search = i + 1
        if i + 1 - start > max_len:
            raise LineTooLong(i + 1 - start, complete=True)
        return self._buf[start : i + 1]

    def skip_line(self) -> bool:
        """Discard through the next LF; True if one was found, else everything is dropped."""
        i = self._buf.find(b"\n", self.start, self.end)
        if i < 0:
            self.start = self._search = self.end
            return False
        self.start = self._search = i + 1
        return True
