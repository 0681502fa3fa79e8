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
- The hook chain is the plugins, in this order: ``[client_limits]`` (``client-limits``, first:
  it must see every AUTH before a backend decides it), ``[auth] backend`` (the built-in
  ``auth-file`` or ``auth-dovecot``), ``[policy] domains`` (``relay-policy``), then each
  ``[[plugins]]`` table; each is built as ``server.use(...)`` would add it.
- ``[client_limits]`` counts in ``client_limits.redis``, else in the queue's Redis when ``queue``
  is a Redis URL (either in any topology: one server, Sentinel or Cluster), else in
  ``state_file`` (the host's workers); its
  slots are held at most ``limits.session_duration`` + 60 s; a store that fails is counted in
  ``smtpfront_client_limits_errors_total``, and a ``535`` reply counts as a failed AUTH.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from .aio.budget import MemoryBudget
from .aio.server import Listener
from .aio.sessionlog import count_rejections, log_sessions
from .aio.settings import ListenerSettings
from .aio.tls import server_context
from .config import REDIS_SCHEMES, Config, ConfigError, ListenerConfig, PluginConfig, needs_auth
from .core.options import Features, Limits, Policies
from .hooks import HookChain, Listeners
from .metrics import instruments
from .policy.limits import ClientLimits
from .policy.registry import PluginError, build
from .sink.base import Sink, SinkError
from .sink.trace import received_field as trace  # the Received: field (RFC 5321 §4.4), compiled

__all__ = [
    "Assembly", "assemble", "build_sink", "build_hooks", "plugin_specs", "check", "features", "listener_settings",
    "memory_budget", "tls_context", "trace",
]


def build_sink(config: Config) -> Sink:
    """The sink ``config.queue`` names (redis://, rediss://, redis+…://, maildir:DIR, null:)."""
    scheme, _, rest = config.queue.partition(":")
    if scheme in REDIS_SCHEMES:
        from .sink.redis.sink import RedisStreamSink

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
        idle_commands=lim.idle_commands, session_duration=lim.session_duration,
        messages_per_session=lim.messages_per_session,
        budget=budget if budget is not None else memory_budget(config),
    )


def plugin_specs(config: Config) -> list[tuple[str, PluginConfig]]:
    """The plugins ``config`` asks for, in chain order, each with the key that configured it."""
    out: list[tuple[str, PluginConfig]] = []
    a, p, c = config.auth, config.policy, config.client_limits
    if c.enabled:
        out.append(("client_limits", PluginConfig("client-limits", {
            "connections": c.connections, "connection_rate": c.connection_rate, "message_rate": c.message_rate,
            "recipient_rate": c.recipient_rate, "auth_failures": c.auth_failures, "ipv6_prefix": c.ipv6_prefix,
            "exempt": [str(n) for n in c.exempt], "state_file": c.state_file, "timeout": c.timeout,
            "hold": config.limits.session_duration + 60,
        })))
    if a.backend == "file":
        out.append(("auth.backend", PluginConfig("auth-file", {"file": a.file})))
    elif a.backend == "dovecot":
        out.append(("auth.backend", PluginConfig("auth-dovecot", {"socket": a.socket, "timeout": a.timeout})))
    if p.domains:
        options: dict[str, object] = {"domains": list(p.domains), "relay_networks": [str(n) for n in p.relay_networks]}
        if p.recipients is not None:
            options["recipients"] = p.recipients
        out.append(("policy.domains", PluginConfig("relay-policy", options)))
    out += [(f"plugins[{i}]", plugin) for i, plugin in enumerate(config.plugins)]
    return out


def build_hooks(config: Config) -> HookChain:
    """The hook chain ``config`` describes (:func:`plugin_specs`); raises PluginError naming the plugin."""
    chain = HookChain()
    for where, spec in plugin_specs(config):
        plugin = build(where, spec.use, {**spec.options, **_objects(config, where)})
        try:
            chain.use(plugin, name=f"{plugin.name or type(plugin).__name__}#{where}")
        except (TypeError, ValueError) as exc:
            raise PluginError(where, f"{spec.use!r}: {exc}") from None
    return chain


def _objects(config: Config, where: str) -> dict[str, object]:
    """What a built-in plugin's configuration cannot say in TOML: the client limits' store and metric."""
    if where != "client_limits":
        return {}
    store = None
    url = config.client_limits.redis or (config.queue if config.queue.partition(":")[0] in REDIS_SCHEMES else None)
    if url is not None:
        from .sink.redis.limits import RedisCounters

        try:
            store = RedisCounters(url, timeout=config.client_limits.timeout)
        except ValueError as exc:
            raise PluginError("client_limits.redis" if config.client_limits.redis else "queue", str(exc)) from None
    return {"store": store, "report": _store_failed}


def _store_failed() -> None:
    instruments().limiter_errors.inc()


def check(config: Config) -> HookChain:
    """What ``check-config`` and ``serve`` refuse beyond the configuration's own checks: a plugin
    that cannot be built, and a listener that requires AUTH while nothing can accept it."""
    chain = build_hooks(config)
    for i, listener in enumerate(config.listeners):
        if needs_auth(config, listener) and config.auth.methods and not chain.implements("on_auth"):
            key = f"listeners[{i}].auth_required" if listener.auth_required else f"listeners[{i}].mode"
            raise ConfigError(key, 'requires AUTH, but nothing checks credentials: set auth.backend = "file" '
                                   '(smtpfront passwd) or "dovecot", or add a [[plugins]] with on_auth')
    return chain


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
    ``config.queue`` names), the hook chain (``hooks``, or the plugins ``config`` names) and the
    session events (the session log when ``logging.sessions``). Raises SinkError or ValueError (a
    TLS file that cannot be used, a plugin that cannot be built: PluginError)."""
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
    count_rejections(events)
    if config.logging.sessions:
        log_sessions(events)
    chain = hooks if hooks is not None else build_hooks(config)
    for plugin in chain.plugins:
        if isinstance(plugin, ClientLimits):
            events.on("reject", plugin.rejected)  # a 535 is a failed AUTH, whoever decided it
    return Assembly(config, listeners, sink if sink is not None else build_sink(config), chain, events)
