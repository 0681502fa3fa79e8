"""Command, reply and session counts: from the core's tallies to Prometheus counters.

Each connection's core counts commands by verb and replies by (verb, class) in plain dicts
(`ServerConnection.take_counts`); a metric increment costs far more than a dict update, so
the worker moves the tallies into the counters once a second and when a session ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from ..core.connection import ServerConnection
from ..metrics import Instruments

__all__ = ["Tally"]

FLUSH_INTERVAL = 1.0
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class _HasConn(Protocol):
    conn: ServerConnection


class Tally:
    """Moves per-connection tallies into a worker's counters (nothing when metrics are off)."""

    def __init__(self, instruments: Instruments) -> None:
        self._m = instruments
        self._commands: dict[str, Any] = {}
        self._replies: dict[tuple[str, int], Any] = {}
        self._sessions: dict[tuple[bool, bool], Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def take(self, conn: ServerConnection) -> None:
        """Add one connection's tallies to the counters."""
        if not self._m.enabled:
            return
        commands, replies = conn.take_counts()
        for verb, n in commands.items():
            child = self._commands.get(verb)
            if child is None:
                child = self._commands[verb] = self._m.commands.labels(verb)
            child.inc(n)
        for key, n in replies.items():
            child = self._replies.get(key)
            if child is None:
                child = self._replies[key] = self._m.replies.labels(key[0], _CLASSES[min(key[1], 5)])
            child.inc(n)

    def session_ended(self, conn: ServerConnection, tls: bool, auth: bool) -> None:
        """Count a finished session by TLS and AUTH use, with its last tallies."""
        if not self._m.enabled:
            return
        self.take(conn)
        child = self._sessions.get((tls, auth))
        if child is None:
            child = self._sessions[tls, auth] = self._m.sessions.labels(
                "yes" if tls else "no", "yes" if auth else "no")
        child.inc()

    def watch(self, connections: Iterable[_HasConn]) -> None:
        """Flush the open connections' tallies every second while any is open."""
        if self._timer is not None or not self._m.enabled:
            return
        loop = asyncio.get_running_loop()

        def flush() -> None:
            self._timer = None
            live = list(connections)
            for protocol in live:
                self.take(protocol.conn)
            if live:
                self._timer = loop.call_later(FLUSH_INTERVAL, flush)

        self._timer = loop.call_later(FLUSH_INTERVAL, flush)
