"""The reader of a PROXY protocol header (state PROXY, trusted listeners only).

The header's grammar (v1 text, v2 binary) is ``proxy.py``'s; once it is read the session
waits for its greeting, and any byte already behind the header is early talk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import Event, ProxyHeader
from .proxy import parse_proxy_header
from .sentinels import NEED_DATA, Sentinel
from .states import AFTER_PROXY

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["read_proxy"]


def read_proxy(conn: ServerConnection) -> Event | Sentinel:
    """The header's event, or ``NEED_DATA`` until it is complete."""
    conn.verb = "PROXY"
    buf = conn.buffer
    parsed = parse_proxy_header(buf.view())
    if parsed is None:
        return NEED_DATA
    info, consumed = parsed
    buf.consume(consumed)
    conn.state = AFTER_PROXY
    conn.early_talk = buf.end > buf.start
    return ProxyHeader(info)
