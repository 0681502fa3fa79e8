"""Replay every session transcript whole, line by line, byte by byte and in random chunks.

Each ``sessions/NAME.smtp`` holds the client's raw bytes; ``NAME.expect`` holds the log
the scripted application (``driver.py``) must produce: ``E:`` events, ``S:`` server
lines, ``X:`` the end. Its first lines may set ``# options: key=value ...`` and
``# chunkings: head`` (for sessions whose meaning depends on packet boundaries, like
pipelining violations). Regenerate with ``SMTPFRONT_BLESS=1 pytest tests/core/test_sessions.py``
and review the diff: a blessed file is a claim about the protocol.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from .driver import run_session

SESSIONS = Path(__file__).parent / "sessions"
CASES = sorted(p.stem for p in SESSIONS.glob("*.smtp"))


def load(name: str) -> tuple[bytes, dict[str, str], list[str], list[str]]:
    data = (SESSIONS / f"{name}.smtp").read_bytes()
    expect_path = SESSIONS / f"{name}.expect"
    options: dict[str, str] = {}
    chunkings = ["whole", "lines", "bytes", "random"]
    expected: list[str] = []
    header: list[str] = []
    if expect_path.exists():
        for line in expect_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# options:"):
                options = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].split())
                header.append(line)
            elif line.startswith("# chunkings:"):
                chunkings = line.split(":", 1)[1].split()
                header.append(line)
            elif line.startswith("#"):
                header.append(line)
            elif line:
                expected.append(line)
    return data, options, chunkings, [*expected, "\0header", *header]


def chunk_sizes(data: bytes, how: str, seed: int = 0) -> list[int]:
    if how == "whole":
        return [len(data)]
    if how == "head":  # the first line alone, then everything else in one packet
        first = data.find(b"\n") + 1
        return [first, len(data) - first]
    if how == "bytes":
        return [1] * len(data)
    if how == "lines":
        sizes, start = [], 0
        while (i := data.find(b"\n", start)) >= 0:
            sizes.append(i + 1 - start)
            start = i + 1
        return [*sizes, len(data) - start]
    rng = random.Random(seed)
    sizes, left = [], len(data)
    while left > 0:
        n = rng.randint(1, 64)
        sizes.append(n)
        left -= n
    return sizes


@pytest.mark.parametrize("name", CASES)
def test_session(name: str) -> None:
    data, options, chunkings, expected_and_header = load(name)
    split = expected_and_header.index("\0header")
    expected, header = expected_and_header[:split], expected_and_header[split + 1 :]
    if os.environ.get("SMTPFRONT_BLESS") == "1":
        log = run_session(data, chunk_sizes(data, chunkings[0]), options)
        (SESSIONS / f"{name}.expect").write_text("\n".join([*header, *log]) + "\n", encoding="utf-8")
        return
    for how in chunkings:
        for seed in range(3 if how == "random" else 1):
            log = run_session(data, chunk_sizes(data, how, seed), options)
            assert log == expected, f"{how} (seed {seed})"
