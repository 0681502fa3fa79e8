"""One assembly path: the embedded server and ``serve``'s workers get the same settings from the
same options, and ``features.disabled_commands`` has one meaning on the wire."""

from __future__ import annotations

import dataclasses
import smtplib
from pathlib import Path

import pytest

from smtpfront.aio.settings import ListenerSettings
from smtpfront.aio.tls import generate_self_signed
from smtpfront.assembly import listener_settings, tls_context
from smtpfront.config import load_config
from smtpfront.server import SMTPServer

from .conftest import free_port
from .deploy.support import TIMEOUT, serve, terminate, wait_ready


def served(tmp_path: Path, toml: str) -> ListenerSettings:
    path = tmp_path / "smtpfront.toml"
    path.write_text(toml)
    config = load_config(str(path), env={})
    return listener_settings(config, config.listeners[0], tls_context(config))


def comparable(settings: ListenerSettings) -> ListenerSettings:
    """The settings with the TLS context reduced to whether there is one (each build makes its own)."""
    return dataclasses.replace(settings, tls_context=None if settings.tls_context is None else ...)  # type: ignore[arg-type]


def test_embedded_and_served_settings_are_equal_for_the_same_options(tmp_path: Path) -> None:
    embedded = SMTPServer(
        port=0, name="mx.test", tls=False, disabled_commands=["STARTTLS", "VRFY"], auth_methods=["PLAIN"],
        auth_optional=False, allow_insecure_auth=True, max_recipients=5, use_proxy=["10.0.0.0/8"],
        use_xclient=["192.0.2.0/24"], socket_timeout=60, greeting_delay=1.5, bare_line_endings="accept",
        hide_chunking=True, max_clients=7, size=1_000_000, log_sessions=False,
    )
    assert comparable(embedded.settings) == comparable(served(tmp_path, """
hostname = "mx.test"
[[listeners]]
address = "127.0.0.1:0"
tls = "none"
auth_required = true
proxy_protocol = true
max_clients = 7
[limits]
recipients = 5
bare_line_endings = "accept"
message_size = 1000000
[timeouts]
idle = 60
greeting_delay = 1.5
[auth]
methods = ["PLAIN"]
allow_insecure = true
[trust]
proxy = ["10.0.0.0/8"]
xclient = ["192.0.2.0/24"]
[features]
chunking = false
disabled_commands = ["STARTTLS", "VRFY"]
[logging]
sessions = false
"""))


def test_implicit_tls_lmtp_and_hidden_extensions_map_alike(tmp_path: Path) -> None:
    cert, key = generate_self_signed(str(tmp_path), "mx.test")
    embedded = SMTPServer(port=0, name="mx.test", secure=True, cert_file=cert, key_file=key, lmtp=True,
                          hide_starttls=True, hide_dsn=True, disabled_commands=["AUTH"], auth_methods=["PLAIN"])
    settings = served(tmp_path, f"""
hostname = "mx.test"
[[listeners]]
address = "127.0.0.1:0"
tls = "implicit"
mode = "lmtp"
[tls]
cert_file = "{cert}"
key_file = "{key}"
[auth]
methods = ["PLAIN"]
[features]
dsn = false
disabled_commands = ["AUTH", "STARTTLS"]
""")
    assert embedded.settings.tls_context is not None and settings.tls_context is not None
    assert comparable(embedded.settings) == comparable(settings)
    assert settings.features.auth_mechanisms == () and settings.implicit_tls and settings.features.lmtp


@pytest.mark.parametrize("disabled", [("STARTTLS",), ("AUTH", "BDAT"), ()])
def test_disabled_commands_are_neither_offered_nor_accepted_by_serve(tmp_path: Path, disabled: tuple[str, ...]) -> None:
    """What the embedded server always did, now under ``serve`` too: a disabled STARTTLS, AUTH or
    BDAT is not advertised in EHLO, and using it gets 502 5.5.1."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "smtpfront.toml"
    config.write_text(f"""
queue = "null:"
hostname = "mx.test"
[[listeners]]
address = "127.0.0.1:{port}"
[auth]
methods = ["PLAIN"]
allow_insecure = true
[features]
disabled_commands = {list(disabled)!r}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[tls]
self_signed_dir = "{tmp_path}"
""".replace("'", '"'))
    log = tmp_path / "serve.log"
    with serve(["--config", str(config), "--workers", "1", "--log-format", "plain"], log) as server:
        wait_ready(server, metrics_port, log)
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            offered = {"starttls": "STARTTLS", "auth": "AUTH", "chunking": "BDAT"}
            for extension, verb in offered.items():
                assert smtp.has_extn(extension) is (verb not in disabled), (extension, smtp.esmtp_features)
            for verb in disabled:
                argument = {"AUTH": "PLAIN", "BDAT": "1 LAST"}.get(verb, "")
                assert smtp.docmd(verb, argument)[0] == 502, verb
        assert terminate(server, log) == 0
