"""Session logs on the wire: one JSON line per session event, credentials never written."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import smtplib
from collections.abc import Callable
from typing import Any

import orjson

from smtpfront import Hooks, SMTPServer
from smtpfront.core.events import SaslCredentials
from smtpfront.hooks import Session
from smtpfront.logs import setup_logging
from smtpfront.sink.memory import MemorySink

SECRET = "correct horse battery staple"


class Users(Hooks):
    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool:
        return credentials.username == "alice" and credentials.password == SECRET


def logged_session(level: str, client: Callable[[int], None]) -> tuple[str, list[dict[str, Any]]]:
    """Run ``client(port)`` against a server whose logs go to a string: (text, JSON records)."""
    stream = io.StringIO()
    logger = logging.getLogger("smtpfront")
    saved = (logger.propagate, logger.level, list(logger.handlers))
    setup_logging(level, json=True, stream=stream)
    try:
        async def main() -> None:
            async with SMTPServer(Users(), port=0, sink=MemorySink(), tls=False, auth_methods=["PLAIN"],
                                  allow_insecure_auth=True, auth_failure_delay=0) as server:
                await asyncio.get_running_loop().run_in_executor(None, client, server.port)
                await asyncio.sleep(0.1)  # listeners run after the replies

        asyncio.run(main())
    finally:
        logger.propagate, logger.level, logger.handlers[:] = saved[0], saved[1], saved[2]
    text = stream.getvalue()
    return text, [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_session_events_are_logged_as_json_without_credentials() -> None:
    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.example")
            smtp.login("alice", SECRET)  # AUTH PLAIN with the password base64-encoded on the wire
            smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: log\r\n\r\nx\r\n")
            with contextlib.suppress(smtplib.SMTPException):
                smtp.rcpt("not an address")

    text, records = logged_session("INFO", client)
    events = [r["msg"] for r in records if r.get("logger") == "smtpfront.session"]
    for name in ("connect", "helo", "auth", "queued", "reject", "session"):
        assert name in events, (name, events)
    session_ids = {r["session"] for r in records if r.get("logger") == "smtpfront.session"}
    assert len(session_ids) == 1
    queued = next(r for r in records if r.get("msg") == "queued")
    assert queued["mail_from"] == "alice@example.org" and queued["recipients"] == 1 and queued["size"] > 0
    plain_blob = base64.b64encode(b"\0alice\0" + SECRET.encode()).decode()  # what AUTH PLAIN sent
    assert SECRET not in text and plain_blob not in text
    by_name = {r["msg"]: r for r in records if r.get("logger") == "smtpfront.session"}
    assert by_name["connect"]["local"].startswith("127.0.0.1:")
    assert by_name["connect"]["client"].startswith("127.0.0.1:")
    assert (by_name["helo"]["helo"], by_name["helo"]["esmtp"]) == ("client.example", True)
    assert by_name["auth"]["user"] == "alice"
    assert queued["protocol"] == "ESMTPA" and queued["helo"] == "client.example" and queued["queue_id"]
    reject = by_name["reject"]
    assert (reject["code"], reject["enhanced"]) == (503, "5.5.1") and reject["text"], reject  # RCPT without MAIL
    summary = by_name["session"]
    assert (summary["transactions"], summary["user"], summary["proxied"], summary["tls"]) == (1, "alice", False, None)
    assert all(r["level"] == "INFO" and "ts" in r for r in by_name.values())


def test_debug_logs_one_line_per_command_and_reply() -> None:
    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.example")
            smtp.login("alice", SECRET)
            smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: log\r\n\r\nx\r\n")

    text, records = logged_session("DEBUG", client)
    commands = [r for r in records if r.get("msg") == "command"]
    replies = [r["line"] for r in records if r.get("msg") == "reply"]
    assert [r["event"] for r in commands] == [
        "Helo", "AuthCredentials", "MailFrom", "RcptTo", "Data", "BodyEnd", "Quit"]
    assert commands[2]["address"] == "alice@example.org" and commands[3]["address"] == "bob@example.net"
    assert all(r["level"] == "DEBUG" and r["session"] == commands[0]["session"] for r in commands)
    codes = [line[:3] for line in replies]
    assert codes == ["220", "250", "235", "250", "250", "354", "250", "221"]
    plain_blob = base64.b64encode(b"\0alice\0" + SECRET.encode()).decode()
    assert SECRET not in text and plain_blob not in text
