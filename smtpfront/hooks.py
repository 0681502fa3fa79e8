"""How an application decides what the server accepts: hooks, plugins, middleware, listeners.

- **Hooks** are the methods of a :class:`Hooks` subclass, all ``async``. Each returns
  None (no objection: the next plugin decides, then the default), a :class:`Reply` (the
  decision), or raises :class:`Reject`. Mail and recipient hooks may also return an
  :class:`Address` to accept the command with that address instead (rewriting).
- **Plugins** are several ``Hooks`` objects with names, ordered with ``before=``/``after=``;
  for each hook they are asked in order until one decides.
- **Middleware** ``async def mw(ctx, call_next) -> Reply`` wraps every command's decision
  and may return, alter or replace the reply.
- **Listeners** (``server.on("mail", fn)``) observe; they run after the reply is sent and
  can never delay or change the conversation.

Rule: hooks are explicit. A ``Hooks`` subclass defining an ``on_*`` method that is not a
known hook is an error when the server starts (a misspelt hook must not be ignored).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .core.events import Address, MailParams, ProxyInfo, RcptParams, Recipient, SaslCredentials
from .core.replies import Reply
from .core.sasl import ScramSecret

__all__ = [
    "Reject", "Session", "Recipient", "Hooks", "IncomingMessage", "CommandContext", "Middleware",
    "HookChain", "Listeners", "HOOK_NAMES", "LISTENER_EVENTS", "rejection_reason", "reason_of",
]


_REASONS: dict[Reply, str] = {}


def rejection_reason(reply: Reply, reason: str) -> Reply:
    """Name ``reply`` a policy refusal: when a session gets it, it counts in
    ``smtpfront_policy_rejections_total{reason}`` and its session-log line says ``reason``.
    Replies are told apart by their wire text (code, enhanced code and text). Returns ``reply``."""
    _REASONS[reply] = reason
    return reply


def reason_of(reply: Reply) -> str | None:
    """The reason :func:`rejection_reason` gave ``reply`` (None: not a policy refusal)."""
    return _REASONS.get(reply)


class Reject(Exception):
    """Raise from a hook to refuse with a reply, e.g. ``Reject(550, "5.7.1", "Relaying denied")``."""

    def __init__(self, code: int, enhanced: str | None = None, text: str = "Rejected") -> None:
        super().__init__(text)
        self.reply = Reply(code, enhanced, text)


@dataclass(slots=True)
class Session:
    """What is known about one connection; hooks read it and may keep data in ``data``."""

    id: str
    client_address: str
    client_port: int
    local_address: str = ""
    local_port: int = 0
    client_name: str | None = None  # reverse DNS, when enabled and it answered in time
    helo: str | None = None
    esmtp: bool = False
    lmtp: bool = False
    tls: dict[str, str] | None = None
    user: str | None = None
    proxy: ProxyInfo | None = None
    xclient: dict[str, str] = field(default_factory=dict)
    xforward: dict[str, str] = field(default_factory=dict)
    transactions: int = 0
    mail_from: Address | None = None
    mail_params: MailParams | None = None
    recipients: list[Recipient] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        """RFC 3848 ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, LMTP..."""
        base = "LMTP" if self.lmtp else ("ESMTP" if self.esmtp else "SMTP")
        if base == "SMTP":
            return base
        return base + ("S" if self.tls else "") + ("A" if self.user else "")

    def add_header(self, name: str, value: str) -> None:
        """Add a header to the message; effective for hooks that run before the body starts."""
        for text in (name, value):
            if any(ord(c) < 32 for c in text):
                raise ValueError("header names and values must not contain control characters")
        self.headers.append((name, value))

    def reset_transaction(self) -> None:
        """Forget the envelope (RSET, HELO, end of message)."""
        self.mail_from = None
        self.mail_params = None
        self.recipients = []
        self.headers = []


class IncomingMessage(Protocol):
    """The body as it streams in, for :meth:`Hooks.on_data`.

    Iterate it to receive chunks while the client sends (a slow consumer slows the
    client: backpressure). ``size`` is final once iteration ends.
    """

    size: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes:
        """The whole body (bounded by the message size limit)."""
        ...


class Hooks:
    """Override the hooks you need; every default accepts (``on_auth`` refuses)."""

    name: str = ""

    async def on_connect(self, session: Session) -> Reply | None:
        """A client connected (after any PROXY header). A reply other than 220 refuses it."""
        return None

    async def on_secure(self, session: Session) -> Reply | None:
        """TLS is established (STARTTLS or implicit); ``session.tls`` holds the facts."""
        return None

    async def on_helo(self, session: Session, hostname: str) -> Reply | None:
        """HELO/EHLO/LHLO."""
        return None

    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool | Reply | None:
        """Decide an AUTH exchange: True accepts, False refuses (535 5.7.8)."""
        return None

    async def scram_secret(self, session: Session, username: str) -> ScramSecret | None:
        """The stored SCRAM-SHA-256 secret for ``username`` (None: unknown user)."""
        return None

    async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> Reply | Address | None:
        """MAIL FROM; return an Address to accept with that sender instead."""
        return None

    async def on_rcpt_to(self, session: Session, address: Address, params: RcptParams) -> Reply | Address | None:
        """RCPT TO; return an Address to accept with that recipient instead."""
        return None

    async def on_data_start(self, session: Session) -> Reply | None:
        """DATA or the first BDAT, before the body; the last chance to ``add_header``."""
        return None

    async def on_data(self, session: Session, message: IncomingMessage) -> Reply | Sequence[Reply] | None:
        """The body, streamed. In LMTP, a sequence gives one reply per recipient."""
        return None

    async def on_close(self, session: Session) -> None:
        """The connection ended (any reason)."""
        return None


HOOK_NAMES = frozenset(name for name in vars(Hooks) if name.startswith("on_") or name == "scram_secret")


def _check(hooks: Hooks) -> None:
    for name in dir(type(hooks)):
        if name.startswith("on_") and name not in HOOK_NAMES:
            raise ValueError(f"{type(hooks).__name__}.{name} is not a hook; known hooks: {sorted(HOOK_NAMES)}")
    for name in HOOK_NAMES:
        method = getattr(hooks, name)
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"{type(hooks).__name__}.{name} must be an async def")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a middleware sees: the session, the command verb and its parsed event."""

    session: Session
    verb: str
    event: object


Middleware = Callable[[CommandContext, Callable[[], Awaitable[Reply]]], Awaitable[Reply]]


@dataclass(slots=True)
class _Plugin:
    hooks: Hooks
    name: str
    before: tuple[str, ...]
    after: tuple[str, ...]


class HookChain:
    """Plugins in order, plus middleware; asks each plugin until one decides."""

    def __init__(self) -> None:
        self._plugins: list[_Plugin] = []
        self._ordered: list[Hooks] = []
        self.implemented: frozenset[str] = frozenset()
        """The hooks some plugin overrides (the server skips the others; read per command)."""
        self.middleware: list[Middleware] = []

    def use(self, hooks: Hooks, *, name: str | None = None, before: Sequence[str] = (),
            after: Sequence[str] = ()) -> None:
        """Add a plugin; ``before``/``after`` name plugins it must run before or after."""
        _check(hooks)
        plugin_name = name or hooks.name or type(hooks).__name__
        if any(p.name == plugin_name for p in self._plugins):
            raise ValueError(f"a plugin named {plugin_name!r} is already in use")
        self._plugins.append(_Plugin(hooks, plugin_name, tuple(before), tuple(after)))
        self._ordered = self._order()
        self.implemented = frozenset(
            name for name in HOOK_NAMES
            if any(getattr(type(h), name) is not getattr(Hooks, name) for h in self._ordered)
        )

    def add_middleware(self, middleware: Middleware) -> None:
        """Wrap every command's decision (outermost first, in the order added)."""
        self.middleware.append(middleware)

    def _order(self) -> list[Hooks]:
        """Topological order honouring before/after; ties keep the order of ``use``."""
        names = {p.name for p in self._plugins}
        edges: dict[str, set[str]] = {p.name: set() for p in self._plugins}  # name -> must run after these
        for p in self._plugins:
            for other in p.after:
                if other in names:
                    edges[p.name].add(other)
            for other in p.before:
                if other in names:
                    edges[other].add(p.name)
        done: list[str] = []
        pending = [p.name for p in self._plugins]
        while pending:
            ready = next((n for n in pending if edges[n] <= set(done)), None)
            if ready is None:
                raise ValueError(f"plugin ordering has a cycle among {pending}")
            done.append(ready)
            pending.remove(ready)
        by_name = {p.name: p.hooks for p in self._plugins}
        return [by_name[n] for n in done]

    @property
    def plugins(self) -> list[Hooks]:
        """The plugins, in the order they are asked."""
        return list(self._ordered)

    def implements(self, hook: str) -> bool:
        """True if any plugin overrides ``hook`` (so the server can skip the default fast)."""
        return hook in self.implemented

    async def ask(self, hook: str, *args: Any) -> Any:
        """Ask each plugin in order; the first answer that is not None wins."""
        for hooks in self._ordered:
            method = getattr(hooks, hook)
            if getattr(type(hooks), hook) is getattr(Hooks, hook):
                continue
            result = await method(*args)
            if result is not None:
                return result
        return None

    async def notify_close(self, session: Session) -> None:
        """Call every plugin's ``on_close`` (all of them: none can veto a close)."""
        for hooks in self._ordered:
            await hooks.on_close(session)


LISTENER_EVENTS = frozenset({"connect", "secure", "helo", "auth", "mail", "reject", "close", "error"})


class Listeners:
    """Observers by event name; ``schedule`` runs them later so they never delay a reply."""

    def __init__(self) -> None:
        self._by_event: dict[str, list[Callable[..., object]]] = {}

    def on(self, event: str, listener: Callable[..., object]) -> None:
        """Register ``listener`` for ``event`` (one of :data:`LISTENER_EVENTS`)."""
        if event not in LISTENER_EVENTS:
            raise ValueError(f"unknown event {event!r}; known: {sorted(LISTENER_EVENTS)}")
        self._by_event.setdefault(event, []).append(listener)

    def get(self, event: str) -> list[Callable[..., object]]:
        """The listeners for ``event`` (empty list when none: the fast path checks this)."""
        return self._by_event.get(event, [])
