"""A scripted application over the sans-IO core, for transcript replays.

``run_session(client_bytes, chunks, options)`` feeds the client's bytes in the given
chunks, answers every event the way a small, predictable application would, and returns
a log: ``E:`` lines for events, ``S:`` lines for what the server wrote, ``X:`` for the
end of the session. The log must not depend on how the bytes were chunked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from smtpfront.core import replies as R
from smtpfront.core.connection import NEED_DATA, PAUSED, ServerConnection
from smtpfront.core.errors import RemoteProtocolError
from smtpfront.core.events import (
    AuthCredentials,
    AuthSecretNeeded,
    BdatChunk,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    Data,
    Event,
    Helo,
    Help,
    MailFrom,
    Noop,
    ProxyHeader,
    Quit,
    RcptTo,
    Rejected,
    Rset,
    StartTls,
    Vrfy,
    Xclient,
    Xforward,
)
from smtpfront.core.options import Features, Limits, Policies
from smtpfront.core.replies import Reply
from smtpfront.core.sasl import scram_secret_from_password, verify_cram_md5

PASSWORD = "secret"
SCRAM = scram_secret_from_password(PASSWORD, salt=b"0123456789abcdef", iterations=4096)


def make_connection(options: dict[str, str]) -> ServerConnection:
    """Build a connection from ``# options:`` key=value pairs."""
    features = Features(
        lmtp=options.get("lmtp") == "1",
        starttls=options.get("starttls") == "1",
        auth_mechanisms=tuple(m for m in options.get("auth", "").split(",") if m),
        xclient=options.get("xclient") == "1",
        xforward=options.get("xforward") == "1",
        pipelining=options.get("pipelining", "1") == "1",
        chunking=options.get("chunking", "1") == "1",
        dsn=options.get("dsn", "1") == "1",
        smtputf8=options.get("smtputf8", "1") == "1",
        requiretls=options.get("requiretls") == "1",
    )
    limits = Limits(
        max_message_size=int(options.get("max_size", 1000)),
        max_recipients=int(options.get("max_recipients", 100)),
        max_errors=int(options.get("max_errors", 10)),
        max_auth_failures=int(options.get("max_auth_failures", 3)),
    )
    policies = Policies(
        bare_line_endings=options.get("bare", "reject"),  # type: ignore[arg-type]
        long_lines=options.get("long_lines", "accept"),  # type: ignore[arg-type]
        unauthorized_pipelining=options.get("sync", "accept"),  # type: ignore[arg-type]
        early_talkers=options.get("early", "reject"),  # type: ignore[arg-type]
    )
    return ServerConnection(
        hostname="mx.example",
        features=features,
        limits=limits,
        policies=policies,
        expect_proxy=options.get("proxy") == "1",
        tls_active=options.get("tls") == "1",
        require_tls=options.get("require_tls") == "1",
        require_auth=options.get("require_auth") == "1",
        auth_requires_tls=options.get("auth_requires_tls", "1") == "1",
        sasl_nonce="fixednonce",
    )


class ScriptedApp:
    """Answers events predictably and logs what happens."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.log: list[str] = []
        self.body = bytearray()
        self.done = False
        self.greeted = False

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            text = out.decode("utf-8", "replace")
            self.log.extend("S: " + line for line in text.split("\r\n")[:-1])

    def greet(self) -> None:
        self.conn.send(self.conn.greeting_reply())
        self.greeted = True
        self.flush()

    def pump(self) -> None:
        """Handle events until the core needs data or the session is over."""
        while not self.done:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                self.flush()
                self.log.append(f"X: fatal {exc.reply.code} {exc.reply.enhanced}")
                self.done = True
                return
            if event is NEED_DATA:
                break
            assert event is not PAUSED, "the scripted app always answers at once"
            assert isinstance(event, Event)
            self.handle(event)
            self.flush()
            if self.conn.closing:
                self.log.append("X: closed")
                self.done = True

    def reply(self, reply: Reply) -> None:
        self.conn.send(reply)

    def handle(self, event: Event) -> None:
        conn = self.conn
        if isinstance(event, BodyChunk):
            self.body += event.data
            return
        if isinstance(event, BodyEnd) and event.error is not None:
            # How much was streamed before the limit tripped depends on packet boundaries;
            # what must hold is that nothing past the size limit was ever delivered.
            assert len(self.body) <= conn.limits.max_message_size
            self.body = bytearray(b"<refused>")
        self.log.append("E: " + describe(event, self.body))
        if isinstance(event, ProxyHeader):
            self.greet()
        elif isinstance(event, Helo):
            self.reply(conn.hello_reply(event))
        elif isinstance(event, MailFrom):
            if event.address.local_part == "tempfail":
                self.reply(Reply(451, "4.3.0", "Try again"))
            else:
                self.reply(R.SENDER_OK)
        elif isinstance(event, RcptTo):
            if event.address.local_part.startswith("reject"):
                self.reply(Reply(550, "5.1.1", "No such user"))
            else:
                self.reply(R.RECIPIENT_OK)
        elif isinstance(event, Data):
            self.reply(R.START_DATA)
        elif isinstance(event, BdatChunk):
            if event.first:
                self.body.clear()
        elif isinstance(event, BodyEnd):
            due = conn.replies_due
            if event.error is not None:
                for _ in range(due):
                    self.reply(event.error)
            elif not event.last:
                self.reply(Reply(250, "2.0.0", f"{event.size} octets received"))
            else:
                for i in range(due):
                    self.reply(Reply(250, "2.0.0", f"Ok: queued as Q{i}"))
            if event.last or event.error:
                self.body.clear()
        elif isinstance(event, Rset):
            self.reply(R.RESET_OK)
        elif isinstance(event, Noop):
            self.reply(R.NOOP_OK)
        elif isinstance(event, Quit):
            self.reply(R.BYE)
        elif isinstance(event, Vrfy):
            self.reply(R.VRFY_CANNOT)
        elif isinstance(event, Help):
            self.reply(R.HELP)
        elif isinstance(event, StartTls):
            self.reply(R.READY_TO_START_TLS)
            conn.tls_established()
        elif isinstance(event, AuthSecretNeeded):
            conn.supply_scram_secret(SCRAM if event.username == "user" else None)
            self.flush()
        elif isinstance(event, AuthCredentials):
            self.reply(R.AUTH_OK if verified(event) else R.AUTH_FAILED)
        elif isinstance(event, Xclient):
            self.reply(Reply(220, None, "mx.example ESMTP smtpfront"))
        elif isinstance(event, Xforward):
            self.reply(R.OK)
        elif isinstance(event, ConnectionClosed):
            self.done = True
        elif isinstance(event, Rejected):
            pass
        else:  # pragma: no cover - a new event type needs a branch here
            raise AssertionError(f"unhandled event {event!r}")


def verified(event: AuthCredentials) -> bool:
    """The scripted user database: user "user" with password "secret"."""
    c = event.credentials
    if c.username != "user":
        return False
    if c.password is not None:
        return c.password == PASSWORD
    if c.challenge is not None and c.response is not None:
        return verify_cram_md5(PASSWORD, c.challenge, c.response)
    if c.token is not None:
        return c.token == "token-" + PASSWORD
    return bool(c.verified)


def describe(event: Event, body: bytearray) -> str:
    """One stable line per event."""
    name = type(event).__name__
    if isinstance(event, BodyEnd):
        digest = hashlib.sha256(body).hexdigest()[:16]
        shown = repr(bytes(body)) if len(body) <= 120 else f"sha256:{digest}"
        error = f"{event.error.code} {event.error.enhanced}" if event.error else "-"
        return f"{name} size={event.size} last={event.last} error={error} body={shown}"
    if isinstance(event, Rejected):
        return f"{name} {event.verb or '?'} {event.reply.code} {event.reply.enhanced}"
    if isinstance(event, AuthCredentials):
        c = event.credentials
        return f"{name} {c.mechanism} user={c.username!r} authzid={c.authzid!r}"
    fields = getattr(event, "__dataclass_fields__", {})
    parts = [f"{k}={getattr(event, k)!r}" for k in fields]
    return " ".join([name, *parts])


def run_session(data: bytes, chunks: Iterable[int], options: dict[str, str]) -> list[str]:
    """Replay ``data`` cut into pieces of the given sizes (the last piece takes the rest)."""
    conn = make_connection(options)
    app = ScriptedApp(conn)
    greet_late = options.get("greet") == "late"  # the client talks before the greeting
    if options.get("proxy") != "1" and not greet_late:
        app.greet()
    pos = 0
    for size in chunks:
        if app.done or pos >= len(data):
            break
        conn.receive_data(data[pos : pos + size])
        pos += size
        if greet_late and not app.greeted:
            app.greet()
        app.pump()
    if not app.done:
        conn.receive_data(b"")
        app.pump()
    return app.log
