"""What one listener's connections are built from: core options, TLS, trust and timeouts.

Shared, frozen, one per listener. Per-connection differences (STARTTLS offered or not,
XCLIENT for a trusted peer) are derived from it when a connection is made.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..config import TimeoutsConfig
from ..core.options import Features, Limits, Policies
from .budget import MemoryBudget

__all__ = ["ListenerSettings", "Networks", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]


def parse_networks(specs: Iterable[str]) -> Networks:
    """``["10.0.0.0/8", "::1"]`` → networks; raises ValueError naming a bad entry."""
    out: list[Network] = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network: {spec!r}") from None
    return tuple(out)


@functools.lru_cache(maxsize=64)  # a few combinations per listener; replace() per connection was not free
def _with_features(f: Features, starttls: bool, xclient: bool, xforward: bool) -> Features:
    if (f.starttls, f.xclient, f.xforward) == (starttls, xclient, xforward):
        return f
    return dataclasses.replace(f, starttls=starttls, xclient=xclient, xforward=xforward)


def in_networks(address: str, networks: Networks) -> bool:
    """True when ``address`` (an IP, possibly IPv4-mapped IPv6) is inside one of ``networks``."""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Everything a connection on one listener is built from."""

    hostname: str = "localhost"
    banner: str = "ESMTP smtpfront"
    features: Features = field(default_factory=Features)
    limits: Limits = field(default_factory=Limits)
    policies: Policies = field(default_factory=Policies)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    tls_context: ssl.SSLContext | None = None
    implicit_tls: bool = False  # port 465 style: TLS before the greeting
    require_tls: bool = False  # MAIL/RCPT/DATA refused before STARTTLS
    require_auth: bool = False  # submission: MAIL refused before AUTH
    allow_insecure_auth: bool = False  # offer AUTH on plaintext connections
    auth_failure_delay: float = 1.0  # seconds before a 535 (slows password guessing)
    proxy_networks: Networks = ()  # peers that must send a PROXY header
    xclient_networks: Networks = ()
    xforward_networks: Networks = ()
    max_clients: int = 0  # per worker; 0 = unlimited
    reverse_lookup: bool = False
    buffer_size: int = 64 * 1024
    body_stream_limit: int = 1024 * 1024  # octets buffered for a slow on_data consumer
    idle_commands: int = 100  # RSET/NOOP/VRFY/HELP/EHLO in a row without MAIL; then 421 4.7.0
    session_duration: float = 3600.0  # seconds; the next command past it gets 421 4.4.2
    messages_per_session: int = 0  # accepted messages, then 421 4.7.0; 0 = unlimited
    # The worker's one memory budget for message octets, shared by all its listeners (aio/budget.py);
    # the default counts nothing.
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(0), compare=False)
    # features_for's answers by (XCLIENT, XFORWARD trusted): at most four, made once each.
    _variants: dict[tuple[bool, bool], Features] = field(default_factory=dict, init=False, repr=False,
                                                         compare=False)

    def features_for(self, client_address: str) -> Features:
        """The features one connection offers: STARTTLS and XCLIENT/XFORWARD depend on it."""
        trust = (in_networks(client_address, self.xclient_networks),
                 in_networks(client_address, self.xforward_networks))
        features = self._variants.get(trust)
        if features is None:
            starttls = self.tls_context is not None and not self.implicit_tls
            features = self._variants[trust] = _with_features(self.features, starttls, *trust)
        return features
