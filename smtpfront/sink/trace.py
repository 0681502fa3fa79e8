"""Trace fields (RFC 5321 §4.4) and queue ids.

Rule: a peer chose every name and address written here (HELO name, reverse-DNS name,
client address, recipients, TLS facts), so each value is sanitised before it reaches a
header. Characters outside a conservative set for its kind (no CR, LF, controls, spaces,
parentheses, brackets, angle brackets, semicolons, backslashes) become ``?``, and a value
is cut at 255 characters. A peer can then never end the header, start another one, or
open a comment or literal that swallows the fields after it.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime

from ..core.events import Address
from .base import Envelope

__all__ = ["new_queue_id", "received_field", "received_header", "return_path_header", "with_protocol"]

# RFC 5322 §2.1.1: a line SHOULD be at most 78 characters, and MUST be at most 998.
_WIDTH = 78
# RFC 1035 §2.3.4: the longest domain name. Every value is cut to it, so that even an
# unfoldable value keeps its line under 998 characters.
_MAX_VALUE = 255

# What each kind of value keeps; anything else becomes "?". ``\w`` lets U-labels
# through, which only an SMTPUTF8 transaction may carry (RFC 6531 §3.7.3).
_NAME_ASCII = re.compile(r"[^A-Za-z0-9._:-]")
_NAME_UTF8 = re.compile(r"[^\w.:-]")
_LITERAL = re.compile(r"\[[A-Za-z0-9.:-]+\]")  # a HELO address literal, RFC 5321 §4.1.3
_IP = re.compile(r"[^0-9A-Fa-f.:]")
_ADDR_ASCII = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.@\"-]")
_ADDR_UTF8 = re.compile(r"[^\w!#$%&'*+/=?^`{|}~.@\"-]")
_TLS = re.compile(r"[^A-Za-z0-9._+/-]")


def _clean(value: str, bad: re.Pattern[str]) -> str:
    return bad.sub("?", value[:_MAX_VALUE]) or "?"


def _name(value: str | None, utf8: bool) -> str:
    if not value:
        return "unknown"
    if len(value) <= _MAX_VALUE and _LITERAL.fullmatch(value):
        return value
    return _clean(value, _NAME_UTF8 if utf8 else _NAME_ASCII)


def _mailbox(address: Address, utf8: bool) -> str:
    text = _clean(str(address), _ADDR_UTF8 if utf8 else _ADDR_ASCII) if not address.is_null else ""
    if text.count('"') % 2:  # an unbalanced quote would run into the next field
        text = text.replace('"', "?")
    return f"<{text}>"


def _address_literal(address: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3)."""
    if address.startswith("IPv6:"):
        address = address[5:]
    ip = _clean(address, _IP)
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def with_protocol(envelope: Envelope) -> str:
    """The ``with`` keyword: RFC 3848 (S for TLS, A for AUTH), RFC 6531 §3.7.3 (UTF8…).

    ``envelope.protocol`` gives the base (``SMTP`` for HELO, ``ESMTP``, ``LMTP``; a
    suffix already present is ignored); TLS and AUTH come from ``envelope.tls`` and
    ``envelope.user``. HELO sessions stay ``SMTP``: no other keyword is registered for them.
    """
    given = envelope.protocol.upper()
    if given.startswith(("LMTP", "UTF8LMTP")):
        base = "LMTP"
    elif given.startswith(("ESMTP", "UTF8SMTP")):
        base = "SMTP"  # the UTF8 keywords drop the E: UTF8SMTPS, not UTF8ESMTPS
    else:
        return "SMTP"
    suffix = ("S" if envelope.tls is not None else "") + ("A" if envelope.user else "")
    if envelope.mail_params.smtputf8:
        return "UTF8" + base + suffix
    return ("E" if base == "SMTP" else "") + base + suffix


def _tls_comment(tls: dict[str, str]) -> list[str]:
    """Postfix-style ``(using TLSv1.3 with cipher NAME (256/256 bits))``, as words."""
    words = ["(using", _clean(tls["version"], _TLS) if tls.get("version") else "TLS"]
    if tls.get("cipher"):
        words += ["with", "cipher", _clean(tls["cipher"], _TLS)]
        bits = tls.get("bits", "")
        if bits.isdigit() and bits.isascii():
            words += [f"({bits}/{bits}", "bits)"]
    words[-1] += ")"
    return words


def _fold_on(groups: Sequence[Sequence[str]], lines: list[str], line: str) -> bytes:
    """Join word groups into ``Received:`` lines of at most 78 characters, continuing the fold
    ``lines`` + ``line`` already began (:func:`_folded_session`).

    A group (``by mx.example``) stays on one line when it fits on one; otherwise its
    words are placed one by one. Continuation lines start with a TAB (RFC 5322 §2.2.3).
    """
    lines, line = _fold_groups(groups, lines, line)
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _fold_groups(groups: Sequence[Sequence[str]], lines: list[str], line: str) -> tuple[list[str], str]:
    for group in groups:
        text = " ".join(group)
        if len(line) + 1 + len(text) <= _WIDTH:
            line += " " + text
            continue
        if 1 + len(text) <= _WIDTH:
            lines.append(line)
            line = "\t" + text
            continue
        for word in group:
            if len(line) + 1 + len(word) > _WIDTH and line.strip() not in ("", "Received:"):
                lines.append(line)
                line = "\t" + word
            else:
                line += " " + word
    return lines, line


def received_header(envelope: Envelope, *, server_name: str, queue_id: str, when: float) -> bytes:
    """Build the ``Received:`` trace field this server prepends to a message.

    ``Received: from HELO (NAME [ADDRESS]) (using TLS…) by SERVER (smtpfront)
    with PROTOCOL id QUEUE_ID for <RCPT>; DATE``. ``for`` appears only with exactly one
    recipient (naming several would disclose Bcc recipients to each other).

    Args:
        envelope: the transaction; ``tls`` may carry ``version``, ``cipher``, ``bits``.
        server_name: this server's host name.
        queue_id: the id the message is known by here.
        when: the time of receipt, seconds since the epoch (written in local time).

    Returns:
        The header, folded at 78 characters with CRLF TAB, ending with CRLF.
    """
    utf8 = envelope.mail_params.smtputf8
    tls = tuple(sorted(envelope.tls.items())) if envelope.tls is not None else None
    lines, line = _folded_session(
        envelope.helo, envelope.client_name, envelope.client_address, tls, server_name, with_protocol(envelope), utf8,
    )
    groups = [["id", _clean(queue_id, _NAME_ASCII)]]
    if len(envelope.recipients) == 1:
        groups.append(["for", _mailbox(envelope.recipients[0].address, utf8)])
    groups[-1][-1] += ";"
    groups.append(_date_words(when))
    return _fold_on(groups, list(lines), line)


def received_field(envelope: Envelope, server_name: str) -> bytes:
    """The ``Received:`` field the server prepends to every message: :func:`received_header`
    with the envelope's own id and time of receipt."""
    return received_header(envelope, server_name=server_name, queue_id=envelope.id, when=envelope.received_at)


_date_cache: tuple[int, list[str]] = (-1, [])


def _date_words(when: float) -> list[str]:
    """The RFC 5322 date of ``when``, split in words; formatted once per second (it is slow)."""
    global _date_cache
    second = int(when)
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(datetime.fromtimestamp(second).astimezone()).split(" "))
    return list(_date_cache[1])


@functools.lru_cache(maxsize=4096)
def _folded_session(helo: str | None, client_name: str | None, client_address: str | None,
                    tls: tuple[tuple[str, str], ...] | None, server_name: str, protocol: str,
                    utf8: bool) -> tuple[tuple[str, ...], str]:
    """The ``from … by … with`` groups already folded (the lines done, the line begun): the
    same for every message of a session; a message folds only its id, ``for`` and date on."""
    groups = _session_groups(helo, client_name, client_address, tls, server_name, protocol, utf8)
    lines, line = _fold_groups(groups, [], "Received:")
    return tuple(lines), line


def _session_groups(helo: str | None, client_name: str | None, client_address: str | None,
                    tls: tuple[tuple[str, str], ...] | None, server_name: str, protocol: str,
                    utf8: bool) -> tuple[tuple[str, ...], ...]:
    """The sanitised ``from … by … with`` words: the same for every message of a session."""
    tcp = [f"({_name(client_name, utf8)}"]
    if client_address:
        tcp.append(_address_literal(client_address))
    tcp[-1] += ")"
    groups = [["from", _name(helo, utf8)], tcp]
    if tls is not None:
        groups.append(_tls_comment(dict(tls)))
    groups += [["by", _name(server_name, utf8)], ["(smtpfront)"], ["with", protocol]]
    return tuple(tuple(g) for g in groups)


def return_path_header(envelope: Envelope) -> bytes:
    """``Return-Path: <sender>`` (RFC 5322 §3.6.7; ``<>`` for a bounce), CRLF-terminated."""
    utf8 = envelope.mail_params.smtputf8
    return f"Return-Path: {_mailbox(envelope.mail_from, utf8)}\r\n".encode()


_last_us = 0
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def new_queue_id() -> str:
    """A unique, time-sortable, 20-character queue id.

    80 bits in upper-case hex (which sorts like the numbers it encodes): 56 bits of
    microseconds since the epoch, strictly increasing within a process, then the process id
    (24 bits hold Linux's largest, 2**22), so the workers of one host never collide. (A
    random number per id cost a getrandom call per message.)
    """
    global _last_us
    _last_us = now = max(time.time_ns() // 1000, _last_us + 1)
    # Upper-case hex sorts like the number it encodes (base64's b32hexencode is pure
    # Python in 3.11 and cost ~10 us per message).
    return f"{now << 24 | (_pid & 0xFFFFFF):020X}"
