"""ServerConnection properties: the fuzz invariant, limits at N-1/N/N+1, buffer mechanics."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpfront.core import replies as R
from smtpfront.core.buffer import LineTooLong, ReceiveBuffer
from smtpfront.core.connection import NEED_DATA, PAUSED, ServerConnection
from smtpfront.core.errors import RemoteProtocolError
from smtpfront.core.events import BodyChunk, BodyEnd, Event, Helo, ProxyHeader, Rejected, Xclient
from smtpfront.core.options import Features, Limits, Policies

from .driver import ScriptedApp, run_session

ACCEPT_PIPELINING = Policies(unauthorized_pipelining="accept")
HELLO = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n"

# -- the invariant: whatever the client sends, only RemoteProtocolError escapes ------------

VERBS = [b"EHLO x", b"HELO x", b"LHLO x", b"MAIL FROM:<a@b.c>", b"RCPT TO:<d@e.f>", b"DATA", b"BDAT 3",
         b"BDAT 2 LAST", b"RSET", b"NOOP", b"QUIT", b"VRFY x", b"HELP", b"STARTTLS", b"AUTH PLAIN",
         b"AUTH LOGIN", b"AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9YWJj", b"XCLIENT ADDR=1.2.3.4",
         b"XFORWARD NAME=x",
         b".", b"..", b"", b"*", b"AHVzZXIAc2VjcmV0", b"\x00\xff", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"]
pieces = st.one_of(
    st.sampled_from(VERBS).map(lambda v: v + b"\r\n"),
    st.binary(max_size=40),
    st.sampled_from([b"\r\n.\r\n", b"\n.\n", b"\r", b"\n", b"\r\n"]),
)


OPTION_SETS = ["", "lmtp=1", "proxy=1", "tls=1 auth=PLAIN,LOGIN,SCRAM-SHA-256",
               "xclient=1 xforward=1 starttls=1", "sync=reject"]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(pieces, max_size=30), st.sampled_from(OPTION_SETS))
def test_only_remote_protocol_error_escapes(chunks: list[bytes], opts: str) -> None:
    options = dict(kv.split("=", 1) for kv in opts.split())
    for data in (b"".join(chunks),):
        # Fed whole and as the pieces came: the scripted app answers every event.
        run_session(data, [len(data)], options)
        run_session(data, [len(c) for c in chunks] or [0], options)


# -- limits at N-1, N, N+1 ----------------------------------------------------------------


def session_replies(data: bytes, **options: str) -> list[str]:
    return [line for line in run_session(data, [len(data)], options) if line.startswith(("S:", "X:"))]


@pytest.mark.parametrize(("count", "refused"), [(2, False), (3, False), (4, True)])
def test_recipient_limit(count: int, refused: bool) -> None:
    rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(count))
    log = session_replies(HELLO + rcpts, max_recipients="3")
    assert ("S: 452 4.5.3 Error: too many recipients" in log) is refused
    assert log.count("S: 250 2.1.5 Recipient OK") == min(count, 3)


@pytest.mark.parametrize(("errors", "closed"), [(2, False), (3, True), (4, True)])
def test_error_budget(errors: int, closed: bool) -> None:
    log = session_replies(b"EHLO c.example\r\n" + b"BOGUS\r\n" * errors + b"NOOP\r\n", max_errors="3")
    assert (log[-1] == "X: fatal 421 4.7.0") is closed
    assert log.count("S: 500 5.5.1 Error: command not recognized") == min(errors, 3)
    assert ("S: 250 2.0.0 OK" in log) is not closed


@pytest.mark.parametrize(("failures", "closed"), [(1, False), (2, True)])
def test_auth_failure_limit(failures: int, closed: bool) -> None:
    bad = b"AUTH PLAIN AHVzZXIAd3Jvbmc=\r\n"  # \0user\0wrong
    log = session_replies(b"EHLO c.example\r\n" + bad * failures + b"NOOP\r\n",
                          tls="1", auth="PLAIN", max_auth_failures="2")
    assert log.count("S: 535 5.7.8 Error: authentication credentials invalid") == failures
    assert ("S: 421 4.7.0 Error: too many failed authentication attempts" in log) is closed


@pytest.mark.parametrize(("length", "refused"), [(511, False), (512, False), (513, True)])
def test_command_line_limit(length: int, refused: bool) -> None:
    line = b"NOOP " + b"x" * (length - 7) + b"\r\n"
    assert len(line) == length
    log = session_replies(b"EHLO c.example\r\n" + line)
    assert ("S: 500 5.5.2 Error: line too long" in log) is refused


@pytest.mark.parametrize(("length", "refused"), [(12287, False), (12288, False), (12289, True)])
def test_auth_line_limit(length: int, refused: bool) -> None:
    # RFC 4954 §4: AUTH lines may reach 12288 octets. The response here is valid base64
    # of the right shape but a wrong password, so only the length decides the reply code.
    head = b"AUTH PLAIN "
    pad = length - len(head) - 2
    payload = b"A" * (pad - pad % 4)
    line = head + payload + b"=" * (pad % 4) + b"\r\n"
    assert len(line) == length
    log = session_replies(b"EHLO c.example\r\n" + line, tls="1", auth="PLAIN")
    assert ("S: 500 5.5.2 Error: line too long" in log) is refused


@pytest.mark.parametrize(("octets", "refused"), [(999, False), (1000, False), (1001, True)])
def test_text_line_limit(octets: int, refused: bool) -> None:
    body = b"t" * (octets - 2) + b"\r\n"
    data = HELLO + b"RCPT TO:<b@example.net>\r\nDATA\r\n" + body + b".\r\n"
    log = session_replies(data, long_lines="reject", max_size="5000")
    assert ("S: 550 5.5.2 Error: message line longer than 1000 octets (RFC 5321 4.5.3.1.6)" in log) is refused


def test_pipelined_group_is_accepted_when_offered() -> None:
    data = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    log = run_session(b"EHLO c.example\r\n" + data, [16, len(data)], {"sync": "reject"})
    assert "S: 354 End data with <CR><LF>.<CR><LF>" in log


# -- the in-place receive path the asyncio adapter uses ------------------------------------


def test_receive_in_place_and_body_views() -> None:
    conn = ServerConnection(limits=Limits(max_message_size=10_000), policies=ACCEPT_PIPELINING)
    conn.send(conn.greeting_reply())
    app = ScriptedApp(conn)
    body = b"x" * 3000 + b"\r\n..dot\r\n"
    wire = HELLO + b"RCPT TO:<b@example.net>\r\nDATA\r\n" + body + b".\r\nQUIT\r\n"
    seen = bytearray()
    pos = 0
    while pos < len(wire):
        room = conn.writable()
        n = min(len(room), 700, len(wire) - pos)
        room[:n] = wire[pos : pos + n]
        conn.commit(n)
        pos += n
        while True:
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            assert isinstance(event, Event)
            if isinstance(event, BodyChunk):
                assert isinstance(event.data, memoryview)
                seen += event.data
            app.handle(event)
    assert bytes(seen) == b"x" * 3000 + b"\r\n.dot\r\n"
    assert conn.closing


def test_reply_without_event_is_a_bug() -> None:
    conn = ServerConnection()
    conn.send(conn.greeting_reply())
    with pytest.raises(RuntimeError):
        conn.send(R.OK)


def test_error_state_fails_fast() -> None:
    conn = ServerConnection(expect_proxy=True)
    conn.receive_data(b"EHLO x\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.closing
    assert conn.data_to_send().startswith(b"421 ")


@pytest.mark.parametrize("trusted", [True, False])
def test_features_follow_the_client_named_by_the_proxy_header(trusted: bool) -> None:
    """XCLIENT is offered (and accepted) by what the PROXY header's client may use, set after it."""
    conn = ServerConnection(features=Features(xclient=not trusted), expect_proxy=True)  # the proxy's own
    conn.receive_data(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
    event = conn.next_event()
    assert isinstance(event, ProxyHeader) and event.info.source_address == "192.0.2.7"
    conn.use_features(Features(xclient=trusted))
    conn.send(conn.greeting_reply())
    conn.receive_data(b"EHLO c.example\r\n")
    helo = conn.next_event()
    assert isinstance(helo, Helo)
    conn.send(conn.hello_reply(helo))
    assert (b"XCLIENT ADDR" in conn.data_to_send()) is trusted
    conn.receive_data(b"XCLIENT ADDR=10.1.2.3\r\n")
    if trusted:
        assert isinstance(conn.next_event(), Xclient)
    else:
        refused = conn.next_event()
        assert isinstance(refused, Rejected) and refused.verb == "XCLIENT"
        assert conn.data_to_send() == b"550 5.7.0 Error: insufficient authorization\r\n"
    with pytest.raises(RuntimeError):
        conn.use_features(Features())  # what was offered cannot change after the greeting


def test_lmtp_replies_due_counts_recipients() -> None:
    conn = ServerConnection(features=Features(lmtp=True), policies=ACCEPT_PIPELINING)
    conn.send(conn.greeting_reply())
    conn.receive_data(b"LHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@h.i>\r\n"
                      b"DATA\r\nhi\r\n.\r\n")
    due = None
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, BodyEnd):
            due = conn.replies_due
            conn.send(R.OK)
            assert conn.replies_due == 1
            conn.send(R.OK)
            assert conn.replies_due == 0
        elif isinstance(event, Rejected):
            raise AssertionError(event)
        elif event is not PAUSED and not isinstance(event, BodyChunk):
            from smtpfront.core.events import Data, Helo, MailFrom, RcptTo
            assert isinstance(event, (Helo, MailFrom, RcptTo, Data))
            conn.send(conn.hello_reply(event) if isinstance(event, Helo) else
                      R.START_DATA if isinstance(event, Data) else R.OK)
    assert due == 2


# -- ReceiveBuffer -------------------------------------------------------------------------


def test_buffer_lines_and_compaction() -> None:
    buf = ReceiveBuffer(1024)
    assert buf.feed(b"NOOP\r\nNO") == 8
    line = buf.next_line(512)
    assert line is not None and bytes(line) == b"NOOP\r\n"
    assert buf.next_line(512) is None
    buf.feed(b"OP\r\n")
    line = buf.next_line(512)
    assert line is not None and bytes(line) == b"NOOP\r\n"
    assert buf.feed(b"x" * 1000) == 1000  # writable() compacted the consumed 12 octets away
    assert (buf.start, buf.end) == (0, 1000)
    buf.consume(990)
    buf.compact()
    assert (buf.start, buf.end) == (0, 10) and bytes(buf.view()) == b"x" * 10


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b.replace(b"x", b"\n")),
       st.integers(min_value=0, max_value=70), st.integers(min_value=0, max_value=70))
def test_compiled_and_python_line_searches_agree(data: bytes, start: int, end: int) -> None:
    from smtpfront.core import buffer

    buf = bytearray(data)
    expected = buf.find(b"\n", start, end)
    assert buffer._find_lf(buf, start, end) == expected
    assert buffer._find_lf_py(buf, start, end) == expected


@pytest.mark.parametrize(("length", "raises"), [(511, False), (512, False), (513, True)])
def test_buffer_line_limit(length: int, raises: bool) -> None:
    buf = ReceiveBuffer(2048)
    buf.feed(b"a" * (length - 2) + b"\r\n")
    if raises:
        with pytest.raises(LineTooLong) as info:
            buf.next_line(512)
        assert info.value.complete
    else:
        assert buf.next_line(512) is not None


def test_buffer_incomplete_overlong_line_is_not_consumed() -> None:
    buf = ReceiveBuffer(2048)
    buf.feed(b"a" * 600)
    with pytest.raises(LineTooLong) as info:
        buf.next_line(512)
    assert not info.value.complete
    assert len(buf) == 600


def test_buffer_writable_is_empty_only_when_full() -> None:
    buf = ReceiveBuffer(1024)
    assert len(buf.writable()) == 1024
    buf.commit(1024)
    assert len(buf.writable()) == 0
    buf.consume(10)
    assert len(buf.writable()) == 10


def test_buffer_starts_small_and_doubles_when_a_read_fills_it() -> None:
    buf = ReceiveBuffer(64 * 1024)
    assert len(buf.writable()) == 4096  # an idle session holds 4 KiB, not 64
    buf.commit(100)
    buf.consume(100)
    assert len(buf.writable()) == 4096  # partial reads: no growth
    sizes = []
    for _ in range(6):
        room = buf.writable()
        room[:] = b"x" * len(room)  # a read that fills all the room there is
        buf.commit(len(room))
        sizes.append(buf.free + buf.end)
    assert sizes == [4096, 8192, 16384, 32768, 65536, 65536]  # doubled, up to the limit
    assert len(buf.writable()) == 0  # full at the limit: the adapter pauses reading
    assert bytes(buf.view()) == b"x" * 65536  # unread bytes survive every move
    line = ReceiveBuffer(64 * 1024)
    data = b"A" * 5000 + b"\r\n"
    taken = line.feed(data)
    assert taken == 4096 and line.next_line(8000) is None
    assert line.feed(data[taken:]) == len(data) - taken  # the room grew for the rest
    assert bytes(line.next_line(8000) or b"") == data


# -- tallies for the adapter's metrics ------------------------------------------------------


def test_commands_and_replies_are_tallied_by_verb() -> None:
    from .driver import make_connection

    conn = make_connection({})
    app = ScriptedApp(conn)
    app.greet()
    conn.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    app.pump()
    conn.receive_data(b"hi\r\n.\r\nBOGUS\r\nRCPT TO:<c@example.net>\r\nNOOP\r\n")
    app.pump()
    commands, replies = conn.take_counts()
    assert commands == {"EHLO": 1, "MAIL": 1, "RCPT": 2, "DATA": 1, "UNKNOWN": 1, "NOOP": 1}
    assert replies == {("CONNECT", 2): 1, ("EHLO", 2): 1, ("MAIL", 2): 1, ("RCPT", 2): 1, ("DATA", 3): 1,
                       ("DATA", 2): 1, ("UNKNOWN", 5): 1, ("RCPT", 5): 1, ("NOOP", 2): 1}
    assert conn.take_counts() == ({}, {})  # taken: the next call starts from zero
