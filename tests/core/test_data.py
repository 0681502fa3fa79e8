"""The DATA streamer: framing, dot-unstuffing, bare line endings, limits, progress.

Every case is driven the way the connection drives it: keep the unconsumed bytes, append
the next chunk, call ``feed`` again; fed whole, byte by byte, and in random chunkings.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpfront.core.data import DataStreamer
from smtpfront.core.options import LineEndingPolicy
from smtpfront.core.replies import (
    BARE_LINE_ENDING_IN_DATA,
    MESSAGE_TOO_BIG,
    TEXT_LINE_TOO_LONG,
    Reply,
)

POLICIES: tuple[LineEndingPolicy, ...] = ("reject", "accept", "normalize")
BIG = 1 << 40
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


# -- helpers ---------------------------------------------------------------------


def cuts_whole(n: int) -> list[int]:
    return [n]


def cuts_bytes(n: int) -> list[int]:
    return [1] * n


def cuts_random(n: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    out = []
    while n > 0:
        k = min(n, rnd.choice((1, 2, 3, 4, 5, 7, 16, 64, 1000)))
        out.append(k)
        n -= k
    return out


def chunkings(n: int) -> list[list[int]]:
    return [cuts_whole(n), cuts_bytes(n), *(cuts_random(n, seed) for seed in range(4))]


def drive(s: DataStreamer, wire: bytes, sizes: list[int]) -> tuple[bytes, int, bytes]:
    """Feed ``wire`` in pieces of ``sizes`` like the connection does.

    Returns (body, total consumed, bytes left after the terminator: the unconsumed rest of
    the buffer followed by what was never fed). Checks the progress guarantee on every call.
    """
    buf = bytearray()
    body = bytearray()
    consumed = 0
    fed = 0
    for size in sizes:
        buf += wire[fed : fed + size]
        fed += size
        mv = memoryview(buf)
        slices, used, finished = s.feed(mv)
        assert 0 <= used <= len(buf)
        # Progress: only a trailing "\r", or "." / ".\r" at a line start, is held back.
        assert finished or used >= len(buf) - 2, (bytes(buf), used)
        for v in slices:
            body += v
            v.release()
        mv.release()
        del buf[:used]  # fails with BufferError if a returned view were still exported
        consumed += used
        if finished:
            return bytes(body), consumed, bytes(buf) + wire[fed:]
    raise AssertionError(f"not finished; holding {bytes(buf)!r}")


def stuff(body: bytes) -> bytes:
    """What a client sends for ``body`` (which ends with CRLF): RFC 5321 §4.5.2."""
    lines = body.splitlines(keepends=True)
    return b"".join((b"." + line if line.startswith(b".") else line) for line in lines) + b".\r\n"


def reference(wire: bytes, policy: LineEndingPolicy) -> tuple[bytes, int, bool]:
    """A slow model: lines end only at CRLF; stuffing and the terminator follow a CRLF.

    Returns (body, consumed, had bare line endings).
    """
    i, out = 0, bytearray()
    while not wire.startswith(b".\r\n", i):
        if wire.startswith(b".", i):
            i += 1
        j = wire.index(b"\r\n", i)
        out += wire[i : j + 2]
        i = j + 2
    bare = _BARE.search(wire[: i + 3]) is not None
    body = bytes(out)
    if policy == "normalize":
        body = _BARE.sub(b"\r\n", body)
    return body, i + 3, bare


def run_all(wire: bytes, **kw: object) -> list[tuple[bytes, int, bytes, Reply | None, int]]:
    """Drive ``wire`` under every chunking; return (body, consumed, rest, error, size) each."""
    results = []
    for sizes in chunkings(len(wire)):
        s = DataStreamer(**kw)  # type: ignore[arg-type]
        body, used, rest = drive(s, wire, sizes)
        results.append((body, used, rest, s.error, s.size))
    return results


# -- framing and dot-unstuffing ---------------------------------------------------

line_bytes = st.lists(st.sampled_from([b"a", b" ", b".", b"\t", b"\xe9", b"x."]), max_size=12).map(b"".join)
lines_st = st.lists(st.one_of(line_bytes, st.sampled_from([b"", b".", b"..", b". "])), max_size=20)


@settings(max_examples=300, deadline=None)
@given(lines=lines_st, trailing=st.binary(max_size=20), seed=st.integers(0, 2**32))
def test_dot_stuffing_round_trip(lines: list[bytes], trailing: bytes, seed: int) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(body)
    n = len(wire + trailing)
    for sizes in (cuts_whole(n), cuts_bytes(n), cuts_random(n, seed)):
        s = DataStreamer(max_size=BIG)
        got, used, rest = drive(s, wire + trailing, sizes)
        assert got == body
        assert used == len(wire)
        assert rest == trailing
        assert s.size == len(body) and s.error is None


def test_empty_body() -> None:
    for body, used, rest, error, size in run_all(b".\r\nQUIT\r\n", max_size=BIG):
        assert (body, used, rest, error, size) == (b"", 3, b"QUIT\r\n", None, 0)


def test_empty_lines_and_dots() -> None:
    wire = b"\r\n..\r\n...\r\n.. x\r\n\r\n.\r\n"
    for body, used, rest, error, _ in run_all(wire, max_size=BIG):
        assert body == b"\r\n.\r\n..\r\n. x\r\n\r\n"
        assert (used, rest, error) == (len(wire), b"", None)


def test_body_must_end_with_crlf_before_the_dot() -> None:
    # RFC 5321 §4.1.1.4: the terminator is CRLF "." CRLF, whose CRLF also ends the last line,
    # so a body always ends with CRLF (a client adds one if the message lacks it). "abc" +
    # ".\r\n" is just the line "abc.", and the data goes on.
    s = DataStreamer(max_size=BIG)
    slices, used, finished = s.feed(memoryview(b"abc.\r\n"))
    assert not finished and used == 6 and b"".join(slices) == b"abc.\r\n"
    slices, used, finished = s.feed(memoryview(b".\r\n"))
    assert finished and used == 3 and slices == []


def test_hold_back_and_beginning_of_line() -> None:
    s = DataStreamer(max_size=BIG)
    assert s.feed(memoryview(b".")) == ([], 0, False)  # the very first bytes may end the data
    assert s.feed(memoryview(b".\r")) == ([], 0, False)
    slices, used, finished = s.feed(memoryview(b"x\r\n.\r"))
    assert (b"".join(slices), used, finished) == (b"x\r\n", 3, False)  # ".\r" held back
    slices, used, finished = s.feed(memoryview(b".\r\n"))
    assert (slices, used, finished) == ([], 3, True)
    assert s.feed(memoryview(b"MAIL")) == ([], 0, True)  # one streamer per message


def test_slices_are_zero_copy_views() -> None:
    buf = bytearray(b"one\r\n..two\r\nthree\r\n.\r\n")
    s = DataStreamer(max_size=BIG)
    slices, used, finished = s.feed(memoryview(buf))
    assert finished and used == len(buf)
    assert b"".join(slices) == b"one\r\n.two\r\nthree\r\n"
    assert all(v.obj is buf for v in slices)


def test_terminator_is_not_consumed_past() -> None:
    wire = b"a\r\n.\r\n.\r\nMAIL FROM:<x@y>\r\n"
    for body, used, rest, _, _ in run_all(wire, max_size=BIG):
        assert (body, used, rest) == (b"a\r\n", 6, b".\r\nMAIL FROM:<x@y>\r\n")


# -- bare line endings (SMTP smuggling, RFC 5321 §2.3.8) --------------------------

SMUGGLING = [
    *(b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\rX", b"\r.\r\n"),
    *(b"\n..\r\n", b"\r\n.\r.\r\n", b"\r\r\n..\r\n", b"\n\r\n.\n"),
]


@pytest.mark.parametrize("seq", SMUGGLING)
@pytest.mark.parametrize("policy", POLICIES)
def test_smuggling_sequences(seq: bytes, policy: LineEndingPolicy) -> None:
    wire = b"line" + seq + b"MAIL FROM:<evil@example.org>\r\n.\r\nQUIT\r\n"
    want_body, want_used, bare = reference(wire, policy)
    assert bare
    assert wire[want_used - 5 : want_used] == b"\r\n.\r\n"  # only the real terminator ends it
    for body, used, rest, error, size in run_all(wire, max_size=BIG, bare_line_endings=policy):
        assert used == want_used and rest == b"QUIT\r\n"
        if policy == "reject":
            assert error == BARE_LINE_ENDING_IN_DATA
            assert want_body.startswith(body)  # nothing is returned once the error is known
        else:
            assert error is None and body == want_body and size == len(want_body)
    if policy == "accept":
        assert want_body == wire[: want_used - 3].replace(b"\r\n.", b"\r\n")


def test_normalize_examples() -> None:
    wire = b"a\nb\rc\r\r\n\n.\r\n.\r\n"
    for body, used, _, error, size in run_all(wire, max_size=BIG, bare_line_endings="normalize"):
        assert body == b"a\r\nb\r\nc\r\n\r\n\r\n.\r\n" and used == len(wire)
        assert error is None and size == len(body)


def test_bare_cr_at_chunk_edge() -> None:
    # A CR that ends one feed and is followed by "X" in the next is bare; one followed by LF is not.
    for policy, want in (("reject", BARE_LINE_ENDING_IN_DATA), ("accept", None)):
        s = DataStreamer(max_size=BIG, bare_line_endings=policy)  # type: ignore[arg-type]
        assert drive(s, b"ab\rX\r\n.\r\n", [3, 10])[1] == 9 and s.error == want
    s = DataStreamer(max_size=BIG)
    assert drive(s, b"ab\r\n.\r\n", [3, 4])[0] == b"ab\r\n" and s.error is None


alphabet = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r"]), max_size=30)


@settings(max_examples=400, deadline=None)
@given(parts=alphabet, seed=st.integers(0, 2**32))
def test_matches_reference_model(parts: list[bytes], seed: int) -> None:
    wire = b"".join(parts) + b"\r\n.\r\nNEXT"
    for policy in POLICIES:
        want_body, want_used, bare = reference(wire, policy)
        for sizes in (cuts_bytes(len(wire)), cuts_random(len(wire), seed), cuts_whole(len(wire))):
            s = DataStreamer(max_size=BIG, bare_line_endings=policy)
            body, used, rest = drive(s, wire, sizes)
            assert used == want_used and rest == wire[want_used:]
            if policy == "reject" and bare:
                assert s.error == BARE_LINE_ENDING_IN_DATA and want_body.startswith(body)
            else:
                assert s.error is None and body == want_body and s.size == len(want_body)


# -- limits ------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_size_limit(delta: int) -> None:
    body = b"..x\r\n" + b"y" * 93 + b"\r\n"  # 100 octets unstuffed, 101 on the wire
    assert len(body) == 100
    wire = stuff(body)
    for got, used, _, error, size in run_all(wire, max_size=len(body) - delta):
        assert used == len(wire) and size == 100
        if delta == 1:
            assert error == MESSAGE_TOO_BIG and body.startswith(got)
        else:
            assert error is None and got == body


def test_size_counted_past_limit_and_first_error_wins() -> None:
    s = DataStreamer(max_size=10)
    body, _, _ = drive(s, b"x" * 50 + b"\r\n" + b"bare\n" + b"\r\n.\r\n", [20, 20, 100])
    assert s.error == MESSAGE_TOO_BIG and s.size == 59 and body == b""
    s = DataStreamer(max_size=BIG, long_lines="reject", max_text_line=10)
    drive(s, b"x" * 20 + b"\r\nbare\n\r\n.\r\n", [22, 100])
    assert s.error == TEXT_LINE_TOO_LONG


@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("stuffed", [False, True])
def test_long_lines(delta: int, stuffed: bool) -> None:
    limit = 40
    line = (b"." if stuffed else b"") + b"z" * (limit + delta - 2 - stuffed) + b"\r\n"
    assert len(line) == limit + delta  # the wire adds a stuffing dot, which does not count (§4.5.3.1.6)
    for pos in ("first", "middle", "last"):
        body = {"first": line + b"ok\r\n", "middle": b"ok\r\n" + line + b"ok\r\n", "last": b"a\r\n" + line}
        wire = stuff(body[pos])
        for policy in ("reject", "accept"):
            for _, used, _, error, _ in run_all(wire, max_size=BIG, long_lines=policy, max_text_line=limit):
                assert used == len(wire)
                assert error == (TEXT_LINE_TOO_LONG if delta == 1 and policy == "reject" else None)


def test_long_line_after_bare_lf_counts_its_dot() -> None:
    # Only a "." after CRLF is stuffing; after an (accepted) bare LF it is content and counts.
    wire = b"a\n.bbbbbbbb\r\n.\r\n"
    s = DataStreamer(max_size=BIG, bare_line_endings="accept", long_lines="reject", max_text_line=10)
    assert drive(s, wire, [len(wire)])[1] == len(wire) and s.error == TEXT_LINE_TOO_LONG
    s = DataStreamer(max_size=BIG, long_lines="reject", max_text_line=10)
    assert drive(s, b"a\r\n..bbbbbbb\r\n.\r\n", [3, 30])[0] == b"a\r\n.bbbbbbb\r\n" and s.error is None


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 14), max_size=12),
    dots=st.lists(st.booleans(), min_size=12, max_size=12),
    seed=st.integers(0, 2**32),
)
def test_long_lines_match_model(lengths: list[int], dots: list[bool], seed: int) -> None:
    limit = 10
    lines = [(b"." if d else b"a") + b"b" * n for n, d in zip(lengths, dots, strict=False)]
    body = b"".join(line + b"\r\n" for line in lines)
    too_long = any(len(line) + 2 > limit for line in lines)
    wire = stuff(body)
    for sizes in (cuts_bytes(len(wire)), cuts_random(len(wire), seed)):
        s = DataStreamer(max_size=BIG, long_lines="reject", max_text_line=limit)
        drive(s, wire, sizes)
        assert s.error == (TEXT_LINE_TOO_LONG if too_long else None)


# -- measurement (not a test): python tests/core/test_data.py ------------------------

_WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my over "
    "know water than call first who may down side been now find any new work part take get place "
    "made live where after back little only round man year came show every good me give our under"
)


def _english(size: int, seed: int = 1) -> bytes:
    """English-like prose: sentences with commas and periods, in 60-78 octet lines, ~1% of
    them starting with "." (so stuffed on the wire)."""
    rnd, vocabulary = random.Random(seed), _WORDS.split()
    out: list[bytes] = []
    total, line, sentence = 0, "", 0
    while total < size:
        word = rnd.choice(vocabulary)
        word = word.capitalize() if sentence == 0 else word
        sentence += 1
        if sentence > rnd.randint(8, 20):
            word, sentence = word + rnd.choice("......?!"), 0
        elif rnd.random() < 0.08:
            word += ","
        if line and len(line) + len(word) + 1 > rnd.randint(60, 78):
            out.append((("." if rnd.random() < 0.01 else "") + line).encode() + b"\r\n")
            total += len(out[-1])
            line = ""
        line = f"{line} {word}" if line else word
    return b"".join(out)


def _stream(buf: bytearray, chunk: int, policy: LineEndingPolicy) -> int:
    s = DataStreamer(max_size=BIG, bare_line_endings=policy)
    mv, pos, n = memoryview(buf), 0, len(buf)
    while True:
        _, used, finished = s.feed(mv[pos : min(pos + chunk, n)])
        pos += used
        if finished:
            assert s.error is None
            return s.size


def _one_k(view: memoryview, policy: LineEndingPolicy, count: int) -> None:
    for _ in range(count):
        DataStreamer(max_size=BIG, bare_line_endings=policy).feed(view)


def _measure() -> None:
    """MB/s over ~10 MB of English-like text, and us per 1 KB message; best of 5."""
    import time
    from collections.abc import Callable

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    body = _english(10_000_000)
    buf = bytearray(stuff(body))
    policies: tuple[LineEndingPolicy, ...] = ("accept", "reject")
    for policy in policies:
        for chunk in (64 * 1024, 256 * 1024):
            assert _stream(buf, chunk, policy) == len(body)
            secs = best(lambda c=chunk, p=policy: _stream(buf, c, p))  # type: ignore[misc]
            print(f"{policy:7} {chunk // 1024:4} KiB feeds: {len(body) / secs / 1e6:7.0f} MB/s")
    view = memoryview(bytearray(stuff(_english(1000, seed=2)) + b"QUIT\r\n"))
    for policy in policies:
        secs = best(lambda p=policy: _one_k(view, p, 10_000))  # type: ignore[misc]
        print(f"{policy:7} 1 KB message, new streamer + one feed: {secs / 10_000 * 1e6:.2f} us")


if __name__ == "__main__":
    _measure()


# -- the compiled bare-ending scan agrees with the Python one ---------------------------


def test_the_compiled_scan_is_built() -> None:
    # CI builds it (tests/run.sh installs with a C compiler): a missing build must not pass unnoticed.
    import os

    from smtpfront.core import data

    if os.environ.get("SMTPFRONT_EXPECT_PURE") == "1":  # test_compiled.py's interpreted run
        assert not data.ACCELERATED
    else:
        assert data.ACCELERATED, "smtpfront.core._scan was not built: pip install -e . with a C compiler"


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"abcdefgh", b".", b"\r\r\n", b"\r\n."]),
                max_size=40),
       st.integers(min_value=0, max_value=9))
def test_compiled_and_python_scans_agree(pieces: list[bytes], offset: int) -> None:
    from smtpfront.core.data import _find_dot_line, _find_dot_line_py, _has_bare_ending, _has_bare_ending_py

    text = b"".join(pieces)
    view = memoryview(bytearray(b"-" * offset + text))[offset:]  # any alignment
    expected = _BARE.search(text) is not None
    assert _has_bare_ending_py(text) is expected
    assert _has_bare_ending(view) is expected
    assert _has_bare_ending(text) is expected
    for start in range(len(text) + 2):
        found = text.find(b"\r\n.", start)
        assert _find_dot_line_py(view, start) == found
        assert _find_dot_line(view, start) == found
