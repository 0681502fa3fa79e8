"""Prometheus metrics shared by all worker processes, and the master's HTTP endpoint.

prometheus-client's multiprocess mode keeps every process's values in mmapped files under
``PROMETHEUS_MULTIPROC_DIR``; the master sums them per scrape. The master calls `prepare`
before forking, `worker_gone` after reaping a worker, and serves ``/metrics``, ``/healthz``
and ``/readyz`` with `HealthServer`. Every process reaches its metric objects with `metrics`.

prometheus_client is imported inside functions only: it picks its value class when
``prometheus_client.values`` is first imported, which must happen after `prepare`.

Size (over 500 lines): every metric's definition and the master's endpoint stay together so
that one file names everything a dashboard can show (the held per-message updates are in
``held.py``, compiled).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .held import Held, HeldHistogram

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["HealthServer", "Held", "HeldHistogram", "Metrics", "metrics", "prepare", "queue_reachable", "worker_gone"]

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(9))  # 1 KiB … 64 MiB
BATCH_BUCKETS = tuple(float(2**i) for i in range(9))  # 1 … 256
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_TIMEOUT = 10.0

_master_pid: int | None = None
_metrics: Metrics | None = None
_lock = threading.Lock()


def prepare(directory: str | None = None) -> str:
    """Create (or empty) the multiprocess directory, export it, and return its path.

    Called once by the master before it forks, and before `metrics` in any process.
    """
    global _master_pid, _metrics
    if directory is None:
        directory = tempfile.mkdtemp(prefix="smtpfront-metrics-")
    else:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    os.environ[ENV] = directory
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported too early: choose the multiprocess value class now
        values.ValueClass = values.get_value_class()
    _master_pid = os.getpid()
    _metrics = None
    return directory


class Metrics:
    """The metric objects of one process (names follow Prometheus conventions)."""

    connections: Counter
    connections_active: Gauge
    connections_rejected: Counter
    replies: Counter
    commands: Counter
    sessions: Counter
    messages: Counter
    received_bytes: Counter
    message_size: Histogram
    queue_write_seconds: Histogram
    dot_to_reply_seconds: Histogram
    queue_batch_size: Histogram
    queue_errors: Counter
    queue_up: Gauge
    queue_backlog: Gauge
    queue_full: Gauge
    inflight_bytes: Gauge
    memory_held_bytes: Gauge
    memory_budget_bytes: Gauge
    greeting_seconds: Histogram
    worker_restarts: Counter
    policy_rejections: Counter
    limiter_errors: Counter

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        p = "smtpfront_"
        self.connections = Counter(p + "connections", "Client connections accepted.", registry=None)
        self.connections_active = Gauge(
            p + "connections_active", "Client connections open now.", multiprocess_mode="livesum", registry=None
        )
        self.connections_rejected = Counter(
            p + "connections_rejected", "Connections refused (max_clients, shutting_down).", ["reason"], registry=None
        )
        self.replies = Counter(
            p + "replies", "Replies sent, by the command answered and class (2xx … 5xx).", ["verb", "class"],
            registry=None,
        )
        self.commands = Counter(p + "commands", "Commands received, by verb.", ["verb"], registry=None)
        self.sessions = Counter(
            p + "sessions", "Sessions ended, by whether TLS and AUTH were in use.", ["tls", "auth"], registry=None
        )
        self.messages = Counter(
            p + "messages", "Messages by outcome (accepted, rejected, tempfailed).", ["outcome"], registry=None
        )
        self.received_bytes = Counter(p + "received_bytes", "Message bytes received.", registry=None)
        self.message_size = Histogram(
            p + "message_size_bytes", "Size of received messages.", buckets=SIZE_BUCKETS, registry=None
        )
        self.queue_write_seconds = Histogram(
            p + "queue_write_seconds", "Queue commit latency.", buckets=LATENCY_BUCKETS, registry=None
        )
        self.dot_to_reply_seconds = Histogram(
            p + "dot_to_reply_seconds", "End of DATA to final reply.", buckets=LATENCY_BUCKETS, registry=None
        )
        self.queue_batch_size = Histogram(
            p + "queue_batch_size", "Messages per queue write batch.", buckets=BATCH_BUCKETS, registry=None
        )
        self.queue_errors = Counter(p + "queue_errors", "Failed queue writes.", registry=None)
        # livemin: 0 while any live worker's queue is down; a reaped worker no longer counts.
        self.queue_up = Gauge(
            p + "queue_up", "1 when every worker's queue is reachable.", multiprocess_mode="livemin", registry=None
        )
        self.queue_backlog = Gauge(
            p + "queue_backlog", "Last measured queue backlog (group lag, else stream length).",
            multiprocess_mode="livemax", registry=None,
        )
        self.queue_full = Gauge(
            p + "queue_full", "1 while the backlog is past the high-water mark (new mail gets 452).",
            multiprocess_mode="livemax", registry=None,
        )
        self.inflight_bytes = Gauge(
            p + "inflight_bytes", "Message bytes held by workers, not yet confirmed by the queue.",
            multiprocess_mode="livesum", registry=None,
        )
        self.memory_held_bytes = Gauge(
            p + "memory_held_bytes", "Message bytes workers hold in memory (bodies before they stream, "
            "waiting for their commit, chunks in flight), with the headroom reserved for them.",
            multiprocess_mode="livesum", registry=None,
        )
        self.memory_budget_bytes = Gauge(
            p + "memory_budget_bytes", "The workers' memory budgets for message bytes (limits.memory_budget).",
            multiprocess_mode="livesum", registry=None,
        )
        self.greeting_seconds = Histogram(
            p + "greeting_seconds", "Connection accepted to greeting sent.", buckets=LATENCY_BUCKETS, registry=None
        )
        self.worker_restarts = Counter(p + "worker_restarts", "Workers respawned by the master.", registry=None)
        self.policy_rejections = Counter(
            p + "policy_rejections", "Refusals by policy (client limits, session budgets, relay, AUTH), by reason.",
            ["reason"], registry=None,
        )
        self.limiter_errors = Counter(
            p + "client_limits_errors", "Client-limit checks that could not reach their store (mail let through).",
            registry=None,
        )


def metrics() -> Metrics:
    """This process's metric objects, created on the first call (after `prepare`)."""
    global _metrics
    with _lock:
        if _metrics is None:
            if not os.environ.get(ENV):
                raise RuntimeError("smtpfront.metrics.prepare() must be called before metrics()")
            _metrics = Metrics()
            if os.getpid() == _master_pid:
                # The master sets no gauges: drop its zero-valued live gauges (queue_up would read 0).
                worker_gone(os.getpid())
        return _metrics


def worker_gone(pid: int) -> None:
    """Forget a reaped worker's live gauges (its counters are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT  # socket timeout: a silent client cannot hold a thread
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            try:
                body = generate_latest(self.server.registry)
            except Exception:
                log.exception("collecting metrics failed")
                self._send(500, b"error\n")
            else:
                self._send(200, body, CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            try:
                ready = self.server.ready()
            except Exception:
                log.exception("readiness check failed")
                ready = False
            if ready:
                self._send(200, b"ready\n")
            else:
                self._send(503, b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    ready: Callable[[], bool]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A health checker that resets its connection (HAProxy does, after each check) is not
        an error worth a traceback on stderr; anything else is logged, as JSON, once."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("metrics client %s went away: %s", client_address, exc)
            return
        log.exception("metrics request from %s failed", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, served by a daemon thread of the master."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool],
                 master_gauges: Callable[[], dict[str, float]] | None = None, *,
                 collectors: Sequence[Any] = (), registry: CollectorRegistry | None = None) -> None:
        """``collectors`` join the multiprocess registry (the queue's, read at scrape time);
        ``registry`` replaces it (a one-process program: ``smtpfront consume``)."""
        self.host = host
        self._port = port
        self._ready = ready
        self._master_gauges = master_gauges
        self._collectors = collectors
        self._registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; `OSError` when the address cannot be bound."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self._registry
        if registry is None:
            if not os.environ.get(ENV):
                raise RuntimeError("smtpfront.metrics.prepare() must be called before HealthServer.start()")
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if self._master_gauges is not None:
            registry.register(_MasterCollector(self._master_gauges))
        for collector in self._collectors:
            registry.register(collector)
        server_class = _Server6 if ":" in self.host else _Server
        try:
            server = server_class((self.host, self._port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {self.host}:{self._port}: {exc.strerror}") from exc
        server.registry = registry
        server.ready = self._ready
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="smtpfront-metrics", daemon=True)
        self._thread.start()
        log.info("serving metrics", extra={"host": self.host, "port": self.port})

    @property
    def port(self) -> int:
        """The bound port (the one picked by the kernel when 0 was asked)."""
        return self._port

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=REQUEST_TIMEOUT)
            self._thread = None


def enabled() -> bool:
    """True once :func:`prepare` ran in this process or its parent (the pre-fork daemon)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _Off:
    """Stands in for a metric when metrics are off (an embedded server): every call does nothing."""

    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, value: float) -> None:
        return None

    def labels(self, *values: str) -> _Off:
        return self


class Instruments:
    """The metric children the hot path uses, bound once (label lookups are not free).

    The per-message ones are `Held`: their updates reach the shared metrics when `flush`
    runs (once a second while sessions are open, see ``aio/tally.py``).
    """

    def __init__(self) -> None:
        off = _Off()
        m = metrics() if enabled() else None
        self._held: list[Held | HeldHistogram] = []

        def held(metric: Any) -> Any:
            if m is None:
                return off
            wrapper = HeldHistogram(metric) if hasattr(metric, "_upper_bounds") else Held(metric)
            self._held.append(wrapper)
            return wrapper

        self.connections: Any = held(m.connections) if m else off
        self.active: Any = held(m.connections_active) if m else off  # a gauge: inc and dec held alike
        self.refused_full: Any = m.connections_rejected.labels("max_clients") if m else off
        self.refused_closing: Any = m.connections_rejected.labels("shutting_down") if m else off
        self.accepted: Any = held(m.messages.labels("accepted")) if m else off
        self.rejected: Any = held(m.messages.labels("rejected")) if m else off
        self.tempfailed: Any = held(m.messages.labels("tempfailed")) if m else off
        self.received_bytes: Any = held(m.received_bytes) if m else off
        self.message_size: Any = held(m.message_size) if m else off
        self.queue_write: Any = held(m.queue_write_seconds) if m else off
        self.dot_to_reply: Any = held(m.dot_to_reply_seconds) if m else off
        self.batch_size: Any = held(m.queue_batch_size) if m else off
        self.queue_errors: Any = m.queue_errors if m else off
        self.queue_up: Any = m.queue_up if m else off
        self.queue_up.set(1)  # a gauge file starts at 0; sinks that can be down set 0 when they are
        self.queue_backlog: Any = m.queue_backlog if m else off
        self.queue_full: Any = m.queue_full if m else off
        self.inflight_bytes: Any = m.inflight_bytes if m else off
        self.greeting: Any = held(m.greeting_seconds) if m else off
        self.memory_held: Any = m.memory_held_bytes if m else off
        self.memory_budget: Any = m.memory_budget_bytes if m else off
        self.enabled = m is not None
        self.replies: Any = m.replies if m else off  # families: children are bound by aio/tally.py
        self.commands: Any = m.commands if m else off
        self.sessions: Any = m.sessions if m else off
        self.policy_rejections: Any = m.policy_rejections if m else off  # children bound per reason
        self.limiter_errors: Any = m.limiter_errors if m else off

    def flush(self) -> None:
        """Add the held per-message updates to the shared metrics."""
        for wrapper in self._held:
            wrapper.flush()


_instruments: tuple[int, Instruments] | None = None


def instruments() -> Instruments:
    """This process's instruments, created on first use (and again in a forked child: the
    cache is dropped at the fork, so no ``getpid`` system call is made per use)."""
    global _instruments
    if _instruments is None:
        _instruments = (os.getpid(), Instruments())
    return _instruments[1]


def _forget_instruments() -> None:
    global _instruments
    _instruments = None


os.register_at_fork(after_in_child=_forget_instruments)


def _collected(name: str) -> list[float]:
    """The values of one metric over all live workers, as the master's scrape would sum them."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return [sample.value for family in registry.collect() if family.name == name for sample in family.samples]


def active_connections() -> int:
    """Open connections over all live workers (the summed ``smtpfront_connections_active``)."""
    return int(sum(_collected("smtpfront_connections_active")))


def queue_reachable() -> bool:
    """False while some live worker's queue is down (``smtpfront_queue_up`` is 0); sinks that
    report no such gauge (null, memory, Maildir) count as reachable."""
    return all(value >= 1 for value in _collected("smtpfront_queue_up"))


MASTER_GAUGES = {
    "workers": "Worker processes the master keeps running (configured count).",
    "workers_ready": "Live workers that listen and beat (not stopping).",
    "draining": "1 once a graceful stop has begun.",
}


class _MasterCollector:
    """The master's own gauges (``smtpfront_workers`` …), read from the arbiter at each scrape."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        values = self._read()
        for name, doc in MASTER_GAUGES.items():
            yield GaugeMetricFamily("smtpfront_" + name, doc, value=values[name])


class _AgentHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _AgentServer)
        try:
            answer = server.status()
        except Exception:  # a status that cannot be computed must not look healthy
            log.exception("agent-check status failed")
            answer = "down"
        self.request.settimeout(REQUEST_TIMEOUT)
        with contextlib.suppress(OSError):
            self.request.sendall(answer.encode("ascii") + b"\n")


class _AgentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], status: Callable[[], str]) -> None:
        self.status = status
        super().__init__(address, _AgentHandler)


class _AgentServer6(_AgentServer):
    address_family = socket.AF_INET6


class AgentCheckServer:
    """HAProxy ``agent-check`` responder: one status line per connection (``up ready 75%``,
    ``drain``, ``down``), computed by ``status`` when HAProxy asks."""

    def __init__(self, host: str, port: int, status: Callable[[], str]) -> None:
        self._address = (host, port)
        self._status = status
        self._server: _AgentServer | None = None

    def start(self) -> None:
        """Bind and answer from a daemon thread; OSError names the address when it cannot bind."""
        host, port = self._address
        kind = _AgentServer6 if ":" in host else _AgentServer
        try:
            self._server = kind((host, port), self._status)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot answer agent checks on {host}:{port}: {exc.strerror}") from exc
        threading.Thread(target=self._server.serve_forever, name="smtpfront-agent-check", daemon=True).start()

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop answering (safe to call twice)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def agent_status(*, ready: bool, draining: bool, active: int, capacity: int) -> str:
    """The agent-check answer: drain while stopping, down until ready, else a weight from free capacity."""
    if draining:
        return "drain"
    if not ready:
        return "down"
    if capacity <= 0:
        return "up ready 100%"
    free = max(0, capacity - active)
    return f"up ready {max(1, free * 100 // capacity)}%"
