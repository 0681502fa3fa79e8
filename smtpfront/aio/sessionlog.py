"""Structured session logs, written by listeners so they never delay a reply.

At INFO, one line per session event: ``connect``, ``secure`` (TLS established), ``helo``,
``auth`` (successful), ``queued`` (each accepted message), ``reject`` (each refusal) and
``session`` (the summary when it ends). At DEBUG also one ``command`` line per command the
core parsed and one ``reply`` line per reply written (`debug_command`, `debug_replies`;
the protocol calls them only when DEBUG is on). Peer-chosen text is sanitised by the formatter
(:func:`smtpfront.logs.sanitize`); credentials never reach a listener.
"""

from __future__ import annotations

import logging

from ..core import replies as R
from ..core.events import BdatChunk, BodyChunk, BodyEnd, Event, Helo, MailFrom, RcptTo, Rejected
from ..core.replies import Reply
from ..hooks import Listeners, Session, reason_of, rejection_reason
from ..logs import client_label, sanitize, session_event
from ..metrics import instruments
from ..session_logger import SessionLogger
from ..sink.base import Envelope

__all__ = ["debug_command", "debug_replies", "debug_enabled", "log_sessions", "count_rejections"]

rejection_reason(R.AUTH_FAILED, "auth_failed")  # a wrong password (535 5.7.8), whichever backend said so

_log = logging.getLogger("smtpfront.session")


def _logger(session: Session) -> SessionLogger:
    return SessionLogger(_log, session.id, (session.client_address, session.client_port))


def _event(session: Session, name: str, fields: dict[str, object]) -> None:
    """One INFO line: ``_logger(session).event(name, **fields)`` without building an adapter
    (a few lines a connection, one a message)."""
    context = {"session": session.id, "client": client_label((session.client_address, session.client_port))}
    session_event(_log, context, name, fields)


def _on_connect(session: Session) -> None:
    if _log.isEnabledFor(logging.INFO):
        _event(session, "connect", {"local": f"{session.local_address}:{session.local_port}"})


def _on_secure(session: Session) -> None:
    if _log.isEnabledFor(logging.INFO):
        _event(session, "secure", dict(session.tls or {}))


def _on_helo(session: Session) -> None:
    if _log.isEnabledFor(logging.INFO):
        _event(session, "helo", {"helo": sanitize(session.helo or ""), "esmtp": session.esmtp})


def _on_auth(session: Session, username: str) -> None:
    _event(session, "auth", {"user": sanitize(username)})


def _on_mail(session: Session, envelope: Envelope, queue_id: str) -> None:
    _event(session, "queued", {
        "queue_id": queue_id, "transaction": envelope.id, "mail_from": sanitize(str(envelope.mail_from)),
        "recipients": len(envelope.recipients), "size": envelope.size, "helo": sanitize(envelope.helo or ""),
        "protocol": envelope.protocol,
    })


def _on_reject(session: Session, reply: Reply) -> None:
    reason = reason_of(reply)
    fields: dict[str, object] = {"code": reply.code, "enhanced": reply.enhanced, "text": sanitize(reply.text)}
    if reason is not None:
        fields["reason"] = reason
    _event(session, "reject", fields)


def _count_rejection(session: Session, reply: Reply) -> None:
    reason = reason_of(reply)
    if reason is not None:
        instruments().policy_rejections.labels(reason).inc()


def count_rejections(listeners: Listeners) -> None:
    """Count policy refusals (replies named by :func:`smtpfront.hooks.rejection_reason`) by reason."""
    listeners.on("reject", _count_rejection)


def _on_close(session: Session) -> None:
    _event(session, "session", {
        "helo": sanitize(session.helo or ""), "tls": (session.tls or {}).get("version"), "user": session.user,
        "transactions": session.transactions, "proxied": session.proxy is not None,
    })


def debug_enabled() -> bool:
    """Whether per-command lines are wanted (checked once per connection)."""
    return _log.isEnabledFor(logging.DEBUG)


def debug_command(session: Session, event: Event) -> None:
    """One DEBUG line for a parsed command (body chunks are not commands: not logged)."""
    if isinstance(event, BodyChunk):
        return
    fields: dict[str, object] = {"event": type(event).__name__}
    if isinstance(event, (MailFrom, RcptTo)):
        fields["address"] = sanitize(str(event.address))
    elif isinstance(event, Helo):
        fields["helo"] = sanitize(event.hostname)
    elif isinstance(event, (BdatChunk, BodyEnd)):
        fields["size"] = event.size
    elif isinstance(event, Rejected):
        fields.update(verb=event.verb, code=event.reply.code)
    _logger(session).debug_event("command", **fields)


def debug_replies(session: Session, data: bytes) -> None:
    """One DEBUG line per reply line in ``data`` (what one write carried)."""
    log = _logger(session)
    for line in data.split(b"\r\n")[:-1]:
        if line[3:4] != b"-":  # the last line of each reply
            log.debug_event("reply", line=sanitize(line))


def log_sessions(listeners: Listeners) -> None:
    """Register the session-log listeners on ``listeners``."""
    listeners.on("connect", _on_connect)
    listeners.on("secure", _on_secure)
    listeners.on("helo", _on_helo)
    listeners.on("auth", _on_auth)
    listeners.on("mail", _on_mail)
    listeners.on("reject", _on_reject)
    listeners.on("close", _on_close)
