"""Structured session logs, written by listeners so they never delay a reply.

At INFO, one line per session event: ``connect``, ``secure`` (TLS established), ``helo``,
``auth`` (successful), ``queued`` (each accepted message), ``reject`` (each refusal) and
``session`` (the summary when it ends). Peer-chosen text is sanitised by the formatter
(:func:`smtpfront.logs.sanitize`); credentials never reach a listener.
"""

from __future__ import annotations

import logging

from ..core.replies import Reply
from ..hooks import Listeners, Session
from ..logs import SessionLogger, sanitize
from ..sink.base import Envelope

__all__ = ["log_sessions"]

_log = logging.getLogger("smtpfront.session")


def _logger(session: Session) -> SessionLogger:
    return SessionLogger(_log, session.id, (session.client_address, session.client_port))


def _on_connect(session: Session) -> None:
    if _log.isEnabledFor(logging.INFO):
        _logger(session).event("connect", local=f"{session.local_address}:{session.local_port}")


def _on_secure(session: Session) -> None:
    if _log.isEnabledFor(logging.INFO):
        _logger(session).event("secure", **(session.tls or {}))


def _on_helo(session: Session) -> None:
    if _log.isEnabledFor(logging.INFO):
        _logger(session).event("helo", helo=sanitize(session.helo or ""), esmtp=session.esmtp)


def _on_auth(session: Session, username: str) -> None:
    _logger(session).event("auth", user=sanitize(username))


def _on_mail(session: Session, envelope: Envelope, queue_id: str) -> None:
    _logger(session).event(
        "queued", queue_id=queue_id, transaction=envelope.id, mail_from=sanitize(str(envelope.mail_from)),
        recipients=len(envelope.recipients), size=envelope.size, helo=sanitize(envelope.helo or ""),
        protocol=envelope.protocol,
    )


def _on_reject(session: Session, reply: Reply) -> None:
    _logger(session).event("reject", code=reply.code, enhanced=reply.enhanced, text=sanitize(reply.text))


def _on_close(session: Session) -> None:
    _logger(session).event(
        "session", helo=sanitize(session.helo or ""), tls=(session.tls or {}).get("version"), user=session.user,
        transactions=session.transactions, proxied=session.proxy is not None,
    )


def log_sessions(listeners: Listeners) -> None:
    """Register the session-log listeners on ``listeners``."""
    listeners.on("connect", _on_connect)
    listeners.on("secure", _on_secure)
    listeners.on("helo", _on_helo)
    listeners.on("auth", _on_auth)
    listeners.on("mail", _on_mail)
    listeners.on("reject", _on_reject)
    listeners.on("close", _on_close)
