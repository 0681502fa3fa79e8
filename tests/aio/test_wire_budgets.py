"""Session budgets on the wire (ARCHITECTURE.md rule 6: N-1, N, N+1): ``limits.idle_commands``
(RSET/NOOP/VRFY/HELP in a row without a transaction), ``limits.session_duration`` (the next
command past it) and ``limits.messages_per_session`` (421 after the last accepted message)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from smtpfront.config import LimitsConfig
from smtpfront.server import SMTPServer

from .conftest import Client, StartServer, send_message

N = 4


def budget(**changes: object) -> Callable[[SMTPServer], None]:
    def setup(server: SMTPServer) -> None:
        server.with_settings(**changes)

    return setup


@pytest.mark.parametrize("sent", [N - 1, N])
def test_idle_commands_up_to_the_budget_are_answered(start_server: StartServer, sent: int) -> None:
    server = start_server(setup=budget(idle_commands=N))
    with Client(server.port) as c:
        c.greet()  # EHLO is one
        for verb in (["NOOP", "RSET", "HELP", "VRFY someone"] * N)[:sent - 1]:
            assert c.cmd(verb).code in (250, 214, 252)
        assert send_message(c).code == 250  # MAIL ends the run: the budget starts again
        for _ in range(N):
            assert c.cmd("NOOP").code == 250
    server.wait_for(1)


def test_one_idle_command_past_the_budget_closes_the_session(start_server: StartServer) -> None:
    server = start_server(setup=budget(idle_commands=N))
    with Client(server.port) as c:
        c.greet()
        for _ in range(N - 1):
            assert c.cmd("RSET").code == 250
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (421, "4.7.0") and "without a transaction" in r.text
        assert c.closed()


def test_repeated_ehlo_is_idle_too(start_server: StartServer) -> None:
    server = start_server(setup=budget(idle_commands=N))
    with Client(server.port) as c:
        c.expect(220)
        for _ in range(N):
            assert c.ehlo().code == 250
        r = c.cmd("EHLO client.test")
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert c.closed()


def test_the_default_is_postfix_junk_command_limit() -> None:
    assert LimitsConfig().idle_commands == 100 and LimitsConfig().messages_per_session == 0


@pytest.mark.parametrize("messages", [N - 1, N, N + 1])
def test_messages_per_session(start_server: StartServer, messages: int) -> None:
    server = start_server(setup=budget(messages_per_session=N))
    with Client(server.port) as c:
        c.greet()
        for i in range(min(messages, N)):
            assert send_message(c).code == 250, i
        if messages < N:
            assert c.cmd("NOOP").code == 250  # under the budget: the session goes on
        else:
            r = c.reply()  # unsolicited, right after the N-th message's 250
            assert (r.code, r.enhanced) == (421, "4.7.0") and "too many messages" in r.text
            assert c.closed()
    server.wait_for(min(messages, N))


def test_session_duration(start_server: StartServer) -> None:
    server = start_server(setup=budget(session_duration=1.0))
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("NOOP").code == 250  # well inside the budget
        assert send_message(c).code == 250
        time.sleep(1.3)
        r = c.cmd("MAIL FROM:<a@client.test>")
        assert (r.code, r.enhanced) == (421, "4.4.2") and "time limit" in r.text
        assert c.closed()
    with Client(server.port) as c:
        c.greet()
        time.sleep(1.3)
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (421, "4.4.2")
        assert c.closed()
    server.wait_for(1)
