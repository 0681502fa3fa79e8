"""The Redis queue URL grammar: one server, Sentinel's master, or a Cluster's shard streams.

``redis://[USER:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS, ``unix://PATH``),
``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` (``rediss+sentinel://``),
``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/?shards=N`` (``rediss+cluster://``).
What each means for the sink is in :mod:`smtpfront.sink.redis.sink`; the consumer, the
queue tool and the per-client limits read the same URLs through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote

__all__ = ["DEFAULT_SHARDS", "MAX_SHARDS", "QueueURL", "check_stream_name", "parse_queue_url", "shard_stream"]

DEFAULT_SHARDS = 16
"""Shard streams of a ``redis+cluster://`` queue whose URL names no ``shards=N``."""

MAX_SHARDS = 16384  # one per hash slot is the most that can spread


@dataclass(frozen=True, slots=True)
class QueueURL:
    """A parsed Redis queue URL.

    ``kind`` ``"redis"`` (``redis://``, ``rediss://``, ``unix://``): ``url`` goes to redis-py
    as it is and no other field is set. ``"sentinel"``: ``nodes`` are the sentinels,
    ``service`` and ``db`` name the master's database. ``"cluster"``: ``nodes`` seed the
    slot map discovery, ``shards`` is the number of shard streams.
    """

    kind: Literal["redis", "sentinel", "cluster"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    service: str = ""
    db: int = 0
    shards: int = 0


_SCHEMES: dict[str, tuple[Literal["redis", "sentinel", "cluster"], bool]] = {
    "redis": ("redis", False), "rediss": ("redis", True), "unix": ("redis", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}


def parse_queue_url(url: str) -> QueueURL:
    """Parse a queue URL (the grammar above); ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"{url!r} is not a Redis URL: use redis://HOST:PORT/DB, rediss://…, unix://PATH, "
                         "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] or "
                         "redis+cluster://HOST:PORT[,HOST:PORT...]/?shards=N")
    kind, ssl = _SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if kind == "redis":
        if "shards" in params:
            raise ValueError(f"{url!r}: shards=N needs a redis+cluster:// URL")
        return QueueURL("redis", url)
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = 26379 if kind == "sentinel" else 6379
    nodes = tuple(_host_port(host, default_port, url) for host in hosts.split(","))
    service, db, shards = "", 0, 0
    if kind == "cluster":
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"{url!r}: Redis Cluster has database 0 only")
        text = params.pop("shards", str(DEFAULT_SHARDS))
        if not text.isdigit() or not 0 < int(text) <= MAX_SHARDS:
            raise ValueError(f"{url!r}: shards wants a number from 1 to {MAX_SHARDS}")
        shards = int(text)
    else:
        name, _, db_text = path.partition("/")
        service, db_text = unquote(name), db_text.strip("/") or "0"
        if not service:
            raise ValueError(f"{url!r}: name the master: redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]")
        if not db_text.isdigit():
            raise ValueError(f"{url!r}: the database is a number, got {db_text!r}")
        db = int(db_text)
    if params:
        raise ValueError(f"{url!r}: unknown parameter {', '.join(sorted(params))}"
                         + (" (a cluster URL takes shards=N)" if kind == "cluster" else ""))
    return QueueURL(kind, url, nodes, username, password, ssl, service, db, shards)


def _host_port(text: str, default: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [v6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = text, ""
    if not host or not (port or str(default)).isdigit() or not 0 < int(port or default) < 65536:
        raise ValueError(f"{url!r}: {text!r} is not HOST:PORT")
    return host, int(port or default)


def shard_stream(stream: str, shard: int) -> str:
    """Shard ``shard``'s stream in a cluster: ``STREAM:{SHARD}``, the shard number a hash tag."""
    return f"{stream}:{{{shard}}}"


def check_stream_name(stream: str) -> None:
    if "{" in stream or "}" in stream:
        raise ValueError(f"stream {stream!r}: a sharded stream name must not contain braces (hash tags)")
