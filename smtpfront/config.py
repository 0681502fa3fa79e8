"""One frozen :class:`Config` from defaults, a TOML file, the environment and the command line.

Precedence, highest first: command-line ``overrides`` > environment > file > defaults.

Keys are dotted paths mirroring the TOML tables: ``limits.message_size`` is ``message_size``
in ``[limits]``. An environment variable is ``SMTPFRONT_`` + the key upper-cased with ``.``
→ ``__`` (``SMTPFRONT_LIMITS__MESSAGE_SIZE``); the short names the CLI has always read are
aliases (:data:`ENV_ALIASES`), and a canonical name wins over its alias. An unknown
``SMTPFRONT_*__*`` variable is an error; other unknown ``SMTPFRONT_*`` names (those of
``consume``, or of the ``--exec`` child) are not ours and are ignored. Text values
(environment, string overrides) are parsed by the field's type: integers, floats, booleans
(1/0/true/false/yes/no/on/off), lists comma-separated; ``""`` unsets an optional value
(an empty variable that is no valid value, such as ``SMTPFRONT_WORKERS=``, counts as not set).

Listeners are an array of tables (``[[listeners]]``) in the file. From the environment or
the command line, ``listen`` (``SMTPFRONT_LISTEN``, comma-separated) replaces them with
listeners at those addresses and default settings; then ``listeners.FIELD`` sets FIELD on
every listener (``--max-clients`` → ``listeners.max_clients``, ``--lmtp`` →
``listeners.mode = "lmtp"``, ``--no-tls`` → ``listeners.tls = "none"``).

Plugins are an array of tables too (``[[plugins]]``: ``use`` and ``options``), from the file
only; what they name is imported and built by ``smtpfront.assembly`` (this module imports no
plugin). ``[auth] backend`` and ``[policy] domains`` imply built-in plugins before them.

Rule: stdlib only, and no other smtpfront module is imported (ARCHITECTURE.md "Layers"). Values
that mirror other modules (SASL mechanisms, defaults) are repeated here; tests keep them equal.

Size (over 500 lines): the model (one dataclass per TOML table), its checks, the three
sources and the rendering are one concern, the operator's configuration; the keys' meaning
for the server is in :mod:`smtpfront.assembly`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

__all__ = [
    "Config", "ListenerConfig", "LimitsConfig", "TimeoutsConfig", "TlsConfig", "AuthConfig", "TrustConfig",
    "FeaturesConfig", "PolicyConfig", "ClientLimitsConfig", "PluginConfig", "RedisConfig", "MaildirConfig",
    "MetricsConfig",
    "LoggingConfig", "SupervisorConfig", "ConsumerConfig", "ConfigError", "load_config", "render", "parse_address",
    "env_name", "keys", "warnings", "auth_socket", "needs_auth",
    "ENV_ALIASES", "REDIS_SCHEMES", "QUEUE_SCHEMES", "AUTH_METHODS",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
QUEUE_SCHEMES = (*REDIS_SCHEMES, "maildir", "null")
AUTH_METHODS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "SCRAM-SHA-256")  # = core.sasl.MECHANISMS
# The CLI's historical names (SMTPFRONT_QUEUE, _WORKERS, _HOSTNAME, _LISTEN are canonical).
ENV_ALIASES: Mapping[str, str] = {
    "SMTPFRONT_TLS_CERT": "tls.cert_file", "SMTPFRONT_TLS_KEY": "tls.key_file", "SMTPFRONT_SIZE": "limits.message_size",
    "SMTPFRONT_MAX_CLIENTS": "listeners.max_clients", "SMTPFRONT_LOG_LEVEL": "logging.level",
    "SMTPFRONT_LOG_FORMAT": "logging.format", "SMTPFRONT_METRICS_LISTEN": "metrics.listen",
}
_T = TypeVar("_T")


def _f(default: _T, **meta: object) -> _T:
    """A field with checks: ``min``/``gt`` bounds, ``kind``, ``upper``, ``items``, ``nonempty``."""
    return field(default=default, metadata=meta)


class ConfigError(ValueError):
    """An unknown or invalid setting; ``str()`` is ``"KEY: MESSAGE"``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


# -- the model ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listening address and what its sessions may do."""

    address: str = _f("127.0.0.1:2525", kind="address")  # HOST:PORT or [V6]:PORT; port 0: any
    mode: Literal["smtp", "submission", "lmtp"] = "smtp"
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    require_tls: bool = False  # MAIL refused before STARTTLS
    auth_required: bool = False  # MAIL refused before AUTH (needs auth.methods)
    max_clients: int = _f(0, min=0)  # per worker; 0 = unlimited
    proxy_protocol: bool = False  # peers in trust.proxy must send a PROXY v1/v2 header

    @property
    def host(self) -> str:
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address)[1]


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """core ``Limits`` (without the ``max_`` prefix) and ``Policies``, plus buffer sizes."""

    message_size: int = _f(25 * 1024 * 1024, min=1)  # RFC 1870 SIZE
    recipients: int = _f(100, min=1)  # RFC 5321 §4.5.3.1.8
    errors: int = _f(10, min=1)
    auth_failures: int = _f(3, min=1)
    command_line: int = _f(512, min=512)  # RFC 5321 §4.5.3.1.4
    param_line: int = _f(1024, min=512)
    auth_line: int = _f(12288, min=512)  # RFC 4954 §4
    text_line: int = _f(1000, min=1000)  # RFC 5321 §4.5.3.1.6
    xclient_line: int = _f(2048, min=512)
    bare_line_endings: Literal["reject", "accept", "normalize"] = "reject"
    long_lines: Literal["reject", "accept"] = "accept"
    unauthorized_pipelining: Literal["reject", "accept"] = "reject"
    early_talkers: Literal["reject", "accept"] = "reject"
    buffer_size: int = _f(64 * 1024, min=1024)
    body_stream_limit: int = _f(1024 * 1024, min=1)
    # Session budgets (421 past them): RSET/NOOP/VRFY/HELP/EHLO in a row without a transaction
    # (Postfix's smtpd_junk_command_limit), the session's age at a command, accepted messages.
    idle_commands: int = _f(100, min=1)
    session_duration: float = _f(3600.0, gt=0)  # seconds; the next command past it gets 421 4.4.2
    messages_per_session: int = _f(0, min=0)  # 0 = unlimited
    memory_budget: int = _f(64 * 1024 * 1024, min=0)  # message octets a worker holds in memory; 0 = no limit


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    """Seconds. Postfix's smtpd_timeout is 300 s; RFC 5321 §4.5.3.2.7 asks for ≥ 5 min.

    The connections' own settings too (``ListenerSettings.timeouts``): one class, no twin.
    """

    greeting: float = _f(10.0, gt=0)  # PROXY header and TLS handshake before the greeting
    idle: float = _f(300.0, gt=0)  # a whole command line must arrive within this (not just some bytes)
    data: float = _f(300.0, gt=0)  # allowance for a body, extended by min_data_rate
    min_data_rate: int = _f(500, min=1)  # octets/s; each octet buys 1/min_data_rate s (smtpd_min_data_rate)
    tls_handshake: float = _f(30.0, gt=0)
    sink: float = _f(30.0, gt=0)  # queue commit; past it the client gets 451 4.3.0
    hook: float = _f(60.0, gt=0)  # any one hook call; past it the client gets 451 4.3.0
    close: float = _f(30.0, gt=0)  # graceful close: how long open transactions may finish
    reverse_lookup: float = _f(1.5, gt=0)
    greeting_delay: float = _f(0.0, min=0)  # > 0: wait, and refuse clients that talk first (pregreet)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Certificates and parameters shared by every TLS listener (``aio.tls.server_context`` takes it).

    Attributes:
        cert_file: PEM certificate chain; with ``key_file`` also ``None``, a self-signed
            certificate is generated.
        key_file: PEM private key for ``cert_file``.
        sni: Server name (exact, or ``*.example.com`` for one label) to a
            ``(cert_file, key_file)`` pair; other names get the default certificate.
        client_ca_file: When set, client certificates are requested and verified against it.
        require_client_cert: Refuse clients without a certificate (needs ``client_ca_file``).
        min_version: ``"TLSv1.2"`` or ``"TLSv1.3"``.
        ciphers: OpenSSL cipher string for TLS 1.2; ``None`` keeps the ``ssl`` default.
        self_signed_dir: Where a generated pair is cached; ``None`` uses a private
            directory under the system temp dir.
    """

    cert_file: str | None = None
    key_file: str | None = None
    sni: Mapping[str, tuple[str, str]] = field(default_factory=lambda: MappingProxyType({}), metadata={"kind": "sni"})
    client_ca_file: str | None = None
    require_client_cert: bool = False
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: str | None = None
    self_signed_dir: str | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """SASL mechanisms offered, and who checks the credentials (the built-in plugins)."""

    methods: tuple[str, ...] = _f((), upper=True, items=AUTH_METHODS)  # RFC 4954 SASL mechanisms
    allow_insecure: bool = False  # offer AUTH before TLS
    failure_delay: float = _f(1.0, min=0)
    backend: Literal["none", "file", "dovecot"] = "none"  # none: only [[plugins]] can accept AUTH
    file: str | None = _f(None, nonempty=True)  # backend = "file": user:{SCHEME}secret lines
    socket: str | None = _f(None, nonempty=True)  # backend = "dovecot": a unix socket PATH or HOST:PORT
    timeout: float = _f(5.0, gt=0)  # backend = "dovecot": connect and answer within this


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Peers trusted to send PROXY headers, XCLIENT and XFORWARD (ARCHITECTURE.md rule 9)."""

    proxy: tuple[Network, ...] = _f((), kind="networks")
    xclient: tuple[Network, ...] = _f((), kind="networks")
    xforward: tuple[Network, ...] = _f((), kind="networks")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Which recipients are taken, from whom (the built-in relay-policy plugin, when ``domains`` is set).

    ``domains`` and ``recipients`` items may be ``"file:PATH"`` (one entry a line, ``#`` comments).
    """

    domains: tuple[str, ...] = ()  # mail for these domains is taken from anyone; () = every recipient
    relay_networks: tuple[Network, ...] = _f((), kind="networks")  # clients that may relay elsewhere
    recipients: str | None = _f(None, nonempty=True)  # "file:PATH": the only local addresses taken


@dataclass(frozen=True, slots=True)
class ClientLimitsConfig:
    """Per-client limits shared by every worker and pod (the built-in client-limits plugin, when any
    limit is above 0; 0 = no limit). Counted in the queue's Redis, or with Maildir in ``state_file``."""

    connections: int = _f(0, min=0)  # concurrent connections per client; past it 421 4.7.0
    connection_rate: int = _f(0, min=0)  # new connections per client per minute; past it 421 4.7.0
    message_rate: int = _f(0, min=0)  # MAIL per client per minute; past it 450 4.7.1
    recipient_rate: int = _f(0, min=0)  # RCPT per client per minute; past it 452 4.5.3
    auth_failures: int = _f(0, min=0)  # failed AUTH per client per hour; then AUTH gets 421 4.7.0
    ipv6_prefix: int = _f(64, min=1)  # IPv6 clients are counted per prefix of this length (<= 128)
    exempt: tuple[Network, ...] = _f((), kind="networks")  # clients never limited
    redis: str | None = _f(None, nonempty=True)  # a Redis URL for the counts; unset: the queue's, if Redis
    state_file: str | None = _f(None, nonempty=True)  # without Redis: the host's shared SQLite file
    timeout: float = _f(0.5, gt=0)  # seconds a check waits for its store; then the client is let through

    @property
    def enabled(self) -> bool:
        return any((self.connections, self.connection_rate, self.message_rate, self.recipient_rate,
                    self.auth_failures))


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """One ``[[plugins]]`` table: ``use`` names a factory, ``options`` are its keyword arguments."""

    use: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """ESMTP extensions offered, and verbs answered ``502``."""

    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    chunking: bool = True
    dsn: bool = True
    enhancedstatuscodes: bool = True
    disabled_commands: tuple[str, ...] = _f((), upper=True)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``RedisStreamSink`` options (when ``queue`` is a redis URL)."""

    stream: str = _f("smtpfront:inbound", nonempty=True)
    maxlen: int | None = _f(None, min=1)
    durability: Literal["ack", "replicated"] = "ack"
    replicas: int = _f(1, min=1)
    wait_timeout_ms: int = _f(1000, min=1)
    dedup_window: int = _f(900, min=0)
    high_water: int | None = _f(None, min=1)
    group: str | None = None
    inflight_budget: int = _f(64 * 1024 * 1024, min=1)
    large_threshold: int = _f(1024 * 1024, min=0)  # body octets past which it goes to chunk keys; 0 = never
    timeout: float = _f(10.0, gt=0)
    monitor_interval: float = _f(1.0, gt=0)


@dataclass(frozen=True, slots=True)
class MaildirConfig:
    fsync: bool = True  # (when ``queue`` is maildir:DIR)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = _f("127.0.0.1:9101", kind="address")  # /metrics, /healthz, /readyz
    agent_check_listen: str | None = _f(None, kind="address")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["json", "plain"] = "json"
    sessions: bool = True  # session logs (smtpfront.session)


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    graceful_timeout: float = _f(30.0, gt=0)  # SIGTERM: drain this long, then kill
    heartbeat_timeout: float = _f(30.0, gt=0)  # a silent worker is killed and respawned
    drain_delay: float = _f(0.0, min=0)  # SIGTERM: drain (agent, /readyz) this long before workers stop
    respawn_backoff: float = _f(0.1, min=0)  # first delay after a crash, doubled per quick crash
    respawn_backoff_max: float = _f(5.0, min=0)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """``smtpfront consume`` (it reads ``queue`` and ``redis.stream`` as ``serve`` writes them)."""

    group: str = _f("smtpfront", nonempty=True)  # the consumer group, created when missing
    name: str | None = None  # this consumer in the group; unset: HOSTNAME-PID
    workers: int = _f(16, min=1)  # deliveries in flight at once (one process)
    max_deliveries: int = _f(5, min=1)  # then the entry goes to STREAM:dead
    claim_idle_ms: int = _f(60000, min=1)  # entries pending this long are delivered again
    forget_idle_ms: int = _f(3600000, min=0)  # group members idle this long with nothing pending go; 0: never
    block_ms: int = _f(5000, min=1)  # longest wait for new entries
    exec_timeout: float = _f(60.0, gt=0)  # --exec: seconds before the command is killed (retried)
    metrics_listen: str | None = _f(None, kind="address")  # /metrics and /healthz; unset: off


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of ``smtpfront serve`` (and ``consume``, ``queue``)."""

    hostname: str = field(default_factory=lambda: socket.getfqdn() or "localhost", metadata={"nonempty": True})
    banner: str = "ESMTP smtpfront"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={"min": 1})
    queue: str = _f("maildir:./spool", kind="queue")
    reverse_lookup: bool = False
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    client_limits: ClientLimitsConfig = field(default_factory=ClientLimitsConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    maildir: MaildirConfig = field(default_factory=MaildirConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    plugins: tuple[PluginConfig, ...] = ()  # [[plugins]] tables, in order (file only)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)


# -- keys ---------------------------------------------------------------------------------

@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata) for f in dataclasses.fields(cls)}


_SECTIONS: dict[str, type] = {n: cast(type, t) for n, (t, _) in _fields(Config).items() if dataclasses.is_dataclass(t)}
_TOP = [n for n in _fields(Config) if n not in _SECTIONS and n not in ("listeners", "plugins")]


@functools.cache
def keys() -> tuple[str, ...]:
    """Every dotted key (``listen`` and ``listeners.FIELD`` act on all listeners)."""
    out = [*_TOP, "listen", *(f"listeners.{n}" for n in _fields(ListenerConfig))]
    return (*out, *(f"{s}.{n}" for s, cls in _SECTIONS.items() for n in _fields(cls)))


def env_name(key: str) -> str:
    """``limits.message_size`` → ``SMTPFRONT_LIMITS__MESSAGE_SIZE``."""
    return "SMTPFRONT_" + key.upper().replace(".", "__")


def _spec(key: str) -> tuple[Any, Mapping[str, Any]]:
    if key == "listen":
        return tuple[str, ...], {"kind": "addresses"}
    section, _, name = key.rpartition(".")
    return _fields(ListenerConfig if section == "listeners" else _SECTIONS[section] if section else Config)[name]


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


# -- values -------------------------------------------------------------------------------

_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_EXPECTED = {str: "a string (one line)", bool: "a boolean (true/false, 1/0, yes/no)", int: "an integer",
             float: "a number"}
_HOST = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → ``(host, port)``; port 0 (a free port, for tests) is allowed.

    Raises:
        ValueError: not an address, IPv6 without brackets, a port outside 0..65535.
    """
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT or [IPv6]:PORT")
    try:
        if host.startswith("[") and host.endswith("]"):
            host = str(ipaddress.IPv6Address(host[1:-1]))
        elif ":" in host:
            raise ValueError("an IPv6 address needs brackets: [IPv6]:PORT")
        elif host.replace(".", "").isdigit():
            host = str(ipaddress.IPv4Address(host))
        elif not _HOST.fullmatch(host):
            raise ValueError(f"not a host name or IP address: {host!r} (all addresses: 0.0.0.0 or [::])")
    except ipaddress.AddressValueError as exc:
        raise ValueError(str(exc)) from None
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"expected a port in 1..65535 (0: any free port), got {port!r}")
    return host, int(port)


def _address(key: str, value: object) -> str:
    text = cast(str, _scalar(key, str, value, False))
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        raise ConfigError(key, f"{exc} (in {_show(text)})") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _items(key: str, value: object, text: bool) -> list[object]:
    if isinstance(value, str) and value.startswith("file:"):  # a list kept in a file (policy.domains)
        return [value]
    if text and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise ConfigError(key, f"expected a list, got {_show(value)}")


def _network(key: str, value: object) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(cast(str, _scalar(key, str, value, False)).strip(), strict=False)
    except ValueError:
        raise ConfigError(key, f"expected IP networks (10.0.0.0/8, ::1), got {_show(value)}") from None


def _sni(key: str, value: object, text: bool) -> Mapping[str, tuple[str, str]]:
    if text and isinstance(value, str):  # name=CERT:KEY,name=CERT:KEY
        value = {n.strip(): f.split(":") for n, _, f in (str(i).partition("=") for i in _items(key, value, True))}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f'expected a table of name = ["cert_file", "key_file"], got {_show(value)}')
    out = {}
    for name, files in value.items():
        bare = str(name).rstrip(".").removeprefix("*.")
        if "*" in bare or not _HOST.fullmatch(bare):
            raise ConfigError(key, f"expected server names (only a leading '*.' wildcard), got {_show(name)}")
        if not (isinstance(files, list | tuple) and len(files) == 2 and all(isinstance(f, str) and f for f in files)):
            raise ConfigError(f"{key}.{name}", f'expected ["cert_file", "key_file"], got {_show(files)}')
        out[str(name)] = (files[0], files[1])
    return MappingProxyType(out)  # read-only, as the rest of a frozen Config


def _queue(key: str, value: object) -> str:
    url = cast(str, _scalar(key, str, value, False))
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in QUEUE_SCHEMES:
        raise ConfigError(key, f"expected a URL with a scheme among {', '.join(QUEUE_SCHEMES)}, got {_show(url)}")
    if scheme.lower().startswith("redis") and not (rest.startswith("//") and urlsplit(url).netloc):
        raise ConfigError(key, f"expected {scheme}://[USER:PASSWORD@]HOST:PORT/DB, got {_show(url)}")
    if scheme.lower() == "maildir" and not rest:
        raise ConfigError(key, "expected maildir:DIRECTORY, e.g. maildir:/var/spool/smtpfront")
    return url


def _scalar(key: str, tp: Any, value: object, text: bool) -> object:
    if get_origin(tp) is Literal:  # choices match case-insensitively: "info" is INFO
        folded = {str(c).lower(): c for c in get_args(tp)}
        if isinstance(value, str) and value.strip().lower() in folded:
            return folded[value.strip().lower()]
        raise ConfigError(key, f"expected one of {', '.join(map(str, get_args(tp)))}, got {_show(value)}")
    got = value
    if text and isinstance(value, str) and tp is bool:
        value = _BOOLS.get(value.strip().lower(), value)
    elif text and isinstance(value, str) and tp in (int, float):
        with contextlib.suppress(ValueError):
            value = tp(value.strip())
    if tp is float and type(value) is int:
        value = float(value)
    if (type(value) is not tp or (isinstance(value, float) and not math.isfinite(value))
            or (isinstance(value, str) and re.search(r"[\x00\r\n]", value))):
        raise ConfigError(key, f"expected {_EXPECTED[tp]}, got {_show(got)}")
    return value


def _coerce(key: str, value: object, text: bool) -> object:
    """Check (and, from text, parse) one value for ``key``; raises ConfigError."""
    tp, meta = _spec(key)
    if type(None) in get_args(tp):  # X | None: "" unsets
        if value is None or value == "":
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
    kind = meta.get("kind")
    if kind in ("addresses", "networks"):
        one = _address if kind == "addresses" else _network
        if not (found := tuple(one(key, v) for v in _items(key, value, text))) and kind == "addresses":
            raise ConfigError(key, "expected at least one HOST:PORT")
        return found
    if kind == "sni":
        return _sni(key, value, text)
    if kind is not None:
        return _address(key, value) if kind == "address" else _queue(key, value)
    if get_origin(tp) is tuple:
        items = [cast(str, _scalar(key, str, v, False)).strip() for v in _items(key, value, text)]
        items = [v.upper() for v in items] if meta.get("upper") else items
        allowed = meta.get("items")
        if bad := [v for v in items if not v or (allowed and v not in allowed)]:
            hint = f"one of {', '.join(allowed)}" if allowed else "names"
            raise ConfigError(key, f"expected a list of {hint}, got {_show(bad[0])}")
        return tuple(items)
    out = _scalar(key, tp, value, text)
    what = "an integer" if tp is int else "a number"
    if "min" in meta and cast(float, out) < meta["min"]:
        raise ConfigError(key, f"expected {what} >= {meta['min']}, got {_show(out)}")
    if "gt" in meta and cast(float, out) <= meta["gt"]:
        raise ConfigError(key, f"expected {what} > {meta['gt']}, got {_show(out)}")
    if meta.get("nonempty") and not cast(str, out).strip():
        raise ConfigError(key, "expected a non-empty string")
    return out


# -- loading ------------------------------------------------------------------------------

def _table(where: str, key_prefix: str, table: Mapping[str, object]) -> dict[str, object]:
    """One TOML table; ``where`` names it in errors (``listeners[2]``)."""
    names = list(_fields(ListenerConfig if key_prefix == "listeners" else _SECTIONS[key_prefix]))
    if key_prefix == "listeners" and "address" not in table:
        raise ConfigError(f"{where}.address", "required (HOST:PORT or [IPv6]:PORT)")
    out = {}
    for name, value in table.items():
        if name not in names:
            raise ConfigError(f"{where}.{name}", "unknown key" + _suggest(name, names))
        try:
            out[name] = _coerce(f"{key_prefix}.{name}", value, False)
        except ConfigError as exc:
            raise ConfigError(where + exc.key[len(key_prefix):], exc.message) from None
    return out


def _from_file(path: str, raw: dict[str, dict[str, object]]) -> list[dict[str, object]] | None:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(path, f"cannot read the file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    listeners = None
    for name, value in doc.items():
        if name == "plugins":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(name, "expected an array of tables ([[plugins]])")
            raw[""]["plugins"] = tuple(_plugin(f"plugins[{i}]", t) for i, t in enumerate(value))
        elif name == "listeners":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(name, "expected an array of tables ([[listeners]])")
            listeners = [_table(f"listeners[{i}]", "listeners", t) for i, t in enumerate(value)]
        elif name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(name, f"expected a table ([{name}]), got {_show(value)}")
            raw[name] = _table(name, name, value)
        elif name in _TOP:
            raw[""][name] = _coerce(name, value, False)
        else:
            raise ConfigError(name, "unknown key" + _suggest(name, [*_TOP, "listeners", "plugins", *_SECTIONS]))
    return listeners


def _plugin(where: str, table: Mapping[str, object]) -> PluginConfig:
    """One ``[[plugins]]`` table: ``use`` (required) and ``options`` (a table)."""
    for name in table:
        if name not in ("use", "options"):
            raise ConfigError(f"{where}.{name}", "unknown key" + _suggest(name, ["use", "options"]))
    use = table.get("use")
    if not isinstance(use, str) or not use.strip() or re.search(r"\s", use.strip()):
        raise ConfigError(f"{where}.use", f'expected "package.module:Factory" or a plugin name, got {_show(use)}')
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.options", f"expected a table (options = {{ … }}), got {_show(options)}")
    return PluginConfig(use.strip(), MappingProxyType(dict(options)))


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    names = {env_name(k): k for k in keys()}
    found = {key: (env[alias], alias) for alias, key in ENV_ALIASES.items() if alias in env}
    for name, value in env.items():
        if name in names:
            found[names[name]] = (value, name)
        elif name.startswith("SMTPFRONT_") and "__" in name:  # our namespace: a typo is an error
            raise ConfigError(name, "unknown setting" + _suggest(name, list(names)))
    out = {}
    for key, (value, source) in found.items():
        try:
            out[key] = _coerce(key, value, True)
        except ConfigError as exc:
            if value.strip():  # an empty variable that is no valid value counts as not set
                raise ConfigError(exc.key, f"{exc.message} (from {source})") from None
    return out


def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> Config:
    """Build the configuration: defaults < file < environment < overrides.

    Args:
        path: a TOML file, or ``None`` for none.
        env: the environment (default ``os.environ``); ``SMTPFRONT_*`` variables are read.
        overrides: dotted keys from the command line; a ``None`` value means "not given".

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or out of range, or
            settings that contradict each other.
    """
    raw: dict[str, dict[str, object]] = {name: {} for name in ("", *_SECTIONS)}
    listeners = _from_file(path, raw) if path is not None else None
    flat = _from_env(os.environ if env is None else env)
    for key, value in (overrides or {}).items():
        if key not in keys():
            raise ConfigError(key, "unknown key" + _suggest(key, list(keys())))
        if value is not None:
            flat[key] = _coerce(key, value, True)
    if "listen" in flat:
        listeners = [{"address": a} for a in cast(tuple[str, ...], flat.pop("listen"))]
    listeners = listeners if listeners is not None else [{}]
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        for target in listeners if section == "listeners" else [raw[section]]:
            target[name] = value
    config = Config(**cast(dict[str, Any], raw[""]),
                    listeners=tuple(ListenerConfig(**cast(dict[str, Any], t)) for t in listeners),
                    **{s: cls(**raw[s]) for s, cls in _SECTIONS.items()})
    _check(config)
    return config


def _check(c: Config) -> None:
    """Rules that span fields."""
    if (c.tls.cert_file is None) != (c.tls.key_file is None):
        missing = "tls.key_file" if c.tls.key_file is None else "tls.cert_file"
        raise ConfigError(missing, "tls.cert_file and tls.key_file go together; only one is set")
    if c.tls.require_client_cert and c.tls.client_ca_file is None:
        raise ConfigError("tls.require_client_cert", "needs tls.client_ca_file to verify certificates against")
    if c.supervisor.respawn_backoff_max < c.supervisor.respawn_backoff:
        raise ConfigError("supervisor.respawn_backoff_max", "expected a number >= supervisor.respawn_backoff")
    if not c.listeners:
        raise ConfigError("listeners", "expected at least one listener")
    seen: dict[str, str] = {}
    bound = [("metrics.listen", c.metrics.listen), ("metrics.agent_check_listen", c.metrics.agent_check_listen)]
    for key, address in bound + [(f"listeners[{i}].address", lst.address) for i, lst in enumerate(c.listeners)]:
        if address in seen and not address.endswith(":0"):  # port 0: each bind picks its own
            raise ConfigError(key, f"{address} is also {seen[address]}")
        if address is not None:
            seen[address] = key
    _check_auth(c)
    for i, lst in enumerate(c.listeners):
        if lst.auth_required and not c.auth.methods:
            raise ConfigError(f"listeners[{i}].auth_required", f"needs auth.methods (of {', '.join(AUTH_METHODS)})")
        if lst.proxy_protocol and not c.trust.proxy:
            raise ConfigError(f"listeners[{i}].proxy_protocol", "needs trust.proxy, the networks of the proxies")
        if lst.require_tls and lst.tls == "none":
            raise ConfigError(f"listeners[{i}].require_tls", 'contradicts tls = "none"')


def auth_socket(value: str) -> str | tuple[str, int]:
    """``auth.socket``: a unix socket path, or ``HOST:PORT`` → ``(host, port)``; raises ValueError."""
    if "/" in value or ":" not in value:
        return value
    return parse_address(value)


def _check_auth(c: Config) -> None:
    a = c.auth
    if a.backend == "file" and a.file is None:
        raise ConfigError("auth.file", 'needs a path with auth.backend = "file" (make one with: smtpfront passwd)')
    if a.backend == "dovecot":
        if a.socket is None:
            raise ConfigError("auth.socket", 'needs a unix socket path or HOST:PORT with auth.backend = "dovecot"')
        try:
            auth_socket(a.socket)
        except ValueError as exc:
            raise ConfigError("auth.socket", f"{exc} (a unix socket path, or HOST:PORT)") from None
        if unfit := [m for m in a.methods if m not in ("PLAIN", "LOGIN")]:
            raise ConfigError("auth.methods", f"{', '.join(unfit)} cannot be checked by the dovecot backend (it is "
                                              "given a password: PLAIN and LOGIN only)")
    for key in ("domains", "recipients"):
        value = getattr(c.policy, key)
        for item in (value,) if isinstance(value, str) else value or ():
            if key == "recipients" and not item.startswith("file:"):
                raise ConfigError("policy.recipients", f'expected "file:PATH", got {_show(item)}')
            if item.startswith("file:") and not item[5:].strip():
                raise ConfigError(f"policy.{key}", 'expected "file:PATH" with a path')
    if c.client_limits.ipv6_prefix > 128:
        raise ConfigError("client_limits.ipv6_prefix", "expected a prefix length from 1 to 128")
    if c.client_limits.redis is not None and c.client_limits.redis.partition(":")[0] not in REDIS_SCHEMES:
        raise ConfigError("client_limits.redis", f"expected a Redis URL ({', '.join(REDIS_SCHEMES)}), "
                                                 f"got {_show(c.client_limits.redis)}")
    if c.policy.recipients is not None and not c.policy.domains:
        raise ConfigError("policy.recipients", "needs policy.domains (the domains whose users it lists)")


def needs_auth(c: Config, listener: ListenerConfig) -> bool:
    """True when MAIL needs AUTH on ``listener`` (``auth_required``, or submission with methods)."""
    return listener.auth_required or (listener.mode == "submission" and bool(c.auth.methods))


def _open(c: Config, listener: ListenerConfig) -> bool:
    host = listener.host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    relay_policy = bool(c.policy.domains) or any(p.use == "relay-policy" for p in c.plugins)
    return not loopback and listener.mode != "lmtp" and not needs_auth(c, listener) and not relay_policy


def warnings(c: Config) -> list[str]:
    """What a valid configuration does that is probably not meant: ``check-config`` and ``serve`` say it."""
    out = []
    for i, listener in enumerate(c.listeners):
        if _open(c, listener):
            out.append(f"listeners[{i}]: {listener.address} takes mail for any recipient from anyone (an open "
                       f"relay): set policy.domains (and policy.relay_networks) or auth_required")
    for key, backend in (("file", "file"), ("socket", "dovecot")):
        if getattr(c.auth, key) is not None and c.auth.backend != backend:
            out.append(f'auth.{key} is set but not used: auth.backend is "{c.auth.backend}", not "{backend}"')
    if c.auth.backend == "file" and "XOAUTH2" in c.auth.methods:
        out.append('auth.methods: XOAUTH2 is not checked by the file backend; only a [[plugins]] hook can accept it')
    for key in ("xclient", "xforward"):
        for proxy in c.trust.proxy:
            shared = [net for net in getattr(c.trust, key) if net.version == proxy.version and net.overlaps(proxy)]
            if shared:
                out.append(f"trust.{key}: {', '.join(map(str, shared))} overlaps trust.proxy {proxy}: behind a "
                           f"proxy, {key.upper()} is judged on the client the PROXY header names, not on the "
                           f"proxy; list the relays' own addresses in trust.{key}, not the proxy's")
    return out


# -- rendering ----------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
_SECRET = re.compile(r"(://[^/@:]*:)[^/@]+@|([?&](?:password|pass)=)[^&#]*", re.IGNORECASE)


def _mask(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m[1]}***@" if m[1] else f"{m[2]}***", text)


def _toml(value: object, mask: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(_mask(value) if mask else value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml(str(k), False)} = {_toml(v, mask)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v, mask) for v in value) + "]"
    return _toml(str(value), mask)  # a network


def _lines(obj: Any, mask: bool, names: list[str] | None = None) -> list[str]:
    values = [(n, getattr(obj, n)) for n in names or [f.name for f in dataclasses.fields(obj)]]
    return [f"# {n} is unset" if v is None else f"{n} = {_toml(v, mask)}" for n, v in values]


def render(config: Config, *, mask_secrets: bool = True) -> str:
    """The effective configuration as TOML, every key included (for ``check-config``).

    Args:
        config: the configuration to show.
        mask_secrets: replace passwords in URLs with ``***``.

    Returns:
        TOML that :func:`load_config` reads back to an equal Config (when nothing was masked).
    """
    out = ["# smtpfront: effective configuration", *_lines(config, mask_secrets, _TOP)]
    for listener in config.listeners:
        out += ["", "[[listeners]]", *_lines(listener, mask_secrets)]
    for section in _SECTIONS:
        out += ["", f"[{section}]", *_lines(getattr(config, section), mask_secrets)]
    for plugin in config.plugins:
        options = {k: "***" if mask_secrets and _SECRET_KEY.search(k) else v for k, v in plugin.options.items()}
        out += ["", "[[plugins]]", f"use = {_toml(plugin.use, False)}", f"options = {_toml(options, mask_secrets)}"]
    return "\n".join(out) + "\n"


# Defaults that depend on the machine are described, so the generated table is the same everywhere.
_DESCRIBED = {"hostname": "the host's FQDN", "workers": "the number of CPUs",
              "listen": "127.0.0.1:2525 (flag and environment only; a file uses [[listeners]])"}


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ", ".join(_shown(v) for v in value) or "(none)"
    if isinstance(value, Mapping):
        return "(none)" if not value else ", ".join(f"{k}" for k in value)
    return str(value)


def options_markdown() -> str:
    """The README's table of every key: its default and environment variable (generated, never edited)."""
    base = Config()
    listener = ListenerConfig()
    rows = ["| key | default | environment |", "|---|---|---|"]
    for key in keys():
        if key in _DESCRIBED:
            default = _DESCRIBED[key]
        elif key.startswith("listeners."):
            default = _shown(getattr(listener, key.split(".", 1)[1]))
        elif "." in key:
            section, name = key.split(".", 1)
            default = _shown(getattr(getattr(base, section), name))
        else:
            default = _shown(getattr(base, key))
        aliases = [alias for alias, target in ENV_ALIASES.items() if target == key]
        env = ", ".join(f"`{name}`" for name in [env_name(key), *aliases])
        rows.append(f"| `{key}` | `{default}` | {env} |")
    return "\n".join(rows) + "\n"
