"""``relay-policy``: who may send mail to which recipients (Postfix's ``reject_unauth_destination``).

A recipient in one of the local ``domains`` is taken from anyone (``postmaster`` without a
domain too, RFC 5321 §4.5.1); any other recipient only from a client that authenticated or
whose address is in ``relay_networks``; otherwise ``554 5.7.1 Relay access denied``. The
address judged is the client's own (``session.client_address``: the one a PROXY header or a
trusted XCLIENT named, never the proxy's). Domains match exactly, case-insensitively; an entry
``.example.com`` matches every subdomain of example.com.

With ``recipients``, a recipient in a local domain must be listed: ``user@example.com``, or
``@example.com`` for every user of that domain, compared case-insensitively; others get
``550 5.1.1``. ``domains`` and
``recipients`` items may be ``file:PATH``: one entry a line, ``#`` comments; read when the
plugin is built (each worker's start, so again on SIGHUP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from ..core.events import Address, RcptParams
from ..core.replies import Reply
from ..hooks import Hooks, Session, rejection_reason

__all__ = ["RelayPolicy", "RELAY_DENIED", "UNKNOWN_USER"]

RELAY_DENIED = rejection_reason(Reply(554, "5.7.1", "Relay access denied"), "relay_denied")
UNKNOWN_USER = rejection_reason(Reply(550, "5.1.1", "Recipient address rejected: user unknown"), "unknown_recipient")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _entries(items: str | Iterable[str], what: str) -> list[str]:
    """Expand ``file:PATH`` items; raises OSError or ValueError."""
    out: list[str] = []
    for item in [items] if isinstance(items, str) else items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: expected strings, got {item!r}")
        if item.startswith("file:"):
            with open(item[5:], encoding="utf-8") as fh:
                out += [line.split("#", 1)[0].strip() for line in fh]
        else:
            out.append(item.strip())
    return [entry for entry in out if entry]


def _domain(entry: str) -> str:
    name = entry.lower().rstrip(".")
    bare = name.removeprefix(".")
    labels = bare.split(".")
    if not bare or not all(0 < len(label) < 64 and label.strip("-") == label for label in labels) or any(
            not (c.isalnum() or c in "-.") for c in bare):
        raise ValueError(f"domains: {entry!r} is not a domain name")
    return name


class RelayPolicy(Hooks):
    """Refuse relaying for clients that are neither authenticated nor in ``relay_networks``."""

    name = "relay-policy"

    def __init__(self, domains: str | Sequence[str], relay_networks: Sequence[str] = (),
                 recipients: str | Sequence[str] | None = None) -> None:
        names = [_domain(entry) for entry in _entries(domains, "domains")]
        if not names:
            raise ValueError("domains: expected at least one domain")
        self.domains = frozenset(n for n in names if not n.startswith("."))
        self.parents = tuple(n for n in names if n.startswith("."))
        try:
            self.networks: tuple[Network, ...] = tuple(
                ipaddress.ip_network(str(n).strip(), strict=False) for n in relay_networks)
        except ValueError as exc:
            raise ValueError(f"relay_networks: {exc}") from None
        self.recipients: frozenset[str] | None = None
        if recipients is not None:
            self.recipients = frozenset(_key(e) for e in _entries(recipients, "recipients"))

    def is_local(self, domain: str) -> bool:
        """True for a domain this server takes mail for."""
        name = domain.lower().rstrip(".")
        return not name or name in self.domains or any(name.endswith(p) for p in self.parents)

    def may_relay(self, session: Session) -> bool:
        """An authenticated client, or one whose own address is in ``relay_networks``."""
        if session.user:
            return True
        try:
            address = ipaddress.ip_address(session.client_address.removeprefix("IPv6:"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)

    async def on_rcpt_to(self, session: Session, address: Address, params: RcptParams) -> Reply | None:
        if not self.is_local(address.domain):
            return None if self.may_relay(session) else RELAY_DENIED
        if self.recipients is None or not address.domain:  # <postmaster> is always taken
            return None
        domain = address.domain.lower().rstrip(".")
        if f"{address.local_part}@{domain}".lower() in self.recipients or f"@{domain}" in self.recipients:
            return None
        return UNKNOWN_USER


def _key(entry: str) -> str:
    local, sep, domain = entry.rpartition("@")
    if not sep or not domain:
        raise ValueError(f"recipients: {entry!r} is neither user@domain nor @domain")
    return f"{local}@{domain.rstrip('.')}".lower()
