"""A worker process: built from the configuration after the fork, then serving until told to stop.

Each worker has its own uvloop event loop, its own sink (its own Redis connection) and its
own listening sockets (``SO_REUSEPORT``), one per configured listener (e.g. 25 with
STARTTLS, 465 implicit TLS, 587 submission, an LMTP port): the ones its slot's earlier worker
handed to the master where the address is unchanged, new ones elsewhere; it hands them all
over in turn. It beats its heartbeat once a second once it listens, stops on SIGTERM (drain)
or SIGQUIT (now), ignores SIGINT (the master decides), and exits with
:data:`WORKER_BOOT_ERROR` when it cannot start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl

from ..aio.server import Listener, WorkerServer
from ..aio.sessionlog import log_sessions
from ..aio.settings import ListenerSettings, Timeouts
from ..aio.tls import TlsConfig as TlsFiles
from ..aio.tls import server_context
from ..config import REDIS_SCHEMES, Config, ListenerConfig
from ..core.options import Features, Limits, Policies
from ..hooks import HookChain, Listeners
from ..logs import setup_logging
from ..sink.base import Envelope, Sink, SinkError
from ..sink.trace import received_header
from .arbiter import WORKER_BOOT_ERROR, WorkerContext

__all__ = ["build_sink", "listener_settings", "worker_main"]

log = logging.getLogger(__name__)


def build_sink(config: Config) -> Sink:
    """The sink ``config.queue`` names (redis://, rediss://, maildir:DIR, null:)."""
    scheme, _, rest = config.queue.partition(":")
    if scheme in REDIS_SCHEMES:
        from ..sink.redis_streams import RedisStreamSink

        r = config.redis
        return RedisStreamSink.from_url(
            config.queue, stream=r.stream, maxlen=r.maxlen, timeout=r.timeout, durability=r.durability,
            replicas=r.replicas, wait_timeout_ms=r.wait_timeout_ms, dedup_window=r.dedup_window,
            high_water=r.high_water, group=r.group, monitor_interval=r.monitor_interval,
            inflight_budget=r.inflight_budget, large_threshold=r.large_threshold,
        )
    if scheme == "maildir":
        from ..sink.maildir import MaildirSink

        return MaildirSink(rest or "./spool", fsync=config.maildir.fsync)
    if scheme == "null":
        from ..sink.null import NullSink

        return NullSink()
    raise SinkError(f"queue {config.queue!r}: this worker cannot serve that scheme yet")


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The worker's TLS context (None when no listener uses TLS); built once per worker."""
    if all(item.tls == "none" for item in config.listeners):
        return None
    t = config.tls
    return server_context(TlsFiles(
        cert_file=t.cert_file, key_file=t.key_file, sni=dict(t.sni), client_ca_file=t.client_ca_file,
        require_client_cert=t.require_client_cert, min_version=t.min_version, ciphers=t.ciphers,
        self_signed_dir=t.self_signed_dir,
    ), hostname=config.hostname)


def listener_settings(config: Config, listener: ListenerConfig, context: ssl.SSLContext | None) -> ListenerSettings:
    """What one listener's connections are built from."""
    f, lim, t = config.features, config.limits, config.timeouts
    features = Features(
        pipelining=f.pipelining, eightbitmime=f.eightbitmime, smtputf8=f.smtputf8, chunking=f.chunking,
        binarymime=f.chunking and f.eightbitmime, dsn=f.dsn, enhancedstatuscodes=f.enhancedstatuscodes,
        auth_mechanisms=config.auth.methods, lmtp=listener.mode == "lmtp", disabled=frozenset(f.disabled_commands),
    )
    context = None if listener.tls == "none" else context
    return ListenerSettings(
        hostname=config.hostname, banner=config.banner, features=features,
        limits=Limits(
            max_message_size=lim.message_size, max_command_line=lim.command_line, max_param_line=lim.param_line,
            max_auth_line=lim.auth_line, max_text_line=lim.text_line, max_recipients=lim.recipients,
            max_errors=lim.errors, max_auth_failures=lim.auth_failures, max_xclient_line=lim.xclient_line,
        ),
        policies=Policies(
            bare_line_endings=lim.bare_line_endings, long_lines=lim.long_lines,
            unauthorized_pipelining=lim.unauthorized_pipelining, early_talkers=lim.early_talkers,
        ),
        timeouts=Timeouts(
            greeting=t.greeting, idle=t.idle, data=t.data, min_data_rate=t.min_data_rate,
            tls_handshake=t.tls_handshake, sink=t.sink, hook=t.hook, close=t.close,
            reverse_lookup=t.reverse_lookup,
        ),
        tls_context=context,
        implicit_tls=listener.tls == "implicit", require_tls=listener.require_tls,
        require_auth=listener.auth_required or (listener.mode == "submission" and bool(config.auth.methods)),
        allow_insecure_auth=config.auth.allow_insecure, auth_failure_delay=config.auth.failure_delay,
        proxy_networks=config.trust.proxy if listener.proxy_protocol else (),
        xclient_networks=config.trust.xclient, xforward_networks=config.trust.xforward,
        max_clients=listener.max_clients, reverse_lookup=config.reverse_lookup,
        greeting_delay=t.greeting_delay, buffer_size=lim.buffer_size, body_stream_limit=lim.body_stream_limit,
    )


def _trace(envelope: Envelope, server_name: str) -> bytes:
    return received_header(envelope, server_name=server_name, queue_id=envelope.id, when=envelope.received_at)


def worker_main(config: Config, context: WorkerContext) -> int:
    """The child's entry point, after the fork: logging, then its own event loop."""
    setup_logging(config.logging.level, json=config.logging.format == "json", worker=context.number)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the master decides
    import uvloop

    return int(uvloop.run(_serve(config, context)))


async def _serve(config: Config, context: WorkerContext) -> int:
    try:
        sink = build_sink(config)
        start = getattr(sink, "start", None)
        if start is not None:
            await start()
        tls = tls_context(config)
        inherited = {sock.getsockname()[:2]: sock for sock in context.sockets}
        listeners = [
            Listener(listener_settings(config, item, tls), host=item.host, port=item.port, reuse_port=True,
                     sock=inherited.pop((item.host, item.port), None))
            for item in config.listeners
        ]
        for sock in inherited.values():
            sock.close()  # an address the configuration no longer has
        events = Listeners()
        if config.logging.sessions:
            log_sessions(events)
        server = WorkerServer(listeners, HookChain(), sink, events, _trace)
        await server.start()
    except (SinkError, OSError, ValueError) as exc:
        log.error("worker cannot start: %s", exc)
        return WORKER_BOOT_ERROR
    for item in config.listeners:
        log.info("listening", extra={"address": item.address, "mode": item.mode, "tls": item.tls})
    try:
        context.hand_over([sock.fileno() for sock in server.sockets])
    except OSError as exc:  # the master is gone: nothing to keep them for
        log.warning("cannot hand the listening sockets to the master: %s", exc)
    stop = asyncio.Event()
    quick = False
    loop = asyncio.get_running_loop()

    def quit_now() -> None:
        nonlocal quick
        quick = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGQUIT, quit_now)

    async def heartbeat() -> None:
        while not stop.is_set():
            context.heartbeat.notify()
            if os.getppid() != context.ppid:  # the master is gone: do not linger as an orphan
                log.error("master process gone; stopping")
                stop.set()
            await asyncio.sleep(1.0)

    beat = loop.create_task(heartbeat())
    await stop.wait()
    log.info("stopping: draining open sessions")
    await server.close(timeout=0.0 if quick else config.supervisor.graceful_timeout)
    await sink.close()
    beat.cancel()
    log.info("stopped")
    return 0
