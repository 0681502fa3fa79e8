"""The state table on its own (h11's ``test_state.py``): which verbs each state allows, where a
positive reply leads, and that the session follows the table and nothing else."""

from __future__ import annotations

import pytest

from smtpfront.core import replies as R
from smtpfront.core import states as S
from smtpfront.core.connection import NEED_DATA, ServerConnection
from smtpfront.core.events import Helo, Noop, Rejected, Rset
from smtpfront.core.options import Features
from smtpfront.core.states import COMMAND_STATES, COMMANDS, Flag, State


def test_every_verb_is_allowed_somewhere_and_refused_elsewhere_with_a_5xx() -> None:
    for command in COMMANDS.values():
        assert command.allowed and command.allowed <= COMMAND_STATES, command.verb
        for state in COMMAND_STATES - command.allowed:
            reply = command.refusal(state)
            assert 500 <= reply.code < 600 and reply.enhanced, (command.verb, state)


@pytest.mark.parametrize(("verb", "helloed", "target"), [
    ("HELO", False, State.IDLE), ("EHLO", True, State.IDLE), ("LHLO", False, State.IDLE),
    ("MAIL", True, State.MAIL), ("RCPT", True, State.RCPT), ("DATA", True, State.DATA),
    ("RSET", False, State.INIT), ("RSET", True, State.IDLE),
    ("NOOP", True, None), ("VRFY", True, None), ("HELP", False, None), ("XFORWARD", True, None),
    ("QUIT", True, State.CLOSED), ("STARTTLS", True, State.STARTTLS), ("AUTH", True, State.IDLE),
    ("XCLIENT", True, State.INIT), ("BDAT", True, None),
])
def test_where_a_positive_reply_leads(verb: str, helloed: bool, target: State | None) -> None:
    assert COMMANDS[verb].target(helloed) == target


def test_exchanges_and_the_events_that_are_not_replies_are_rows_too() -> None:
    assert (S.SASL_EXCHANGE, S.CHUNK_OCTETS) == (State.AUTH, State.BDAT)
    assert (S.AFTER_PROXY, S.AFTER_GREETING, S.AFTER_TLS, S.AFTER_SASL) == (
        State.CONNECTED, State.INIT, State.INIT, State.IDLE)
    assert (S.AFTER_MESSAGE, S.AFTER_CHUNK, S.AFTER_RESET) == (State.IDLE, State.BDAT_WAIT, State.IDLE)
    assert COMMANDS["DATA"].flags & Flag.LAST and COMMANDS["STARTTLS"].flags & Flag.LAST


def test_the_session_follows_the_table_for_rset_before_and_after_hello() -> None:
    conn = ServerConnection()
    conn.send(conn.greeting_reply())
    assert conn.state is S.AFTER_GREETING
    conn.receive_data(b"RSET\r\n")
    assert isinstance(conn.next_event(), Rset)
    conn.send(R.RESET_OK)
    assert conn.state is COMMANDS["RSET"].target(False) is State.INIT  # no HELO yet: still INIT
    conn.receive_data(b"EHLO c.example\r\n")
    helo = conn.next_event()
    assert isinstance(helo, Helo)
    conn.send(conn.hello_reply(helo))
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    conn.next_event()
    conn.send(R.SENDER_OK)
    assert conn.state is State.MAIL
    conn.receive_data(b"RSET\r\n")
    conn.next_event()
    conn.send(R.RESET_OK)
    assert conn.state is COMMANDS["RSET"].target(True) is State.IDLE
    assert conn.next_event() is NEED_DATA


def test_a_refused_command_changes_nothing() -> None:
    conn = ServerConnection(features=Features(), )
    conn.send(conn.greeting_reply())
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    assert conn.state is State.INIT
    assert conn.data_to_send().endswith(COMMANDS["DATA"].refusal(State.INIT).encode(False))


def test_every_verb_row_names_a_handler_of_its_own_and_the_awaited_rows_read_nothing() -> None:
    from smtpfront.core.verbs import Handler

    for command in COMMANDS.values():
        assert type(command.handler) is not Handler, command.verb
    for awaited in (S.BODY_REPLY, S.SCRAM_SECRET):
        assert type(awaited.handler) is Handler and not awaited.allowed
        with pytest.raises(AssertionError):
            awaited.handler.read(ServerConnection(), awaited, "")


def test_only_bdat_reads_its_octets_before_the_table_allows_it() -> None:
    assert [c.verb for c in COMMANDS.values() if c.flags & Flag.OCTETS_FOLLOW] == ["BDAT"]
    conn = ServerConnection(features=Features(chunking=True))
    conn.send(conn.greeting_reply())
    conn.receive_data(b"EHLO c.example\r\n")
    helo = conn.next_event()
    assert isinstance(helo, Helo)
    conn.send(conn.hello_reply(helo))
    conn.receive_data(b"BDAT 3\r\nabcNOOP\r\n")  # no transaction: the 3 octets are read, then refused
    rejected = conn.next_event()
    assert isinstance(rejected, Rejected) and rejected.reply == COMMANDS["BDAT"].refusal(State.IDLE)
    assert conn.state is State.IDLE
    assert conn.next_event() == Noop()  # the chunk's octets were not read as a command


def test_a_positive_reply_applies_the_rows_handler_and_a_negative_one_does_not() -> None:
    conn = ServerConnection()
    conn.send(conn.greeting_reply())
    conn.receive_data(b"EHLO c.example\r\n")
    helo = conn.next_event()
    assert isinstance(helo, Helo) and conn.helo is None  # read: pending until the reply
    conn.send(conn.hello_reply(helo))
    assert (conn.helo, conn.esmtp) == ("c.example", True)
    conn.receive_data(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    conn.next_event()
    conn.send(R.Reply(451, "4.3.0", "try later"))
    assert conn.state is State.IDLE and not conn.smtputf8
    conn.receive_data(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    conn.next_event()
    conn.send(R.SENDER_OK)
    assert conn.state is State.MAIL and conn.smtputf8
