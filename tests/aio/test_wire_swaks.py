"""End to end with swaks, a real-world SMTP client."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from smtpfront.core.events import SaslCredentials
from smtpfront.hooks import Hooks, Session

from .conftest import Running, StartServer

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")


def swaks(server: Running, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["swaks", "--server", f"127.0.0.1:{server.port}", "--timeout", "10",
               "--from", "sender@client.test", "--to", "rcpt@mx.test", "--helo", "client.test", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_swaks_plain_delivery(server: Running) -> None:
    result = swaks(server, "--header", "Subject: from swaks", "--body", "Hello from swaks.")
    assert result.returncode == 0, result.stdout + result.stderr
    [message] = server.wait_for(1)
    env = message.envelope
    assert str(env.mail_from) == "sender@client.test"
    assert [str(r.address) for r in env.recipients] == ["rcpt@mx.test"]
    assert env.helo == "client.test"
    assert message.body.startswith(b"Received: from client.test ")
    assert b"Subject: from swaks\r\n" in message.body
    assert b"\r\n\r\nHello from swaks.\r\n" in message.body


class Password(Hooks):
    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool:
        return (credentials.username, credentials.password) == ("alice", "swordfish")


def test_swaks_starttls_and_auth_plain(start_server: StartServer) -> None:
    server = start_server(Password(), auth_methods=["PLAIN", "LOGIN"])
    result = swaks(server, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "swordfish",
                   "--body", "secret")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert " ~> EHLO client.test" in result.stdout  # the EHLO again, under TLS
    assert "235 2.7.0 Authentication successful" in result.stdout
    [message] = server.wait_for(1)
    assert message.envelope.user == "alice"
    assert message.envelope.tls is not None
    assert message.envelope.protocol == "ESMTPSA"


def test_swaks_wrong_password_fails(start_server: StartServer) -> None:
    server = start_server(Password(), auth_methods=["PLAIN"])
    result = swaks(server, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "guess")
    assert result.returncode != 0
    assert "535 5.7.8" in result.stdout
    assert server.sink.messages == []


def test_swaks_pipelining(server: Running) -> None:
    result = swaks(server, "--pipeline", "--to", "one@mx.test,two@mx.test", "--body", "pipelined")
    assert result.returncode == 0, result.stdout + result.stderr
    [message] = server.wait_for(1)
    assert [str(r.address) for r in message.envelope.recipients] == ["one@mx.test", "two@mx.test"]


def test_swaks_lmtp(start_server: StartServer) -> None:
    server = start_server(lmtp=True, tls=False)
    result = swaks(server, "--protocol", "LMTP", "--body", "via lmtp")
    assert result.returncode == 0, result.stdout + result.stderr
    [message] = server.wait_for(1)
    assert message.envelope.protocol == "LMTP"


def test_swaks_dot_stuffing(server: Running) -> None:
    body = "first\n.\n..two dots\nlast"
    result = swaks(server, "--body", body)
    assert result.returncode == 0, result.stdout + result.stderr
    [message] = server.wait_for(1)
    # swaks stuffs the dots; they arrive unstuffed.
    assert b"\r\n\r\nfirst\r\n.\r\n..two dots\r\nlast\r\n" in message.body
