"""A session's counts for the adapter's metrics: commands by verb, replies by verb and class.

A dict update costs less than a metric update: the session counts here, and the adapter takes
the counts now and then (``ServerConnection.take_counts``) and adds them to its metrics. A
reply is counted in a row of six counters per verb (one per class, ``code // 100``), so no key
tuple is built per reply.
"""

from __future__ import annotations

__all__ = ["Tallies"]


class Tallies:
    """Commands by verb and replies by (verb answered, reply class) since the last :meth:`take`."""

    __slots__ = ("_commands", "_replies")

    def __init__(self) -> None:
        self._commands: dict[str, int] = {}
        self._replies: dict[str, list[int]] = {}

    def command(self, verb: str) -> None:
        counts = self._commands
        counts[verb] = counts.get(verb, 0) + 1

    def reply(self, verb: str, code: int) -> None:
        row = self._replies.get(verb)
        if row is None:
            row = self._replies[verb] = [0, 0, 0, 0, 0, 0]
        row[code // 100] += 1

    def take(self) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
        """The counts since the last call; counting starts again from zero."""
        commands, rows = self._commands, self._replies
        self._commands, self._replies = {}, {}
        replies = {(verb, cls): n for verb, row in rows.items() for cls, n in enumerate(row) if n}
        return commands, replies
