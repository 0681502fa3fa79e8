"""The receive buffer: one fixed ``bytearray`` per connection, filled in place.

An asyncio ``BufferedProtocol`` reads straight into :meth:`ReceiveBuffer.writable` and
reports the count with :meth:`ReceiveBuffer.commit`. Lines are found with ``find`` from a
remembered offset, so no byte is searched twice (h11's ``ReceiveBuffer`` rule: O(n) in the
worst case). The buffer never changes size: a ``bytearray`` with an exported
``memoryview`` cannot be resized, and views of it are handed to the application, so room
is made by moving the unread bytes to the front (:meth:`compact`).
"""

from __future__ import annotations

__all__ = ["ReceiveBuffer", "LineTooLong"]


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
    """A fixed-size byte buffer with read (``start``) and write (``end``) offsets.

    Args:
        size: capacity in octets. It must hold the longest line the connection accepts.
    """

    __slots__ = ("_buf", "_view", "start", "end", "_search")

    def __init__(self, size: int = 64 * 1024) -> None:
        if size < 1024:
            raise ValueError("receive buffer must be at least 1024 octets")
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self.start = 0  # first unread octet
        self.end = 0  # one past the last received octet
        self._search = 0  # where the next line-end search resumes

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def capacity(self) -> int:
        """The buffer's fixed size."""
        return len(self._buf)

    @property
    def free(self) -> int:
        """Octets that can be received without compacting."""
        return len(self._buf) - self.end

    def writable(self) -> memoryview:
        """The free tail to receive into; compacts first when the tail is short.

        The result is empty only when the buffer is full of unread bytes: the caller
        must then stop reading (``pause_reading``) instead of offering it.
        """
        if self.start and (self.free < 4096 or self.start == self.end):
            self.compact()
        return self._view[self.end :]

    def commit(self, n: int) -> None:
        """Record that ``n`` octets were written at the start of :meth:`writable`."""
        if n < 0 or self.end + n > len(self._buf):
            raise ValueError(f"commit of {n} octets overflows the buffer")
        self.end += n

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits; returns how many octets were taken."""
        room = self.writable()
        n = min(len(room), len(data))
        room[:n] = data[:n]
        self.end += n
        return n

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

    def next_line(self, max_len: int) -> memoryview | None:
        """The next LF-terminated line (terminator included), or None if incomplete.

        Raises:
            LineTooLong: the line (complete or not) exceeds ``max_len`` octets. A
                complete over-long line has been consumed; an incomplete one has not.
        """
        start = self.start
        search = self._search if self._search > start else start
        i = self._buf.find(b"\n", search, self.end)
        if i < 0:
            self._search = self.end
            if self.end - start > max_len:
                raise LineTooLong(self.end - start, complete=False)
            return None
        self.start = self._search = i + 1
        if i + 1 - start > max_len:
            raise LineTooLong(i + 1 - start, complete=True)
        return self._view[start : i + 1]

    def skip_line(self) -> bool:
        """Discard through the next LF; True if one was found, else everything is dropped."""
        i = self._buf.find(b"\n", self.start, self.end)
        if i < 0:
            self.start = self._search = self.end
            return False
        self.start = self._search = i + 1
        return True
