"""What a connection offers (features) and what it tolerates (limits and policies).

Every limit has a default, the rule it comes from, and a precedent where one helps.
Both classes are frozen: one instance is shared by every connection of a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Features", "Limits", "Policies", "LineEndingPolicy"]

LineEndingPolicy = Literal["reject", "accept", "normalize"]


@dataclass(frozen=True, slots=True)
class Features:
    """The ESMTP extensions this server offers in its EHLO reply."""

    pipelining: bool = True  # RFC 2920
    size: bool = True  # RFC 1870
    eightbitmime: bool = True  # RFC 6152
    smtputf8: bool = True  # RFC 6531
    enhancedstatuscodes: bool = True  # RFC 2034
    chunking: bool = True  # RFC 3030 (BDAT)
    binarymime: bool = True  # RFC 3030 (needs chunking)
    dsn: bool = True  # RFC 3461
    requiretls: bool = False  # RFC 8689 (only meaningful with TLS)
    starttls: bool = False  # RFC 3207 (the adapter sets it when TLS is configured)
    auth_mechanisms: tuple[str, ...] = ()  # RFC 4954, e.g. ("PLAIN", "LOGIN")
    xclient: bool = False  # Postfix XCLIENT, offered to trusted peers only
    xforward: bool = False  # Postfix XFORWARD, offered to trusted peers only
    lmtp: bool = False  # RFC 2033: LHLO instead of HELO/EHLO, one reply per recipient
    disabled: frozenset[str] = frozenset()  # verbs answered 502 5.5.1 (e.g. VRFY, HELP)


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes and counts a client may not exceed."""

    # RFC 1870 SIZE. Postfix message_size_limit is 10,240,000; large providers use 25-50 MB.
    max_message_size: int = 25 * 1024 * 1024
    # RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
    max_command_line: int = 512
    # MAIL/RCPT lines with ESMTP parameters: RFC 1869 §3 lets each parameter extend the
    # 512-octet limit; RFC 3461 ENVID/ORCPT alone may add 100 + 500 octets. Postfix: 2048.
    max_param_line: int = 1024
    # RFC 4954 §4: an AUTH command line or SASL response may be up to 12288 octets.
    max_auth_line: int = 12288
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
    max_text_line: int = 1000
    # RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
    max_recipients: int = 100
    # Bad or unknown commands before 421 (Postfix smtpd_hard_error_limit 20; aiosmtpd 5).
    max_errors: int = 10
    # Failed AUTH attempts per connection before 421 (Postfix smtpd_sasl ... anvil; 3 is common).
    max_auth_failures: int = 3
    # XCLIENT/XFORWARD lines can be long (Postfix accepts up to line_length_limit 2048).
    max_xclient_line: int = 2048


@dataclass(frozen=True, slots=True)
class Policies:
    """How strictly the core treats input that RFCs forbid but the wild sends."""

    # Bare CR or LF inside DATA (the SMTP smuggling vector): RFC 5321 §2.3.8 forbids it.
    bare_line_endings: LineEndingPolicy = "reject"
    # Text lines over max_text_line in DATA: "reject" refuses the message at its end.
    long_lines: Literal["reject", "accept"] = "accept"
    # Commands pipelined after a last-in-group command (RFC 2920 §3.1), or without
    # PIPELINING offered: "reject" answers 554 5.5.0 and closes, as Postfix does.
    unauthorized_pipelining: Literal["reject", "accept"] = "reject"
    # Bytes sent before the greeting (the early-talker test).
    early_talkers: Literal["reject", "accept"] = "reject"
