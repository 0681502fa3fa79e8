"""smtpfront.config: defaults < file < environment < overrides, validation, render."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpfront import config as config_module
from smtpfront.config import (
    AUTH_METHODS,
    ENV_ALIASES,
    Config,
    ConfigError,
    LimitsConfig,
    ListenerConfig,
    TimeoutsConfig,
    env_name,
    keys,
    load_config,
    parse_address,
    render,
)

EXAMPLE = Path(__file__).parent.parent / "deploy" / "smtpfront.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "smtpfront.toml"
    path.write_text(text)
    return str(path)


def error(path: str | None = None, env: dict[str, str] | None = None, **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {}, overrides={k.replace("__", "."): v for k, v in overrides.items()})
    return str(info.value)


# -- defaults and the modules they mirror ----------------------------------------------------

def test_defaults() -> None:
    c = load_config(env={})
    assert c == Config()
    assert c.hostname == (socket.getfqdn() or "localhost")
    assert c.workers == (os.cpu_count() or 1)
    assert c.queue == "maildir:./spool"
    assert c.listeners == (ListenerConfig("127.0.0.1:2525", mode="smtp", tls="starttls"),)
    assert (c.listeners[0].host, c.listeners[0].port) == ("127.0.0.1", 2525)
    assert c.metrics.listen == "127.0.0.1:9101" and c.metrics.agent_check_listen is None
    assert (c.logging.level, c.logging.format) == ("INFO", "json")
    assert (c.supervisor.graceful_timeout, c.supervisor.heartbeat_timeout) == (30.0, 30.0)
    assert c.redis.stream == "smtpfront:inbound" and c.tls.sni == {}


def test_no_path_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPFRONT_WORKERS", "3")
    assert load_config().workers == 3


def test_limits_mirror_core_and_timeouts_and_tls_are_the_connections_own() -> None:
    from smtpfront.aio.settings import ListenerSettings
    from smtpfront.aio.tls import server_context
    from smtpfront.core.options import Limits, Policies
    from smtpfront.core.sasl import MECHANISMS

    limits, core, policies = LimitsConfig(), Limits(), Policies()
    for f in dataclasses.fields(Limits):
        assert getattr(limits, f.name.removeprefix("max_")) == getattr(core, f.name), f.name
    for f in dataclasses.fields(Policies):
        assert getattr(limits, f.name) == getattr(policies, f.name), f.name
    settings = ListenerSettings()
    assert (limits.buffer_size, limits.body_stream_limit) == (settings.buffer_size, settings.body_stream_limit)
    # No twins: a connection's timeouts are the configuration's class, TLS takes the config's.
    assert type(settings.timeouts) is TimeoutsConfig and settings.timeouts == TimeoutsConfig()
    assert inspect.signature(server_context).parameters["config"].annotation in ("TlsConfig", config_module.TlsConfig)
    assert AUTH_METHODS == MECHANISMS


def test_redis_options_mirror_the_sink() -> None:
    """Read from the source: the compiled class has no signature for ``inspect``."""
    import smtpfront.sink.redis.sink as module

    source = (Path(config_module.__file__).parent / "sink" / "redis" / "sink.py").read_text()
    init = next(node for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    named = init.args.kwonlyargs
    defaults = {arg.arg: eval(compile(ast.Expression(default), "sink.py", "eval"), vars(module))
                for arg, default in zip(named, init.args.kw_defaults, strict=True) if default is not None}
    redis = Config().redis
    for f in dataclasses.fields(redis):
        assert getattr(redis, f.name) == defaults[f.name], f.name


def test_config_module_imports_only_the_stdlib() -> None:
    tree = ast.parse(Path(config_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in sys.stdlib_module_names, name


# -- file, environment, overrides ------------------------------------------------------------

FILE = """
hostname = "mx.example.com"
workers = 2
queue = "redis://localhost:6379/0"

[[listeners]]
address = "0.0.0.0:25"

[[listeners]]
address = "[::]:465"
tls = "implicit"
max_clients = 10

[limits]
message_size = 1000000
bare_line_endings = "normalize"

[timeouts]
idle = 60

[trust]
proxy = ["10.0.0.0/8", "::1"]

[logging]
level = "debug"
"""


def test_file_values(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, FILE), env={})
    assert (c.hostname, c.workers, c.queue) == ("mx.example.com", 2, "redis://localhost:6379/0")
    assert c.listeners == (ListenerConfig("0.0.0.0:25"), ListenerConfig("[::]:465", tls="implicit", max_clients=10))
    assert (c.listeners[1].host, c.listeners[1].port) == ("::", 465)
    assert c.limits.message_size == 1_000_000 and c.limits.bare_line_endings == "normalize"
    assert c.limits.recipients == 100  # untouched keys keep their defaults
    assert c.timeouts.idle == 60.0 and isinstance(c.timeouts.idle, float)
    assert c.trust.proxy == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert c.logging.level == "DEBUG"  # choices match case-insensitively


def test_env_beats_file_and_overrides_beat_env(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    env = {"SMTPFRONT_LIMITS__MESSAGE_SIZE": "2000", "SMTPFRONT_WORKERS": "5"}
    c = load_config(path, env=env)
    assert (c.limits.message_size, c.workers, c.hostname) == (2000, 5, "mx.example.com")
    c = load_config(path, env=env, overrides={"limits.message_size": 3000, "workers": None, "hostname": "o.example"})
    assert (c.limits.message_size, c.workers, c.hostname) == (3000, 5, "o.example")  # None: not given


def test_env_values_are_parsed_by_type() -> None:
    c = load_config(env={
        "SMTPFRONT_REVERSE_LOOKUP": "yes", "SMTPFRONT_FEATURES__DSN": "0", "SMTPFRONT_TIMEOUTS__IDLE": "12.5",
        "SMTPFRONT_AUTH__METHODS": "plain, login", "SMTPFRONT_TRUST__XCLIENT": "192.0.2.0/24,2001:db8::/32",
        "SMTPFRONT_REDIS__MAXLEN": "1000", "SMTPFRONT_FEATURES__DISABLED_COMMANDS": "vrfy,expn",
        "SMTPFRONT_TLS__SNI": "a.example=/a.pem:/a.key, *.b.example=/b.pem:/b.key",
    })
    assert c.reverse_lookup is True and c.features.dsn is False and c.timeouts.idle == 12.5
    assert c.auth.methods == ("PLAIN", "LOGIN") and c.features.disabled_commands == ("VRFY", "EXPN")
    assert [str(n) for n in c.trust.xclient] == ["192.0.2.0/24", "2001:db8::/32"]
    assert c.redis.maxlen == 1000
    assert c.tls.sni == {"a.example": ("/a.pem", "/a.key"), "*.b.example": ("/b.pem", "/b.key")}


@pytest.mark.parametrize("text, expected", [("1", True), ("true", True), ("Yes", True), ("on", True),
                                            ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_env_booleans(text: str, expected: bool) -> None:
    assert load_config(env={"SMTPFRONT_MAILDIR__FSYNC": text}).maildir.fsync is expected


def test_empty_string_unsets_an_optional_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[redis]\nmaxlen = 5\ngroup = "g"\n')
    c = load_config(path, env={"SMTPFRONT_REDIS__MAXLEN": ""}, overrides={"redis.group": ""})
    assert c.redis.maxlen is None and c.redis.group is None


def test_empty_variables_that_are_no_value_count_as_not_set(tmp_path: Path) -> None:
    path = write(tmp_path, 'workers = 3\nhostname = "f.example"\n')
    c = load_config(path, env={"SMTPFRONT_WORKERS": "", "SMTPFRONT_HOSTNAME": "", "SMTPFRONT_LISTEN": " "})
    assert (c.workers, c.hostname, c.listeners) == (3, "f.example", Config().listeners)
    assert load_config(env={"SMTPFRONT_BANNER": ""}).banner == ""  # a valid value


ALIASES: list[tuple[str, str, Callable[[Config], object], object]] = [
    ("SMTPFRONT_QUEUE", "null:", lambda c: c.queue, "null:"),
    ("SMTPFRONT_WORKERS", "7", lambda c: c.workers, 7),
    ("SMTPFRONT_LISTEN", "0.0.0.0:25, [::1]:2525",
     lambda c: [lst.address for lst in c.listeners], ["0.0.0.0:25", "[::1]:2525"]),
    ("SMTPFRONT_HOSTNAME", "mx.example.net", lambda c: c.hostname, "mx.example.net"),
    ("SMTPFRONT_TLS_CERT", "/c.pem", lambda c: c.tls.cert_file, "/c.pem"),
    ("SMTPFRONT_TLS_KEY", "/k.pem", lambda c: c.tls.key_file, "/k.pem"),
    ("SMTPFRONT_SIZE", "1234", lambda c: c.limits.message_size, 1234),
    ("SMTPFRONT_MAX_CLIENTS", "50", lambda c: c.listeners[0].max_clients, 50),
    ("SMTPFRONT_LOG_LEVEL", "warning", lambda c: c.logging.level, "WARNING"),
    ("SMTPFRONT_LOG_FORMAT", "plain", lambda c: c.logging.format, "plain"),
    ("SMTPFRONT_METRICS_LISTEN", "0.0.0.0:9200", lambda c: c.metrics.listen, "0.0.0.0:9200"),
]


@pytest.mark.parametrize("name, value, get, expected", ALIASES, ids=[a[0] for a in ALIASES])
def test_cli_environment_names(name: str, value: str, get: Callable[[Config], object], expected: object) -> None:
    env = {name: value}
    if name in ("SMTPFRONT_TLS_CERT", "SMTPFRONT_TLS_KEY"):  # one without the other is an error
        other = "SMTPFRONT_TLS__KEY_FILE" if name == "SMTPFRONT_TLS_CERT" else "SMTPFRONT_TLS__CERT_FILE"
        env[other] = "/other.pem"
    assert get(load_config(env=env)) == expected


def test_every_alias_is_tested_and_names_a_key() -> None:
    assert set(ENV_ALIASES) | {"SMTPFRONT_QUEUE", "SMTPFRONT_WORKERS", "SMTPFRONT_LISTEN",
                               "SMTPFRONT_HOSTNAME"} == {a[0] for a in ALIASES}
    assert set(ENV_ALIASES.values()) <= set(keys())


def test_canonical_name_beats_its_alias() -> None:
    env = {"SMTPFRONT_SIZE": "10", "SMTPFRONT_LIMITS__MESSAGE_SIZE": "20"}
    assert load_config(env=env).limits.message_size == 20


def test_env_names() -> None:
    assert env_name("limits.message_size") == "SMTPFRONT_LIMITS__MESSAGE_SIZE"
    assert env_name("queue") == "SMTPFRONT_QUEUE"
    c = load_config(env={env_name("redis.stream"): "s", env_name("supervisor.respawn_backoff"): "0.5"})
    assert (c.redis.stream, c.supervisor.respawn_backoff) == ("s", 0.5)


def test_listen_replaces_file_listeners_and_listener_keys_apply_to_all(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    c = load_config(path, env={"SMTPFRONT_MAX_CLIENTS": "9"}, overrides={"listen": ["127.0.0.1:1", "127.0.0.1:2"]})
    assert c.listeners == (ListenerConfig("127.0.0.1:1", max_clients=9), ListenerConfig("127.0.0.1:2", max_clients=9))
    c = load_config(path, env={}, overrides={"listeners.mode": "lmtp", "listeners.tls": "none"})
    assert [(lst.address, lst.mode, lst.tls) for lst in c.listeners] == [
        ("0.0.0.0:25", "lmtp", "none"), ("[::]:465", "lmtp", "none")]


def test_overrides_take_native_values() -> None:
    net = ipaddress.ip_network("192.0.2.0/24")
    c = load_config(env={}, overrides={"trust.proxy": [net, "10.0.0.0/8"], "auth.methods": ("plain",),
                                       "timeouts.idle": 5, "listen": ("[::1]:25",), "maildir.fsync": False})
    assert c.trust.proxy == (net, ipaddress.ip_network("10.0.0.0/8")) and c.auth.methods == ("PLAIN",)
    assert c.timeouts.idle == 5.0 and c.listeners[0].address == "[::1]:25" and c.maildir.fsync is False
    assert error(hostname=" ") == "hostname: expected a non-empty string"


def test_config_is_read_only() -> None:
    c = load_config(env={}, overrides={"tls.sni": "a.example=/a:/b"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.workers = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.tls.sni["b.example"] = ("/c", "/d")  # type: ignore[index]


def test_unrelated_smtpfront_variables_are_ignored() -> None:
    env = {"SMTPFRONT_QUEUE_ID": "x", "SMTPFRONT_STREAM": "y", "SMTPFRONT_SENDER": "a@b", "PATH": "/bin"}
    assert load_config(env=env) == load_config(env={})


# -- errors --------------------------------------------------------------------------------------

def test_enum_errors_name_the_key_and_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\nbare_line_endings = "maybe"\n')
    assert error(path) == 'limits.bare_line_endings: expected one of reject, accept, normalize, got "maybe"'
    assert error(logging__format="xml") == 'logging.format: expected one of json, plain, got "xml"'
    path = write(tmp_path, '[[listeners]]\naddress = "0.0.0.0:25"\nmode = "esmtp"\n')
    assert error(path) == 'listeners[0].mode: expected one of smtp, submission, lmtp, got "esmtp"'


def test_type_errors_name_the_key_and_the_type(tmp_path: Path) -> None:
    assert error(write(tmp_path, '[limits]\nrecipients = "many"\n')) == (
        'limits.recipients: expected an integer, got "many"')
    assert error(write(tmp_path, "[limits]\nrecipients = 1.5\n")) == "limits.recipients: expected an integer, got 1.5"
    assert error(write(tmp_path, "[maildir]\nfsync = 1\n")) == (
        "maildir.fsync: expected a boolean (true/false, 1/0, yes/no), got 1")
    assert error(write(tmp_path, "[timeouts]\nidle = true\n")) == "timeouts.idle: expected a number, got true"
    assert error(write(tmp_path, "banner = 5\n")) == "banner: expected a string (one line), got 5"
    assert error(write(tmp_path, "limits = 5\n")) == "limits: expected a table ([limits]), got 5"
    assert error(env={"SMTPFRONT_WORKERS": "four"}) == (
        'workers: expected an integer, got "four" (from SMTPFRONT_WORKERS)')
    assert error(env={"SMTPFRONT_SIZE": "1e6"}) == (
        'limits.message_size: expected an integer, got "1e6" (from SMTPFRONT_SIZE)')
    assert error(timeouts__data="nan") == 'timeouts.data: expected a number, got "nan"'
    assert error(auth__methods="PLAIN,NTLM") == (
        f'auth.methods: expected a list of one of {", ".join(AUTH_METHODS)}, got "NTLM"')


def test_bounds() -> None:
    assert error(workers=0) == "workers: expected an integer >= 1, got 0"
    assert error(limits__recipients=0) == "limits.recipients: expected an integer >= 1, got 0"
    assert error(limits__command_line=511) == "limits.command_line: expected an integer >= 512, got 511"
    assert error(timeouts__idle=0) == "timeouts.idle: expected a number > 0, got 0.0"
    assert load_config(env={}, overrides={"limits.command_line": 512}).limits.command_line == 512


def test_text_values_are_one_line() -> None:  # a banner with CRLF would inject protocol lines
    assert error(banner="hi\r\n250 ok") == 'banner: expected a string (one line), got "hi\\r\\n250 ok"'


def test_unknown_keys_suggest_the_closest(tmp_path: Path) -> None:
    assert error(write(tmp_path, "[limits]\nmesage_size = 1\n")) == (
        "limits.mesage_size: unknown key; did you mean message_size?")
    assert error(write(tmp_path, "[limit]\nrecipients = 1\n")) == "limit: unknown key; did you mean limits?"
    assert error(write(tmp_path, "[redis]\nstreem = 'x'\n")) == "redis.streem: unknown key; did you mean stream?"
    assert error(write(tmp_path, '[[listeners]]\naddress = "0.0.0.0:25"\nmax_client = 1\n')) == (
        "listeners[0].max_client: unknown key; did you mean max_clients?")
    assert error(write(tmp_path, "zzz = 1\n")) == "zzz: unknown key"
    assert error(env={"SMTPFRONT_LIMITS__MESAGE_SIZE": "1"}) == (
        "SMTPFRONT_LIMITS__MESAGE_SIZE: unknown setting; did you mean SMTPFRONT_LIMITS__MESSAGE_SIZE?")
    assert error(limits__recipient=5) == "limits.recipient: unknown key; did you mean limits.recipients?"


@pytest.mark.parametrize("address, problem", [
    ("localhost", "expected HOST:PORT"),
    ("::1:25", "needs brackets"),
    ("[::1]:65536", "expected a port in 1..65535"),
    ("127.0.0.1:-1", "expected a port"),
    ("127.0.0.1:", "expected a port"),
    ("1.2.3.999:25", "1.2.3.999"),
    ("[mail]:25", "mail"),
    ("bad host:25", "not a host name"),
    (":25", "not a host name"),
])
def test_bad_addresses(address: str, problem: str) -> None:
    message = error(listen=address)
    assert message.startswith("listen: ") and problem in message and address.strip() in message
    assert problem in error(metrics__listen=address)


@pytest.mark.parametrize("address, normal", [
    ("0.0.0.0:25", "0.0.0.0:25"), ("[::]:587", "[::]:587"), ("[::FFFF:1.2.3.4]:25", "[::ffff:102:304]:25"),
    ("mx.example.com:2525", "mx.example.com:2525"), ("127.0.0.1:0", "127.0.0.1:0"), ("localhost:00025", "localhost:25"),
])
def test_good_addresses(address: str, normal: str) -> None:
    assert load_config(env={"SMTPFRONT_LISTEN": address}).listeners[0].address == normal
    assert parse_address(normal)[1] == int(normal.rpartition(":")[2])


def test_bad_networks(tmp_path: Path) -> None:
    assert error(write(tmp_path, '[trust]\nproxy = ["10.0.0.0/33"]\n')) == (
        'trust.proxy: expected IP networks (10.0.0.0/8, ::1), got "10.0.0.0/33"')
    assert error(trust__xforward="10.0.0.1,example.com").startswith("trust.xforward: expected IP networks")
    assert error(write(tmp_path, '[trust]\nproxy = "10.0.0.0/8"\n')) == (
        'trust.proxy: expected a list, got "10.0.0.0/8"')


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://u:p@h:6380/1", "redis+cluster://h:7000",
                                 "rediss+cluster://h:7000", "redis+sentinel://h1:26379,h2:26379/mymaster",
                                 "maildir:/var/spool/smtpfront", "null:", "REDIS://h/0"])
def test_queue_schemes(url: str) -> None:
    assert load_config(env={"SMTPFRONT_QUEUE": url}).queue == url


@pytest.mark.parametrize("url, problem", [
    ("amqp://h/", "expected a URL with a scheme among redis, rediss, unix, redis+cluster, rediss+cluster, "
                  "redis+sentinel, rediss+sentinel, maildir, null"),
    ("/var/spool", "expected a URL with a scheme among"),
    ("redis:h:6379", "expected redis://[USER:PASSWORD@]HOST:PORT/DB"),
    ("redis:///0", "expected redis://"),
    ("maildir:", "expected maildir:DIRECTORY"),
])
def test_bad_queues(url: str, problem: str) -> None:
    assert error(queue=url).startswith(f"queue: {problem}")


def test_tls_rules(tmp_path: Path) -> None:
    assert error(tls__cert_file="/c.pem") == "tls.key_file: tls.cert_file and tls.key_file go together; only one is set"
    assert error(tls__key_file="/k.pem").startswith("tls.cert_file: ")
    assert error(tls__require_client_cert=True).startswith("tls.require_client_cert: needs tls.client_ca_file")
    c = load_config(env={}, overrides={"listeners.tls": "implicit"})  # no certificate: self-signed at run time
    assert c.listeners[0].tls == "implicit" and c.tls.cert_file is None
    sni = '[tls]\nsni = { "mx.example.com" = ["/a.pem", "/a.key"], "*.example.org" = ["/b.pem", "/b.key"] }\n'
    assert load_config(write(tmp_path, sni), env={}).tls.sni["*.example.org"] == ("/b.pem", "/b.key")
    assert error(write(tmp_path, '[tls]\nsni = { "a.example" = ["/a.pem"] }\n')) == (
        'tls.sni.a.example: expected ["cert_file", "key_file"], got [\'/a.pem\']')
    assert "only a leading '*.' wildcard" in error(write(tmp_path, '[tls.sni]\n"a.*.example" = ["/a", "/b"]\n'))
    assert error(tls__min_version="TLSv1.1") == 'tls.min_version: expected one of TLSv1.2, TLSv1.3, got "TLSv1.1"'


def test_listener_rules(tmp_path: Path) -> None:
    one = '[[listeners]]\naddress = "0.0.0.0:587"\n'
    assert error(write(tmp_path, one + "auth_required = true\n")) == (
        f"listeners[0].auth_required: needs auth.methods (of {', '.join(AUTH_METHODS)})")
    assert error(write(tmp_path, one + "proxy_protocol = true\n")).startswith(
        "listeners[0].proxy_protocol: needs trust.proxy")
    assert error(write(tmp_path, one + 'require_tls = true\ntls = "none"\n')) == (
        'listeners[0].require_tls: contradicts tls = "none"')
    assert error(write(tmp_path, one + one)) == "listeners[1].address: 0.0.0.0:587 is also listeners[0].address"
    assert error(write(tmp_path, '[[listeners]]\naddress = "127.0.0.1:9101"\n')) == (
        "listeners[0].address: 127.0.0.1:9101 is also metrics.listen")
    assert error(write(tmp_path, "[[listeners]]\nmode = 'lmtp'\n")) == (
        "listeners[0].address: required (HOST:PORT or [IPv6]:PORT)")
    assert error(write(tmp_path, "listeners = []\n")) == "listeners: expected at least one listener"
    assert error(write(tmp_path, "[listeners]\naddress = '0.0.0.0:25'\n")) == (
        "listeners: expected an array of tables ([[listeners]])")
    assert error(listen="") == "listen: expected at least one HOST:PORT"
    c = load_config(env={}, overrides={"listen": "127.0.0.1:0,127.0.0.1:0"})  # port 0 twice: fine in tests
    assert len(c.listeners) == 2


def test_other_rules() -> None:
    assert error(supervisor__respawn_backoff=5, supervisor__respawn_backoff_max=1) == (
        "supervisor.respawn_backoff_max: expected a number >= supervisor.respawn_backoff")
    assert error(metrics__agent_check_listen="127.0.0.1:9101") == (
        "metrics.agent_check_listen: 127.0.0.1:9101 is also metrics.listen")


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    assert "cannot read the file" in error(str(tmp_path / "missing.toml"))
    path = write(tmp_path, "workers = \n")
    assert error(path).startswith(f"{path}: not valid TOML: ")


# -- render ----------------------------------------------------------------------------------------

def test_render_shows_every_key_and_round_trips(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, FILE), env={}, overrides={"tls.sni": {"a.example": ["/a", "/b"]},
                                                               "redis.maxlen": 10, "banner": 'say "hi" \\ é'})
    text = render(c)
    for key in keys():
        name = key.rpartition(".")[2]
        if key != "listen":
            assert re.search(rf"^(# )?{re.escape(name)} (=|is unset)", text, re.M), key
    assert "# high_water is unset" in text
    assert load_config(write(tmp_path, text), env={}) == c
    assert load_config(write(tmp_path, render(Config())), env={}) == Config()


@pytest.mark.parametrize("url, shown", [
    ("redis://user:s3cret@redis.internal:6379/0", "redis://user:***@redis.internal:6379/0"),
    ("rediss://:s3cret@h:6380", "rediss://:***@h:6380"),
    ("redis+sentinel://:pw@h1:26379,h2:26379/svc?password=pw2", "redis+sentinel://:***@h1:26379,h2:26379/svc?password=***"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_render_masks_passwords(tmp_path: Path, url: str, shown: str) -> None:
    c = load_config(env={"SMTPFRONT_QUEUE": url})
    assert f'queue = "{shown}"' in render(c)
    assert "s3cret" not in render(c) and "pw" not in render(c).replace("password", "")
    assert f'queue = "{url}"' in render(c, mask_secrets=False)
    assert load_config(write(tmp_path, render(c, mask_secrets=False)), env={}) == c
    assert load_config(write(tmp_path, render(c)), env={}).queue == shown  # masked, still valid


# -- the example file --------------------------------------------------------------------------------

def test_example_file_validates_and_round_trips(tmp_path: Path) -> None:
    c = load_config(str(EXAMPLE), env={})
    assert c.queue.startswith("redis://")
    modes = {(lst.port, lst.mode, lst.tls, lst.auth_required) for lst in c.listeners}
    assert {(25, "smtp", "starttls", False), (465, "submission", "implicit", True),
            (587, "submission", "starttls", True)} <= modes
    assert any(lst.mode == "lmtp" for lst in c.listeners)
    assert load_config(write(tmp_path, render(c)), env={}) == c


def test_example_file_covers_every_key() -> None:
    seen: dict[str, set[str]] = {"": set()}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[\[?([\w.]+)\]\]?", line):
            section = header[1]
            seen.setdefault(section, set())
        elif found := re.match(r"#? ?(\w+) =", line):
            seen[section].add(found[1])
    for key in keys():
        where, _, name = key.rpartition(".")
        if key != "listen":
            assert name in seen.get(where, set()), f"{key} is missing from {EXAMPLE.name}"


@pytest.mark.parametrize(("proxy", "xclient", "xforward", "warned"), [
    ("10.0.0.0/8", "10.1.0.0/16", "", ["trust.xclient"]),
    ("10.0.0.5/32", "", "10.0.0.0/24", ["trust.xforward"]),
    ("10.0.0.5/32", "192.0.2.0/24", "192.0.2.0/24", []),
    ("10.0.0.0/8", "::/0", "", []),  # another family never overlaps
])
def test_warns_when_a_proxy_network_is_trusted_for_xclient(
    tmp_path: Path, proxy: str, xclient: str, xforward: str, warned: list[str]
) -> None:
    c = load_config(write(tmp_path, f"""
[trust]
proxy = ["{proxy}"]
xclient = [{f'"{xclient}"' if xclient else ""}]
xforward = [{f'"{xforward}"' if xforward else ""}]
"""), env={})
    assert [w.split(":")[0] for w in config_module.warnings(c)] == warned
