"""``Decisions``: one connection's answers to commands, through the middleware around its hooks.

A command a hook or a middleware may judge is answered at once with its default reply when
neither is configured (:meth:`Decisions.answer` returns ``None``: no coroutine, no task);
otherwise it returns the coroutine that asks them, which the protocol runs in the
connection's task. :meth:`Decisions.decide` runs the middleware chain around the hook's own
step, bounded by ``timeouts.hook``; a :class:`~smtpfront.hooks.Reject` and a timeout become
replies. One per connection, made in ``connection_made`` with the core connection it sends
replies to, the session, the hooks and the listeners' ``emit``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..core import replies as R
from ..core.connection import ServerConnection
from ..core.events import Event
from ..core.replies import Reply
from ..hooks import CommandContext, HookChain, Reject, Session

__all__ = ["Decisions", "ask", "constant"]

# The lines keep the logger they had when this was part of the protocol: same log lines.
log = logging.getLogger("smtpfront.aio.protocol")


class Decisions:
    """Middleware and hooks asked about one connection's commands."""

    __slots__ = ("hooks", "session", "conn", "emit", "timeout")

    def __init__(self, hooks: HookChain, session: Session, conn: ServerConnection,
                 emit: Callable[..., None], timeout: float) -> None:
        self.hooks = hooks
        self.session = session
        self.conn = conn
        self.emit = emit
        self.timeout = timeout  # timeouts.hook: the most one decision may take

    async def decide(self, verb: str, event: object, inner: Callable[[], Awaitable[Reply]]) -> Reply:
        """Run the middleware chain around ``inner``; Reject and timeouts become replies."""
        chain = inner
        for middleware in reversed(self.hooks.middleware):
            chain = _bind(middleware, CommandContext(self.session, verb, event), chain)
        try:
            async with asyncio.timeout(self.timeout):
                return await chain()
        except Reject as exc:
            return exc.reply
        except TimeoutError:
            log.warning("session %s: %s decision timed out", self.session.id, verb)
            return R.LOCAL_ERROR

    def answer(self, verb: str, event: Event, default: Reply, hook: str | None, *args: Any,
               apply: Callable[[Reply, object], None] | None = None) -> Coroutine[Any, Any, None] | None:
        """Reply with ``default`` at once, unless a hook or middleware must be asked."""
        hooks = self.hooks
        if not hooks.middleware and (hook is None or hook not in hooks.implemented):
            self.conn.send(default)
            if apply is not None:
                apply(default, None)
            return None
        return self._answer_async(verb, event, default, hook, args, apply)

    async def _answer_async(self, verb: str, event: Event, default: Reply, hook: str | None,
                            args: tuple[Any, ...], apply: Callable[[Reply, object], None] | None) -> None:
        extra: list[object] = [None]

        async def inner() -> Reply:
            if hook is not None and self.hooks.implements(hook):
                result = await self.hooks.ask(hook, *args)
                if isinstance(result, Reply):
                    return result
                extra[0] = result
            return default

        reply = await self.decide(verb, event, inner)
        self.conn.send(reply)
        if not reply.is_positive:
            self.emit("reject", self.session, reply)
        if apply is not None:
            apply(reply, extra[0])


async def ask(hooks: HookChain, hook: str, *args: Any) -> Any:
    """What ``hook`` says; a Reject it raises is its reply."""
    try:
        return await hooks.ask(hook, *args)
    except Reject as exc:
        return exc.reply


def constant(reply: Reply) -> Callable[[], Awaitable[Reply]]:
    """A decision's own step that always gives ``reply`` (the middleware may still judge)."""
    async def inner() -> Reply:
        return reply

    return inner


def _bind(middleware: Any, ctx: CommandContext, call_next: Callable[[], Awaitable[Reply]]) -> Callable[
        [], Awaitable[Reply]]:
    async def step() -> Reply:
        result: Reply = await middleware(ctx, call_next)
        return result

    return step
