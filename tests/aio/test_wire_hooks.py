"""Hooks, plugins, middleware and listeners, seen from a real client."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable

import pytest

from smtpfront.config import TimeoutsConfig
from smtpfront.core.events import Address, MailParams, RcptParams, SaslCredentials
from smtpfront.core.replies import Reply
from smtpfront.hooks import CommandContext, Hooks, IncomingMessage, Reject, Session
from smtpfront.server import SMTPServer
from smtpfront.sink.base import Envelope

from .conftest import Client, Running, StartServer, send_message

# -- on_connect -----------------------------------------------------------------------------


class Gate(Hooks):
    def __init__(self, verdict: str) -> None:
        self.verdict = verdict
        self.sessions: list[tuple[str, int]] = []

    async def on_connect(self, session: Session) -> Reply | None:
        self.sessions.append((session.client_address, session.client_port))
        if self.verdict == "reply":
            return Reply(554, "5.7.1", "No SMTP service here")
        if self.verdict == "raise":
            raise Reject(421, "4.7.0", "Come back later")
        return None


def test_on_connect_accepts(start_server: StartServer) -> None:
    hooks = Gate("accept")
    server = start_server(hooks)
    with Client(server.port) as c:
        c.greet()
        local_port = c.sock.getsockname()[1]
        assert send_message(c).code == 250
    assert hooks.sessions == [("127.0.0.1", local_port)]


@pytest.mark.parametrize(("verdict", "raw"), [
    ("reply", b"554 No SMTP service here\r\n"),
    ("raise", b"421 Come back later\r\n"),
])
def test_on_connect_refuses(start_server: StartServer, verdict: str, raw: bytes) -> None:
    server = start_server(Gate(verdict))
    with Client(server.port) as c:
        # A refusal before EHLO carries no enhanced code (RFC 2034).
        assert c.reply().raw == raw
        assert c.closed()


# -- on_secure -----------------------------------------------------------------------------


class TlsGate(Hooks):
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.facts: list[dict[str, str]] = []

    async def on_secure(self, session: Session) -> Reply | None:
        assert session.tls is not None
        self.facts.append(dict(session.tls))
        return Reply(554, "5.7.1", "Cipher not good enough") if self.refuse else None


def test_on_secure_after_starttls(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    hooks = TlsGate(refuse=False)
    server = start_server(hooks)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("STARTTLS").code == 220
        c.starttls(client_context)
        c.ehlo()
        assert send_message(c).code == 250
    assert len(hooks.facts) == 1 and hooks.facts[0]["version"].startswith("TLSv1.")


def test_on_secure_refuses_after_starttls(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    server = start_server(TlsGate(refuse=True))
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("STARTTLS").code == 220
        c.starttls(client_context)
        r = c.reply()
        assert r.code == 421 and r.text.endswith("Cipher not good enough")
        assert c.closed()


def test_on_secure_refuses_implicit_tls(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    import socket

    from .conftest import HOSTNAME, TIMEOUT

    server = start_server(TlsGate(refuse=True), secure=True)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    with Client(server.port, sock=client_context.wrap_socket(raw, server_hostname=HOSTNAME)) as c:
        assert c.reply().raw == b"554 Cipher not good enough\r\n"
        assert c.closed()


# -- on_helo, on_auth -------------------------------------------------------------------------


class HeloCheck(Hooks):
    async def on_helo(self, session: Session, hostname: str) -> Reply | None:
        if hostname == "localhost":
            return Reply(550, "5.7.1", "You are not me")
        if hostname == "slow.example":
            raise Reject(450, "4.7.1", "Try again")
        return None


def test_on_helo(start_server: StartServer) -> None:
    server = start_server(HeloCheck())
    with Client(server.port) as c:
        c.expect(220)
        assert c.cmd("EHLO localhost").raw == b"550 You are not me\r\n"
        assert c.cmd("HELO slow.example").raw == b"450 Try again\r\n"
        assert c.cmd("MAIL FROM:<a@client.test>").code == 503  # no HELO was accepted
        assert c.ehlo("good.example").code == 250
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    assert message.envelope.helo == "good.example"


class AuthDecides(Hooks):
    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool | Reply | None:
        if credentials.username == "locked":
            return Reply(535, "5.7.8", "Account locked")
        if credentials.username == "flaky":
            raise Reject(454, "4.7.0", "Temporary authentication failure")
        return credentials.password == "pw"


def test_on_auth_replies(start_server: StartServer) -> None:
    import base64

    server = start_server(AuthDecides(), auth_methods=["PLAIN"], allow_insecure_auth=True, tls=False)

    def plain(user: str, pw: str) -> str:
        return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode()).decode()

    with Client(server.port) as c:
        c.greet()
        assert c.cmd(plain("locked", "pw")).raw == b"535 5.7.8 Account locked\r\n"
        assert c.cmd(plain("flaky", "pw")).raw == b"454 4.7.0 Temporary authentication failure\r\n"
        assert c.cmd(plain("ok", "pw")).code == 235


# -- on_mail_from, on_rcpt_to: accept, refuse, rewrite ---------------------------------------


class Envelopes(Hooks):
    async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> Reply | Address | None:
        if address.domain == "spam.test":
            return Reply(550, "5.7.1", "Sender blocked")
        if address.domain == "grey.test":
            raise Reject(451, "4.7.1", "Greylisted")
        if address.local_part == "alias":
            return Address("owner", address.domain)
        return None

    async def on_rcpt_to(self, session: Session, address: Address, params: RcptParams) -> Reply | Address | None:
        if address.domain != "mx.test":
            raise Reject(550, "5.7.1", "Relaying denied")
        if address.local_part == "postmaster":
            return Address("admin", "mx.test")
        return None


def test_mail_and_rcpt_hooks(start_server: StartServer) -> None:
    server = start_server(Envelopes())
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<x@spam.test>").raw == b"550 5.7.1 Sender blocked\r\n"
        assert c.cmd("MAIL FROM:<x@grey.test>").raw == b"451 4.7.1 Greylisted\r\n"
        assert c.cmd("MAIL FROM:<alias@client.test>").code == 250
        assert c.cmd("RCPT TO:<someone@elsewhere.test>").raw == b"550 5.7.1 Relaying denied\r\n"
        assert c.cmd("RCPT TO:<postmaster@mx.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: rewrite\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    [message] = server.wait_for(1)
    env = message.envelope
    assert str(env.mail_from) == "owner@client.test"
    assert [str(r.address) for r in env.recipients] == ["admin@mx.test", "b@mx.test"]


# -- on_data_start, on_data -----------------------------------------------------------------------


class Content(Hooks):
    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.sizes: list[int] = []

    async def on_data_start(self, session: Session) -> Reply | None:
        if str(session.mail_from) == "nodata@client.test":
            return Reply(554, "5.7.1", "No body from you")
        session.add_header("X-Scanned", "yes; by=test")
        return None

    async def on_data(self, session: Session, message: IncomingMessage) -> Reply | None:
        seen = b""
        async for chunk in message:
            self.chunks.append(len(chunk))
            seen += chunk
        self.sizes.append(message.size)
        assert message.size == len(seen)
        if b"VIAGRA" in seen:
            return Reply(550, "5.7.1", "Message refused as spam")
        if b"tempfail" in seen:
            raise Reject(451, "4.7.1", "Scanner busy")
        return None


def test_on_data_start_adds_a_header_and_can_refuse(start_server: StartServer) -> None:
    hooks = Content()
    server = start_server(hooks)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<nodata@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        assert c.cmd("DATA").raw == b"554 5.7.1 No body from you\r\n"
        assert c.cmd("RSET").code == 250
        assert send_message(c).code == 250
    [message] = server.wait_for(1)
    received, rest = message.body.split(b"\r\nX-Scanned: ", 1)
    assert received.startswith(b"Received: ")
    assert rest.startswith(b"yes; by=test\r\nSubject: hi\r\n")


def test_on_data_start_refuses_bdat(start_server: StartServer) -> None:
    server = start_server(Content())
    with Client(server.port) as c:
        c.greet()
        c.send(b"MAIL FROM:<nodata@client.test>\r\nRCPT TO:<b@mx.test>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde")
        replies = [c.reply() for _ in range(4)]
        # The refusal answers the first chunk; the transaction is over, so the next chunk
        # is consumed and refused as out of sequence.
        assert [(r.code, r.enhanced) for r in replies] == [(250, "2.1.0"), (250, "2.1.5"), (554, "5.7.1"),
                                                           (503, "5.5.1")]
        assert c.cmd("NOOP").code == 250
    assert server.sink.messages == []


class Slow(Hooks):
    async def on_rcpt_to(self, session: Session, address: Address, params: RcptParams) -> None:
        if address.local_part == "slow":
            await asyncio.sleep(2)


def test_hook_timeout(start_server: StartServer) -> None:
    def setup(server: SMTPServer) -> None:
        server.with_settings(timeouts=TimeoutsConfig(hook=0.2))

    server = start_server(Slow(), setup=setup)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        r = c.cmd("RCPT TO:<slow@mx.test>")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        assert c.cmd("RCPT TO:<fast@mx.test>").code == 250


def test_closed_sink_refuses_data(server: Running) -> None:
    server.sink.closed = True
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").code == 250
        r = c.cmd("DATA")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        assert c.cmd("NOOP").code == 250


def test_on_data_streams_chunks(start_server: StartServer) -> None:
    hooks = Content()
    server = start_server(hooks)
    body = b"Subject: big\r\n\r\n" + b"".join(b"line %06d of a long message\r\n" % i for i in range(20000))
    with Client(server.port) as c:
        c.greet()
        assert send_message(c, body=body).code == 250
    [message] = server.wait_for(1)
    assert hooks.sizes == [len(body)]
    assert sum(hooks.chunks) == len(body)
    assert len(hooks.chunks) > 1  # it arrived in pieces, as the client sent it
    assert message.body.endswith(body)


@pytest.mark.parametrize(("text", "raw"), [
    (b"buy VIAGRA now", b"550 5.7.1 Message refused as spam\r\n"),
    (b"please tempfail", b"451 4.7.1 Scanner busy\r\n"),
])
def test_on_data_refuses(start_server: StartServer, text: bytes, raw: bytes) -> None:
    server = start_server(Content())
    with Client(server.port) as c:
        c.greet()
        assert send_message(c, body=b"Subject: x\r\n\r\n" + text + b"\r\n").raw == raw
        assert send_message(c).code == 250  # the next one goes through
    server.wait_for(1)
    assert len(server.sink.messages) == 1 and server.sink.aborted == 1


def test_on_data_with_bdat(start_server: StartServer) -> None:
    hooks = Content()
    server = start_server(hooks)
    with Client(server.port) as c:
        c.greet()
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nBDAT 6\r\nVIAGRABDAT 0 LAST\r\n")
        replies = [c.reply() for _ in range(4)]
        assert [r.code for r in replies] == [250, 250, 250, 550]
    assert server.sink.messages == []
    assert hooks.sizes == [6]


class SlowReader(Hooks):
    def __init__(self) -> None:
        self.total = 0

    async def on_data(self, session: Session, message: IncomingMessage) -> None:
        async for chunk in message:
            self.total += len(chunk)
            await asyncio.sleep(0.001)  # a slow scanner: the client is paused, not buffered


def test_slow_on_data_consumer_applies_backpressure(start_server: StartServer) -> None:
    hooks = SlowReader()

    def setup(server: SMTPServer) -> None:
        server.with_settings(body_stream_limit=16 * 1024)

    server = start_server(hooks, setup=setup)
    body = b"Subject: slow\r\n\r\n" + (b"y" * 78 + b"\r\n") * 25000  # 2 MB
    with Client(server.port) as c:
        c.greet()
        assert send_message(c, body=body).code == 250
    [message] = server.wait_for(1)
    assert hooks.total == len(body)
    assert message.body.endswith(body)


# -- on_close ------------------------------------------------------------------------------------------


class Closing(Hooks):
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.event = threading.Event()

    async def on_close(self, session: Session) -> None:
        self.closed.append(session.helo or "")
        self.event.set()


def test_on_close_after_quit_and_after_reset(start_server: StartServer) -> None:
    hooks = Closing()
    server = start_server(hooks)
    with Client(server.port) as c:
        c.greet("quitter.example")
        c.cmd("QUIT")
    assert hooks.event.wait(5)
    hooks.event.clear()
    c = Client(server.port)
    c.greet("dropper.example")
    c.close()
    assert hooks.event.wait(5)
    assert hooks.closed == ["quitter.example", "dropper.example"]


# -- plugins -------------------------------------------------------------------------------------------


class Recorder(Hooks):
    def __init__(self, label: str, calls: list[str], decide: bool = False) -> None:
        self.label = label
        self.calls = calls
        self.decide = decide

    async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> Reply | None:
        self.calls.append(self.label)
        if self.decide and address.local_part == "stop":
            return Reply(550, "5.7.1", f"Refused by {self.label}")
        return None


def test_plugins_are_asked_in_before_after_order(start_server: StartServer) -> None:
    calls: list[str] = []

    def setup(server: SMTPServer) -> None:
        server.use(Recorder("spam", calls), name="spam")
        server.use(Recorder("auth", calls, decide=True), name="auth", before=["spam"])
        server.use(Recorder("log", calls), name="log", after=["spam"])

    server = start_server(setup=setup)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert calls == ["auth", "spam", "log"]
        calls.clear()
        assert c.cmd("RSET").code == 250
        # The first plugin that decides wins; the others are not asked.
        assert c.cmd("MAIL FROM:<stop@client.test>").raw == b"550 5.7.1 Refused by auth\r\n"
        assert calls == ["auth"]


def test_plugin_order_cycle_is_refused() -> None:
    server = SMTPServer(tls=False, port=0)
    server.use(Recorder("a", []), name="a", before=["b"])
    with pytest.raises(ValueError, match="cycle"):
        server.use(Recorder("b", []), name="b", before=["a"])


# -- middleware -------------------------------------------------------------------------------------


def test_middleware_wraps_commands_and_replaces_replies(start_server: StartServer) -> None:
    verbs: list[str] = []

    async def trace(ctx: CommandContext, call_next: Callable[[], Awaitable[Reply]]) -> Reply:
        verbs.append(ctx.verb)
        return await call_next()

    async def rename(ctx: CommandContext, call_next: Callable[[], Awaitable[Reply]]) -> Reply:
        reply = await call_next()
        if ctx.verb == "RCPT" and reply.code == 250:
            return Reply(250, "2.1.5", f"Recipient {ctx.event.address} OK")  # type: ignore[attr-defined]
        if ctx.verb == "VRFY":
            return Reply(502, "5.5.1", "VRFY disabled by policy")
        return reply

    def setup(server: SMTPServer) -> None:
        server.middleware(trace)
        server.middleware(rename)

    server = start_server(Envelopes(), setup=setup)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("VRFY root").raw == b"502 5.5.1 VRFY disabled by policy\r\n"
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@mx.test>").raw == b"250 2.1.5 Recipient b@mx.test OK\r\n"
        # A hook's refusal passes through the middleware untouched.
        assert c.cmd("RCPT TO:<b@elsewhere.test>").raw == b"550 5.7.1 Relaying denied\r\n"
        assert c.cmd("DATA").code == 354
        c.send(b"x\r\n.\r\n")
        assert c.reply().code == 250
        c.cmd("QUIT")
    assert verbs == ["CONNECT", "EHLO", "VRFY", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    server.wait_for(1)


def test_middleware_can_refuse_before_the_hook(start_server: StartServer) -> None:
    asked: list[str] = []

    class Asked(Hooks):
        async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> None:
            asked.append(str(address))

    async def block(ctx: CommandContext, call_next: Callable[[], Awaitable[Reply]]) -> Reply:
        if ctx.verb == "MAIL" and "blocked" in str(ctx.event):
            raise Reject(550, "5.7.1", "Blocked by middleware")
        return await call_next()

    def setup(server: SMTPServer) -> None:
        server.middleware(block)

    server = start_server(Asked(), setup=setup)
    with Client(server.port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<blocked@client.test>").raw == b"550 5.7.1 Blocked by middleware\r\n"
        assert c.cmd("MAIL FROM:<fine@client.test>").code == 250
    assert asked == ["fine@client.test"]


# -- listeners -------------------------------------------------------------------------------------


def test_mail_listener_and_a_failing_listener(start_server: StartServer) -> None:
    delivered: list[tuple[str, str]] = []
    done = threading.Event()

    def broken(session: Session, envelope: Envelope, queue_id: str) -> None:
        raise RuntimeError("listener bug")

    async def record(session: Session, envelope: Envelope, queue_id: str) -> None:
        await asyncio.sleep(0)
        delivered.append((str(envelope.mail_from), queue_id))
        done.set()

    def setup(server: SMTPServer) -> None:
        server.on("mail", broken)
        server.on("mail", record)

    server = start_server(setup=setup)
    server.expect_errors = True  # the broken listener's traceback is logged
    with Client(server.port) as c:
        c.greet()
        reply = send_message(c)
        assert reply.code == 250
        assert done.wait(5)
        assert send_message(c).code == 250  # the session is unaffected
    [first, _] = server.wait_for(2)
    assert delivered[0] == ("a@client.test", first.queue_id)
    assert reply.text.endswith(first.queue_id)


def test_reject_and_close_listeners(start_server: StartServer) -> None:
    rejected: list[int] = []
    closed = threading.Event()

    def setup(server: SMTPServer) -> None:
        server.on("reject", lambda session, reply: rejected.append(reply.code))
        server.on("close", lambda session: closed.set())

    server = start_server(Envelopes(), setup=setup)
    with Client(server.port) as c:
        c.greet()
        c.cmd("MAIL FROM:<x@spam.test>")
        c.cmd("BOGUS")
        c.cmd("QUIT")
    assert closed.wait(5)
    assert rejected == [550, 500]


def test_unknown_listener_event() -> None:
    server = SMTPServer(tls=False, port=0)
    with pytest.raises(ValueError, match="unknown event"):
        server.on("delivered", print)


# -- hooks are explicit ------------------------------------------------------------------------------


def test_misspelt_hook_is_an_error() -> None:
    class Typo(Hooks):
        async def on_mial_from(self, session: Session, address: Address, params: MailParams) -> None:
            return None

    server = SMTPServer(tls=False, port=0)
    with pytest.raises(ValueError, match="on_mial_from is not a hook"):
        server.use(Typo())
    with pytest.raises(ValueError, match="on_mial_from"):
        SMTPServer(Typo(), tls=False, port=0)


def test_sync_hook_is_an_error() -> None:
    class Sync(Hooks):
        def on_mail_from(self, session: Session, address: Address,  # type: ignore[override]
                         params: MailParams) -> None:
            return None

    with pytest.raises(TypeError, match="async def"):
        SMTPServer(tls=False, port=0).use(Sync())


def test_server_is_usable_after_hook_errors(server: Running) -> None:
    with Client(server.port) as c:
        c.greet()
        assert send_message(c).code == 250
