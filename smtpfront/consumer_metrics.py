"""``smtpfront consume``'s own metrics: an :class:`~smtpfront.consumer.Observer` counting
into a one-process prometheus-client registry, served by ``--metrics-listen``.

A consumer is one process (``--workers N`` is N deliveries in flight in it), so its metrics
are plain prometheus-client objects, not the multiprocess files of ``serve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["HANDLER_BUCKETS", "ConsumerMetrics"]

# seconds: a Maildir write takes milliseconds, an --exec command up to its timeout (60 s)
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ConsumerMetrics:
    """The consumer's metric objects in ``registry``; the :class:`~smtpfront.consumer.Observer`
    a :class:`~smtpfront.consumer.Consumer` reports to."""

    def __init__(self, registry: CollectorRegistry, workers: int) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        p = "smtpfront_consumer_"
        self.delivered_total = Counter(p + "delivered", "Entries acknowledged after their handler returned.",
                                       registry=registry)
        self.retried_total = Counter(p + "retried", "Failed deliveries left pending, to be delivered again.",
                                     registry=registry)
        self.dead_lettered_total = Counter(p + "dead_lettered", "Entries moved to the dead-letter stream.",
                                           registry=registry)
        self.handler_seconds = Histogram(p + "handler_seconds", "Duration of one handler call (delivery attempt).",
                                         buckets=HANDLER_BUCKETS, registry=registry)
        self.inflight = Gauge(p + "inflight", "Handler calls running now.", registry=registry)
        self.workers = Gauge(p + "workers", "Deliveries allowed in flight at once (--workers).", registry=registry)
        self.workers.set(workers)

    def handler_started(self) -> None:
        self.inflight.inc()

    def handler_finished(self, seconds: float) -> None:
        self.inflight.dec()
        self.handler_seconds.observe(seconds)

    def delivered(self, count: int) -> None:
        self.delivered_total.inc(count)

    def retried(self) -> None:
        self.retried_total.inc()

    def dead_lettered(self) -> None:
        self.dead_lettered_total.inc()
