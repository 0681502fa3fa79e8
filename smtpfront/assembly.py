"""The one composition root: a :class:`~smtpfront.config.Config` becomes what a worker runs.

``smtpfront serve``'s workers and the embeddable :class:`~smtpfront.server.SMTPServer` both
build their listeners, sink, TLS context, hook chain, session events and ``Received:`` trace
here; ``SMTPServer``'s keyword arguments only build a ``Config``. An option is mapped to what
the layers below use in exactly one place: this module.

What each operator setting means for the protocol:

- ``features.disabled_commands`` lists verbs answered ``502 5.5.1``; an extension whose verb
  is disabled is not offered either: ``STARTTLS`` (no STARTTLS in EHLO; an implicit-TLS
  listener still handshakes), ``AUTH`` (no mechanisms), ``BDAT`` (no CHUNKING/BINARYMIME).
- ``listeners[].mode = "submission"`` requires AUTH when ``auth.methods`` are configured.
- ``trust.proxy`` applies only to listeners with ``proxy_protocol``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from .aio.budget import MemoryBudget
from .aio.server import Listener
from .aio.sessionlog import log_sessions
from .aio.settings import ListenerSettings
from .aio.tls import server_context
from .config import REDIS_SCHEMES, Config, ListenerConfig
from .core.options import Features, Limits, Policies
from .hooks import HookChain, Listeners
from .metrics import instruments
from .sink.base import Envelope, Sink, SinkError
from .sink.trace import received_header

__all__ = [
    "Assembly", "assemble", "build_sink", "features", "listener_settings", "memory_budget", "tls_context", "trace",
]


def build_sink(config: Config) -> Sink:
    """The sink ``config.queue`` names (redis://, rediss://, redis+…://, maildir:DIR, null:)."""
    scheme, _, rest = config.queue.partition(":")
    if scheme in REDIS_SCHEMES:
        from .sink.redis_streams import RedisStreamSink

        r = config.redis
        return RedisStreamSink.from_url(
            config.queue, stream=r.stream, maxlen=r.maxlen, timeout=r.timeout, durability=r.durability,
            replicas=r.replicas, wait_timeout_ms=r.wait_timeout_ms, dedup_window=r.dedup_window,
            high_water=r.high_water, group=r.group, monitor_interval=r.monitor_interval,
            inflight_budget=r.inflight_budget, large_threshold=r.large_threshold,
        )
    if scheme == "maildir":
        from .sink.maildir import MaildirSink

        return MaildirSink(rest or "./spool", fsync=config.maildir.fsync)
    if scheme == "null":
        from .sink.null import NullSink

        return NullSink()
    raise SinkError(f"queue {config.queue!r}: this worker cannot serve that scheme")


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context every TLS listener shares (None when none uses TLS); built once per worker."""
    if all(not _uses_tls(config, item) for item in config.listeners):
        return None
    return server_context(config.tls, hostname=config.hostname)


def _uses_tls(config: Config, listener: ListenerConfig) -> bool:
    if listener.tls == "implicit":
        return True
    return listener.tls == "starttls" and "STARTTLS" not in config.features.disabled_commands


def features(config: Config, listener: ListenerConfig) -> Features:
    """The extensions a listener offers (before per-client trust: XCLIENT, XFORWARD)."""
    f = config.features
    disabled = frozenset(f.disabled_commands)
    chunking = f.chunking and "BDAT" not in disabled
    return Features(
        pipelining=f.pipelining, eightbitmime=f.eightbitmime, smtputf8=f.smtputf8, chunking=chunking,
        binarymime=chunking and f.eightbitmime, dsn=f.dsn, enhancedstatuscodes=f.enhancedstatuscodes,
        auth_mechanisms=() if "AUTH" in disabled else config.auth.methods, lmtp=listener.mode == "lmtp",
        disabled=disabled - {"AUTH", "STARTTLS"},
    )


def memory_budget(config: Config) -> MemoryBudget:
    """A worker's one budget for message octets in memory (``limits.memory_budget``), exported
    as ``smtpfront_memory_budget_bytes`` and ``smtpfront_memory_held_bytes``."""
    m = instruments()
    m.memory_budget.set(config.limits.memory_budget)
    return MemoryBudget(config.limits.memory_budget, m.memory_held)


def listener_settings(config: Config, listener: ListenerConfig, context: ssl.SSLContext | None,
                      budget: MemoryBudget | None = None) -> ListenerSettings:
    """What one listener's connections are built from; ``budget`` is the worker's, shared by
    all its listeners (a new one when not given)."""
    lim = config.limits
    offered = features(config, listener)
    return ListenerSettings(
        hostname=config.hostname, banner=config.banner, features=offered,
        limits=Limits(
            max_message_size=lim.message_size, max_command_line=lim.command_line, max_param_line=lim.param_line,
            max_auth_line=lim.auth_line, max_text_line=lim.text_line, max_recipients=lim.recipients,
            max_errors=lim.errors, max_auth_failures=lim.auth_failures, max_xclient_line=lim.xclient_line,
        ),
        policies=Policies(
            bare_line_endings=lim.bare_line_endings, long_lines=lim.long_lines,
            unauthorized_pipelining=lim.unauthorized_pipelining, early_talkers=lim.early_talkers,
        ),
        timeouts=config.timeouts,
        tls_context=context if _uses_tls(config, listener) else None,
        implicit_tls=listener.tls == "implicit", require_tls=listener.require_tls,
        require_auth=listener.auth_required or (listener.mode == "submission" and bool(offered.auth_mechanisms)),
        allow_insecure_auth=config.auth.allow_insecure, auth_failure_delay=config.auth.failure_delay,
        proxy_networks=config.trust.proxy if listener.proxy_protocol else (),
        xclient_networks=config.trust.xclient, xforward_networks=config.trust.xforward,
        max_clients=listener.max_clients, reverse_lookup=config.reverse_lookup,
        buffer_size=lim.buffer_size, body_stream_limit=lim.body_stream_limit,
        budget=budget if budget is not None else memory_budget(config),
    )


def trace(envelope: Envelope, server_name: str) -> bytes:
    """The ``Received:`` field prepended to every message (RFC 5321 §4.4)."""
    return received_header(envelope, server_name=server_name, queue_id=envelope.id, when=envelope.received_at)


@dataclass
class Assembly:
    """Everything a worker (or an embedded server) serves with, built from one ``Config``."""

    config: Config
    listeners: list[Listener]
    sink: Sink
    hooks: HookChain = field(default_factory=HookChain)
    events: Listeners = field(default_factory=Listeners)


def assemble(config: Config, *, sink: Sink | None = None, hooks: HookChain | None = None,
             sockets: Sequence[socket.socket] = (), reuse_port: bool = False) -> Assembly:
    """Build what serves ``config``: one :class:`Listener` per configured listener (adopting an
    inherited socket of the same address from ``sockets``), the sink (``sink``, or the one
    ``config.queue`` names), the hook chain and the session events (the session log when
    ``logging.sessions``). Raises SinkError or ValueError (a TLS file that cannot be used)."""
    context = tls_context(config)
    budget = memory_budget(config)  # one per worker: every listener's connections share it
    inherited = {sock.getsockname()[:2]: sock for sock in sockets}
    listeners = [
        Listener(listener_settings(config, item, context, budget), host=item.host, port=item.port,
                 reuse_port=reuse_port, sock=inherited.pop((item.host, item.port), None))
        for item in config.listeners
    ]
    for sock in inherited.values():
        sock.close()  # an address the configuration no longer has
    events = Listeners()
    if config.logging.sessions:
        log_sessions(events)
    return Assembly(config, listeners, sink if sink is not None else build_sink(config),
                    hooks if hooks is not None else HookChain(), events)
