"""[auth] backend = "file": the credentials file, ``smtpfront passwd``, and AUTH on serve's wire
(smtplib, swaks, a SCRAM-SHA-256 client) without clear passwords at rest."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from smtpfront.core.events import SaslCredentials
from smtpfront.hooks import Session
from smtpfront.policy.auth_file import FileAuth
from smtpfront.policy.passwords import SCHEMES, hash_password, load, parse_line

from ..aio.conftest import Client, Reply
from ..aio.test_wire_auth import scram_login
from .support import TIMEOUT, Served, retry, run_cli

USERS = {  # user: (scheme, password)
    "alice@example.com": ("argon2id", "correct horse"),
    "bob@example.com": ("scram-sha-256", "b0b's password"),
    "carol@example.com": ("bcrypt", "carol's secret"),
    "dave@example.com": ("plain", "dave's clear one"),
}
CONFIG = '''
    hostname = "mx.test"
    queue = "maildir:{spool}"
    [[listeners]]
    address = "127.0.0.1:{port}"
    mode = "submission"
    tls = "none"
    [limits]
    auth_failures = 20
    [auth]
    methods = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"]
    allow_insecure = true
    failure_delay = 0.0
    backend = "file"
    file = "{tmp}/passwd"
'''


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    """The credentials file, made by ``smtpfront passwd`` for every user of USERS."""
    path = tmp_path / "passwd"
    for user, (scheme, password) in USERS.items():
        result = run_cli("passwd", "--file", str(path), "--scheme", scheme, user, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
    return path


# -- the file and the command -------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_checks_its_password(scheme: str) -> None:
    _, entry = parse_line("u:" + hash_password(scheme, "pässword"))
    assert entry.verify("pässword") and not entry.verify("pässwort") and not entry.verify("")


def test_passwd_writes_no_clear_password_and_replaces_a_line(passwd: Path) -> None:
    text = passwd.read_text()
    for user, (scheme, password) in USERS.items():
        assert (password in text) == (scheme == "plain"), user
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    assert run_cli("passwd", "--file", str(passwd), "alice@example.com", stdin="new one\n").returncode == 0
    users = load(str(passwd))
    assert list(users) == list(USERS) and users["alice@example.com"].verify("new one")
    assert not users["alice@example.com"].verify("correct horse")


def test_passwd_refuses_what_it_cannot_store(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert run_cli("passwd", "--file", str(path), "u", stdin="\n").returncode == 1  # empty
    result = run_cli("passwd", "--file", str(path), "--scheme", "bcrypt", "u", stdin="x" * 73 + "\n")
    assert result.returncode == 1 and "72" in result.stderr and not path.exists()
    assert run_cli("passwd", "--file", str(path), "has space", stdin="pw\n").returncode == 1


def test_a_malformed_line_is_named_without_its_secret(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# users\nok:{PLAIN}fine\n\nbad:{MD5}hunter2\n")
    with pytest.raises(ValueError, match=r"passwd:4: ") as info:
        load(str(path))
    assert "hunter2" not in str(info.value)
    path.write_text("a:{PLAIN}x\na:{PLAIN}y\n")
    with pytest.raises(ValueError, match="listed twice"):
        load(str(path))


def test_password_hashes_are_checked_off_the_event_loop(passwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = FileAuth(str(passwd))
    threads: list[threading.Thread] = []
    entry = plugin.users["alice@example.com"]
    original = type(entry).verify
    monkeypatch.setattr(type(entry), "verify", lambda self, pw: threads.append(threading.current_thread())
                        or original(self, pw))

    async def run() -> bool | None:
        session = Session("s", "127.0.0.1", 1)
        return await plugin.on_auth(session, SaslCredentials("PLAIN", "alice@example.com", password="correct horse"))

    assert asyncio.run(run()) is True
    assert threads and threads[0] is not threading.main_thread() and threads[0].name.startswith("auth-file")


# -- check-config ---------------------------------------------------------------------------


def test_check_config_refuses_required_auth_that_nothing_checks(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[listeners]]\naddress = "127.0.0.1:2525"\nauth_required = true\n[auth]\nmethods = ["PLAIN"]\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2 and "listeners[0].auth_required" in result.stderr and "auth.backend" in result.stderr
    path.write_text('[[listeners]]\naddress = "127.0.0.1:2525"\nmode = "submission"\n[auth]\nmethods = ["PLAIN"]\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2 and "listeners[0].mode" in result.stderr


def test_the_shipped_configuration_works_once_its_credentials_file_exists(tmp_path: Path) -> None:
    shipped = str(Path(__file__).parents[2] / "deploy" / "smtpfront.toml")
    missing = run_cli("check-config", shipped, env={"SMTPFRONT_AUTH__FILE": str(tmp_path / "passwd")})
    assert missing.returncode == 2 and "auth.backend" in missing.stderr and "passwd" in missing.stderr
    assert run_cli("passwd", "--file", str(tmp_path / "passwd"), "u@example.com", stdin="pw\n").returncode == 0
    ok = run_cli("check-config", shipped, env={"SMTPFRONT_AUTH__FILE": str(tmp_path / "passwd")})
    assert ok.returncode == 0, ok.stderr
    assert "warning" not in ok.stderr  # port 25 has policy.domains: not an open relay


def test_a_missing_credentials_file_stops_serve(tmp_path: Path, served: type[Served]) -> None:
    server = served(CONFIG, wait=False)
    assert server.exited() != 0
    log = server.log.read_text()
    assert "auth.backend" in log and "passwd" in log and "Traceback" not in log


# -- the wire -------------------------------------------------------------------------------


@pytest.mark.parametrize("user", list(USERS))
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_plain_and_login_for_every_scheme(passwd: Path, served: type[Served], user: str, mechanism: str) -> None:
    server = served(CONFIG)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = user, USERS[user][1]
        assert smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))[0] == 235
        smtp.sendmail(user, ["x@example.net"], b"Subject: t\r\n\r\nx\r\n")
    assert len(server.queued()) == 1 and b"with ESMTPA" in server.queued()[0]


def test_wrong_passwords_unknown_users_and_foreign_identities_are_refused(passwd: Path,
                                                                         served: type[Served]) -> None:
    server = served(CONFIG)
    with Client(server.port) as c:
        c.greet()
        c.ehlo()
        for user in USERS:
            for mechanism in ("PLAIN", "LOGIN"):
                reply = c.cmd("AUTH PLAIN " + plain("", user, "wrong")) if mechanism == "PLAIN" else login(c, user)
                assert (reply.code, reply.enhanced) == (535, "5.7.8"), (user, mechanism, reply)
        reply = c.cmd("AUTH PLAIN " + plain("", "nobody@example.com", USERS["alice@example.com"][1]))
        assert (reply.code, reply.enhanced) == (535, "5.7.8")
    with Client(server.port) as c:
        c.greet()
        c.ehlo()
        reply = c.cmd("AUTH PLAIN " + plain("bob@example.com", "dave@example.com", USERS["dave@example.com"][1]))
        assert reply.code == 535  # dave may not act as bob
        assert c.cmd("MAIL FROM:<dave@example.com>").code == 530  # submission: AUTH first


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(authzid: str, user: str, password: str) -> str:
    return b64(f"{authzid}\0{user}\0{password}")


def login(c: Client, user: str) -> Reply:
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(b64(user)).code == 334
    return c.cmd(b64("wrong"))


@pytest.mark.parametrize(("user", "works"), [("bob@example.com", True), ("dave@example.com", True),
                                              ("alice@example.com", False), ("carol@example.com", False)])
def test_scram_sha_256_for_stored_keys_and_clear_secrets_only(passwd: Path, served: type[Served], user: str,
                                                              works: bool) -> None:
    server = served(CONFIG)
    with Client(server.port) as c:
        c.greet()
        c.ehlo()
        assert scram_login(c, user, "wrong") == (535, "5.7.8", False)
        code, _, verified = scram_login(c, user, USERS[user][1])
        assert (code, verified) == ((235, True) if works else (535, False))


@pytest.mark.parametrize(("user", "works"), [("dave@example.com", True), ("bob@example.com", False),
                                              ("alice@example.com", False)])
def test_cram_md5_only_for_clear_secrets(passwd: Path, served: type[Served], user: str, works: bool) -> None:
    server = served(CONFIG)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = user, USERS[user][1]
        if works:
            assert smtp.auth("CRAM-MD5", smtp.auth_cram_md5)[0] == 235
        else:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                smtp.auth("CRAM-MD5", smtp.auth_cram_md5)
            assert info.value.smtp_code == 535


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "alice@example.com",
                           "--to", "x@example.net", "--timeout", str(TIMEOUT), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_swaks_plain_and_login_and_a_wrong_password(passwd: Path, served: type[Served]) -> None:
    server = served(CONFIG)
    password = USERS["alice@example.com"][1]
    for mechanism in ("PLAIN", "LOGIN"):
        result = swaks(server.port, "--auth", mechanism, "--auth-user", "alice@example.com",
                       "--auth-password", password)
        assert result.returncode == 0 and "235 2.7.0" in result.stdout, result.stdout
    result = swaks(server.port, "--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password", "nope")
    assert result.returncode != 0 and "535 5.7.8" in result.stdout
    assert len(server.queued()) == 2


def test_sighup_reads_the_file_again(passwd: Path, served: type[Served]) -> None:
    server = served(CONFIG)

    def auth(user: str, password: str) -> int:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            try:
                return smtp.login(user, password)[0]
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code

    assert auth("erin@example.com", "erin's") == 535
    assert run_cli("passwd", "--file", str(passwd), "--scheme", "scram-sha-256", "erin@example.com",
                   stdin="erin's\n").returncode == 0
    assert run_cli("passwd", "--file", str(passwd), "--scheme", "scram-sha-256", "alice@example.com",
                   stdin="changed\n").returncode == 0
    assert auth("erin@example.com", "erin's") == 535  # read at the worker's start, not per attempt
    server.hup()

    def reloaded() -> None:
        assert auth("erin@example.com", "erin's") == 235
        assert auth("alice@example.com", "correct horse") == 535

    retry(reloaded, timeout=30)
    assert auth("alice@example.com", "changed") == 235


def test_a_password_never_reaches_the_log(passwd: Path, served: type[Served]) -> None:
    server = served(CONFIG, env={"SMTPFRONT_LOGGING__LEVEL": "DEBUG"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice@example.com", "a-wrong-password-xyz")
        smtp.login("alice@example.com", USERS["alice@example.com"][1])
    server.stop()
    log = server.log.read_text()
    assert "a-wrong-password-xyz" not in log and USERS["alice@example.com"][1] not in log
