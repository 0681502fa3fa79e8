"""AUTH on the wire: PLAIN, LOGIN, CRAM-MD5, XOAUTH2, SCRAM-SHA-256, and the policies around them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import smtplib
import socket
import ssl
import threading
from typing import Any

import pytest

from smtpfront.core.events import SaslCredentials
from smtpfront.core.sasl import ScramSecret, scram_secret_from_password, verify_cram_md5
from smtpfront.hooks import Hooks, Session

from .conftest import HOSTNAME, TIMEOUT, Client, Running, StartServer, send_message

MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "SCRAM-SHA-256"]
PASSWORDS = {"alice": "correct horse", "bob@example.test": "b0b's password", "carol": "pässwörd"}
TOKENS = {"alice": "ya29.token-for-alice"}
SECRETS = {user: scram_secret_from_password(pw) for user, pw in PASSWORDS.items()}


class Accounts(Hooks):
    """Checks credentials the way an application would, per mechanism."""

    def __init__(self) -> None:
        self.seen: list[SaslCredentials] = []

    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool:
        self.seen.append(credentials)
        user = credentials.username
        match credentials.mechanism:
            case "PLAIN" | "LOGIN":
                return PASSWORDS.get(user) == credentials.password
            case "CRAM-MD5":
                assert credentials.challenge is not None and credentials.response is not None
                return user in PASSWORDS and verify_cram_md5(PASSWORDS[user], credentials.challenge,
                                                             credentials.response)
            case "XOAUTH2":
                return TOKENS.get(user) == credentials.token
            case "SCRAM-SHA-256":
                return credentials.verified is True
        return False

    async def scram_secret(self, session: Session, username: str) -> ScramSecret | None:
        return SECRETS.get(username)


def tls_smtp(server: Running, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=TIMEOUT)
    client.starttls(context=context)
    client.ehlo()
    return client


def tls_client(server: Running, context: ssl.SSLContext) -> Client:
    c = Client(server.port)
    c.greet()
    assert c.cmd("STARTTLS").code == 220
    c.starttls(context)
    reply = c.ehlo()
    assert reply.code == 250
    return c


@pytest.fixture
def auth_server(start_server: StartServer) -> Running:
    return start_server(Accounts(), auth_methods=MECHANISMS)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# -- each mechanism ----------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_smtplib_mechanisms(auth_server: Running, client_context: ssl.SSLContext, mechanism: str) -> None:
    with tls_smtp(auth_server, client_context) as client:
        assert client.esmtp_features["auth"].split() == MECHANISMS
        client.user, client.password = "bob@example.test", PASSWORDS["bob@example.test"]
        method: Any = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login,
                       "CRAM-MD5": client.auth_cram_md5}[mechanism]
        code, text = client.auth(mechanism, method)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        client.ehlo()
        assert "auth" not in client.esmtp_features  # not offered once authenticated
        client.sendmail("bob@example.test", ["c@mx.test"], b"Subject: auth\r\n\r\nx\r\n")
    [message] = auth_server.wait_for(1)
    assert message.envelope.user == "bob@example.test"
    assert message.envelope.protocol == "ESMTPSA"
    assert b"with ESMTPSA id" in message.body


def test_plain_with_initial_response_and_authzid(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        r = c.cmd("AUTH PLAIN " + b64("\0alice\0correct horse"))
        assert (r.code, r.enhanced) == (235, "2.7.0")
        r = c.cmd("AUTH PLAIN " + b64("\0alice\0correct horse"))
        assert (r.code, r.enhanced) == (503, "5.5.1")  # already authenticated


def test_plain_without_initial_response(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        r = c.cmd("AUTH PLAIN")
        assert r.raw == b"334 \r\n"
        r = c.cmd(b64("\0alice\0correct horse"))
        assert (r.code, r.enhanced) == (235, "2.7.0")


def test_login_step_by_step(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334 and base64.b64decode(r.text) == b"Username:"
        r = c.cmd(b64("alice"))
        assert r.code == 334 and base64.b64decode(r.text) == b"Password:"
        r = c.cmd(b64("correct horse"))
        assert (r.code, r.enhanced) == (235, "2.7.0")


def test_auth_cancelled(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        assert c.cmd("AUTH LOGIN").code == 334
        r = c.cmd("*")
        assert (r.code, r.enhanced) == (501, "5.0.0")
        assert c.cmd("NOOP").code == 250


def test_cram_md5_by_hand(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        r = c.cmd("AUTH CRAM-MD5")
        assert r.code == 334
        challenge = base64.b64decode(r.text)
        assert challenge.startswith(b"<") and challenge.endswith(f"@{HOSTNAME}>".encode())
        digest = hmac.new(b"correct horse", challenge, hashlib.md5).hexdigest()
        r = c.cmd(b64(f"alice {digest}"))
        assert (r.code, r.enhanced) == (235, "2.7.0")


def test_xoauth2(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        token = b64(f"user=alice\x01auth=Bearer {TOKENS['alice']}\x01\x01")
        r = c.cmd(f"AUTH XOAUTH2 {token}")
        assert (r.code, r.enhanced) == (235, "2.7.0")
        assert send_message(c, sender="alice@mx.test").code == 250
    [message] = auth_server.wait_for(1)
    assert message.envelope.user == "alice"


def test_xoauth2_bad_token(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        token = b64("user=alice\x01auth=Bearer stolen\x01\x01")
        r = c.cmd(f"AUTH XOAUTH2 {token}")
        assert (r.code, r.enhanced) == (535, "5.7.8")


# -- SCRAM-SHA-256, client side per RFC 5802 ------------------------------------------------


def _h(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def scram_login(c: Client, username: str, password: str) -> tuple[int, str | None, bool]:
    """Run a SCRAM-SHA-256 exchange; returns (final code, enhanced, server signature verified)."""
    client_nonce = secrets.token_urlsafe(18)
    bare = f"n={username.replace('=', '=3D').replace(',', '=2C')},r={client_nonce}"
    r = c.cmd("AUTH SCRAM-SHA-256 " + b64("n,," + bare))
    assert r.code == 334, r
    server_first = base64.b64decode(r.text).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
    assert nonce.startswith(client_nonce) and len(nonce) > len(client_nonce)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = _h(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c={b64('n,,')},r={nonce}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    proof = bytes(a ^ b for a, b in zip(client_key, _h(stored_key, auth_message), strict=True))
    r = c.cmd(b64(f"{without_proof},p={b64(proof)}"))
    if r.code != 334:
        return r.code, r.enhanced, False
    server_final = base64.b64decode(r.text).decode()
    expected = "v=" + b64(_h(_h(salted, b"Server Key"), auth_message))
    verified = hmac.compare_digest(server_final, expected)
    r = c.cmd("")
    return r.code, r.enhanced, verified


def test_scram_sha_256(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        code, enhanced, verified = scram_login(c, "bob@example.test", PASSWORDS["bob@example.test"])
        assert (code, enhanced, verified) == (235, "2.7.0", True)
        assert send_message(c).code == 250
    [message] = auth_server.wait_for(1)
    assert message.envelope.user == "bob@example.test"


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "anything")])
def test_scram_sha_256_refused(auth_server: Running, client_context: ssl.SSLContext, user: str,
                               password: str) -> None:
    with tls_client(auth_server, client_context) as c:
        code, enhanced, verified = scram_login(c, user, password)
        assert (code, enhanced, verified) == (535, "5.7.8", False)


# -- failures and policies ---------------------------------------------------------------------


def test_wrong_password(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_smtp(auth_server, client_context) as client:
        client.user, client.password = "alice", "not it"
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.auth("PLAIN", client.auth_plain)
        assert (info.value.smtp_code, info.value.smtp_error) == (
            535, b"5.7.8 Error: authentication credentials invalid")
        client.password = PASSWORDS["alice"]
        code, _ = client.auth("PLAIN", client.auth_plain)
        assert code == 235  # the session goes on; the right password works


def test_smtplib_login_tries_mechanisms(auth_server: Running, client_context: ssl.SSLContext) -> None:
    # smtplib.login tries CRAM-MD5, PLAIN, LOGIN in turn: three failures end the session.
    client = tls_smtp(auth_server, client_context)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        client.login("alice", "not it")
    assert info.value.smtp_code == 535
    assert client.getreply() == (421, b"4.7.0 Error: too many failed authentication attempts")
    client.close()
    with tls_smtp(auth_server, client_context) as client:
        assert client.login("alice", PASSWORDS["alice"])[0] == 235


def test_utf8_password(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        r = c.cmd("AUTH PLAIN " + b64("\0carol\0pässwörd"))
        assert (r.code, r.enhanced) == (235, "2.7.0")
    with tls_client(auth_server, client_context) as c:
        code, enhanced, verified = scram_login(c, "carol", "pässwörd")
        assert (code, enhanced, verified) == (235, "2.7.0", True)


def test_auth_refused_before_tls(auth_server: Running) -> None:
    with Client(auth_server.port) as c:
        c.expect(220)
        caps = c.ehlo().lines
        assert not any(line.startswith("AUTH") for line in caps)
        r = c.cmd("AUTH PLAIN " + b64("\0alice\0correct horse"))
        assert (r.code, r.enhanced) == (538, "5.7.11")


def test_insecure_auth_allowed(start_server: StartServer) -> None:
    server = start_server(Accounts(), auth_methods=["PLAIN", "LOGIN"], allow_insecure_auth=True, tls=False)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.login("alice", PASSWORDS["alice"])
        client.sendmail("alice@mx.test", ["b@mx.test"], b"Subject: x\r\n\r\nx\r\n")
    [message] = server.wait_for(1)
    assert message.envelope.user == "alice" and message.envelope.protocol == "ESMTPA"


def test_auth_required_for_mail(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    server = start_server(Accounts(), auth_methods=["PLAIN"], auth_optional=False)
    with tls_client(server, client_context) as c:
        for command in ("MAIL FROM:<alice@mx.test>",):
            r = c.cmd(command)
            assert (r.code, r.enhanced) == (530, "5.7.0")
        assert c.cmd("AUTH PLAIN " + b64("\0alice\0correct horse")).code == 235
        assert send_message(c, sender="alice@mx.test").code == 250
    server.wait_for(1)


def test_too_many_auth_failures(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        for _ in range(2):
            r = c.cmd("AUTH PLAIN " + b64("\0alice\0guess"))
            assert (r.code, r.enhanced) == (535, "5.7.8")
        r = c.cmd("AUTH PLAIN " + b64("\0alice\0guess"))
        assert (r.code, r.enhanced) == (535, "5.7.8")
        r = c.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert c.closed()


def test_unknown_mechanism(auth_server: Running, client_context: ssl.SSLContext) -> None:
    with tls_client(auth_server, client_context) as c:
        r = c.cmd("AUTH GSSAPI")
        assert (r.code, r.enhanced) == (504, "5.5.4")


def test_auth_over_implicit_tls(start_server: StartServer, client_context: ssl.SSLContext) -> None:
    server = start_server(Accounts(), auth_methods=["PLAIN"], secure=True)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    with Client(server.port, sock=client_context.wrap_socket(raw, server_hostname=HOSTNAME)) as c:
        c.expect(220)
        caps = c.ehlo().lines
        assert "AUTH PLAIN" in caps
        r = c.cmd("AUTH PLAIN " + b64("\0alice\0correct horse"))
        assert (r.code, r.enhanced) == (235, "2.7.0")
        assert send_message(c, sender="alice@mx.test").code == 250
    [message] = server.wait_for(1)
    assert message.envelope.user == "alice" and message.envelope.protocol == "ESMTPSA"


def test_auth_listener(auth_server: Running, client_context: ssl.SSLContext) -> None:
    # Registered after start: listeners are looked up per event.
    events: list[str] = []
    called = threading.Event()

    def listener(session: Session, username: str) -> None:
        events.append(username)
        called.set()

    auth_server.server.on("auth", listener)
    with tls_client(auth_server, client_context) as c:
        assert c.cmd("AUTH PLAIN " + b64("\0alice\0correct horse")).code == 235
        assert called.wait(5)  # listeners run soon after the reply, not before it
    assert events == ["alice"]
