"""What :meth:`ServerConnection.next_event <smtpfront.core.connection.ServerConnection.next_event>`
returns when it has no event: ``NEED_DATA`` and ``PAUSED`` (h11's sentinels). The readers
return ``NEED_DATA`` too; ``connection.py`` exports both."""

from __future__ import annotations

from typing import Final

__all__ = ["Sentinel", "NEED_DATA", "PAUSED"]


class Sentinel:
    """A named singleton returned by ``ServerConnection.next_event``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: More bytes are needed before another event can be produced.
NEED_DATA: Final = Sentinel("NEED_DATA")
#: An event is waiting for the application's reply (``ServerConnection.send``).
PAUSED: Final = Sentinel("PAUSED")
