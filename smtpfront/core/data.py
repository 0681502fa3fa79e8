"""The DATA body streamer: end-of-data detection, dot-unstuffing and body limits.

Rule (RFC 5321 §4.1.1.4, §4.5.2): the body starts at the beginning of a line and only
``CRLF "." CRLF`` ends it, under every bare-line-ending policy; the CRLF before the dot is
the body's last line ending. A line that begins with "." had a dot added by the client, and
that first dot is removed. Lines begin only after CRLF: a "." after a bare LF is content,
under every policy. Nothing else about the body is changed, except that "normalize" turns
each bare CR or LF into CRLF.

The hot path does no per-line Python work: one precompiled ``re`` search for ``CRLF "."``
(faster than ``bytearray.find`` on English text, see ARCHITECTURE.md's performance facts) and slicing around each
hit. Checks that need a closer look (bare line endings, long lines) run over the whole
consumed region at once, in C, and only when a policy asks for them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Final, Literal

from .options import LineEndingPolicy
from .replies import BARE_LINE_ENDING_IN_DATA, MESSAGE_TOO_BIG, TEXT_LINE_TOO_LONG, Reply

__all__ = ["ACCELERATED", "DataStreamer"]

# A CR not followed by LF, or an LF not preceded by CR (RFC 5321 §2.3.8).
_BARE: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_CR, _LF, _DOT = 0x0D, 0x0A, 0x2E


def _has_bare_ending_py(region: bytes | bytearray | memoryview) -> bool:
    """True when ``region`` holds a CR or LF that is not part of a CRLF pair.

    ``bytes.splitlines`` breaks at CR, LF and CRLF alike; re-joining the lines with CRLF
    gives ``t`` back (less a final CRLF) only when every break was a CRLF. Two C passes,
    no per-line Python work (three ``count`` calls cost twice as much). The compiled
    ``_scan.has_bare_ending`` gives the same answer about five times faster, without a copy.
    """
    t = region if isinstance(region, bytes) else bytes(region)
    j = b"\r\n".join(t.splitlines())
    # splitlines drops one final break; only a CRLF (or none) accounts for 2 (or 0) octets.
    return len(t) - len(j) not in (0, 2) or not t.startswith(j)


_DOT_LINE_START: Final = re.compile(rb"\r\n\.")


def _find_dot_line_py(data: bytes | bytearray | memoryview, start: int) -> int:
    """Where the first CRLF "." at or after ``start`` begins, or -1."""
    m = _DOT_LINE_START.search(data, start)
    return -1 if m is None else m.start()


_has_bare_ending: Callable[[bytes | bytearray | memoryview], bool]
_find_dot_line: Callable[[bytes | bytearray | memoryview, int], int]
try:  # by name: import-linter cannot see a compiled module, and would map it to the package
    _scan = importlib.import_module("smtpfront.core._scan")
    _has_bare_ending, _find_dot_line = _scan.has_bare_ending, _scan.find_dot_line
except ImportError:  # built without a C compiler: the same scans in Python (ACCELERATED says which)
    _has_bare_ending, _find_dot_line = _has_bare_ending_py, _find_dot_line_py

ACCELERATED = _has_bare_ending is not _has_bare_ending_py


class DataStreamer:
    """Turns the bytes after ``354`` into unstuffed body slices; one instance per message.

    Call :meth:`feed` with the unconsumed part of the receive buffer until it reports
    ``finished``. Bytes it does not consume stay in the buffer and must be offered again,
    followed by whatever arrived next.

    ``feed`` holds back at most two bytes, and only bytes that may start the terminator:
    a trailing ``"\\r"``, or, at the beginning of a line, a trailing ``"."`` or ``".\\r"``.
    A trailing ``"\\r\\n"`` is consumed and remembered as "at beginning of line", so when
    not finished, ``consumed >= len(data) - 2``.

    Once ``error`` is set, ``feed`` returns no more slices but keeps consuming to the
    terminator; the caller discards the message and answers with ``error``. Within one
    ``feed`` the checks run in this order: bare line endings, long lines, size.

    Args:
        max_size: the largest body accepted, in unstuffed octets (RFC 1870 SIZE).
        bare_line_endings: "reject" (550 5.5.2 at the end), "accept", or "normalize" to CRLF.
        long_lines: "reject" refuses a body with a line over ``max_text_line`` octets.
        max_text_line: the text-line limit including CRLF (RFC 5321 §4.5.3.1.6).

    Attributes:
        size: unstuffed body octets seen so far, counted even past ``max_size``.
        error: the reply refusing the message, or None; the first error wins.
    """

    __slots__ = (
        "_bol",
        "_check_long",
        "_done",
        "_inspect",
        "_line",
        "_max_line",
        "_max_size",
        "_policy",
        "error",
        "size",
    )

    def __init__(
        self,
        *,
        max_size: int,
        bare_line_endings: LineEndingPolicy = "reject",
        long_lines: Literal["reject", "accept"] = "accept",
        max_text_line: int = 1000,
    ) -> None:
        self.size = 0
        self.error: Reply | None = None
        self._max_size = max_size
        self._policy = bare_line_endings
        self._check_long = long_lines == "reject"
        self._inspect = self._check_long or bare_line_endings != "accept"  # any per-region check
        # RFC 5321 §4.5.3.1.6: 1000 octets including CRLF, not counting a stuffing dot.
        self._max_line = max_text_line
        self._bol = True  # the next byte begins a line (the body starts right after DATA's CRLF)
        self._line = 0  # octets of the current, unfinished line (long-line check only)
        self._done = False

    def feed(self, data: memoryview) -> tuple[list[memoryview], int, bool]:
        """Consume body bytes.

        Args:
            data: the unconsumed received bytes, beginning where the last call stopped.

        Returns:
            ``(slices, consumed, finished)``. ``slices`` are the unstuffed body bytes in
            order: sub-views of ``data`` (small new buffers under "normalize"), valid only
            until the caller changes the buffer. When ``finished``, ``consumed`` ends right
            after the terminating ``CRLF "." CRLF``; later bytes are the next command's.
        """
        n = len(data)
        if self._done or n == 0:
            return [], 0, self._done
        start = 0  # where the pending output run begins
        dots = 0  # stuffing dots dropped in this call
        body_end = -1
        # RFC 5321 §4.5.2: at a line start, ".CRLF" ends the data; any other "." is stuffing.
        if self._bol and data[0] == _DOT:
            if n < 3:
                if n == 1 or data[1] == _CR:
                    return [], 0, False  # "." or ".\r": may still become the terminator
            elif data[1] == _CR and data[2] == _LF:
                body_end = 0
            start = dots = 1
        lead = dots  # a stuffing dot at data[0] (the long-line check does not count it)
        out: list[memoryview] = []
        if body_end == 0:
            finished = True
            dots = 0
        else:
            finished = False
            find = _find_dot_line
            i = find(data, start)
            while i >= 0:
                e = i + 3  # just after the dot
                if e + 1 < n and data[e] == _CR and data[e + 1] == _LF:
                    body_end = i + 2  # the CRLF before the dot is the body's last line end
                    finished = True
                    break
                if i + 4 >= n and (e == n or data[e] == _CR):
                    body_end = i + 2  # hold back "." or ".\r": the terminator may follow
                    self._bol = True
                    break
                out.append(data[start : i + 2])
                start = e  # drop the stuffing dot
                dots += 1
                i = find(data, e)
            else:
                # A trailing CR is held back: it may begin the CRLF of a terminator.
                body_end = n - 1 if data[n - 1] == _CR else n
                self._bol = body_end >= 2 and data[body_end - 1] == _LF and data[body_end - 2] == _CR
        consumed = body_end + 3 if finished else body_end
        if body_end > start:
            out.append(data[start:body_end])
        self.size += body_end - dots

        error = self.error
        if error is None:
            if self._inspect:
                error = self._inspect_region(data if consumed == n else data[:consumed], out, lead)
                if self._policy == "normalize":
                    self.size += sum(map(len, out)) - (body_end - dots)
            if error is None and self.size > self._max_size:
                # RFC 5321 §4.2.5: keep reading to the end of data, then refuse the message.
                error = MESSAGE_TOO_BIG
            self.error = error
        if finished:
            self._done = True
        return ([] if error is not None else out), consumed, finished

    def _inspect_region(self, t: memoryview, out: list[memoryview], lead: int) -> Reply | None:
        """Bare-line-ending and long-line checks over ``t``, the octets just consumed.

        ``t`` can be judged on its own: it never ends with the CR of a pair split across
        calls (a trailing CR is held back), and the region before it never ended with a
        CR that an LF at ``t[0]`` could complete. Under "normalize" it rewrites ``out`` in
        place instead of refusing.
        """
        policy = self._policy
        if policy != "accept" and _has_bare_ending(t):
            if policy == "reject":
                return BARE_LINE_ENDING_IN_DATA
            # The rare slow path: rewrite each bare CR or LF as CRLF. Slices never end
            # inside a CRLF pair (a trailing CR is held back), so each is done alone.
            out[:] = [memoryview(_BARE.sub(b"\r\n", piece)) for piece in out]
        if self._check_long and self._long_line(t.tobytes(), lead):
            return TEXT_LINE_TOO_LONG
        return None

    def _long_line(self, t: bytes, lead_dot: int) -> bool:
        """True when a line in ``t`` exceeds ``max_text_line``; carries the open line's length.

        Hops from line end to line end with ``rfind`` over windows of the remaining room, so
        the cost is one C call per ``max_text_line`` octets, not one per line. Lines end at
        LF (a bare CR does not end one); a stuffing dot is not counted (RFC 5321 §4.5.3.1.6).
        """
        limit = self._max_line
        n = len(t)
        p = 0
        cur = self._line - lead_dot  # the current line's octets before t[0]
        while True:
            room = limit - cur
            k = t.rfind(b"\n", p, p + room)
            if k < 0:
                if p + room < n:
                    return True  # no line end within the room left
                self._line = cur + n - p
                return False
            p = k + 1
            # The next line starts at p; a "." there after CRLF is stuffing and does not count.
            cur = -1 if p < n and t[p] == _DOT and k >= 1 and t[k - 1] == _CR else 0
