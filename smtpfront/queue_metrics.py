"""The Redis queue's backlog as the master's metrics, read from Redis at each scrape.

``serve`` with a Redis queue registers a :class:`QueueCollector` with its ``/metrics``
registry. At each scrape it reads what ``smtpfront queue stats`` prints
(:func:`smtpfront.queuetool.read_stats`: one implementation of the numbers) and exports the
gauges of :data:`QUEUE_GAUGES`. The master has no event loop and its signal loop must never
wait on Redis: the read runs in the scrape's own HTTP thread (``asyncio.run`` there, a
client opened and closed per scrape), bounded by ``timeout`` (2 s), one read at a time; a
scrape that cannot read the queue (Redis away, too slow, a scrape already reading) exports
only ``smtpfront_queue_stats_up 0`` and the time it took.

Every master of a deployment reads the same queue, so every one exports the same values:
aggregate them with ``max`` (``deploy/prometheus/rules.yml`` does), never ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from .queuetool import read_stats

__all__ = ["QUEUE_GAUGES", "STATS_TIMEOUT", "QueueCollector"]

log = logging.getLogger(__name__)

STATS_TIMEOUT = 2.0

# name (after smtpfront_) -> (help, labels)
QUEUE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "queue_length": ("Entries in the queue stream: the backlog (acknowledged entries are deleted).", ("stream",)),
    "queue_oldest_seconds": ("Age of the oldest entry some group has not acknowledged (0: none).", ("stream",)),
    "queue_dead_letters": ("Entries in the stream's dead-letter stream (STREAM:dead).", ("stream",)),
    "queue_group_lag": ("Entries not yet delivered to the consumer group (absent when Redis cannot tell).",
                        ("stream", "group")),
    "queue_group_pending": ("Entries delivered to the group's consumers and not acknowledged.", ("stream", "group")),
    "queue_group_consumers": ("Consumers the group knows (XINFO CONSUMERS).", ("stream", "group")),
    "queue_redis_memory_bytes": ("Redis used_memory (summed over a cluster's nodes).", ()),
    "queue_stats_up": ("1 when this scrape read the queue's statistics from Redis, else 0.", ()),
    "queue_stats_seconds": ("How long this scrape's read of the queue's statistics took.", ()),
}


class QueueCollector:
    """A prometheus-client collector reading the queue's statistics at each scrape."""

    def __init__(self, url: str, stream: str, timeout: float = STATS_TIMEOUT) -> None:
        self.url = url
        self.stream = stream
        self.timeout = timeout
        self._lock = threading.Lock()
        self._failing = False

    def _read(self) -> dict[str, Any] | None:
        if not self._lock.acquire(timeout=self.timeout):  # another scrape is reading: do not pile up
            return None
        try:
            stats = asyncio.run(read_stats(self.url, self.stream, self.timeout))
        except Exception as exc:  # a metric, not a crash: the scrape goes on without the queue's numbers
            # WARNING once when it starts failing, DEBUG while it goes on (a line per scrape otherwise).
            log.log(logging.DEBUG if self._failing else logging.WARNING, "queue statistics unavailable: %s",
                    f"{type(exc).__name__}: {exc}".rstrip(": "))
            self._failing = True
            return None
        else:
            self._failing = False
            return stats
        finally:
            self._lock.release()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        started = time.monotonic()
        stats = self._read()
        families = {name: GaugeMetricFamily("smtpfront_" + name, doc, labels=labels)
                    for name, (doc, labels) in QUEUE_GAUGES.items()}
        if stats is not None:
            for stream in stats["streams"]:
                name = stream["stream"]
                families["queue_length"].add_metric([name], stream["length"])
                families["queue_oldest_seconds"].add_metric([name], stream["oldest_unacknowledged_seconds"] or 0.0)
                families["queue_dead_letters"].add_metric([name], stream["dead_letters"])
                for group in stream["groups"]:
                    if group["lag"] is not None:
                        families["queue_group_lag"].add_metric([name, group["name"]], group["lag"])
                    families["queue_group_pending"].add_metric([name, group["name"]], group["pending"])
                    families["queue_group_consumers"].add_metric([name, group["name"]], len(group["consumers"]))
            families["queue_redis_memory_bytes"].add_metric([], stats["used_memory"])
        families["queue_stats_up"].add_metric([], 0.0 if stats is None else 1.0)
        families["queue_stats_seconds"].add_metric([], time.monotonic() - started)
        yield from (family for family in families.values() if family.samples)
