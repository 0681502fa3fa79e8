"""`SessionLogger`, the per-connection logger adapter, kept interpreted on purpose.

``smtpfront/logs.py`` is compiled by mypyc (``COMPILED_WITH_CORE``), and mypyc does not honour
a positional-only parameter: ``event(name, /, **fields)`` compiled raises ``TypeError`` for a
field called ``name`` (its argument parser still takes ``name`` by keyword). So the adapter
lives here, as plain Python, and only forwards: the per-message path stays compiled in
``logs.py`` (`smtpfront.logs.session_event`, the line handler's ``queue_event`` and ``_queue``,
``_field_plan``, ``_dumps``, `~smtpfront.logs.sanitize`, `~smtpfront.logs.client_label`); the
session log's per-message ``queued`` line does not build an adapter at all.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from .logs import _safe_extra, client_label, session_event

__all__ = ["SessionLogger"]


class SessionLogger(logging.LoggerAdapter[logging.Logger]):
    """Per-connection logger: every record carries ``session`` and ``client``.

    ``client`` is ``"ip:port"`` or a peername tuple ``(host, port, ...)`` (IPv6 in brackets).
    """

    def __init__(self, logger: logging.Logger, session: str, client: str | tuple[Any, ...]) -> None:
        super().__init__(logger, {"session": session, "client": client_label(client)})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = _safe_extra(self.extra or {}, kwargs.get("extra") or {})
        return msg, kwargs

    def event(self, name: str, /, **fields: object) -> None:
        """Log one INFO record with ``msg=name`` and the redacted ``fields`` merged in.

        When the line can go nowhere but to the daemon's own line handler (what
        :func:`~smtpfront.logs.setup_logging` installs: no other handler or filter on the way)
        and an event loop runs, it is formatted and queued directly, without a ``LogRecord``:
        the same line for a few µs instead of ~50 (one per message at the default level).
        """
        session_event(self.logger, self.extra or {}, name, fields)

    def debug_event(self, name: str, /, **fields: object) -> None:
        """`event` at DEBUG: the form for the per-command hot path (§7.14)."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(name, extra=_safe_extra(self.extra or {}, fields), stacklevel=2)
