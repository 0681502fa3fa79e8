"""The SMTP command-argument grammar as compiled regular expressions.

Rule: each pattern is built from the ABNF it implements, and that ABNF is quoted beside
it (h11 ``_abnf.py`` style), so a reviewer can check one against the other. Sources:
RFC 5321 §4.1.2 (paths, domains, address literals) and §4.1.3, RFC 6531 §3.3 (the UTF-8
extensions, in the ``*_UTF8`` patterns), RFC 1869/5321 esmtp-param, RFC 3461 §4 xtext,
RFC 4954 §4 and RFC 4422 §3.1 (AUTH). Patterns apply to ``str`` and are meant for
``fullmatch``. Deliberate departures from the ABNF say so in a comment. Repetitions
are possessive (``*+``, ``++``; Python 3.11) where giving back cannot help: no
backtracking, linear time on hostile input, and faster. The functions at
the end do what a regex cannot: IPv6 forms (``ipaddress``), lengths, xtext octets.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = [
    "ATOM", "DOT_STRING", "DOT_STRING_UTF8", "QUOTED_STRING", "QUOTED_STRING_UTF8",
    "DOMAIN", "DOMAIN_UTF8", "ADL", "ADL_UTF8", "IPV4_ADDRESS_LITERAL", "IPV6_ADDRESS_LITERAL",
    "GENERAL_ADDRESS_LITERAL", "PATH_TOKEN", "MAIL_FAST", "RCPT_FAST", "HELO_NAME",
    "ESMTP_KEYWORD", "ESMTP_VALUE", "ESMTP_VALUE_UTF8", "XTEXT", "XTEXT_UTF8", "XCHARS",
    "SIZE_VALUE", "SASL_MECH", "BASE64", "BDAT_ARGS", "MAX_DOMAIN_LENGTH",
    "is_address_literal", "is_domain", "xtext_unquote", "xtext_encode",
]

# -- RFC 5234 core rules and RFC 6531 §3.3 ---------------------------------------------
# ALPHA = %x41-5A / %x61-7A ; DIGIT = %x30-39
# UTF8-non-ascii = UTF8-2 / UTF8-3 / UTF8-4     (RFC 6531 §3.3, via RFC 3629)
# The line is already decoded, so a UTF-8 sequence is one code point above U+007F.
_UTF8_NON_ASCII = "\u0080-\U0010ffff"

# -- Local-part (RFC 5321 §4.1.2, atext from RFC 5322 §3.2.3) ------------------------------
# atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" /
#         "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
# atext =/ UTF8-non-ascii                      (RFC 6531 §3.3)
_ATEXT_UTF8 = _UTF8_NON_ASCII + _ATEXT  # not after _ATEXT: its trailing "-" would make a range
# Atom = 1*atext
_ATOM = rf"[{_ATEXT}]++"
_ATOM_UTF8 = rf"[{_ATEXT_UTF8}]++"
# Dot-string = Atom *("." Atom)
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*+"
_DOT_STRING_UTF8 = rf"{_ATOM_UTF8}(?:\.{_ATOM_UTF8})*+"
# qtextSMTP = %d32-33 / %d35-91 / %d93-126
# qtextSMTP =/ UTF8-non-ascii                  (RFC 6531 §3.3)
# quoted-pairSMTP = %d92 %d32-126
# QcontentSMTP = qtextSMTP / quoted-pairSMTP
# Quoted-string = DQUOTE *QcontentSMTP DQUOTE
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*+"'
_QUOTED_STRING_UTF8 = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8_NON_ASCII}]|\\[\x20-\x7e])*+"'

# -- Domain (RFC 5321 §4.1.2) --------------------------------------------------------
# Let-dig = ALPHA / DIGIT
# Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
# sub-domain = Let-dig [Ldh-str]
# Written as "a Let-dig, then any LDH run not ending in '-'" (same language).
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*+(?<!-))?+"
# sub-domain =/ U-label                        (RFC 6531 §3.3)
# A U-label is approximated as an LDH label that may hold non-ASCII letters: IDNA2008
# validity (RFC 5891 §5.4) needs tables the stdlib lacks (its "idna" codec is IDNA2003).
_LET_DIG_UTF8 = f"A-Za-z0-9{_UTF8_NON_ASCII}"
_SUB_DOMAIN_UTF8 = rf"[{_LET_DIG_UTF8}](?:[{_LET_DIG_UTF8}-]*+(?<!-))?+"
# Domain = sub-domain *("." sub-domain)
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*+"
_DOMAIN_UTF8 = rf"{_SUB_DOMAIN_UTF8}(?:\.{_SUB_DOMAIN_UTF8})*+"
# RFC 5321 §4.5.3.1.2: a domain name is at most 255 octets.
MAX_DOMAIN_LENGTH: Final = 255

# -- Source routes (RFC 5321 §4.1.2; accepted and ignored per §4.1.1.3 and Appendix C) --
# At-domain = "@" Domain
# A-d-l = At-domain *( "," At-domain )    ; the pattern includes the ":" that ends it
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_ADL_UTF8 = rf"@{_DOMAIN_UTF8}(?:,@{_DOMAIN_UTF8})*:"

# -- Address literals (RFC 5321 §4.1.3), without the surrounding brackets ----------------
# Snum = 1*3DIGIT ; representing a decimal integer value in the range 0 through 255
_SNUM = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
# IPv4-address-literal = Snum 3("." Snum)
_IPV4_ADDRESS_LITERAL = rf"{_SNUM}(?:\.{_SNUM}){{3}}"
# IPv6-address-literal = "IPv6:" IPv6-addr      ; ABNF strings are case-insensitive
# IPv6-addr = IPv6-full / IPv6-comp / IPv6v4-full / IPv6v4-comp
# The character set is matched here; the forms are checked by ipaddress.IPv6Address.
# It excludes "%" so a scope id ("fe80::1%eth0"), which ipaddress accepts, is refused.
_IPV6_ADDRESS_LITERAL = r"[Ii][Pp][Vv]6:([0-9A-Fa-f:.]+)"
# General-address-literal = Standardized-tag ":" 1*dcontent
# Standardized-tag = Ldh-str
# dcontent = %d33-90 / %d94-126
_GENERAL_ADDRESS_LITERAL = r"([A-Za-z0-9-]*[A-Za-z0-9]):[\x21-\x5a\x5e-\x7e]+"

# -- Paths (RFC 5321 §4.1.2) ---------------------------------------------------------
# Path = "<" [ A-d-l ":" ] Mailbox ">"
# Reverse-path = Path / "<>"
# Forward-path = Path ; also "<Postmaster@" Domain ">" / "<Postmaster>" (RCPT, §4.1.1.3)
# PATH_TOKEN only finds the path's extent (a quoted local part may hold ">" or SP);
# its content is then checked against the rules above.
_PATH_TOKEN = r'<((?:"(?:[^"\\]|\\.)*+"|[^"<>\s])*+)>'
# The hot path (RFC 5321 §4.1.1.2/§4.1.1.3): "FROM:<dot-string@domain>" or "FROM:<>",
# then optional parameters. Accepts only what the full grammar accepts; the one
# optional SP after the colon is a common client deviation that many servers tolerate.
_FAST_TAIL = r"(?: (.*))?"
_MAIL_FAST = rf"[Ff][Rr][Oo][Mm]: ?<(?:({_DOT_STRING})@({_DOMAIN}))?>{_FAST_TAIL}"
_RCPT_FAST = rf"[Tt][Oo]: ?<({_DOT_STRING})@({_DOMAIN})>{_FAST_TAIL}"

# -- HELO/EHLO/LHLO argument (RFC 5321 §4.1.1.1: Domain / address-literal) -------------
# Liberal on purpose, as real clients send names that are no Domain (and RFC 5321
# §4.1.4 forbids refusing mail because the EHLO name fails to verify): labels may hold
# "_", start or end with "-", and the name may end with a dot or have no dot.
# Non-ASCII is allowed here; the caller refuses what is not str.isprintable() (C1
# controls, Unicode spaces and line separators).
_HELO_LABEL = rf"[A-Za-z0-9_{_UTF8_NON_ASCII}-]++"
_HELO_NAME = rf"{_HELO_LABEL}(?:\.{_HELO_LABEL})*+\.?"

# -- ESMTP parameters (RFC 5321 §4.1.2; RFC 1869 §4.1) -------------------------------
# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_ESMTP_KEYWORD = r"[A-Za-z0-9][A-Za-z0-9-]*"
# esmtp-value = 1*(%d33-60 / %d62-126)   ; any CHAR excluding "=", SP, and controls
_ESMTP_VALUE = r"[\x21-\x3c\x3e-\x7e]+"
# esmtp-value =/ UTF8-non-ascii                (RFC 6531 §3.3)
_ESMTP_VALUE_UTF8 = rf"[\x21-\x3c\x3e-\x7e{_UTF8_NON_ASCII}]+"
# size-value = 1*20DIGIT                        (RFC 1870 §3)
_SIZE_VALUE = r"[0-9]{1,20}"

# -- xtext (RFC 3461 §4) -------------------------------------------------------------
# xchar = any ASCII CHAR between "!" (33) and "~" (126) inclusive, except "+" and "="
# hexchar = ASCII "+" immediately followed by two upper case hexadecimal digits
# xtext = *( xchar / hexchar )
# Lower-case hex digits are accepted too, as Postfix's xtext_unquote() does.
_XCHAR = r"\x21-\x2a\x2c-\x3c\x3e-\x7e"
_XTEXT = rf"(?:[{_XCHAR}]|\+[0-9A-Fa-f]{{2}})*"
# Under SMTPUTF8 the esmtp-value may hold UTF8-non-ascii (RFC 6531 §3.3; RFC 6533 §3
# utf-8-addr-xtext); such characters stand for themselves.
_XTEXT_UTF8 = rf"(?:[{_XCHAR}{_UTF8_NON_ASCII}]|\+[0-9A-Fa-f]{{2}})*"

# -- AUTH (RFC 4954 §4, RFC 4422 §3.1) ------------------------------------------------
# sasl-mech = 1*20mech-char ; mech-char = UPPER-ALPHA / DIGIT / HYPHEN / UNDERSCORE
_SASL_MECH = r"[A-Z0-9_-]{1,20}"
# base64-char = ALPHA / DIGIT / "+" / "/"
# base64-terminal = (2base64-char "==") / (3base64-char "=")
# base64 = base64-terminal / ( 1*(4base64-char) [base64-terminal] )
_B64 = "[A-Za-z0-9+/]"
_BASE64 = rf"(?=.)(?:{_B64}{{4}})*(?:{_B64}{{2}}==|{_B64}{{3}}=)?"

# -- BDAT (RFC 3030 §2) ------------------------------------------------------------
# bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF
# chunk-size = 1*DIGIT ; end-marker = "LAST"
# Digits are capped at 18 so the int stays small; strict SP, since framing depends on it.
_BDAT_ARGS = r"([0-9]{1,18})(?: ([Ll][Aa][Ss][Tt]))?"

# -- compiled ----------------------------------------------------------------------
ATOM: Final = re.compile(_ATOM)
DOT_STRING: Final = re.compile(_DOT_STRING)
DOT_STRING_UTF8: Final = re.compile(_DOT_STRING_UTF8)
QUOTED_STRING: Final = re.compile(_QUOTED_STRING)
QUOTED_STRING_UTF8: Final = re.compile(_QUOTED_STRING_UTF8)
DOMAIN: Final = re.compile(_DOMAIN)
DOMAIN_UTF8: Final = re.compile(_DOMAIN_UTF8)
ADL: Final = re.compile(_ADL)
ADL_UTF8: Final = re.compile(_ADL_UTF8)
IPV4_ADDRESS_LITERAL: Final = re.compile(_IPV4_ADDRESS_LITERAL)
IPV6_ADDRESS_LITERAL: Final = re.compile(_IPV6_ADDRESS_LITERAL)
GENERAL_ADDRESS_LITERAL: Final = re.compile(_GENERAL_ADDRESS_LITERAL)
PATH_TOKEN: Final = re.compile(_PATH_TOKEN)
MAIL_FAST: Final = re.compile(_MAIL_FAST)
RCPT_FAST: Final = re.compile(_RCPT_FAST)
HELO_NAME: Final = re.compile(_HELO_NAME)
ESMTP_KEYWORD: Final = re.compile(_ESMTP_KEYWORD)
ESMTP_VALUE: Final = re.compile(_ESMTP_VALUE)
ESMTP_VALUE_UTF8: Final = re.compile(_ESMTP_VALUE_UTF8)
SIZE_VALUE: Final = re.compile(_SIZE_VALUE)
XTEXT: Final = re.compile(_XTEXT)
XTEXT_UTF8: Final = re.compile(_XTEXT_UTF8)
XCHARS: Final = re.compile(rf"[{_XCHAR}]*")  # xtext that needs no "+XX": the encoder's fast path
SASL_MECH: Final = re.compile(_SASL_MECH)
BASE64: Final = re.compile(_BASE64)
BDAT_ARGS: Final = re.compile(_BDAT_ARGS)


def is_address_literal(text: str) -> bool:
    """True if ``text`` is an RFC 5321 §4.1.3 address-literal, brackets included.

    IPv4 is checked by :data:`IPV4_ADDRESS_LITERAL` (each Snum 0..255); IPv6 by
    :class:`ipaddress.IPv6Address`. A General-address-literal whose tag is ``IPv6``
    must be a valid IPv6 literal: it never falls back to the general form.
    """
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    if IPV4_ADDRESS_LITERAL.fullmatch(inner):
        return True
    if inner[:5].lower() == "ipv6:":
        m = IPV6_ADDRESS_LITERAL.fullmatch(inner)
        if m is None:
            return False
        try:
            ipaddress.IPv6Address(m[1])
        except ValueError:
            return False
        return True
    return GENERAL_ADDRESS_LITERAL.fullmatch(inner) is not None


def is_domain(text: str, utf8: bool = False) -> bool:
    """True if ``text`` is a Domain (RFC 5321 §4.1.2; U-labels too when ``utf8``)."""
    if len(text) > MAX_DOMAIN_LENGTH:
        return False
    return (DOMAIN_UTF8 if utf8 else DOMAIN).fullmatch(text) is not None


def xtext_unquote(value: str, pattern: re.Pattern[str]) -> str | None:
    """Decode xtext that matches ``pattern``; None if it does not, or decodes badly."""
    if pattern.fullmatch(value) is None:
        return None
    if "+" not in value:
        return value if value.isascii() or value.isprintable() else None
    parts = value.split("+")
    buf = bytearray(parts[0].encode())
    for part in parts[1:]:
        buf.append(int(part[:2], 16))
        buf += part[2:].encode()
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # RFC 3461 §4.2/§4.4: the decoded text is printable. A "+0D+0A" would otherwise
    # smuggle a line break into whatever header or record the value ends up in.
    return text if text.isprintable() else None


def xtext_encode(s: str) -> str:
    """Encode ``s`` as RFC 3461 §4 xtext: "+", "=" and non-xchars become ``+XX`` (UTF-8)."""
    if XCHARS.fullmatch(s):
        return s
    out: list[str] = []
    for ch in s:
        if "!" <= ch <= "~" and ch != "+" and ch != "=":
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode())
    return "".join(out)
