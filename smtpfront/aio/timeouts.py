"""One connection's deadline (Postfix ``smtp_stream`` semantics, one timer).

Activity only moves :attr:`Deadline.when`; the single timer re-arms itself for the remainder
when it fires early, so a busy connection costs no timer churn per read. A deadline moved
*earlier* than the armed timer re-arms at once. While the server works (a hook, the queue,
a TLS handshake) the deadline is suspended: the client is not at fault.

The protocol uses it for: the greeting/PROXY/TLS allowance, the idle allowance in which a
whole command must arrive (bytes that do not complete a command do not extend it), and the
DATA allowance, extended by ``1/min_data_rate`` seconds per octet received (slowloris).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadline"]

_NEVER = float("inf")


class Deadline:
    """A deadline with one lazily re-armed timer; ``on_expire`` runs once it passes."""

    __slots__ = ("_loop", "_on_expire", "_idle", "when", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expire: Callable[[], None], idle: float) -> None:
        self._loop = loop
        self._on_expire = on_expire
        self._idle = idle  # how often a suspended deadline looks again
        self.when = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, seconds: float) -> None:
        """The deadline is now + ``seconds``."""
        self.when = when = self._loop.time() + seconds
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return  # lazy re-arming: the timer fires early and re-arms for the rest
            timer.cancel()  # it would fire too late: a deadline moved earlier re-arms at once
        self._timer = self._loop.call_at(when, self._fire)

    def extend(self, seconds: float) -> None:
        """Move the deadline later (the DATA allowance per octet received)."""
        self.when += seconds

    def suspend(self) -> None:
        """No deadline while the server works; :meth:`arm` ends the suspension."""
        self.when = _NEVER

    @property
    def suspended(self) -> bool:
        """True between :meth:`suspend` and the next :meth:`arm`."""
        return self.when == _NEVER

    def cancel(self) -> None:
        """The connection is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_expire = _nothing

    def _fire(self) -> None:
        self._timer = None
        if self._loop.time() >= self.when:
            self._on_expire()
        elif self.when == _NEVER:
            self._timer = self._loop.call_later(self._idle, self._fire)
        else:
            self._timer = self._loop.call_at(self.when, self._fire)


def _nothing() -> None:
    return None
