"""Parsers for the arguments of SMTP/LMTP command lines.

Rule: each function takes the argument text of one command line (verb, its SP and the
CRLF already removed; ASCII, or UTF-8 when the line held non-ASCII bytes) and returns
plain values, or raises :class:`LocalProtocolError` with the reply to send. Nothing here
keeps state: what the server offers and what the transaction declared are arguments.

Replies (RFC 5321 §4.2.2, §4.3.2; RFC 3463): ``501 5.5.4`` bad syntax or a bad value of
a known parameter; ``555 5.5.4`` a MAIL/RCPT parameter not known or not offered
(RFC 5321 §4.1.1.11); ``553 5.1.7``/``5.1.3`` a well-bracketed path with a malformed
mailbox (sender/recipient); ``553 5.6.7`` a non-ASCII address without SMTPUTF8 (RFC 6531
§3.5); ``552 5.3.4`` a declared SIZE above the limit (RFC 1870).

Only ASCII text is upper-cased before comparing with a keyword: ``str.upper`` maps
some non-ASCII letters onto ASCII ones (U+017F LONG S upper-cases to "S").
"""

from __future__ import annotations

from typing import Final

from . import grammar as g
from .errors import LocalProtocolError
from .events import Address, MailParams, RcptParams
from .grammar import MAIL_FAST, MAX_DOMAIN_LENGTH, RCPT_FAST, xtext_encode, xtext_unquote
from .options import Features, Limits
from .replies import AUTH_MALFORMED, MESSAGE_TOO_BIG_DECLARED, UTF8_NOT_ALLOWED, Reply

__all__ = [
    "parse_mail", "parse_rcpt", "parse_helo", "parse_bdat", "parse_auth", "parse_x_attributes",
    "xtext_decode", "xtext_encode", "XCLIENT_ATTRIBUTES", "XFORWARD_ATTRIBUTES",
]

# Postfix XCLIENT_README ("XCLIENT Command syntax") and XFORWARD_README.
XCLIENT_ATTRIBUTES: Final = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT"})
XFORWARD_ATTRIBUTES: Final = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"})
# Postfix: these values mean "not known" (permanently / for now) and are not xtext-decoded.
_X_UNAVAILABLE: Final = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})

_MAIL_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
_RCPT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
_HELO_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: HELO/EHLO/LHLO domain or address-literal")
_BDAT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
_AUTH_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
_PARAM_SYNTAX: Final = Reply(501, "5.5.4", "Error: bad parameter syntax")
_XTEXT_SYNTAX: Final = Reply(501, "5.5.4", "Error: bad xtext encoding")
_BAD_SENDER: Final = Reply(553, "5.1.7", "Error: bad sender address syntax")
_BAD_RECIPIENT: Final = Reply(553, "5.1.3", "Error: bad recipient address syntax")
_NULL_RECIPIENT: Final = Reply(553, "5.1.3", "Error: null recipient address not allowed")

_NULL_ADDRESS: Final = Address("", "")
_NO_MAIL_PARAMS: Final = MailParams()
_NO_RCPT_PARAMS: Final = RcptParams()

# RFC 3461 §4.4: an ENVID is at most 100 characters (measured here as sent, in xtext).
_MAX_ENVID: Final = 100
_NOTIFY_ITEMS: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})

# MAIL parameters (RFC 5321 §4.1.2 Mail-parameters) and the Features field that offers
# each one; None means always accepted (BODY's values are checked one by one).
_MAIL_KEYWORDS: dict[str, str | None] = {
    "SIZE": "size",  # RFC 1870
    "BODY": None,  # RFC 6152 (8BITMIME), RFC 3030 (BINARYMIME)
    "SMTPUTF8": "smtputf8",  # RFC 6531 §3.4
    "RET": "dsn",  # RFC 3461 §4.3
    "ENVID": "dsn",  # RFC 3461 §4.4
    "AUTH": "auth_mechanisms",  # RFC 4954 §5
    "REQUIRETLS": "requiretls",  # RFC 8689 §2
}


def _fail(code: int, text: str) -> LocalProtocolError:
    return LocalProtocolError(Reply(code, "5.5.4", text))


def _not_offered(key: str) -> LocalProtocolError:
    return _fail(555, f"Error: parameter {key[:40]} not recognized or not offered")


def _bad_value(key: str) -> LocalProtocolError:
    return _fail(501, f"Error: bad {key} parameter value")


def _duplicate(key: str) -> LocalProtocolError:
    return _fail(501, f"Error: duplicate {key} parameter")


def _unknown(key: str) -> LocalProtocolError:
    """555 for a well-formed keyword we do not know, 501 for a malformed one."""
    if key.isascii() and g.ESMTP_KEYWORD.fullmatch(key) is not None:
        return _not_offered(key.upper())
    return LocalProtocolError(_PARAM_SYNTAX)


def _upper(value: str) -> str:
    return value.upper() if value.isascii() else ""


# -- paths ---------------------------------------------------------------------------


def _split_path(arg: str, start: int, syntax: Reply) -> tuple[str, str]:
    """Split ``arg[start:]`` into the text inside ``<...>`` and what follows it."""
    # One SP after the colon is tolerated (RFC 5321 §4.1.1.2 has none; many clients
    # send it, and Postfix, Exim and aiosmtpd accept it). Nothing else is.
    if arg.startswith(" ", start):
        start += 1
    m = g.PATH_TOKEN.match(arg, start)
    if m is None:
        raise LocalProtocolError(syntax)
    rest = arg[m.end():]
    if rest and rest[0] != " ":
        raise LocalProtocolError(syntax)
    return m[1], rest


def _mailbox(content: str, bad: Reply) -> Address:
    """Parse a path's content (no brackets, not empty) as [A-d-l ":"] Mailbox."""
    utf8 = not content.isascii()
    if content[:1] == "@":
        # RFC 5321 §4.1.1.3, Appendix C: source routes must be accepted and ignored.
        m = (g.ADL_UTF8 if utf8 else g.ADL).match(content)
        if m is None:
            raise LocalProtocolError(bad)
        content = content[m.end():]
    if content[:1] == '"':
        # Local-part = Quoted-string: kept quoted, as received (it may hold "@").
        q = (g.QUOTED_STRING_UTF8 if utf8 else g.QUOTED_STRING).match(content)
        if q is None or content[q.end():q.end() + 1] != "@":
            raise LocalProtocolError(bad)
        local, domain = q[0], content[q.end() + 1:]
    else:
        local, at, domain = content.partition("@")
        if not at or (g.DOT_STRING_UTF8 if utf8 else g.DOT_STRING).fullmatch(local) is None:
            raise LocalProtocolError(bad)
    ok = g.is_address_literal(domain) if domain[:1] == "[" else g.is_domain(domain, utf8)
    if not ok:
        raise LocalProtocolError(bad)
    return Address(local, domain)


# -- xtext (RFC 3461 §4) ---------------------------------------------------------------


def xtext_decode(s: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` is the octet XX; octets form UTF-8).

    Raises:
        LocalProtocolError: 501 5.5.4 for malformed xtext, invalid UTF-8, or a decoded
            control character.
    """
    text = xtext_unquote(s, g.XTEXT)
    if text is None:
        raise LocalProtocolError(_XTEXT_SYNTAX)
    return text


# -- MAIL ----------------------------------------------------------------------------


def parse_mail(arg: str, features: Features, limits: Limits) -> tuple[Address, MailParams]:
    """Parse ``FROM:<reverse-path> [params]`` (RFC 5321 §4.1.1.2).

    Args:
        arg: the text after ``MAIL `` (``FROM:`` is case-insensitive).
        features: the extensions offered; a parameter of one not offered gets 555.
        limits: ``max_message_size`` bounds SIZE (0 or less: no bound, as SIZE 0 means in RFC 1870 §3).

    Returns:
        The address (``Address("", "")`` for ``<>``) and the parameters, xtext decoded.

    Raises:
        LocalProtocolError: 501 5.5.4, 555 5.5.4, 552 5.3.4, 553 5.6.7 or 553 5.1.7.
    """
    m = MAIL_FAST.fullmatch(arg)
    if m is None:
        return _parse_mail_full(arg, features, limits)
    local, domain, rest = m.groups()
    if domain is not None and len(domain) > MAX_DOMAIN_LENGTH:
        return _parse_mail_full(arg, features, limits)
    address = _NULL_ADDRESS if local is None else Address(local, domain)
    return address, (_mail_params(rest, features, limits) if rest else _NO_MAIL_PARAMS)


def _parse_mail_full(arg: str, features: Features, limits: Limits) -> tuple[Address, MailParams]:
    head = arg[:5]
    if not head.isascii() or head.upper() != "FROM:":
        raise LocalProtocolError(_MAIL_SYNTAX)
    content, rest = _split_path(arg, 5, _MAIL_SYNTAX)
    params = _mail_params(rest, features, limits) if rest else _NO_MAIL_PARAMS
    if not content:
        return _NULL_ADDRESS, params  # Reverse-path = "<>" (RFC 5321 §4.5.5)
    if not content.isascii() and not params.smtputf8:
        raise LocalProtocolError(UTF8_NOT_ALLOWED)  # RFC 6531 §3.5
    return _mailbox(content, _BAD_SENDER), params


def _mail_params(rest: str, features: Features, limits: Limits) -> MailParams:
    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    smtputf8 = requiretls = auth_utf8 = False
    seen: set[str] = set()
    # Mail-parameters = esmtp-param *(SP esmtp-param); runs of SP are tolerated.
    for token in rest.split(" "):
        if not token:
            continue
        key, eq, value = token.partition("=")
        kw = key.upper() if key.isascii() else ""
        feature = _MAIL_KEYWORDS.get(kw, "")
        if feature == "":
            raise _unknown(key)
        if feature is not None and not getattr(features, feature):
            raise _not_offered(kw)
        if kw in seen:
            raise _duplicate(kw)
        seen.add(kw)
        if kw == "SIZE":
            # size-value = 1*20DIGIT (RFC 1870 §3)
            if g.SIZE_VALUE.fullmatch(value) is None:
                raise _bad_value(kw)
            size = int(value)
            if 0 < limits.max_message_size < size:
                raise LocalProtocolError(MESSAGE_TOO_BIG_DECLARED)
        elif kw == "BODY":
            # body-value = "7BIT" / "8BITMIME" (RFC 6152 §2) / "BINARYMIME" (RFC 3030 §3)
            body = _upper(value)
            if body == "8BITMIME":
                if not features.eightbitmime:
                    raise _not_offered("BODY=8BITMIME")
            elif body == "BINARYMIME":
                if not (features.binarymime and features.chunking):
                    raise _not_offered("BODY=BINARYMIME")
            elif body != "7BIT":
                raise _bad_value(kw)
        elif kw in ("SMTPUTF8", "REQUIRETLS"):
            # RFC 6531 §3.4, RFC 8689 §2: no value.
            if eq:
                raise _bad_value(kw)
            if kw == "SMTPUTF8":
                smtputf8 = True
            else:
                requiretls = True
        elif kw == "RET":
            # ret-value = "FULL" / "HDRS" (RFC 3461 §4.3)
            ret = _upper(value)
            if ret not in ("FULL", "HDRS"):
                raise _bad_value(kw)
        elif kw == "ENVID":
            # envid-value = xtext (RFC 3461 §4.4)
            envid = xtext_unquote(value, g.XTEXT) if 0 < len(value) <= _MAX_ENVID else None
            if envid is None:
                raise _bad_value(kw)
        else:  # AUTH
            # auth-value = xtext of a mailbox, or "<>" (RFC 4954 §5); UTF-8 only
            # under SMTPUTF8 (RFC 6531 §3.3 esmtp-value), checked once all are read.
            auth = xtext_unquote(value, g.XTEXT_UTF8) if value else None
            if auth is None:
                raise _bad_value(kw)
            auth_utf8 = not value.isascii()
    if auth_utf8 and not smtputf8:
        raise LocalProtocolError(UTF8_NOT_ALLOWED)
    return MailParams(size, body, smtputf8, ret, envid, auth, requiretls)


# -- RCPT ----------------------------------------------------------------------------


def parse_rcpt(arg: str, features: Features, smtputf8: bool) -> tuple[Address, RcptParams]:
    """Parse ``TO:<forward-path> [params]`` (RFC 5321 §4.1.1.3).

    Args:
        arg: the text after ``RCPT `` (``TO:`` is case-insensitive).
        features: the extensions offered (NOTIFY and ORCPT need ``dsn``).
        smtputf8: the transaction's MAIL carried SMTPUTF8, so UTF-8 is allowed.

    Returns:
        The address (``<postmaster>`` has an empty domain) and the parameters.

    Raises:
        LocalProtocolError: 501 5.5.4, 555 5.5.4, 553 5.6.7 or 553 5.1.3.
    """
    m = RCPT_FAST.fullmatch(arg)
    if m is None:
        return _parse_rcpt_full(arg, features, smtputf8)
    local, domain, rest = m.groups()
    if len(domain) > MAX_DOMAIN_LENGTH:
        return _parse_rcpt_full(arg, features, smtputf8)
    return Address(local, domain), (_rcpt_params(rest, features, smtputf8) if rest else _NO_RCPT_PARAMS)


def _parse_rcpt_full(arg: str, features: Features, smtputf8: bool) -> tuple[Address, RcptParams]:
    head = arg[:3]
    if not head.isascii() or head.upper() != "TO:":
        raise LocalProtocolError(_RCPT_SYNTAX)
    content, rest = _split_path(arg, 3, _RCPT_SYNTAX)
    params = _rcpt_params(rest, features, smtputf8) if rest else _NO_RCPT_PARAMS
    if not content:
        raise LocalProtocolError(_NULL_RECIPIENT)
    if not content.isascii():
        if not smtputf8:
            raise LocalProtocolError(UTF8_NOT_ALLOWED)  # RFC 6531 §3.5
    elif content.upper() == "POSTMASTER":
        return Address(content, ""), params  # "<Postmaster>" (RFC 5321 §4.1.1.3)
    return _mailbox(content, _BAD_RECIPIENT), params


_RCPT_KEYWORDS: Final = frozenset({"NOTIFY", "ORCPT"})


def _rcpt_params(rest: str, features: Features, smtputf8: bool) -> RcptParams:
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for token in rest.split(" "):
        if not token:
            continue
        key, _, value = token.partition("=")
        kw = key.upper() if key.isascii() else ""
        if kw not in _RCPT_KEYWORDS:
            raise _unknown(key)
        if not features.dsn:
            raise _not_offered(kw)
        if kw == "NOTIFY":
            # notify-esmtp-value = "NEVER" / 1#notify-list-element (RFC 3461 §4.1)
            # notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
            if notify is not None:
                raise _duplicate(kw)
            items = tuple(_upper(value).split(","))
            if items != ("NEVER",) and not (
                _NOTIFY_ITEMS.issuperset(items) and len(set(items)) == len(items)
            ):
                raise _bad_value(kw)
            notify = items
        else:
            # orcpt-parameter = "ORCPT=" original-recipient-address (RFC 3461 §4.2)
            # original-recipient-address = addr-type ";" xtext ; addr-type = atom
            if orcpt is not None:
                raise _duplicate(kw)
            addr_type, semi, xtext = value.partition(";")
            if not semi or g.ATOM.fullmatch(addr_type) is None:
                raise _bad_value(kw)
            if not xtext.isascii() and not smtputf8:
                raise LocalProtocolError(UTF8_NOT_ALLOWED)
            decoded = xtext_unquote(xtext, g.XTEXT_UTF8 if smtputf8 else g.XTEXT)
            if not decoded:
                raise _bad_value(kw)
            orcpt = (addr_type, decoded)
    return RcptParams(notify, orcpt)


# -- other commands --------------------------------------------------------------------


def parse_helo(arg: str) -> str:
    """Parse the HELO/EHLO/LHLO argument: a domain or address literal (RFC 5321 §4.1.1.1).

    Liberal (see :data:`~smtpfront.core.grammar.HELO_NAME`); surrounding SPs are dropped.

    Raises:
        LocalProtocolError: 501 5.5.4 when empty, or holding SP, controls or bad labels.
    """
    name = arg.strip(" ")
    if name[:1] == "[":
        if g.is_address_literal(name):
            return name
    elif (
        name
        and len(name) <= MAX_DOMAIN_LENGTH
        and g.HELO_NAME.fullmatch(name) is not None
        and (name.isascii() or name.isprintable())
    ):
        return name
    raise LocalProtocolError(_HELO_SYNTAX)


def parse_bdat(arg: str) -> tuple[int, bool]:
    """Parse ``chunk-size [LAST]`` of BDAT (RFC 3030 §2); returns (size, last).

    Raises:
        LocalProtocolError: 501 5.5.4 for anything but 1-18 digits and an optional LAST.
    """
    m = g.BDAT_ARGS.fullmatch(arg)
    if m is None:
        raise LocalProtocolError(_BDAT_SYNTAX)
    return int(m[1]), m[2] is not None


def parse_auth(arg: str) -> tuple[str, str | None]:
    """Parse ``mechanism [initial-response]`` of AUTH (RFC 4954 §4).

    Returns:
        The mechanism, upper-cased, and the initial response as sent (base64 text, or
        ``"="`` for an empty one), or None when there is none.

    Raises:
        LocalProtocolError: 501 5.5.4 for a malformed command or mechanism name;
            501 5.5.2 for an initial response that is not base64.
    """
    mech, sp, initial = arg.rstrip(" ").partition(" ")
    mech = _upper(mech)
    if g.SASL_MECH.fullmatch(mech) is None:
        raise LocalProtocolError(_AUTH_SYNTAX)
    if not sp:
        return mech, None
    if initial != "=" and g.BASE64.fullmatch(initial) is None:
        raise LocalProtocolError(AUTH_MALFORMED)
    return mech, initial


def parse_x_attributes(arg: str, allowed: frozenset[str], *, verb: str | None = None) -> dict[str, str]:
    """Parse XCLIENT/XFORWARD ``NAME=value ...`` (Postfix XCLIENT_README, XFORWARD_README).

    Args:
        arg: the text after the verb.
        allowed: the attribute names accepted (:data:`XCLIENT_ATTRIBUTES` or
            :data:`XFORWARD_ATTRIBUTES`).
        verb: the command's name, for reply texts; by default "XFORWARD" when
            ``allowed`` is :data:`XFORWARD_ATTRIBUTES`, else "XCLIENT".

    Returns:
        Upper-cased names mapped to xtext-decoded values; ``[UNAVAILABLE]`` and
        ``[TEMPUNAVAIL]`` are kept as they are.

    Raises:
        LocalProtocolError: 501 5.5.4 for syntax, an unknown or repeated name, or a
            value that is not xtext.
    """
    if verb is None:
        verb = "XFORWARD" if allowed is XFORWARD_ATTRIBUTES else "XCLIENT"
    attrs: dict[str, str] = {}
    for token in arg.split(" "):
        if not token:
            continue
        name, eq, value = token.partition("=")
        if not eq or not name:
            raise _fail(501, f"Syntax: {verb} attribute=value ...")
        upper = _upper(name)
        if upper not in allowed:
            shown = name[:40] if name.isascii() and name.isprintable() else "?"
            raise _fail(501, f"Bad {verb} attribute name: {shown}")
        if upper in attrs:
            raise _fail(501, f"Duplicate {verb} attribute name: {upper}")
        decoded = value if value in _X_UNAVAILABLE else xtext_unquote(value, g.XTEXT)
        if decoded is None:
            raise _fail(501, f"Bad {verb} attribute value: {upper}")
        attrs[upper] = decoded
    if not attrs:
        raise _fail(501, f"Syntax: {verb} attribute=value ...")
    return attrs
