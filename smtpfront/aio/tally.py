"""Per-connection counts and per-message metrics, moved into Prometheus once a second.

Each connection's core counts commands by verb and replies by (verb, class) in plain dicts
(`ServerConnection.take_counts`), and the per-message instruments hold their updates
(`metrics.Held`): a multiprocess metric update takes a lock and writes an mmapped file,
which per command and per message cost several percent of a worker. `Tally` gathers it all
and writes it once a second while sessions are open, once more after the last one ends, and
twice when the worker stops: as the stop begins (`flush_open`: a drain that ends in SIGKILL
loses nothing counted before it) and after the last session ended (`flush`).
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
    """Gathers a worker's counts and flushes them to its counters (nothing when metrics are off)."""

    def __init__(self, instruments: Instruments) -> None:
        self._m = instruments
        self._children: dict[object, Any] = {}  # label values -> bound metric child
        self._commands: dict[str, int] = {}
        self._replies: dict[tuple[str, int], int] = {}
        self._sessions: dict[tuple[bool, bool], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def take(self, conn: ServerConnection) -> None:
        """Add one connection's tallies to what waits for the next flush."""
        commands, replies = conn.take_counts()
        mine = self._commands
        for verb, n in commands.items():
            mine[verb] = mine.get(verb, 0) + n
        held = self._replies
        for key, n in replies.items():
            held[key] = held.get(key, 0) + n

    def session_ended(self, conn: ServerConnection, tls: bool, auth: bool) -> None:
        """Count a finished session by TLS and AUTH use, with its last tallies."""
        if not self._m.enabled:
            return
        self.take(conn)
        key = (tls, auth)
        self._sessions[key] = self._sessions.get(key, 0) + 1

    def flush_open(self, connections: Iterable[_HasConn]) -> None:
        """Take the open connections' tallies too, and flush: a worker's stop begins with this,
        so what was counted before it reaches the master even if the drain ends in SIGKILL."""
        if not self._m.enabled:
            return
        for protocol in list(connections):
            self.take(protocol.conn)
        self.flush()

    def flush(self) -> None:
        """Write everything gathered to the shared metrics."""
        m = self._m
        if not m.enabled:
            return
        commands, self._commands = self._commands, {}
        replies, self._replies = self._replies, {}
        sessions, self._sessions = self._sessions, {}
        for verb, n in commands.items():
            self._child(m.commands, verb).inc(n)
        for (verb, code_class), n in replies.items():
            self._child(m.replies, verb, _CLASSES[min(code_class, 5)]).inc(n)
        for (tls, auth), n in sessions.items():
            self._child(m.sessions, "yes" if tls else "no", "yes" if auth else "no").inc(n)
        m.flush()

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def watch(self, connections: Iterable[_HasConn]) -> None:
        """Flush every second while connections are open, and once after the last one ends."""
        if self._timer is not None or not self._m.enabled:
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self._timer = None
            live = list(connections)
            self.flush_open(live)
            if live:
                self._timer = loop.call_later(FLUSH_INTERVAL, tick)

        self._timer = loop.call_later(FLUSH_INTERVAL, tick)
