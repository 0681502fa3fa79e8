"""Tests of the command-argument parsers (smtpfront.core.commands) and their grammar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpfront.core import grammar
from smtpfront.core.commands import (
    XCLIENT_ATTRIBUTES,
    XFORWARD_ATTRIBUTES,
    _parse_mail_full,
    _parse_rcpt_full,
    parse_auth,
    parse_bdat,
    parse_helo,
    parse_mail,
    parse_rcpt,
    parse_x_attributes,
    xtext_decode,
    xtext_encode,
)
from smtpfront.core.errors import LocalProtocolError
from smtpfront.core.events import Address, MailParams, RcptParams
from smtpfront.core.options import Features, Limits
from smtpfront.core.replies import Reply

ALL = Features(auth_mechanisms=("PLAIN",), requiretls=True)  # every MAIL/RCPT extension on
NONE = Features(
    size=False, eightbitmime=False, smtputf8=False, chunking=False, binarymime=False, dsn=False,
)
LIMIT = 1000
LIMITS = Limits(max_message_size=LIMIT)


def reply_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Reply:
    with pytest.raises(LocalProtocolError) as info:
        fn(*args, **kwargs)
    return info.value.reply


def cases(table: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """``parametrize`` keyword arguments from an {id: values} table (1-tuples unwrapped)."""
    values = [v[0] if len(v) == 1 else v for v in table.values()]
    return {"argvalues": values, "ids": list(table)}


# -- MAIL: paths --------------------------------------------------------------------

MAIL_OK = {
    "plain": ("FROM:<alice@example.com>", Address("alice", "example.com")),
    "lower-case-from": ("from:<alice@example.com>", Address("alice", "example.com")),
    "mixed-case-from": ("FrOm:<alice@example.com>", Address("alice", "example.com")),
    "one-space-after-colon": ("FROM: <alice@example.com>", Address("alice", "example.com")),
    "null": ("FROM:<>", Address("", "")),
    "null-space": ("FROM: <>", Address("", "")),
    "trailing-space": ("FROM:<a@b.example> ", Address("a", "b.example")),
    "dot-atom": ("FROM:<first.last@sub.example.com>", Address("first.last", "sub.example.com")),
    "atext-specials": ("FROM:<a!#$%&'*+/=?^_`{|}~-z@x.y>", Address("a!#$%&'*+/=?^_`{|}~-z", "x.y")),
    "bounce-style": ("FROM:<b-1=u=x.org@mx1.ex-am.com>", Address("b-1=u=x.org", "mx1.ex-am.com")),
    "single-label-domain": ("FROM:<root@localhost>", Address("root", "localhost")),
    "digit-labels": ("FROM:<a@1.2.3.4>", Address("a", "1.2.3.4")),
    "quoted": ('FROM:<"john doe"@example.com>', Address('"john doe"', "example.com")),
    "quoted-specials": ('FROM:<"a>b@c,d:e"@x.y>', Address('"a>b@c,d:e"', "x.y")),
    "quoted-pair": (r'FROM:<"a\"b\\c"@x.y>', Address(r'"a\"b\\c"', "x.y")),
    "quoted-empty": ('FROM:<""@x.y>', Address('""', "x.y")),
    "ipv4-literal": ("FROM:<a@[192.0.2.1]>", Address("a", "[192.0.2.1]")),
    "ipv4-literal-edges": ("FROM:<a@[0.255.0.255]>", Address("a", "[0.255.0.255]")),
    "ipv6-literal": ("FROM:<a@[IPv6:2001:db8::1]>", Address("a", "[IPv6:2001:db8::1]")),
    "ipv6-literal-lower-tag": ("FROM:<a@[ipv6:::1]>", Address("a", "[ipv6:::1]")),
    "ipv6-v4-mapped": ("FROM:<a@[IPv6:::ffff:192.0.2.1]>", Address("a", "[IPv6:::ffff:192.0.2.1]")),
    "ipv6-full": ("FROM:<a@[IPv6:2001:db8:0:0:0:0:0:1]>", Address("a", "[IPv6:2001:db8:0:0:0:0:0:1]")),
    "general-literal": ("FROM:<a@[x-tag:some.thing]>", Address("a", "[x-tag:some.thing]")),
    # Grammatical: Standardized-tag "2001" (an Ldh-str), dcontent "db8::1" (RFC 5321 §4.1.3).
    "general-literal-numeric-tag": ("FROM:<a@[2001:db8::1]>", Address("a", "[2001:db8::1]")),
    "source-route": ("FROM:<@relay.example:a@b.example>", Address("a", "b.example")),
    "source-route-list": ("FROM:<@r1.example,@r2.example:a@b.example>", Address("a", "b.example")),
    "domain-255": (f"FROM:<a@{'a.' * 126}aaa>", Address("a", f"{'a.' * 126}aaa")),
}


@pytest.mark.parametrize(("arg", "address"), **cases(MAIL_OK))
def test_mail_path(arg: str, address: Address) -> None:
    assert parse_mail(arg, ALL, LIMITS) == (address, MailParams())
    assert _parse_mail_full(arg, ALL, LIMITS) == (address, MailParams())


MAIL_BAD = {
    "empty": ("", 501, "5.5.4"),
    "no-colon": ("FROM", 501, "5.5.4"),
    "no-path": ("FROM:", 501, "5.5.4"),
    "no-brackets": ("FROM:a@b.example", 501, "5.5.4"),
    "no-brackets-space": ("FROM: a@b.example", 501, "5.5.4"),
    "two-spaces-after-colon": ("FROM:  <a@b.example>", 501, "5.5.4"),
    "space-before-colon": ("FROM :<a@b.example>", 501, "5.5.4"),
    "tab-after-colon": ("FROM:\t<a@b.example>", 501, "5.5.4"),
    "wrong-verb-arg": ("TO:<a@b.example>", 501, "5.5.4"),
    "fromx": ("FROMX:<a@b.example>", 501, "5.5.4"),
    "non-ascii-from": ("FRÖM:<a@b.example>", 501, "5.5.4"),
    "unclosed": ("FROM:<a@b.example", 501, "5.5.4"),
    "unclosed-quote": ('FROM:<"a@b.example>', 501, "5.5.4"),
    "junk-after-path": ("FROM:<a@b.example>x", 501, "5.5.4"),
    "tab-after-path": ("FROM:<a@b.example>\tSIZE=1", 501, "5.5.4"),
    "space-in-path": ("FROM:<a b@c.example>", 501, "5.5.4"),
    "nbsp-in-path": ("FROM:<a\u00a0b@c.example> SMTPUTF8", 501, "5.5.4"),
    "nested-brackets": ("FROM:<<a@b.example>>", 501, "5.5.4"),
    "no-at": ("FROM:<alice>", 553, "5.1.7"),
    "postmaster-is-not-a-sender": ("FROM:<postmaster>", 553, "5.1.7"),
    "empty-domain": ("FROM:<a@>", 553, "5.1.7"),
    "empty-local": ("FROM:<@b.example>", 553, "5.1.7"),
    "double-at": ("FROM:<a@b@c.example>", 553, "5.1.7"),
    "double-dot-local": ("FROM:<a..b@c.example>", 553, "5.1.7"),
    "leading-dot-local": ("FROM:<.a@c.example>", 553, "5.1.7"),
    "trailing-dot-local": ("FROM:<a.@c.example>", 553, "5.1.7"),
    "double-dot-domain": ("FROM:<a@b..example>", 553, "5.1.7"),
    "trailing-dot-domain": ("FROM:<a@b.example.>", 553, "5.1.7"),
    "leading-hyphen-label": ("FROM:<a@-b.example>", 553, "5.1.7"),
    "trailing-hyphen-label": ("FROM:<a@b-.example>", 553, "5.1.7"),
    "trailing-hyphen-domain": ("FROM:<a@b.example->", 553, "5.1.7"),
    "underscore-domain": ("FROM:<a@b_c.example>", 553, "5.1.7"),
    "del-in-local": ("FROM:<a\x7fb@c.example>", 553, "5.1.7"),
    "del-in-utf8-local": ("FROM:<ü\x7f@c.example> SMTPUTF8", 553, "5.1.7"),
    "control-in-quoted": ('FROM:<"a\x01"@c.example>', 553, "5.1.7"),
    "quoted-then-text": ('FROM:<"a"b@c.example>', 553, "5.1.7"),
    "domain-256": (f"FROM:<a@{'a.' * 126}aaaa>", 553, "5.1.7"),
    "ipv4-octet-256": ("FROM:<a@[192.0.2.256]>", 553, "5.1.7"),
    "ipv4-three-parts": ("FROM:<a@[192.0.2]>", 553, "5.1.7"),
    "ipv4-four-digits": ("FROM:<a@[1.2.3.0004]>", 553, "5.1.7"),
    "ipv6-bad-hex": ("FROM:<a@[IPv6:2001:db8::zz]>", 553, "5.1.7"),
    "ipv6-too-many-groups": ("FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>", 553, "5.1.7"),
    "ipv6-scope-id": ("FROM:<a@[IPv6:fe80::1%eth0]>", 553, "5.1.7"),
    "ipv6-holding-ipv4": ("FROM:<a@[IPv6:192.0.2.1]>", 553, "5.1.7"),
    "empty-literal": ("FROM:<a@[]>", 553, "5.1.7"),
    "word-literal": ("FROM:<a@[localhost]>", 553, "5.1.7"),
    "general-literal-bad-dcontent": ("FROM:<a@[x-tag:a\\b]>", 553, "5.1.7"),
    "route-without-mailbox": ("FROM:<@r.example:alice>", 553, "5.1.7"),
    "route-bad-list": ("FROM:<@r.example,r2.example:a@b.example>", 553, "5.1.7"),
    "route-literal": ("FROM:<@[192.0.2.1]:a@b.example>", 553, "5.1.7"),
}


@pytest.mark.parametrize(("arg", "code", "enhanced"), **cases(MAIL_BAD))
def test_mail_path_errors(arg: str, code: int, enhanced: str) -> None:
    reply = reply_of(parse_mail, arg, ALL, LIMITS)
    assert (reply.code, reply.enhanced) == (code, enhanced)


def test_mail_syntax_reply_text_helps() -> None:
    assert reply_of(parse_mail, "FROM:a@b", ALL, LIMITS).text == "Syntax: MAIL FROM:<address> [parameters]"


# -- MAIL: SMTPUTF8 (RFC 6531) ---------------------------------------------------------

MAIL_UTF8 = {
    "local": ("FROM:<jösé@example.com> SMTPUTF8", Address("jösé", "example.com")),
    "domain": ("FROM:<a@bücher.example> SMTPUTF8", Address("a", "bücher.example")),
    "both": ("FROM:<用户@例子.广告> SMTPUTF8", Address("用户", "例子.广告")),
    "quoted": ('FROM:<"jö sé"@example.com> SMTPUTF8', Address('"jö sé"', "example.com")),
    "lower-keyword": ("FROM:<jösé@example.com> smtputf8", Address("jösé", "example.com")),
    "ascii-with-smtputf8": ("FROM:<a@example.com> SMTPUTF8", Address("a", "example.com")),
}


@pytest.mark.parametrize(("arg", "address"), **cases(MAIL_UTF8))
def test_mail_utf8_with_smtputf8(arg: str, address: Address) -> None:
    assert parse_mail(arg, ALL, LIMITS) == (address, MailParams(smtputf8=True))


MAIL_UTF8_BAD = {
    "local-without": ("FROM:<jösé@example.com>", ALL, 553, "5.6.7"),
    "domain-without": ("FROM:<a@bücher.example>", ALL, 553, "5.6.7"),
    "quoted-without": ('FROM:<"jö"@example.com>', ALL, 553, "5.6.7"),
    "other-params-only": ("FROM:<jösé@example.com> BODY=8BITMIME", ALL, 553, "5.6.7"),
    "not-offered": ("FROM:<jösé@example.com> SMTPUTF8", NONE, 555, "5.5.4"),
    "with-value": ("FROM:<jösé@example.com> SMTPUTF8=yes", ALL, 501, "5.5.4"),
    "hyphen-end-u-label": ("FROM:<a@bücher-.example> SMTPUTF8", ALL, 553, "5.1.7"),
}


@pytest.mark.parametrize(("arg", "features", "code", "enhanced"), **cases(MAIL_UTF8_BAD))
def test_mail_utf8_errors(arg: str, features: Features, code: int, enhanced: str) -> None:
    reply = reply_of(parse_mail, arg, features, LIMITS)
    assert (reply.code, reply.enhanced) == (code, enhanced)


def test_address_is_utf8() -> None:
    address, _ = parse_mail("FROM:<jösé@example.com> SMTPUTF8", ALL, LIMITS)
    assert address.is_utf8


# -- MAIL: parameters ---------------------------------------------------------------

MAIL_PARAMS_OK = {
    "size-0": ("SIZE=0", ALL, MailParams(size=0)),
    "size-limit-minus-1": (f"SIZE={LIMIT - 1}", ALL, MailParams(size=LIMIT - 1)),
    "size-limit": (f"SIZE={LIMIT}", ALL, MailParams(size=LIMIT)),
    "size-leading-zeros": ("SIZE=0000000000000000001", ALL, MailParams(size=1)),
    "size-lower-keyword": ("size=10", ALL, MailParams(size=10)),
    "body-7bit": ("BODY=7BIT", ALL, MailParams(body="7BIT")),
    "body-7bit-nothing-offered": ("BODY=7BIT", NONE, MailParams(body="7BIT")),
    "body-8bitmime": ("BODY=8BITMIME", ALL, MailParams(body="8BITMIME")),
    "body-8bitmime-lower": ("body=8bitmime", ALL, MailParams(body="8BITMIME")),
    "body-binarymime": ("BODY=BINARYMIME", ALL, MailParams(body="BINARYMIME")),
    "smtputf8": ("SMTPUTF8", ALL, MailParams(smtputf8=True)),
    "requiretls": ("REQUIRETLS", ALL, MailParams(requiretls=True)),
    "ret-full": ("RET=FULL", ALL, MailParams(ret="FULL")),
    "ret-hdrs-lower": ("ret=hdrs", ALL, MailParams(ret="HDRS")),
    "envid": ("ENVID=QQ314159", ALL, MailParams(envid="QQ314159")),
    "envid-xtext": ("ENVID=a+2Bb+3Dc+20d", ALL, MailParams(envid="a+b=c d")),
    "envid-lower-hex": ("ENVID=a+2bb", ALL, MailParams(envid="a+b")),
    "envid-99": ("ENVID=" + "e" * 99, ALL, MailParams(envid="e" * 99)),
    "envid-100": ("ENVID=" + "e" * 100, ALL, MailParams(envid="e" * 100)),
    "auth-mailbox": ("AUTH=e+3Dmc2@example.com", ALL, MailParams(auth="e=mc2@example.com")),
    "auth-null": ("AUTH=<>", ALL, MailParams(auth="<>")),
    "auth-utf8-with-smtputf8": ("AUTH=jö@x.org SMTPUTF8", ALL, MailParams(auth="jö@x.org", smtputf8=True)),
    "extra-spaces": ("SIZE=10   BODY=7BIT  ", ALL, MailParams(size=10, body="7BIT")),
    "all": (
        "SIZE=500 BODY=BINARYMIME SMTPUTF8 RET=HDRS ENVID=id+2B1 AUTH=<> REQUIRETLS",
        ALL,
        MailParams(500, "BINARYMIME", True, "HDRS", "id+1", "<>", True),
    ),
}


@pytest.mark.parametrize(("params", "features", "expected"), **cases(MAIL_PARAMS_OK))
def test_mail_params(params: str, features: Features, expected: MailParams) -> None:
    for prefix in ("FROM:<a@b.example> ", "FROM:<> ", 'FROM:<"q"@[192.0.2.1]> '):
        _, got = parse_mail(prefix + params, features, LIMITS)
        assert got == expected


def test_size_unlimited_when_limit_is_zero() -> None:
    _, params = parse_mail("FROM:<> SIZE=" + "9" * 20, ALL, Limits(max_message_size=0))
    assert params.size == 10**20 - 1


MAIL_PARAMS_BAD = {
    "size-limit-plus-1": (f"SIZE={LIMIT + 1}", ALL, 552, "5.3.4"),
    "size-huge": ("SIZE=" + "9" * 20, ALL, 552, "5.3.4"),
    "size-21-digits": ("SIZE=" + "1" * 21, ALL, 501, "5.5.4"),
    "size-empty": ("SIZE=", ALL, 501, "5.5.4"),
    "size-no-value": ("SIZE", ALL, 501, "5.5.4"),
    "size-negative": ("SIZE=-1", ALL, 501, "5.5.4"),
    "size-alpha": ("SIZE=1k", ALL, 501, "5.5.4"),
    "size-fullwidth-digits": ("SIZE=\uff11\uff12", ALL, 501, "5.5.4"),
    "size-not-offered": ("SIZE=10", NONE, 555, "5.5.4"),
    "body-unknown": ("BODY=9BIT", ALL, 501, "5.5.4"),
    "body-empty": ("BODY=", ALL, 501, "5.5.4"),
    "body-no-value": ("BODY", ALL, 501, "5.5.4"),
    "body-dotless-i": ("BODY=8B\u0131TMIME", ALL, 501, "5.5.4"),
    "body-8bitmime-not-offered": ("BODY=8BITMIME", NONE, 555, "5.5.4"),
    "body-binarymime-not-offered": ("BODY=BINARYMIME", Features(binarymime=False), 555, "5.5.4"),
    "body-binarymime-no-chunking": ("BODY=BINARYMIME", Features(chunking=False), 555, "5.5.4"),
    "smtputf8-not-offered": ("SMTPUTF8", NONE, 555, "5.5.4"),
    "smtputf8-value": ("SMTPUTF8=1", ALL, 501, "5.5.4"),
    "requiretls-not-offered": ("REQUIRETLS", Features(), 555, "5.5.4"),
    "requiretls-value": ("REQUIRETLS=YES", ALL, 501, "5.5.4"),
    "ret-bad": ("RET=ALL", ALL, 501, "5.5.4"),
    "ret-no-value": ("RET", ALL, 501, "5.5.4"),
    "ret-long-s": ("RET=HDR\u017f", ALL, 501, "5.5.4"),
    "ret-not-offered": ("RET=FULL", NONE, 555, "5.5.4"),
    "envid-101": ("ENVID=" + "e" * 101, ALL, 501, "5.5.4"),
    "envid-empty": ("ENVID=", ALL, 501, "5.5.4"),
    "envid-half-hexchar": ("ENVID=a+2", ALL, 501, "5.5.4"),
    "envid-bad-hexchar": ("ENVID=a+GG", ALL, 501, "5.5.4"),
    "envid-crlf": ("ENVID=a+0D+0Ab", ALL, 501, "5.5.4"),
    "envid-nul": ("ENVID=a+00", ALL, 501, "5.5.4"),
    "envid-bad-utf8": ("ENVID=+FF", ALL, 501, "5.5.4"),
    "envid-equals": ("ENVID=a=b", ALL, 501, "5.5.4"),
    "envid-non-ascii": ("ENVID=é SMTPUTF8", ALL, 501, "5.5.4"),
    "envid-not-offered": ("ENVID=x", NONE, 555, "5.5.4"),
    "auth-empty": ("AUTH=", ALL, 501, "5.5.4"),
    "auth-no-value": ("AUTH", ALL, 501, "5.5.4"),
    "auth-bad-xtext": ("AUTH=a+zz", ALL, 501, "5.5.4"),
    "auth-utf8-without-smtputf8": ("AUTH=jösé@x.example", ALL, 553, "5.6.7"),
    "auth-no-mechanisms": ("AUTH=<>", Features(), 555, "5.5.4"),
    "unknown": ("FOO=bar", ALL, 555, "5.5.4"),
    "unknown-no-value": ("X-FOO", ALL, 555, "5.5.4"),
    "unknown-twice": ("FOO FOO", ALL, 555, "5.5.4"),
    "rcpt-param-on-mail": ("NOTIFY=NEVER", ALL, 555, "5.5.4"),
    "keyword-empty": ("=x", ALL, 501, "5.5.4"),
    "keyword-underscore": ("FOO_BAR=1", ALL, 501, "5.5.4"),
    "keyword-leading-hyphen": ("-FOO=1", ALL, 501, "5.5.4"),
    "keyword-non-ascii": ("\u017fIZE=10", ALL, 501, "5.5.4"),
    "keyword-control": ("SI\x01ZE=10", ALL, 501, "5.5.4"),
    "dup-size": ("SIZE=1 SIZE=2", ALL, 501, "5.5.4"),
    "dup-size-case": ("SIZE=1 size=1", ALL, 501, "5.5.4"),
    "dup-body": ("BODY=7BIT BODY=8BITMIME", ALL, 501, "5.5.4"),
    "dup-smtputf8": ("SMTPUTF8 SMTPUTF8", ALL, 501, "5.5.4"),
    "dup-requiretls": ("REQUIRETLS REQUIRETLS", ALL, 501, "5.5.4"),
    "dup-ret": ("RET=FULL RET=HDRS", ALL, 501, "5.5.4"),
    "dup-envid": ("ENVID=a ENVID=a", ALL, 501, "5.5.4"),
    "dup-auth": ("AUTH=<> AUTH=<>", ALL, 501, "5.5.4"),
}


@pytest.mark.parametrize(("params", "features", "code", "enhanced"), **cases(MAIL_PARAMS_BAD))
def test_mail_params_errors(params: str, features: Features, code: int, enhanced: str) -> None:
    for prefix in ("FROM:<a@b.example> ", 'FROM:<"q"@[192.0.2.1]> '):
        reply = reply_of(parse_mail, prefix + params, features, LIMITS)
        assert (reply.code, reply.enhanced) == (code, enhanced)


def test_mail_param_reply_texts_name_the_keyword() -> None:
    assert "FOO" in reply_of(parse_mail, "FROM:<> foo=1", ALL, LIMITS).text
    assert "SIZE" in reply_of(parse_mail, "FROM:<> SIZE=1 SIZE=1", ALL, LIMITS).text
    assert "RET" in reply_of(parse_mail, "FROM:<> RET=x", ALL, LIMITS).text


def test_mail_fast_path_agrees_with_full_grammar_on_params() -> None:
    arg = "FROM:<a@b.example> SIZE=10 BODY=8BITMIME"
    assert parse_mail(arg, ALL, LIMITS) == _parse_mail_full(arg, ALL, LIMITS)


# -- RCPT ----------------------------------------------------------------------------

RCPT_OK = {
    "plain": ("TO:<bob@example.org>", False, Address("bob", "example.org")),
    "lower-case-to": ("to:<bob@example.org>", False, Address("bob", "example.org")),
    "one-space-after-colon": ("TO: <bob@example.org>", False, Address("bob", "example.org")),
    "postmaster": ("TO:<postmaster>", False, Address("postmaster", "")),
    "postmaster-mixed-case": ("TO:<PostMaster>", False, Address("PostMaster", "")),
    "postmaster-at-domain": ("TO:<Postmaster@example.org>", False, Address("Postmaster", "example.org")),
    "quoted": ('TO:<"bob smith"@example.org>', False, Address('"bob smith"', "example.org")),
    "ipv4-literal": ("TO:<bob@[192.0.2.7]>", False, Address("bob", "[192.0.2.7]")),
    "ipv6-literal": ("TO:<bob@[IPv6:2001:db8::7]>", False, Address("bob", "[IPv6:2001:db8::7]")),
    "source-route": ("TO:<@hop1.example,@hop2.example:bob@x.org>", False, Address("bob", "x.org")),
    "utf8-local": ("TO:<jösé@example.org>", True, Address("jösé", "example.org")),
    "utf8-domain": ("TO:<bob@bücher.example>", True, Address("bob", "bücher.example")),
    "trailing-space": ("TO:<bob@example.org> ", False, Address("bob", "example.org")),
}


@pytest.mark.parametrize(("arg", "smtputf8", "address"), **cases(RCPT_OK))
def test_rcpt_path(arg: str, smtputf8: bool, address: Address) -> None:
    assert parse_rcpt(arg, ALL, smtputf8) == (address, RcptParams())
    assert _parse_rcpt_full(arg, ALL, smtputf8) == (address, RcptParams())


RCPT_BAD = {
    "null": ("TO:<>", False, 553, "5.1.3"),
    "no-brackets": ("TO:bob@example.org", False, 501, "5.5.4"),
    "from-instead-of-to": ("FROM:<bob@example.org>", False, 501, "5.5.4"),
    "two-spaces": ("TO:  <bob@example.org>", False, 501, "5.5.4"),
    "unclosed": ("TO:<bob@example.org", False, 501, "5.5.4"),
    "junk-after": ("TO:<bob@example.org>junk", False, 501, "5.5.4"),
    "empty": ("", False, 501, "5.5.4"),
    "no-at": ("TO:<bob>", False, 553, "5.1.3"),
    "postmaster-with-route": ("TO:<@r.example:postmaster>", False, 553, "5.1.3"),
    "postmaster-long-s": ("TO:<po\u017ftmaster>", True, 553, "5.1.3"),
    "bad-domain": ("TO:<bob@exa..mple.org>", False, 553, "5.1.3"),
    "bad-literal": ("TO:<bob@[300.1.1.1]>", False, 553, "5.1.3"),
    "utf8-without-smtputf8": ("TO:<jösé@example.org>", False, 553, "5.6.7"),
    "utf8-domain-without-smtputf8": ("TO:<bob@bücher.example>", False, 553, "5.6.7"),
}


@pytest.mark.parametrize(("arg", "smtputf8", "code", "enhanced"), **cases(RCPT_BAD))
def test_rcpt_path_errors(arg: str, smtputf8: bool, code: int, enhanced: str) -> None:
    reply = reply_of(parse_rcpt, arg, ALL, smtputf8)
    assert (reply.code, reply.enhanced) == (code, enhanced)


RCPT_PARAMS_OK = {
    "notify-never": ("NOTIFY=NEVER", False, RcptParams(notify=("NEVER",))),
    "notify-never-lower": ("notify=never", False, RcptParams(notify=("NEVER",))),
    "notify-success": ("NOTIFY=SUCCESS", False, RcptParams(notify=("SUCCESS",))),
    "notify-all-three": ("NOTIFY=SUCCESS,FAILURE,DELAY", False, RcptParams(("SUCCESS", "FAILURE", "DELAY"))),
    "notify-order-kept": ("NOTIFY=delay,failure", False, RcptParams(notify=("DELAY", "FAILURE"))),
    "orcpt": ("ORCPT=rfc822;bob@example.org", False, RcptParams(orcpt=("rfc822", "bob@example.org"))),
    "orcpt-xtext": ("ORCPT=rfc822;b+2Bo+3Db@x.org", False, RcptParams(orcpt=("rfc822", "b+o=b@x.org"))),
    "orcpt-utf8": ("ORCPT=utf-8;jösé@x.org", True, RcptParams(orcpt=("utf-8", "jösé@x.org"))),
    "both": (
        "NOTIFY=FAILURE ORCPT=rfc822;bob@example.org",
        False,
        RcptParams(("FAILURE",), ("rfc822", "bob@example.org")),
    ),
}


@pytest.mark.parametrize(("params", "smtputf8", "expected"), **cases(RCPT_PARAMS_OK))
def test_rcpt_params(params: str, smtputf8: bool, expected: RcptParams) -> None:
    for prefix in ("TO:<bob@example.org> ", "TO:<postmaster> "):
        _, got = parse_rcpt(prefix + params, ALL, smtputf8)
        assert got == expected


RCPT_PARAMS_BAD = {
    "notify-never-and-success": ("NOTIFY=NEVER,SUCCESS", ALL, False, 501, "5.5.4"),
    "notify-repeated-item": ("NOTIFY=SUCCESS,SUCCESS", ALL, False, 501, "5.5.4"),
    "notify-unknown-item": ("NOTIFY=ALWAYS", ALL, False, 501, "5.5.4"),
    "notify-trailing-comma": ("NOTIFY=SUCCESS,", ALL, False, 501, "5.5.4"),
    "notify-empty": ("NOTIFY=", ALL, False, 501, "5.5.4"),
    "notify-no-value": ("NOTIFY", ALL, False, 501, "5.5.4"),
    "notify-not-offered": ("NOTIFY=NEVER", NONE, False, 555, "5.5.4"),
    "orcpt-no-type": ("ORCPT=bob@example.org", ALL, False, 501, "5.5.4"),
    "orcpt-empty-type": ("ORCPT=;bob@example.org", ALL, False, 501, "5.5.4"),
    "orcpt-empty-address": ("ORCPT=rfc822;", ALL, False, 501, "5.5.4"),
    "orcpt-bad-xtext": ("ORCPT=rfc822;bob+zz", ALL, False, 501, "5.5.4"),
    "orcpt-crlf": ("ORCPT=rfc822;bob+0D+0A", ALL, False, 501, "5.5.4"),
    "orcpt-utf8-without-smtputf8": ("ORCPT=utf-8;jösé@x.org", ALL, False, 553, "5.6.7"),
    "orcpt-not-offered": ("ORCPT=rfc822;a@b", NONE, False, 555, "5.5.4"),
    "dup-notify": ("NOTIFY=NEVER NOTIFY=NEVER", ALL, False, 501, "5.5.4"),
    "dup-orcpt": ("ORCPT=rfc822;a@b orcpt=rfc822;a@b", ALL, False, 501, "5.5.4"),
    "mail-param-on-rcpt": ("SIZE=10", ALL, False, 555, "5.5.4"),
    "unknown": ("X-FOO=1", ALL, False, 555, "5.5.4"),
    "bad-keyword": ("X_FOO=1", ALL, False, 501, "5.5.4"),
}


@pytest.mark.parametrize(("params", "features", "smtputf8", "code", "enhanced"), **cases(RCPT_PARAMS_BAD))
def test_rcpt_params_errors(
    params: str, features: Features, smtputf8: bool, code: int, enhanced: str
) -> None:
    reply = reply_of(parse_rcpt, "TO:<bob@example.org> " + params, features, smtputf8)
    assert (reply.code, reply.enhanced) == (code, enhanced)


# -- the fast path accepts exactly what the full grammar accepts -------------------------

_LOCAL_CHARS = "ab.-+=_\"\\ @!~"
_DOMAIN_CHARS = "ab0.-_[]:"


def outcome(fn: Callable[..., Any], *args: Any) -> object:
    try:
        return fn(*args)
    except LocalProtocolError as exc:
        return exc.reply


@given(
    local=st.text(_LOCAL_CHARS, max_size=8),
    domain=st.text(_DOMAIN_CHARS, max_size=10),
    verb=st.sampled_from(["FROM:", "from: ", "FROM:  ", "TO:", "to: "]),
    tail=st.sampled_from(["", " ", " SIZE=10", " BODY=8BITMIME NOTIFY=NEVER", "x", " FOO"]),
)
def test_fast_path_agrees_with_full_grammar(local: str, domain: str, verb: str, tail: str) -> None:
    arg = f"{verb}<{local}@{domain}>{tail}"
    assert outcome(parse_mail, arg, ALL, LIMITS) == outcome(_parse_mail_full, arg, ALL, LIMITS)
    assert outcome(parse_rcpt, arg, ALL, False) == outcome(_parse_rcpt_full, arg, ALL, False)


# -- HELO/EHLO/LHLO ------------------------------------------------------------------

HELO_OK = {
    "fqdn": ("mail.example.com", "mail.example.com"),
    "bare-hostname": ("localhost", "localhost"),
    "trailing-dot": ("mail.example.com.", "mail.example.com."),
    "underscore": ("my_host.example.com", "my_host.example.com"),
    "hyphen-edges": ("-odd-.example", "-odd-.example"),
    "ip-without-brackets": ("192.0.2.1", "192.0.2.1"),
    "ipv4-literal": ("[192.0.2.1]", "[192.0.2.1]"),
    "ipv6-literal": ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    "surrounding-spaces": ("  mail.example.com ", "mail.example.com"),
    "u-label": ("bücher.example", "bücher.example"),
    "length-255": ("a" * 255, "a" * 255),
}


@pytest.mark.parametrize(("arg", "name"), **cases(HELO_OK))
def test_helo(arg: str, name: str) -> None:
    assert parse_helo(arg) == name


HELO_BAD = {
    "empty": ("",),
    "spaces-only": ("   ",),
    "inner-space": ("mail example.com",),
    "tab": ("mail\texample.com",),
    "nul": ("mail\x00",),
    "c1-control": ("mail\x85example",),
    "nbsp": ("bücher\u00a0.example",),
    "line-separator": ("mail\u2028x",),
    "empty-label": ("mail..example.com",),
    "leading-dot": (".example.com",),
    "lone-dot": (".",),
    "slash": ("mail/example",),
    "quoted": ('"mail"',),
    "bad-literal": ("[192.0.2.300]",),
    "unclosed-literal": ("[192.0.2.1",),
    "length-256": ("a" * 256,),
}


@pytest.mark.parametrize("arg", **cases(HELO_BAD))
def test_helo_errors(arg: str) -> None:
    reply = reply_of(parse_helo, arg)
    assert (reply.code, reply.enhanced) == (501, "5.5.4")


# -- BDAT ----------------------------------------------------------------------------

BDAT_OK = {
    "zero": ("0", (0, False)),
    "size": ("1024", (1024, False)),
    "last": ("1024 LAST", (1024, True)),
    "last-lower": ("7 last", (7, True)),
    "zero-last": ("0 LAST", (0, True)),
    "leading-zeros": ("000123", (123, False)),
    "digits-17": ("9" * 17, (10**17 - 1, False)),
    "digits-18": ("9" * 18, (10**18 - 1, False)),
}


@pytest.mark.parametrize(("arg", "expected"), **cases(BDAT_OK))
def test_bdat(arg: str, expected: tuple[int, bool]) -> None:
    assert parse_bdat(arg) == expected


BDAT_BAD = {
    "empty": ("",),
    "digits-19": ("9" * 19,),
    "last-only": ("LAST",),
    "negative": ("-1",),
    "two-spaces": ("10  LAST",),
    "trailing-space": ("10 ",),
    "leading-space": (" 10",),
    "extra-word": ("10 LAST now",),
    "not-last": ("10 FIRST",),
    "hex": ("0x10",),
    "fullwidth-digits": ("\uff11\uff10",),
    "replacement-char": ("1\ufffd",),
}


@pytest.mark.parametrize("arg", **cases(BDAT_BAD))
def test_bdat_errors(arg: str) -> None:
    reply = reply_of(parse_bdat, arg)
    assert (reply.code, reply.enhanced) == (501, "5.5.4")


# -- AUTH ----------------------------------------------------------------------------

AUTH_OK = {
    "mechanism": ("PLAIN", ("PLAIN", None)),
    "lower-case": ("plain", ("PLAIN", None)),
    "trailing-space": ("LOGIN ", ("LOGIN", None)),
    "initial-response": ("PLAIN AGFsaWNlAHNlY3JldA==", ("PLAIN", "AGFsaWNlAHNlY3JldA==")),
    "one-pad": ("PLAIN dGVzdDE=", ("PLAIN", "dGVzdDE=")),
    "no-pad": ("PLAIN dGVzdA12", ("PLAIN", "dGVzdA12")),
    "empty-response": ("EXTERNAL =", ("EXTERNAL", "=")),
    "hyphen-digits": ("SCRAM-SHA-256 biws", ("SCRAM-SHA-256", "biws")),
    "underscore": ("X_MECH", ("X_MECH", None)),
    "name-20": ("A" * 20, ("A" * 20, None)),
}


@pytest.mark.parametrize(("arg", "expected"), **cases(AUTH_OK))
def test_auth(arg: str, expected: tuple[str, str | None]) -> None:
    assert parse_auth(arg) == expected


AUTH_BAD = {
    "empty": ("", 501, "5.5.4"),
    "name-21": ("A" * 21, 501, "5.5.4"),
    "bad-name": ("PL@IN", 501, "5.5.4"),
    "non-ascii-name": ("\u017fCRAM", 501, "5.5.4"),
    "leading-space": (" PLAIN", 501, "5.5.4"),
    "not-multiple-of-4": ("PLAIN dGVzdA", 501, "5.5.2"),
    "bad-char": ("PLAIN dGVz*A==", 501, "5.5.2"),
    "pad-only": ("PLAIN ==", 501, "5.5.2"),
    "two-words": ("PLAIN dGVz dGVz", 501, "5.5.2"),
    "pad-in-middle": ("PLAIN dG==dGVz", 501, "5.5.2"),
}


@pytest.mark.parametrize(("arg", "code", "enhanced"), **cases(AUTH_BAD))
def test_auth_errors(arg: str, code: int, enhanced: str) -> None:
    reply = reply_of(parse_auth, arg)
    assert (reply.code, reply.enhanced) == (code, enhanced)


# -- XCLIENT / XFORWARD ----------------------------------------------------------------

X_OK = {
    "xclient-all": (
        "NAME=mx.example.com ADDR=192.0.2.1 PORT=4711 PROTO=ESMTP HELO=client.example "
        "LOGIN=alice DESTADDR=198.51.100.1 DESTPORT=25",
        XCLIENT_ATTRIBUTES,
        {
            "NAME": "mx.example.com", "ADDR": "192.0.2.1", "PORT": "4711", "PROTO": "ESMTP",
            "HELO": "client.example", "LOGIN": "alice", "DESTADDR": "198.51.100.1", "DESTPORT": "25",
        },
    ),
    "xforward-all": (
        "NAME=mx.example ADDR=IPV6:2001:db8::1 PORT=25 PROTO=SMTP HELO=h IDENT=q123 SOURCE=REMOTE",
        XFORWARD_ATTRIBUTES,
        {
            "NAME": "mx.example", "ADDR": "IPV6:2001:db8::1", "PORT": "25", "PROTO": "SMTP", "HELO": "h",
            "IDENT": "q123", "SOURCE": "REMOTE",
        },
    ),
    "lower-case-names": ("name=a.example addr=::1", XCLIENT_ATTRIBUTES, {"NAME": "a.example", "ADDR": "::1"}),
    "xtext-value": ("HELO=a+20b+2Bc", XCLIENT_ATTRIBUTES, {"HELO": "a b+c"}),
    "unavailable": ("NAME=[UNAVAILABLE]", XCLIENT_ATTRIBUTES, {"NAME": "[UNAVAILABLE]"}),
    "tempunavail": ("NAME=[TEMPUNAVAIL] LOGIN=[UNAVAILABLE]", XCLIENT_ATTRIBUTES,
                    {"NAME": "[TEMPUNAVAIL]", "LOGIN": "[UNAVAILABLE]"}),
    "empty-value": ("LOGIN=", XCLIENT_ATTRIBUTES, {"LOGIN": ""}),
    "extra-spaces": ("NAME=a  ADDR=b ", XCLIENT_ATTRIBUTES, {"NAME": "a", "ADDR": "b"}),
}


@pytest.mark.parametrize(("arg", "allowed", "expected"), **cases(X_OK))
def test_x_attributes(arg: str, allowed: frozenset[str], expected: dict[str, str]) -> None:
    assert parse_x_attributes(arg, allowed) == expected


X_BAD = {
    "empty": ("", XCLIENT_ATTRIBUTES, "Syntax: XCLIENT"),
    "spaces-only": ("  ", XCLIENT_ATTRIBUTES, "Syntax: XCLIENT"),
    "no-equals": ("NAME", XCLIENT_ATTRIBUTES, "Syntax: XCLIENT"),
    "no-name": ("=x", XCLIENT_ATTRIBUTES, "Syntax: XCLIENT"),
    "unknown-name": ("FOO=bar", XCLIENT_ATTRIBUTES, "Bad XCLIENT attribute name: FOO"),
    "xforward-name-on-xclient": ("IDENT=x", XCLIENT_ATTRIBUTES, "Bad XCLIENT attribute name: IDENT"),
    "xclient-name-on-xforward": ("LOGIN=x", XFORWARD_ATTRIBUTES, "Bad XFORWARD attribute name: LOGIN"),
    "non-ascii-name": ("\u017fOURCE=x", XFORWARD_ATTRIBUTES, "Bad XFORWARD attribute name: ?"),
    "duplicate": ("NAME=a name=b", XCLIENT_ATTRIBUTES, "Duplicate XCLIENT attribute name: NAME"),
    "bad-xtext": ("HELO=a+zz", XCLIENT_ATTRIBUTES, "Bad XCLIENT attribute value: HELO"),
    "crlf-injection": ("HELO=a+0D+0AX-Bad:+201", XCLIENT_ATTRIBUTES, "Bad XCLIENT attribute value: HELO"),
    "non-ascii-value": ("LOGIN=jösé", XCLIENT_ATTRIBUTES, "Bad XCLIENT attribute value: LOGIN"),
}


@pytest.mark.parametrize(("arg", "allowed", "text"), **cases(X_BAD))
def test_x_attributes_errors(arg: str, allowed: frozenset[str], text: str) -> None:
    reply = reply_of(parse_x_attributes, arg, allowed)
    assert (reply.code, reply.enhanced) == (501, "5.5.4")
    assert reply.text.startswith(text)


def test_x_attribute_names() -> None:
    assert {"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT"} == XCLIENT_ATTRIBUTES
    assert {"NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"} == XFORWARD_ATTRIBUTES


def test_x_attributes_explicit_verb() -> None:
    reply = reply_of(parse_x_attributes, "X=1", frozenset({"A"}), verb="XFOO")
    assert reply.text == "Bad XFOO attribute name: X"


# -- xtext (RFC 3461 §4) ---------------------------------------------------------------

XTEXT_PAIRS = {
    "empty": ("", ""),
    "plain": ("abc", "abc"),
    "plus-and-equals": ("a+2Bb+3Dc", "a+b=c"),
    "space": ("a+20b", "a b"),
    "utf8": ("j+C3+B6s+C3+A9", "jösé"),
    "all-xchars": ("!\"#$%&'()*,-./09:;<>?@AZ[\\]^_`az{|}~", "!\"#$%&'()*,-./09:;<>?@AZ[\\]^_`az{|}~"),
}


@pytest.mark.parametrize(("encoded", "decoded"), **cases(XTEXT_PAIRS))
def test_xtext_pairs(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded
    assert xtext_encode(decoded) == encoded


def test_xtext_decode_accepts_lower_case_hex() -> None:
    assert xtext_decode("a+2bb+c3+b6") == "a+bö"


XTEXT_BAD = {
    "half-hexchar": ("a+2",),
    "plus-at-end": ("a+",),
    "non-hex": ("a+GZ",),
    "equals": ("a=b",),
    "space": ("a b",),
    "non-ascii": ("ö",),
    "control": ("a\x01",),
    "bad-utf8": ("+FF",),
    "truncated-utf8": ("+C3",),
    "decodes-to-crlf": ("+0D+0A",),
    "decodes-to-nul": ("+00",),
    "decodes-to-del": ("+7F",),
}


@pytest.mark.parametrize("encoded", **cases(XTEXT_BAD))
def test_xtext_decode_errors(encoded: str) -> None:
    reply = reply_of(xtext_decode, encoded)
    assert (reply.code, reply.enhanced) == (501, "5.5.4")


_PRINTABLE = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")) | st.just(" ")
)


@given(_PRINTABLE)
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii()
    assert grammar.XTEXT.fullmatch(encoded)
    assert xtext_decode(encoded) == text


# -- grammar -------------------------------------------------------------------------

LITERALS = {
    "ipv4": ("[192.0.2.1]", True),
    "ipv4-zeros": ("[0.0.0.0]", True),
    "ipv4-255": ("[255.255.255.255]", True),
    "ipv4-256": ("[255.255.255.256]", False),
    "ipv4-leading-zero": ("[01.2.3.4]", True),
    "ipv4-five-parts": ("[1.2.3.4.5]", False),
    "ipv6-compressed": ("[IPv6:::]", True),
    "ipv6-v4-comp": ("[IPv6:::192.0.2.1]", True),
    "ipv6-two-double-colons": ("[IPv6:1::2::3]", False),
    "ipv6-empty": ("[IPv6:]", False),
    "general": ("[tag:x]", True),
    "general-empty-content": ("[tag:]", False),
    "general-hyphen-end-tag": ("[tag-:x]", False),
    "no-brackets": ("192.0.2.1", False),
    "brackets-only": ("[]", False),
}


@pytest.mark.parametrize(("text", "ok"), **cases(LITERALS))
def test_is_address_literal(text: str, ok: bool) -> None:
    assert grammar.is_address_literal(text) is ok


@pytest.mark.parametrize(
    ("length", "ok"), [(254, True), (255, True), (256, False)], ids=["limit-1", "limit", "limit+1"]
)
def test_domain_length_limit(length: int, ok: bool) -> None:
    # RFC 5321 §4.5.3.1.2: 255 octets.
    name = ("a." * 128)[: length - 1] + "b"
    assert len(name) == length
    assert grammar.is_domain(name) is ok
