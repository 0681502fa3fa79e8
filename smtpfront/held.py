"""Metric updates held in the process and written to the shared metrics in one step.

A multiprocess metric update (prometheus-client's multiprocess mode) takes a lock and writes
an mmapped file: 1-2 µs, several times a message. The worker's per-message and per-connection
updates go to these instead; ``aio/tally.py`` flushes them once a second while sessions are
open, once more after the last one ends, and when the worker stops. Compiled with the core
(``core.COMPILED_WITH_CORE``): they run several times a message.
"""

from __future__ import annotations

import bisect
from typing import Any

__all__ = ["Held", "HeldHistogram"]


class Held:
    """A counter's increments (or a gauge's changes) held in the process and added in one
    step by `flush`.

    A multiprocess metric update takes a lock and writes an mmapped file (1-2 us); the
    per-message metrics, and the open-connections gauge, are held and flushed once a second
    (``aio/tally.py``) instead.
    """

    __slots__ = ("_metric", "_amount")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._amount = 0.0

    def inc(self, amount: float = 1) -> None:
        self._amount += amount

    def dec(self, amount: float = 1) -> None:
        self._amount -= amount

    def flush(self) -> None:
        if self._amount:
            amount, self._amount = self._amount, 0.0
            self._metric.inc(amount)


class HeldHistogram:
    """A histogram's observations held in the process: bucket counts and sum, flushed in one step.

    It adds to the histogram's own bucket values (prometheus-client keeps multiprocess buckets
    non-cumulative, one value per bound, and ``observe`` picks the first bound >= the amount):
    ``tests/test_metrics.py`` checks that a flush gives exactly what ``observe`` would.
    """

    __slots__ = ("_metric", "_bounds", "_counts", "_sum")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._bounds: list[float] = list(metric._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._sum = self._sum, 0.0
        self._metric._sum.inc(total)
        for bucket, n in zip(self._metric._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
