"""``SMTPServer``: the embeddable server (one process, one event loop), the library face.

Its options cover nodemailer ``smtp-server``'s under Python names::

    class MyHooks(Hooks):
        async def on_rcpt_to(self, session, address, params):
            if address.domain != "example.com":
                return Reply(550, "5.7.1", "Relaying denied")

    async with SMTPServer(MyHooks(), port=2525) as server:
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType

from .aio.server import WorkerServer
from .aio.settings import ListenerSettings
from .assembly import assemble, trace
from .config import Config, load_config
from .core.sasl import MECHANISMS
from .hooks import Hooks, Middleware
from .sink.base import Sink
from .sink.memory import MemorySink

__all__ = ["SMTPServer"]

_ANY = ("0.0.0.0/0", "::/0")


def _networks(value: bool | Iterable[str]) -> tuple[str, ...]:
    """``True`` trusts every peer (only behind a proxy you control); a list trusts those."""
    if value is True:
        return _ANY
    if value is False:
        return ()
    return tuple(value)


class SMTPServer:
    """An SMTP or LMTP server on the running event loop.

    Args:
        hooks: the application's :class:`Hooks` (more can be added with :meth:`use`).
        host, port: where to listen (port 0 picks a free port; see :attr:`port`).
        sink: where accepted messages go (default: an in-memory sink, :attr:`sink`).
        name: this server's hostname in the greeting and Received headers.
        banner: the greeting text after the hostname.
        size: maximum message size in octets (SIZE, RFC 1870).
        auth_methods: SASL mechanisms to offer (PLAIN, LOGIN, CRAM-MD5, XOAUTH2, SCRAM-SHA-256).
        auth_optional: with auth_methods, allow mail without AUTH (False: submission, 530).
        allow_insecure_auth: offer AUTH before TLS.
        auth_failure_delay: seconds to wait before answering a failed AUTH.
        disabled_commands: verbs answered ``502`` (e.g. ``["VRFY", "HELP"]``); ``"AUTH"``
            and ``"STARTTLS"`` also remove the extension.
        hide_starttls, hide_pipelining, hide_8bitmime, hide_smtputf8, hide_chunking, hide_dsn,
            hide_enhancedstatuscodes: do not offer that extension (its use is then refused,
            as RFC 5321 requires for unadvertised extensions).
        secure: implicit TLS (port 465 style) instead of STARTTLS.
        cert_file, key_file: the TLS certificate chain and key (PEM); with neither, TLS
            uses a generated self-signed certificate for ``name`` and warns.
        sni: server name → (cert_file, key_file) for SNI.
        client_ca_file, require_client_cert: ask for (or require) client certificates.
        require_tls: refuse MAIL before STARTTLS.
        tls: False disables TLS entirely (no STARTTLS offered).
        max_clients: concurrent connections (0: unlimited); past it ``421 4.3.2``.
        use_proxy: peers (networks, or True for all) that must send a PROXY v1/v2 header.
        use_xclient, use_xforward: peers allowed XCLIENT / XFORWARD.
        lmtp: speak LMTP (RFC 2033) instead of SMTP.
        reverse_lookup: resolve the client's name (capped at 1.5 s).
        socket_timeout: idle seconds before ``421 4.4.2`` (a whole command must arrive in it).
        close_timeout: seconds open transactions get to finish on :meth:`close`.
        max_recipients, max_errors, max_auth_failures, min_data_rate, greeting_delay,
            bare_line_endings, long_lines, unauthorized_pipelining: limits and policies.
        reuse_port: bind with SO_REUSEPORT (each pre-forked worker binds its own socket).
        log_sessions: write JSON session logs (``smtpfront.session``: queued, reject, auth,
            session summary at INFO) through listeners, off the reply path.
    """

    def __init__(
        self,
        hooks: Hooks | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 2525,
        sock: socket.socket | None = None,
        sink: Sink | None = None,
        name: str | None = None,
        banner: str = "ESMTP smtpfront",
        size: int = 25 * 1024 * 1024,
        auth_methods: Sequence[str] = (),
        auth_optional: bool = True,
        allow_insecure_auth: bool = False,
        auth_failure_delay: float = 1.0,
        disabled_commands: Iterable[str] = (),
        hide_starttls: bool = False,
        hide_pipelining: bool = False,
        hide_8bitmime: bool = False,
        hide_smtputf8: bool = False,
        hide_chunking: bool = False,
        hide_dsn: bool = False,
        hide_enhancedstatuscodes: bool = False,
        secure: bool = False,
        tls: bool = True,
        cert_file: str | None = None,
        key_file: str | None = None,
        sni: Mapping[str, tuple[str, str]] | None = None,
        client_ca_file: str | None = None,
        require_client_cert: bool = False,
        require_tls: bool = False,
        max_clients: int = 0,
        use_proxy: bool | Iterable[str] = False,
        use_xclient: bool | Iterable[str] = False,
        use_xforward: bool | Iterable[str] = False,
        lmtp: bool = False,
        reverse_lookup: bool = False,
        socket_timeout: float = 300.0,
        close_timeout: float = 30.0,
        max_recipients: int = 100,
        max_errors: int = 10,
        max_auth_failures: int = 3,
        min_data_rate: int = 500,
        greeting_delay: float = 0.0,
        bare_line_endings: str = "reject",
        long_lines: str = "accept",
        unauthorized_pipelining: str = "reject",
        buffer_size: int = 64 * 1024,
        log_sessions: bool = True,
        reuse_port: bool = False,
    ) -> None:
        disabled = tuple(disabled_commands) + (("STARTTLS",) if hide_starttls else ())
        methods = tuple(m.upper() for m in auth_methods)
        unknown = [m for m in methods if m not in MECHANISMS]
        if unknown:
            raise ValueError(f"unknown auth_methods {unknown}; known: {list(MECHANISMS)}")
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        config = load_config(None, env={}, overrides={
            "hostname": name, "banner": banner, "reverse_lookup": reverse_lookup, "listen": [address],
            "listeners.mode": "lmtp" if lmtp else "smtp",
            "listeners.tls": "implicit" if secure else "starttls" if tls else "none",
            "listeners.require_tls": require_tls,
            "listeners.auth_required": bool(methods) and not auth_optional,
            "listeners.max_clients": max_clients, "listeners.proxy_protocol": use_proxy is not False,
            "limits.message_size": size, "limits.recipients": max_recipients, "limits.errors": max_errors,
            "limits.auth_failures": max_auth_failures, "limits.bare_line_endings": bare_line_endings,
            "limits.long_lines": long_lines, "limits.unauthorized_pipelining": unauthorized_pipelining,
            "limits.buffer_size": buffer_size,
            "timeouts.idle": socket_timeout, "timeouts.close": close_timeout, "timeouts.min_data_rate": min_data_rate,
            "timeouts.greeting_delay": greeting_delay,
            "tls.cert_file": cert_file, "tls.key_file": key_file, "tls.sni": dict(sni or {}),
            "tls.client_ca_file": client_ca_file, "tls.require_client_cert": require_client_cert,
            "auth.methods": methods, "auth.allow_insecure": allow_insecure_auth,
            "auth.failure_delay": auth_failure_delay,
            "trust.proxy": _networks(use_proxy), "trust.xclient": _networks(use_xclient),
            "trust.xforward": _networks(use_xforward),
            "features.pipelining": not hide_pipelining, "features.eightbitmime": not hide_8bitmime,
            "features.smtputf8": not hide_smtputf8, "features.chunking": not hide_chunking,
            "features.dsn": not hide_dsn, "features.enhancedstatuscodes": not hide_enhancedstatuscodes,
            "features.disabled_commands": disabled, "logging.sessions": log_sessions,
        })
        self._setup(config, hooks, sink if sink is not None else MemorySink(), sock, reuse_port)

    @classmethod
    def from_config(cls, config: Config, hooks: Hooks | None = None, *, sink: Sink | None = None,
                    sock: socket.socket | None = None, reuse_port: bool = False) -> SMTPServer:
        """The server ``smtpfront serve``'s workers run for ``config`` (every listener; the
        sink ``config.queue`` names unless ``sink`` is given), in this process."""
        server = cls.__new__(cls)
        server._setup(config, hooks, sink, sock, reuse_port)
        return server

    def _setup(self, config: Config, hooks: Hooks | None, sink: Sink | None, sock: socket.socket | None,
               reuse_port: bool) -> None:
        built = assemble(config, sink=sink, reuse_port=reuse_port)
        if sock is not None:
            built.listeners[0] = replace(built.listeners[0], sock=sock)
        self.config = config
        self._listeners = built.listeners
        self.settings: ListenerSettings = built.listeners[0].settings
        self.host, self._port = built.listeners[0].host, built.listeners[0].port
        self.sink: Sink = built.sink
        self.hooks = built.hooks
        self.listeners = built.events
        if hooks is not None:
            self.hooks.use(hooks)
        self._worker: WorkerServer | None = None
        self._stopped = asyncio.Event()

    # -- composition ---------------------------------------------------------------------

    def use(self, plugin: Hooks, *, name: str | None = None, before: Sequence[str] = (),
            after: Sequence[str] = ()) -> None:
        """Add a plugin (a Hooks object), ordered by plugin names in ``before``/``after``."""
        self.hooks.use(plugin, name=name, before=before, after=after)

    def middleware(self, middleware: Middleware) -> Middleware:
        """Add ``async def mw(ctx, call_next) -> Reply`` around every command (usable as a decorator)."""
        self.hooks.add_middleware(middleware)
        return middleware

    def on(self, event: str, listener: Callable[..., object]) -> None:
        """Observe ``event`` ("connect", "mail", "reject", "close", ...) without delaying it."""
        self.listeners.on(event, listener)

    def with_settings(self, **changes: object) -> None:
        """Adjust the listener settings before :meth:`start` (advanced)."""
        self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (returns once the socket is bound)."""
        if self._worker is not None:
            raise RuntimeError("server already started")
        start = getattr(self.sink, "start", None)
        if start is not None:
            await start()
        listeners = [replace(self._listeners[0], settings=self.settings), *self._listeners[1:]]
        self._worker = WorkerServer(listeners, self.hooks, self.sink, self.listeners, trace)
        await self._worker.start()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._worker is None:
            return self._port
        return int(self._worker.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Open connections."""
        return self._worker.connections if self._worker is not None else 0

    async def serve_forever(self) -> None:
        """Start if needed, then serve until :meth:`close` is called."""
        if self._worker is None:
            await self.start()
        await self._stopped.wait()

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, let open transactions finish (``close_timeout``), then 421 the rest."""
        if self._worker is not None:
            await self._worker.close(timeout)
        await self.sink.close()
        self._stopped.set()

    async def __aenter__(self) -> SMTPServer:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
