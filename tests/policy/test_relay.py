"""[policy]: Postfix's reject_unauth_destination as the built-in relay-policy plugin, on serve's
wire: local domains from anyone, other recipients only for authenticated clients or relay
networks (judged on the client's own address, after XCLIENT), unknown local users refused."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from smtpfront.config import load_config, warnings
from smtpfront.core.events import Address, RcptParams
from smtpfront.hooks import Session
from smtpfront.policy.relay import RelayPolicy

from ..aio.conftest import Client
from .support import TIMEOUT, Served, run_cli

MX = '''
    hostname = "mx.test"
    queue = "maildir:{spool}"
    [[listeners]]
    address = "127.0.0.1:{port}"
    tls = "none"
    [policy]
    domains = ["example.com", ".lists.example.org", "file:{tmp}/domains"]
    recipients = "file:{tmp}/recipients"
    RELAY
    [trust]
    xclient = ["127.0.0.1/32"]
'''


def start(tmp_path: Path, served: type[Served], relay: str = "", extra: str = "") -> Served:
    (tmp_path / "domains").write_text("# more local domains\nexample.net.\n")
    (tmp_path / "recipients").write_text("alice@example.com\nBob@Example.com  # any case\n@example.net\n"
                                         "list@a.lists.example.org\n")
    return served(MX.replace("RELAY", relay) + extra)


def rcpt(server: Served, *recipients: str) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.mail("sender@example.org")
        return [smtp.rcpt(r) for r in recipients]


def test_relay_is_refused_and_local_mail_is_queued(tmp_path: Path, served: type[Served]) -> None:
    server = start(tmp_path, served)
    assert rcpt(server, "someone@elsewhere.test", "alice@example.com.evil.test", "x@lists.example.org") == [
        (554, b"5.7.1 Relay access denied")] * 3
    assert rcpt(server, "nobody@example.com") == [(550, b"5.1.1 Recipient address rejected: user unknown")]
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        refused = smtp.sendmail("sender@example.org", ["alice@example.com", "BOB@example.COM", "anyone@example.net",
                                                       "list@a.lists.example.org", "postmaster", "x@relay.test"],
                                b"Subject: t\r\n\r\nx\r\n")
    assert refused == {"x@relay.test": (554, b"5.7.1 Relay access denied")}
    [message] = server.queued()
    assert message.startswith(b"Return-Path: <sender@example.org>") and message.endswith(b"\r\nx\r\n")


def test_relay_networks_may_relay(tmp_path: Path, served: type[Served]) -> None:
    server = start(tmp_path, served, relay='relay_networks = ["10.0.0.0/8", "127.0.0.1"]')
    assert rcpt(server, "someone@elsewhere.test")[0][0] == 250
    assert rcpt(server, "nobody@example.com")[0][0] == 550  # the recipients list still holds


def test_relay_is_judged_on_the_address_xclient_names(tmp_path: Path, served: type[Served]) -> None:
    server = start(tmp_path, served, relay='relay_networks = ["192.0.2.0/24"]')
    for address, expected in (("127.0.0.1", 554), ("192.0.2.9", 250), ("198.51.100.1", 554)):
        with Client(server.port) as c:
            c.greet()
            c.ehlo()
            if address != "127.0.0.1":
                assert c.cmd(f"XCLIENT ADDR={address}").code == 220
                c.ehlo()
            assert c.cmd("MAIL FROM:<a@example.org>").code == 250
            reply = c.cmd("RCPT TO:<someone@elsewhere.test>")
            assert reply.code == expected, (address, reply)
            if expected == 554:
                assert reply.enhanced == "5.7.1"


def test_an_authenticated_client_may_relay(tmp_path: Path, served: type[Served]) -> None:
    (tmp_path / "passwd").write_text("u@example.com:{PLAIN}pw\n")
    server = start(tmp_path, served, extra=f'''
    [auth]
    methods = ["PLAIN"]
    allow_insecure = true
    backend = "file"
    file = "{tmp_path}/passwd"
''')
    assert rcpt(server, "someone@elsewhere.test")[0][0] == 554
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.login("u@example.com", "pw")
        assert smtp.sendmail("u@example.com", ["someone@elsewhere.test"], b"Subject: t\r\n\r\nx\r\n") == {}
    assert len(server.queued()) == 1


def test_without_domains_every_recipient_is_taken(served: type[Served]) -> None:
    server = served('queue = "maildir:{spool}"\n[[listeners]]\naddress = "127.0.0.1:{port}"\ntls = "none"\n')
    assert rcpt(server, "someone@elsewhere.test")[0][0] == 250


def policy_answer(plugin: RelayPolicy, recipient: str, client: str = "203.0.113.5") -> int:
    local, _, domain = recipient.rpartition("@") if "@" in recipient else (recipient, "", "")
    reply = asyncio.run(plugin.on_rcpt_to(Session("s", client, 1), Address(local, domain), RcptParams()))
    return 250 if reply is None else reply.code


def test_policy_decisions() -> None:
    plugin = RelayPolicy(["Example.COM.", ".sub.example.org"], relay_networks=["2001:db8::/32", "10.0.0.0/8"])
    assert [policy_answer(plugin, r) for r in ("a@example.com", "a@EXAMPLE.com.", "a@x.sub.example.org",
                                               "a@sub.example.org", "a@example.org", "postmaster")] == [
        250, 250, 250, 554, 554, 250]
    assert policy_answer(plugin, "a@example.org", "10.1.2.3") == 250
    assert policy_answer(plugin, "a@example.org", "2001:db8::1") == 250
    assert policy_answer(plugin, "a@example.org", "::ffff:10.0.0.1") == 250
    assert policy_answer(plugin, "a@example.org", "unknown") == 554
    with pytest.raises(ValueError, match="not a domain"):
        RelayPolicy(["exa mple.com"])
    with pytest.raises(ValueError, match="at least one"):
        RelayPolicy([])


def test_check_config_warns_about_an_open_relay(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[listeners]]\naddress = "0.0.0.0:2525"\n[[listeners]]\naddress = "127.0.0.1:2526"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 0
    assert "listeners[0]: 0.0.0.0:2525 takes mail for any recipient" in result.stderr
    assert "listeners[1]" not in result.stderr
    path.write_text('[[listeners]]\naddress = "0.0.0.0:2525"\n[policy]\ndomains = ["example.com"]\n')
    assert "warning" not in run_cli("check-config", str(path)).stderr
    path.write_text('[[listeners]]\naddress = "[::]:587"\nmode = "submission"\n[auth]\nmethods = ["PLAIN"]\n'
                    'backend = "file"\nfile = "/nonexistent"\n')
    assert warnings(load_config(str(path), env={})) == []
    path.write_text('[[listeners]]\naddress = "0.0.0.0:2525"\n[[plugins]]\nuse = "relay-policy"\n'
                    'options = { domains = ["example.com"] }\n')
    assert warnings(load_config(str(path), env={})) == []


def test_unused_auth_settings_are_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nfile = "/etc/smtpfront/passwd"\n')
    assert warnings(load_config(str(path), env={})) == [
        'auth.file is set but not used: auth.backend is "none", not "file"']


def test_serve_warns_about_an_open_relay(served: type[Served]) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface: serve warns, then cannot bind, and stops.
    server = served('queue = "maildir:{spool}"\n[[listeners]]\naddress = "192.0.2.1:{port}"\ntls = "none"\n',
                    wait=False)
    assert server.exited() != 0
    log = server.log.read_text()
    assert "192.0.2.1" in log and "takes mail for any recipient from anyone" in log and "cannot listen" in log


def test_bad_policy_settings_are_check_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for text, key in (('domains = ["file:"]', "policy.domains"),
                      ('domains = "file:/nonexistent/domains"', "policy.domains"),
                      ('recipients = "file:/x"', "policy.recipients"),
                      ('domains = ["a.test"]\nrecipients = "a@a.test"', "policy.recipients"),
                      ('domains = ["a.test"]\nrelay_networks = ["nonsense"]', "policy.relay_networks")):
        path.write_text(f"[policy]\n{text}\n")
        result = run_cli("check-config", str(path))
        assert result.returncode == 2 and key in result.stderr and "Traceback" not in result.stderr, (text, result)
