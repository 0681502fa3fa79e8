"""Structured logging: one JSON object per line, peer text sanitised, credentials redacted.

Rule (ARCHITECTURE.md, who owns what): every module logs through ``logging.getLogger(__name__)``
under the ``smtpfront`` tree, and a connection logs through its
`~smtpfront.session_logger.SessionLogger` (or `session_event`). Peer bytes
go through `sanitize` before they reach a log line (CR/LF injection cannot fake a line),
and fields named like credentials are replaced by ``"***"`` (`redact`). A disabled level
costs one ``isEnabledFor`` call: nothing is built, redacted or formatted before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import orjson
from mypy_extensions import mypyc_attr

__all__ = ["JsonFormatter", "Throttle", "redact", "sanitize", "setup_logging"]

# Control characters (C0, DEL, C1, the Unicode line separators) become \xNN / \uNNNN; a
# backslash is doubled so that an escape in the output is never the peer's own text. Lone
# surrogates (undecodable bytes under surrogateescape) become \xNN of the original byte.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x5C: "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_ESCAPES.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})
_ESCAPES.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})
_MARK = "…"
_TEXT_TYPES = (str, bytes, bytearray, memoryview)
_SECRET_KEYS = ("password", "passwd", "secret", "token", "credential", "authorization", "api_key", "cookie")
_REDACTED = "***"
_MAX_DEPTH = 8
# Attributes of every LogRecord: an ``extra`` key among them makes logging raise KeyError,
# so event fields with these names are logged with a trailing "_" instead.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_BASE_KEYS = frozenset({"ts", "level", "logger", "msg", "worker", "exc", "stack"})
_HANDLER_MARK = "_smtpfront_handler"
_REDACTED_MARK = "_smtpfront_redacted"  # on records whose extra fields SessionLogger already redacted


def sanitize(value: bytes | bytearray | memoryview | str, limit: int = 200) -> str:
    """Make peer-controlled text safe for one log line.

    Args:
        value: raw peer bytes (decoded as UTF-8; invalid bytes become ``\\xNN``) or text.
        limit: the most characters kept, escapes included; a longer result is cut at a
            character boundary and ends with "…". Only about ``4 * limit`` bytes are read.

    Returns:
        Text without control characters: CR, LF, TAB, other C0/C1 controls and DEL become
        ``\\xNN``, a backslash ``\\\\``.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if isinstance(value, str):
        text = value[: limit + 1]
    else:  # <= 4 bytes make one character, so this prefix holds over `limit` whole ones
        text = str(value[: 4 * limit + 8], "utf-8", "surrogateescape")[: limit + 1]
    # Every character _ESCAPES maps but the backslash is unprintable: most text needs no pass.
    escaped = text if text.isprintable() and "\\" not in text else text.translate(_ESCAPES)
    if len(escaped) <= limit:
        return escaped
    if len(escaped) == len(text):
        return escaped[:limit] + _MARK
    out, used = [], 0
    for ch in text:
        piece = _ESCAPES.get(ord(ch), ch)
        used += len(piece)
        if used > limit:
            break
        out.append(piece)
    return "".join(out) + _MARK


def redact(fields: Mapping[str, object]) -> dict[str, object]:
    """Return a copy of ``fields`` with credential values replaced by ``"***"``.

    A key is secret when it contains (any case) password, passwd, secret, token, credential,
    authorization, api_key or cookie. Nested mappings, lists and tuples are redacted too.
    """
    return {str(k): _REDACTED if _secret(k) else _redacted(v, 1) for k, v in fields.items()}


def _secret(key: object) -> bool:
    return _secret_name(key if type(key) is str else str(key))


@functools.lru_cache(maxsize=4096)  # the same few keys on every record: the scan once per key
def _secret_name(key: str) -> bool:
    lowered = key.lower()
    return any(s in lowered for s in _SECRET_KEYS)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _redacted(value: object, depth: int) -> object:
    if type(value) in _SCALARS or not isinstance(value, Mapping | list | tuple):  # (ABC checks are slow)
        return value
    if depth >= _MAX_DEPTH:
        return _MARK  # a deeper (or cyclic) structure is dropped, never logged unredacted
    if isinstance(value, Mapping):
        return {str(k): _REDACTED if _secret(k) else _redacted(v, depth + 1) for k, v in value.items()}
    return [_redacted(v, depth + 1) for v in value]


def _default(obj: object) -> str:
    """orjson ``default=``: bytes are sanitised, anything else becomes ``str(obj)``."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return sanitize(obj)
    try:
        return str(obj)
    except Exception:
        return object.__repr__(obj)


def _fallback(value: object) -> object:
    # Values orjson refuses even with default= (ints beyond 64 bits, lone surrogates in a
    # str, nesting too deep): each top-level value becomes a plain, valid string.
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    text = value if isinstance(value, str) else _default(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _BaseFormatter(logging.Formatter):
    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker
        self._second = (-1, "")
        self._milli = (-1, "")  # the last line's millisecond and its timestamp (lines come in bursts)

    def timestamp(self, record: logging.LogRecord) -> str:
        """RFC 3339 UTC with milliseconds, e.g. ``2024-05-01T12:34:56.789Z``."""
        return self.timestamp_of(record.created, int(record.msecs))

    def timestamp_now(self) -> str:
        """The timestamp of a line made now (without a LogRecord); made once per millisecond."""
        milli = int(time.time() * 1000)
        if milli != self._milli[0]:
            self._milli = (milli, self.timestamp_of(milli / 1000, milli % 1000))
        return self._milli[1]

    def timestamp_of(self, created: float, msecs: int) -> str:
        second = int(created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{msecs:03d}Z"

    def extras(self, record: logging.LogRecord) -> dict[str, object]:
        fields = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        if fields.pop(_REDACTED_MARK, False):
            return fields  # redacted once already (_safe_extra): not again per record
        return redact(fields) if fields else fields

    def exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return record.exc_text or None

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(self.timestamp(record), record.levelname, record.name, record.getMessage(),
                         self.extras(record))
        if (exc := self.exception_text(record)) is not None:
            line = self.with_text(line, "exc", exc)
        if record.stack_info:
            line = self.with_text(line, "stack", self.formatStack(record.stack_info))
        return line

    def line(self, ts: str, level: str, logger: str, msg: str, fields: Mapping[str, object]) -> str:
        """One line from its parts; ``fields`` are redacted already."""
        raise NotImplementedError

    def with_text(self, line: str, key: str, text: str) -> str:
        """``line`` with a traceback or stack added."""
        raise NotImplementedError


class JsonFormatter(_BaseFormatter):
    """One JSON object per record: ts, level, logger, msg, worker (``JsonFormatter(worker=N)``),
    every ``extra`` field (redacted; a name clashing with these keys gets a trailing "_"),
    and exc / stack when the record carries a traceback or stack."""

    def line(self, ts: str, level: str, logger: str, msg: str, fields: Mapping[str, object]) -> str:
        doc: dict[str, object] = {"ts": ts, "level": level, "logger": logger, "msg": msg}
        if self.worker is not None:
            doc["worker"] = self.worker
        for key, value in fields.items():
            doc[key + "_" if key in _BASE_KEYS else key] = value
        return _dumps(doc)

    def with_text(self, line: str, key: str, text: str) -> str:
        return line[:-1] + "," + _dumps({key: text})[1:]


def _dumps(doc: dict[str, object]) -> str:
    try:
        return orjson.dumps(doc, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        safe = {k: _fallback(v) for k, v in doc.items()}
        return orjson.dumps(safe, default=_default).decode()


class _PlainFormatter(_BaseFormatter):
    """``<ts> <LEVEL> <logger> [w<N>] <msg> key=value ...`` for a terminal."""

    def line(self, ts: str, level: str, logger: str, msg: str, fields: Mapping[str, object]) -> str:
        worker = f" [w{self.worker}]" if self.worker is not None else ""
        parts = [f"{ts} {level:<7} {logger}{worker}", sanitize(msg, limit=4000)]
        for key, value in fields.items():
            text = sanitize(value if isinstance(value, _TEXT_TYPES) else _default(value))
            parts.append(f"{key}={orjson.dumps(text).decode() if not text or ' ' in text else text}")
        return " ".join(parts)

    def with_text(self, line: str, key: str, text: str) -> str:
        return line + "\n" + text


def _safe_extra(context: Mapping[str, object], fields: Mapping[str, object]) -> dict[str, object]:
    extra = dict(context)
    for key, value in redact(fields).items():
        extra[key + "_" if key in _RESERVED else key] = value
    extra[_REDACTED_MARK] = True
    return extra


def client_label(client: str | tuple[Any, ...]) -> str:
    """``"ip:port"`` for a peername tuple ``(host, port, ...)`` (IPv6 in brackets); a string as it is."""
    if isinstance(client, tuple):
        host = str(client[0])
        return f"[{host}]:{client[1]}" if ":" in host else f"{host}:{client[1]}"
    return client


# The frames between SessionLogger.event's caller and logging, so that a record names that
# caller (funcName, lineno): SessionLogger.event's, and session_event's own when this module
# runs interpreted (mypyc compiles it: a compiled function has no frame).
_EVENT_STACKLEVEL = 3 if __file__.endswith(".py") else 2


def session_event(logger: logging.Logger, context: Mapping[str, object], name: str,
                  fields: Mapping[str, object]) -> None:
    """One INFO session event (:meth:`~smtpfront.session_logger.SessionLogger.event`) without an
    adapter: ``context`` is ``{"session": …, "client": …}``. The per-message ``queued`` line
    takes this path."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_line_handler(logger, logging.INFO)
    if handler is None or not handler.queue_event("INFO", logger.name, name, context, fields):
        logger.info(name, extra=_safe_extra(context, fields), stacklevel=_EVENT_STACKLEVEL)


_LINGER = 0.05  # seconds a line may wait inside a loop for others to share its write
_LINGER_CHARS = 64 * 1024  # … unless this much waits already


# Not a native class when mypyc compiles this module (its methods are compiled all the same):
# a native instance is freed without clearing its weak references (mypyc's dealloc never calls
# PyObject_ClearWeakRefs, and it drops the weak-reference list as if it owned it), and every
# logging.Handler has two (logging._handlerList and the at-fork lock WeakSet), so replacing a
# handler left dangling references that crashed the interpreter later (a segfault in
# WeakSet.add or in the garbage collector). The formatters stay native: nothing takes a weak
# reference to a Formatter.
@mypyc_attr(native_class=False)
class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, inside a running event loop, gathers the lines of up to
    ``_LINGER`` seconds (or ``_LINGER_CHARS``) into one write: a worker logs a line per
    message, and a write per line, or per loop pass, was a system call per message. Outside a
    loop (the master, scripts), and for warnings and errors, each line goes at once, after
    what waits. ``flush()`` and ``close()`` (``logging.shutdown``, a worker's exit) write what
    waits; a killed worker loses at most ``_LINGER`` seconds of INFO lines."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._chars = 0
        self._timer: asyncio.Handle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or record.levelno >= logging.WARNING:  # trouble is written at once
            self.flush()
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._queue(loop, line)

    def _queue(self, loop: asyncio.AbstractEventLoop, line: str) -> None:
        self._pending.append(line)
        self._chars += len(line)
        if self._chars > _LINGER_CHARS:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = loop.call_later(_LINGER, self.flush)

    def queue_line(self, levelno: int, logger: str, msg: str, extra: dict[str, object]) -> bool:
        """Format and queue one line as :meth:`emit` would a record carrying ``extra``
        (from ``_safe_extra``: redacted, reserved names renamed), without a ``LogRecord``.
        False, and nothing done, where :meth:`emit` would write at once (no running loop,
        a warning) or the formatter is not one of ours."""
        formatter = self.formatter
        if levelno >= logging.WARNING or not isinstance(formatter, _BaseFormatter):
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        fields = {k: v for k, v in extra.items() if k != _REDACTED_MARK}
        try:
            line = formatter.line(formatter.timestamp_now(), logging.getLevelName(levelno), logger, msg,
                                  fields) + self.terminator
        except Exception:
            return False  # the general path formats it again and reports the failure
        self._queue(loop, line)
        return True

    def queue_event(self, levelname: str, logger: str, msg: str, context: Mapping[str, object],
                    fields: Mapping[str, object]) -> bool:
        """:meth:`queue_line` for an INFO session event, its JSON built in one pass: the same
        keys, order, renaming and redaction as the record path (a test compares them)."""
        formatter = self.formatter
        if type(formatter) is not JsonFormatter:
            return self.queue_line(logging.INFO, logger, msg, _safe_extra(context, fields))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        doc: dict[str, object] = {"ts": formatter.timestamp_now(), "level": levelname, "logger": logger,
                                  "msg": msg}
        if formatter.worker is not None:
            doc["worker"] = formatter.worker
        for key, value in context.items():  # session, client: ours, neither reserved nor secret
            doc[key] = value
        for key, value in fields.items():
            plan = _FIELD_PLANS.get(key)
            if plan is None:
                plan = _field_plan(key)
            name, secret = plan
            doc[name] = _REDACTED if secret else value if type(value) in _SCALARS else _redacted(value, 1)
        try:
            line = _dumps(doc) + self.terminator
        except Exception:
            return False
        self._queue(loop, line)
        return True

    def flush(self) -> None:
        pending, self._pending, self._chars = self._pending, [], 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.acquire()
        try:
            if pending and self.stream is not None:
                try:
                    self.stream.write("".join(pending))
                except Exception:  # a broken stream never raises into the server
                    return
            if self.stream is not None and hasattr(self.stream, "flush"):
                with contextlib.suppress(Exception):
                    self.stream.flush()
        finally:
            self.release()


_FIELD_PLANS: dict[str, tuple[str, bool]] = {}
"""A session event's field name → (its key in the line, whether its value is redacted): the
same few names on every line, so renaming and the secret-name scan run once per name."""


def _field_plan(key: str) -> tuple[str, bool]:
    name = key + "_" if key in _RESERVED else key
    plan = (name + "_" if name in _BASE_KEYS else name, _secret(key))
    if len(_FIELD_PLANS) < 4096:
        _FIELD_PLANS[key] = plan
    return plan


def _only_line_handler(logger: logging.Logger, levelno: int) -> _LineHandler | None:
    """The daemon's line handler, when a record of ``logger`` would reach it and nothing else:
    no filter, no other handler, no propagation past it (what :func:`setup_logging` builds)."""
    if logger.disabled:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        if node.handlers:
            handlers = node.handlers
            if (len(handlers) == 1 and type(handlers[0]) is _LineHandler and not node.propagate
                    and not handlers[0].filters and levelno >= handlers[0].level):
                return handlers[0]
            return None
        if not node.propagate:
            return None
        node = node.parent
    return None


class Throttle:
    """At most one line per ``interval`` seconds for a trouble that repeats per message (the
    queue away: every client gets 451, and a line each was thousands a second); the next line
    that goes out says how many were left out. The counts are in the metrics either way."""

    __slots__ = ("_interval", "_next", "_skipped")

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._skipped = 0

    def warning(self, logger: logging.Logger, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        self._next = now + self._interval
        skipped, self._skipped = self._skipped, 0
        if skipped:
            logger.warning(msg + " (and %d more like it in the last %.0f s)", *args, skipped, self._interval)
        else:
            logger.warning(msg, *args)


def setup_logging(
    level: str = "INFO", *, json: bool = True, stream: IO[str] | None = None, worker: int | None = None
) -> None:
    """Configure the ``smtpfront`` logger tree (never the root logger).

    Idempotent: a previous call's handler is replaced (handlers an embedding program added
    stay); records do not propagate to the root logger. A failing stream never raises into
    the caller (``logging.Handler.handleError``).

    Args:
        level: a level name, any case (``"debug"``, ``"INFO"``, ``"WARNING"``...).
        json: JSON lines when true, a human-readable line when false.
        stream: where lines go; ``sys.stdout`` by default.
        worker: the worker number added to every line, when set.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    levelno = logging.getLevelNamesMapping().get(level.upper())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}")
    handler = _LineHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(worker=worker) if json else _PlainFormatter(worker=worker))
    setattr(handler, _HANDLER_MARK, True)
    logger = logging.getLogger("smtpfront")
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(levelno)
    logger.propagate = False
