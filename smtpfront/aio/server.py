"""``WorkerServer``: a worker's listeners and its connections, with graceful close.

Shutdown follows uvicorn's order: stop accepting; tell idle sessions ``421 4.3.2`` and close
them; let sessions inside a transaction finish until the close timeout; then ``421`` and
close whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..hooks import HookChain, Listeners
from ..sink.base import Envelope, Sink
from .protocol import ServerState, SMTPProtocol
from .settings import ListenerSettings

__all__ = ["Listener", "WorkerServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listener:
    """One address to serve, with the settings its connections use.

    ``sock`` is an already bound listening socket (the supervisor's, or a test's); without
    it the server binds ``host``:``port`` itself (port 0 picks a free port).
    """

    settings: ListenerSettings
    host: str = "127.0.0.1"
    port: int = 2525
    sock: socket.socket | None = None
    reuse_port: bool = False
    backlog: int = 1024


class WorkerServer:
    """Serves several listeners on the running event loop, sharing hooks, sink and listeners."""

    def __init__(self, listeners: list[Listener], hooks: HookChain, sink: Sink, events: Listeners,
                 trace: Callable[[Envelope, str], bytes]) -> None:
        self._listeners = listeners
        self._states = [ServerState(item.settings, hooks, sink, events, trace) for item in listeners]
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        """Bind (or adopt) every listening socket and start accepting."""
        loop = asyncio.get_running_loop()
        for item, state in zip(self._listeners, self._states, strict=True):
            def factory(state: ServerState = state) -> SMTPProtocol:
                return SMTPProtocol(state)

            if item.sock is not None:
                server = await loop.create_server(factory, sock=item.sock, backlog=item.backlog)
            else:
                server = await loop.create_server(
                    factory, host=item.host, port=item.port, reuse_port=item.reuse_port or None,
                    backlog=item.backlog,
                )
            self._servers.append(server)

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (to learn a port chosen by the kernel)."""
        return [sock for server in self._servers for sock in server.sockets]

    @property
    def connections(self) -> int:
        """Open connections across all listeners."""
        return sum(len(state.connections) for state in self._states)

    @property
    def messages_accepted(self) -> int:
        """Messages this worker committed to its sink."""
        return sum(state.messages_accepted for state in self._states)

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, drain open sessions for up to ``timeout`` seconds, then close."""
        for state in self._states:
            state.tally.flush_open(state.connections)  # the held counts reach the master now
        for server in self._servers:
            server.close()
        # A connection accepted in the loop pass that brought the stop has its connection_made
        # scheduled but not run: let it in first, so that it is greeted and drained like the
        # sessions already open instead of refused with 421 (during a reload, the kernel gave it
        # to this worker a moment before the new generation could have taken it).
        await asyncio.sleep(0)
        for state in self._states:
            state.closing = True
        protocols = [p for state in self._states for p in list(state.connections)]
        for protocol in protocols:
            protocol.shutdown()
        limit = timeout if timeout is not None else max(s.settings.timeouts.close for s in self._states)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = [p for state in self._states for p in list(state.connections)]
        if left:
            log.info("closing %d sessions still open after %.1f s", len(left), limit)
        for protocol in left:
            protocol.abort()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        for state in self._states:
            state.tally.flush()  # the counts gathered since the last tick (aio/tally.py)
