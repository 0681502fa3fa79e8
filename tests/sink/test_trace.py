"""Trace fields: the Received line's clauses, RFC 3848/6531 keywords, folding, sanitising."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpfront.core.events import Address, MailParams, RcptParams
from smtpfront.sink.base import Envelope, Recipient
from smtpfront.sink.trace import new_queue_id, received_header, return_path_header, with_protocol

WHEN = 1_700_000_000.0
TLS = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "bits": "256"}
ALICE = Address("alice", "example.com")


def envelope(
    *,
    rcpts: tuple[str, ...] = ("user@example.org",),
    protocol: str = "ESMTP",
    tls: dict[str, str] | None = None,
    user: str | None = None,
    smtputf8: bool = False,
    helo: str | None = "client.example.com",
    client_name: str | None = "mail.example.com",
    client_address: str | None = "192.0.2.1",
    sender: Address = ALICE,
) -> Envelope:
    recipients = [Recipient(Address(*r.rsplit("@", 1)), RcptParams()) for r in rcpts]
    return Envelope(
        id="Q1", mail_from=sender, mail_params=MailParams(smtputf8=smtputf8), recipients=recipients,
        received_at=WHEN, client_address=client_address, client_name=client_name, helo=helo,
        protocol=protocol, tls=tls, user=user,
    )


def header(env: Envelope, server_name: str = "mx.example.org") -> bytes:
    return received_header(env, server_name=server_name, queue_id="0ABCDEF123456789", when=WHEN)


def unfold(raw: bytes) -> str:
    return raw.decode("utf-8").removesuffix("\r\n").replace("\r\n\t", " ")


def check_shape(raw: bytes, width: int = 78) -> list[str]:
    """CRLF-terminated, TAB continuations, no other control characters, lines <= width."""
    assert raw.endswith(b"\r\n")
    lines = raw.decode("utf-8")[:-2].split("\r\n")
    assert lines[0].startswith("Received: ")
    for n, line in enumerate(lines):
        assert n == 0 or line.startswith("\t")
        assert not any(ord(c) < 32 or ord(c) == 127 for c in line.lstrip("\t")), line
        assert len(line) <= width, (len(line), line)
    return lines


# -- the clauses ---------------------------------------------------------------------


def test_full_line() -> None:
    text = unfold(header(envelope()))
    stamp, date = text.split("; ")
    assert stamp == (
        "Received: from client.example.com (mail.example.com [192.0.2.1]) by mx.example.org"
        " (smtpfront) with ESMTP id 0ABCDEF123456789 for <user@example.org>"
    )
    assert parsedate_to_datetime(date).timestamp() == WHEN
    assert re.fullmatch(r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", date)


def test_one_email_header_that_parses() -> None:
    raw = header(envelope(tls=TLS, user="bob"))
    message = email.message_from_bytes(raw + b"\r\nbody\r\n", policy=email.policy.SMTP)
    assert list(message.keys()) == ["Received"]
    check_shape(raw)


@pytest.mark.parametrize(
    ("rcpts", "expected"),
    [((), None), (("user@example.org",), "<user@example.org>"), (("a@example.org", "b@example.org"), None)],
)
def test_for_only_with_exactly_one_recipient(rcpts: tuple[str, ...], expected: str | None) -> None:
    text = unfold(header(envelope(rcpts=rcpts)))
    if expected is None:
        assert " for " not in text
        assert "id 0ABCDEF123456789; " in text
    else:
        assert f" for {expected}; " in text


def test_tls_comment() -> None:
    text = unfold(header(envelope(tls=TLS)))
    assert "[192.0.2.1]) (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)) by" in text
    assert "(using TLS) by" in unfold(header(envelope(tls={})))
    assert "(using TLSv1.2 with cipher X) by" in unfold(header(envelope(tls={"version": "TLSv1.2", "cipher": "X"})))


def test_unknown_client() -> None:
    text = unfold(header(envelope(helo=None, client_name=None, client_address=None)))
    assert text.startswith("Received: from unknown (unknown) by mx.example.org ")
    text = unfold(header(envelope(client_name=None, client_address="2001:db8::1")))
    assert "(unknown [IPv6:2001:db8::1])" in text


# -- with (RFC 3848, RFC 6531 §3.7.3) ------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "tls", "user", "utf8", "expected"),
    [
        ("SMTP", False, False, False, "SMTP"),
        ("SMTP", True, True, False, "SMTP"),
        ("ESMTP", False, False, False, "ESMTP"),
        ("ESMTP", True, False, False, "ESMTPS"),
        ("ESMTP", False, True, False, "ESMTPA"),
        ("ESMTP", True, True, False, "ESMTPSA"),
        ("LMTP", False, False, False, "LMTP"),
        ("LMTP", True, False, False, "LMTPS"),
        ("LMTP", False, True, False, "LMTPA"),
        ("LMTP", True, True, False, "LMTPSA"),
        ("ESMTP", False, False, True, "UTF8SMTP"),
        ("ESMTP", True, False, True, "UTF8SMTPS"),
        ("ESMTP", False, True, True, "UTF8SMTPA"),
        ("ESMTP", True, True, True, "UTF8SMTPSA"),
        ("LMTP", False, False, True, "UTF8LMTP"),
        ("LMTP", True, True, True, "UTF8LMTPSA"),
        ("ESMTPSA", False, False, False, "ESMTP"),  # the facts decide, not the suffix
        ("esmtps", True, False, False, "ESMTPS"),
        ("UTF8SMTPA", False, True, True, "UTF8SMTPA"),
        ("LMTPS", False, False, False, "LMTP"),
    ],
)
def test_with_keyword(protocol: str, tls: bool, user: bool, utf8: bool, expected: str) -> None:
    env = envelope(protocol=protocol, tls=TLS if tls else None, user="bob" if user else None, smtputf8=utf8)
    assert with_protocol(env) == expected
    assert f" with {expected} id " in unfold(header(env))


# -- folding and sanitising ----------------------------------------------------------


def test_folds_at_78() -> None:
    long = "a" * 50 + ".example.com"
    env = envelope(helo=long, client_name=long, client_address="2001:db8:1:2:3:4:5:6", tls=TLS, user="u",
                   rcpts=("someone@" + long,))
    lines = check_shape(header(env, server_name="mx1." + long))
    assert len(lines) >= 5
    text = unfold(header(env))
    assert f"from {long} ({long} [IPv6:2001:db8:1:2:3:4:5:6]) (using TLSv1.3 " in text
    assert f"with ESMTPSA id 0ABCDEF123456789 for <someone@{long}>; " in text


def test_short_line_is_not_folded() -> None:
    env = envelope(helo="a", client_name="b", client_address="192.0.2.1", rcpts=())
    raw = received_header(env, server_name="c", queue_id="Q", when=WHEN)
    assert raw.count(b"\r\n") == 2  # the date goes to its own line only if it must
    check_shape(raw)


def test_overlong_value_is_cut_and_alone_on_its_line() -> None:
    raw = header(envelope(helo="h" * 600))
    assert raw.count(b"h" * 255) == 1 and b"h" * 256 not in raw
    lines = raw.decode().split("\r\n")
    assert all(len(line) <= 78 for line in lines if "h" * 255 not in line)


@pytest.mark.parametrize(
    "evil",
    [
        "evil\r\nX-Injected: yes",
        "evil\nX-Injected: yes",
        "evil\rX-Injected: yes",
        "evil\x00\x1b[31m\x7f",
        "a (b",
        "a) by fake.example (",
        "a [b",
        "]a[",
        "a; Mon, 1 Jan 2001 00:00:00 +0000",
        "a <b@c>",
        "back\\slash",
        "tab\there",
        "[192.0.2.1] (x",
    ],
)
def test_peer_values_are_sanitised(evil: str) -> None:
    tls = {"version": evil, "cipher": evil, "bits": evil}
    env = envelope(helo=evil, client_name=evil, client_address=evil, tls=tls)
    raw = header(env)
    check_shape(raw)
    message = email.message_from_bytes(raw + b"\r\n", policy=email.policy.SMTP)
    assert list(message.keys()) == ["Received"]
    text = unfold(raw)
    assert "X-Injected:" not in text.replace("X-Injected:?", "")
    assert text.count(";") == 1
    for opening, closing in ("()", "[]", "<>"):
        assert balanced(text, opening, closing), text


def balanced(text: str, opening: str, closing: str) -> bool:
    depth = 0
    for c in text:
        depth += (c == opening) - (c == closing)
        if depth < 0:
            return False
    return depth == 0


@settings(max_examples=300, deadline=None)
@given(
    helo=st.text(max_size=60),
    name=st.text(max_size=60),
    address=st.text(max_size=40),
    local=st.text(min_size=1, max_size=30),
    utf8=st.booleans(),
)
def test_any_peer_input_gives_one_well_formed_header(
    helo: str, name: str, address: str, local: str, utf8: bool
) -> None:
    env = envelope(helo=helo, client_name=name, client_address=address, smtputf8=utf8)
    env.recipients = [Recipient(Address(local, "example.org"), RcptParams())]
    raw = header(env)
    check_shape(raw)
    text = unfold(raw)
    assert text.count(";") == 1
    for opening, closing in ("()", "[]", "<>"):
        assert balanced(text, opening, closing), text
    assert text.count('"') % 2 == 0
    if not utf8:
        assert raw.isascii()


def test_helo_address_literal_kept() -> None:
    assert unfold(header(envelope(helo="[192.0.2.7]"))).startswith("Received: from [192.0.2.7] (")
    assert "from [IPv6:2001:db8::7] (" in unfold(header(envelope(helo="[IPv6:2001:db8::7]")))


def test_utf8_names_only_under_smtputf8() -> None:
    assert "from bücher.example (" in unfold(header(envelope(helo="bücher.example", smtputf8=True)))
    assert "from b?cher.example (" in unfold(header(envelope(helo="bücher.example")))
    text = unfold(header(envelope(rcpts=("jörg@example.org",), smtputf8=True)))
    assert "for <jörg@example.org>;" in text


def test_quoted_local_part() -> None:
    text = unfold(header(envelope(rcpts=('"john (doe)"@example.org',))))
    assert 'for <"john??doe?"@example.org>;' in text


# -- Return-Path and queue ids -------------------------------------------------------


def test_return_path() -> None:
    assert return_path_header(envelope()) == b"Return-Path: <alice@example.com>\r\n"
    assert return_path_header(envelope(sender=Address("", ""))) == b"Return-Path: <>\r\n"
    evil = envelope(sender=Address("a\r\nX-Evil: 1", "example.com"))
    assert return_path_header(evil) == b"Return-Path: <a??X-Evil??1@example.com>\r\n"


def test_queue_ids_unique_sorted_short() -> None:
    ids = [new_queue_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-F]{20}", i) for i in ids)
    later = new_queue_id()
    time.sleep(0.002)
    assert new_queue_id() > later


def test_queue_ids_of_forked_workers_differ_in_the_same_microsecond() -> None:
    import os

    from smtpfront.sink import trace

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: its ids carry its own pid
        os.write(write, trace.new_queue_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    mine = trace.new_queue_id()
    assert int(child, 16) & 0xFFFFFF == pid and int(mine, 16) & 0xFFFFFF == os.getpid()
