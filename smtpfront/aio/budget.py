"""One memory budget per worker for the message octets it holds (``limits.memory_budget``).

What counts: every body octet a connection handed to its message's writer until the writer
says it left this process's memory. That covers bodies before they stream (the Redis
writer's parts below ``large_threshold``, the Maildir writer's file buffer), bodies waiting
for their commit, and chunks sent to Redis and not yet answered. A writer takes part by
having ``account(holding)`` (it then calls ``holding.release(n)`` as octets leave and
``holding.close()`` once ``commit`` or ``abort`` was called) and, optionally, ``spill()``
(send what it holds now; True when what it keeps will leave without more input). A writer
without ``account`` is not counted.

The hot path: each message's :class:`Account` has a ``mark``, the octets it may hold without
asking (what it held when it last asked, plus up to :data:`STEP` of headroom reserved in the
budget). Per body chunk the connection adds the chunk's length to ``held`` and compares it
with ``mark``: a message under its mark pays that add and compare, nothing else.

Past the mark the account asks the budget (:meth:`Account.more`). While the budget has room
it reserves more headroom. When it is full, the writer is asked to spill, and the
connection stops reading if its writer's octets drain by themselves, unless it holds less
than a quarter of an even share of the limit (``limit / open messages / 4``) while the
limit is passed by an eighth at most: the senders holding the most stop, a small message
goes on, one chunk at a time. Paused connections are woken in the order they paused
as octets leave, once the budget is back under :data:`RESUME` of its limit, as many as the
room left allows for one read each.

Not counted: each connection's receive buffer (``limits.buffer_size``, allocated per
connection), and octets of a writer that cannot spill (a Redis queue with
``large_threshold = 0`` keeps bodies inline until commit; a header block not yet read
whole, at most 64 KiB) are counted but never paused on, since pausing could not drain them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["STEP", "Account", "MemoryBudget"]

STEP = 256 * 1024
"""The most headroom an account is given at once (it asks again past it)."""
RESUME = 0.75
"""Paused readers are woken once the octets held are at or under this share of the limit."""
READ = 64 * 1024
"""What one woken reader is expected to add before it asks again (one receive buffer)."""
PUBLISH_INTERVAL = 1.0


class Account:
    """One message's octets in memory: ``held`` (handed to the writer, not yet released) and
    ``mark`` (what it may hold before it asks the budget again)."""

    __slots__ = ("held", "mark", "_budget", "_writer", "_open")

    def __init__(self, budget: MemoryBudget, writer: object, mark: int) -> None:
        self.held = 0
        self.mark = mark
        self._budget = budget
        self._writer: object = writer  # its spill() is looked up when the budget is full (None once closed)
        self._open = True

    def more(self) -> Awaitable[None] | None:
        """``held`` passed ``mark``: None to go on, or an awaitable to wait on, not reading."""
        return self._budget._more(self)

    def release(self, octets: int) -> None:
        """The writer: ``octets`` it was given left this process's memory."""
        self.held -= octets
        self.mark -= octets
        budget = self._budget
        budget.used -= octets
        if budget._waiting and budget.used <= budget.resume:
            budget._wake()
        budget._changed()

    def close(self) -> None:
        """The writer: ``commit`` or ``abort`` was called, no more octets come (idempotent)."""
        if self._open:
            self._open = False
            self._writer = None  # the writer refers to its account: no cycle left for the GC to find
            self._budget._close(self)


class MemoryBudget:
    """The octets a worker's messages may hold in memory; one object per worker, shared by
    every connection of every listener (``limit`` 0: no budget, nothing is counted)."""

    def __init__(self, limit: int, gauge: Any = None) -> None:
        if limit < 0:
            raise ValueError("memory budget must not be negative")
        self.limit = limit
        self.resume = int(limit * RESUME)
        self.used = 0  # held by every account, plus the headroom reserved for open ones
        self.accounts = 0  # open accounts (messages still receiving)
        self.pauses = 0  # readers paused so far (a figure for tests and operators)
        self._waiting: dict[Account, asyncio.Future[None]] = {}  # by pause order; one per connection at most
        self._gauge = gauge
        self._publishing: asyncio.TimerHandle | None = None
        if gauge is not None:
            gauge.set(0)

    def open(self, writer: object) -> Account | None:
        """An account for a new message's writer, or None when it is not counted."""
        take = getattr(writer, "account", None)
        if take is None or not self.limit:
            return None
        free = self.limit - self.used
        headroom = (STEP if free >= 8 * STEP else free // 8) if free > 0 else 0  # _headroom(), inline
        account = Account(self, writer, headroom)
        self.used += headroom
        self.accounts += 1
        take(account)
        return account

    def _headroom(self) -> int:
        free = self.limit - self.used
        return min(STEP, free // 8) if free > 0 else 0

    def _more(self, account: Account) -> Awaitable[None] | None:
        self.used += account.held - account.mark  # what it holds now, exactly (no headroom)
        account.mark = account.held
        self._changed()
        headroom = self._headroom()
        if headroom or self.used <= self.limit:  # room (or none left, but not past the limit yet)
            account.mark += headroom
            self.used += headroom
            return None
        # Full: its octets go out now where they can, and the senders holding the most stop
        # reading: all but those holding under a quarter of an even share (a small message
        # goes on, one chunk at a time), while the limit is passed by an eighth at most.
        spill: Callable[[], bool] | None = getattr(account._writer, "spill", None)
        drains = spill() if spill is not None else True
        if not drains or (account.held * self.accounts * 4 < self.limit and self.used * 8 <= self.limit * 9):
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiting[account] = future
        self.pauses += 1
        if self.used <= self.resume:  # its spill may have been answered already
            self._wake()
        return future

    def _close(self, account: Account) -> None:
        self.accounts -= 1
        self.used -= account.mark - account.held  # unused headroom goes back
        account.mark = account.held
        future = self._waiting.pop(account, None)
        if future is not None and not future.done():
            future.set_result(None)
        if self._waiting and self.used <= self.resume:
            self._wake()
        self._changed()

    def _wake(self) -> None:
        """Wake paused readers in the order they paused, one read's worth of room each."""
        room = self.limit - self.used
        waiting = self._waiting
        while waiting and room >= READ:
            account = next(iter(waiting))
            future = waiting.pop(account)
            if not future.done():  # a wait given up (the connection went away) costs no room
                future.set_result(None)
                room -= READ

    def _changed(self) -> None:
        """Publish ``used`` on the gauge, at most once a second (a metric write is not free)."""
        if self._gauge is None or self._publishing is not None:
            return
        self._publishing = asyncio.get_running_loop().call_later(PUBLISH_INTERVAL, self._publish)

    def _publish(self) -> None:
        self._publishing = None
        if self._gauge is not None:
            self._gauge.set(max(0, self.used))
