"""``client-limits``: per-client limits shared by every worker and every pod (Postfix's anvil).

Enabled by ``[client_limits]`` (any limit above 0), or ``[[plugins]] use = "client-limits"``.
Each limit is per client, 0 = none:

- ``connections``: concurrent connections; past it the greeting is ``421 4.7.0`` and the
  connection closes. A slot is taken when the session opens (the address after PROXY) and
  given back when it ends, however it ends (``on_close``); a slot a killed worker never gave
  back lapses after ``hold`` seconds (the assembly makes it ``limits.session_duration`` + 60:
  no session lives longer).
- ``connection_rate`` (per minute): new connections; past it ``421 4.7.0`` too.
- ``message_rate`` (per minute): MAIL commands; past it ``450 4.7.1``.
- ``recipient_rate`` (per minute): RCPT commands; past it ``452 4.5.3``.
- ``auth_failures`` (per hour): failed AUTH attempts (``535``); once a client has that many,
  its next AUTH gets ``421 4.7.0`` and the connection closes. Postfix's nearest limit,
  ``smtpd_client_auth_rate_limit``, counts every AUTH command and answers ``450 4.7.1``;
  counting failures spares clients that log in often, and 421 ends the guesser's session.
- ``ipv6_prefix``: IPv6 clients are counted per prefix of this length (64: one site).
- ``exempt``: networks never limited (e.g. your own relays and submission clients).

The client is judged on its own address, ``session.client_address`` (after PROXY or a trusted
XCLIENT). A rate counts attempts within a fixed window that starts at the client's first one.

The counters live in a :class:`CounterStore`: the assembly passes the queue's Redis (keys with
TTLs, one atomic script per check, ``sink/redis/limits.py``) or, with Maildir, a file shared by
the host's workers (:class:`~smtpfront.policy.limits_local.LocalCounters`). A store that fails
or does not answer within ``timeout`` lets the client through: a limiter must never stop mail.
For ``PAUSE`` seconds after a failure the checks do not wait for the store at all (a Redis that
black-holes packets must not add ``timeout`` to every command); giving a slot back is still
tried. Each check let through calls ``report`` (the assembly counts it in
``smtpfront_client_limits_errors_total``) and one WARNING line per minute says so.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..core.events import Address, MailParams, RcptParams, SaslCredentials
from ..core.replies import Reply
from ..hooks import Hooks, Session, rejection_reason

__all__ = ["ClientLimits", "CounterStore", "client_key", "TOO_MANY_CONNECTIONS", "CONNECTION_RATE",
           "MESSAGE_RATE", "RECIPIENT_RATE", "AUTH_FAILURES"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MINUTE, HOUR = 60.0, 3600.0
LOG_EVERY = 60.0  # seconds between two "store unreachable" lines of one worker
PAUSE = 5.0  # after a failed check, the next ones let clients through at once for this long

TOO_MANY_CONNECTIONS = rejection_reason(
    Reply(421, "4.7.0", "Error: too many connections from your address, try again later"), "client_connections")
CONNECTION_RATE = rejection_reason(
    Reply(421, "4.7.0", "Error: too many connections from your address in a minute, try again later"),
    "client_connection_rate")
MESSAGE_RATE = rejection_reason(
    Reply(450, "4.7.1", "Error: too much mail from your address, try again later"), "client_message_rate")
RECIPIENT_RATE = rejection_reason(
    Reply(452, "4.5.3", "Error: too many recipients from your address, try again later"), "client_recipient_rate")
AUTH_FAILURES = rejection_reason(
    Reply(421, "4.7.0", "Error: too many failed authentication attempts from your address"), "client_auth_failures")


class CounterStore(Protocol):
    """Where the counts live (every worker and pod that shares it sees the same numbers)."""

    async def acquire(self, key: str, member: str, limit: int, hold: float) -> bool:
        """Take one of ``limit`` slots under ``key`` for ``member`` (held at most ``hold`` s); False: all taken."""
        ...

    async def release(self, key: str, member: str) -> None:
        """Give ``member``'s slot back."""
        ...

    async def add(self, key: str, amount: int, window: float) -> int:
        """Add ``amount`` (0: only read) to ``key``'s count in a window of ``window`` s from its first
        event; the count after adding."""
        ...

    async def close(self) -> None:
        """Let go of connections and files."""
        ...


@functools.lru_cache(maxsize=4096)
def client_key(address: str, ipv6_prefix: int) -> str | None:
    """The name a client is counted under: its IPv4 address, or its IPv6 prefix (``2001:db8::/64``);
    None for an address that is not IP (a unix socket)."""
    try:
        ip = ipaddress.ip_address(address.removeprefix("IPv6:").removeprefix("IPV6:"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Held:
    """A session's connection slot."""

    key: str
    member: str


class ClientLimits(Hooks):
    """Refuse clients past their connection, rate or AUTH-failure limits (see the module docstring)."""

    name = "client-limits"

    def __init__(self, connections: int = 0, connection_rate: int = 0, message_rate: int = 0,
                 recipient_rate: int = 0, auth_failures: int = 0, ipv6_prefix: int = 64,
                 exempt: Sequence[str] = (), state_file: str | None = None, hold: float = 3660.0,
                 timeout: float = 0.5, store: CounterStore | None = None,
                 report: Callable[[], None] | None = None) -> None:
        limits = {"connections": connections, "connection_rate": connection_rate, "message_rate": message_rate,
                  "recipient_rate": recipient_rate, "auth_failures": auth_failures}
        for key, value in limits.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key}: expected a whole number >= 0 (0: no limit), got {value!r}")
        if not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix: expected a prefix length from 1 to 128, got {ipv6_prefix!r}")
        if hold <= 0 or timeout <= 0:
            raise ValueError("hold and timeout: expected numbers > 0")
        try:
            self.exempt: tuple[Network, ...] = tuple(ipaddress.ip_network(str(n).strip(), strict=False)
                                                     for n in exempt)
        except ValueError as exc:
            raise ValueError(f"exempt: {exc}") from None
        self.connections, self.connection_rate = connections, connection_rate
        self.message_rate, self.recipient_rate, self.auth_failures = message_rate, recipient_rate, auth_failures
        self.ipv6_prefix, self.hold, self.timeout = ipv6_prefix, float(hold), float(timeout)
        if store is None:
            from .limits_local import LocalCounters

            store = LocalCounters(state_file)
        self.store = store
        self._report = report
        self._token = secrets.token_hex(6)  # this worker's slots are told apart from every other pod's
        self._failures = 0
        self._logged_at = -LOG_EVERY
        self._counting: set[asyncio.Task[int | None]] = set()
        self._paused_until = 0.0

    # -- the client's name ------------------------------------------------------------------

    def key(self, session: Session) -> str | None:
        """The name ``session``'s client is counted under (None: exempt or not IP)."""
        address = session.client_address
        key = client_key(address, self.ipv6_prefix)
        if key is None or (self.exempt and _in(address, self.exempt)):
            return None
        return key

    # -- hooks ----------------------------------------------------------------------------------

    async def on_connect(self, session: Session) -> Reply | None:
        key = self.key(session)
        if key is None:
            return None
        if self.connection_rate:
            count = await self._ask(self.store.add(f"{{{key}}}:cr", 1, MINUTE))
            if count is not None and count > self.connection_rate:
                return CONNECTION_RATE
        if self.connections:
            member = f"{self._token}:{session.id}"
            admitted = await self._ask(self.store.acquire(f"{{{key}}}:conn", member, self.connections, self.hold))
            if admitted is False:
                return TOO_MANY_CONNECTIONS
            if admitted:
                session.data["client-limits"] = _Held(f"{{{key}}}:conn", member)
        return None

    async def on_close(self, session: Session) -> None:
        held = session.data.pop("client-limits", None)
        if isinstance(held, _Held):  # tried even while paused: the client is gone, nobody waits
            await self._ask(self.store.release(held.key, held.member), always=True)

    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool | Reply | None:
        if self.auth_failures:
            key = self.key(session)
            if key is not None:
                failed = await self._ask(self.store.add(f"{{{key}}}:af", 0, HOUR))
                if failed is not None and failed >= self.auth_failures:
                    return AUTH_FAILURES
        return None  # the AUTH backend decides

    async def on_mail_from(self, session: Session, address: Address, params: MailParams) -> Reply | None:
        return await self._rate(session, "mr", self.message_rate, MESSAGE_RATE)

    async def on_rcpt_to(self, session: Session, address: Address, params: RcptParams) -> Reply | None:
        return await self._rate(session, "rr", self.recipient_rate, RECIPIENT_RATE)

    def rejected(self, session: Session, reply: Reply) -> None:
        """A session listener (``reject``): a ``535`` counts as one failed AUTH attempt."""
        if reply.code == 535 and self.auth_failures:
            key = self.key(session)
            if key is not None:
                task = asyncio.get_running_loop().create_task(self._ask(self.store.add(f"{{{key}}}:af", 1, HOUR)))
                self._counting.add(task)  # held until done (the loop keeps only a weak reference)
                task.add_done_callback(self._counting.discard)

    async def _rate(self, session: Session, kind: str, limit: int, refusal: Reply) -> Reply | None:
        if not limit:
            return None
        key = self.key(session)
        if key is None:
            return None
        count = await self._ask(self.store.add(f"{{{key}}}:{kind}", 1, MINUTE))
        return refusal if count is not None and count > limit else None

    # -- a store that fails lets mail through ---------------------------------------------------

    async def _ask(self, work: Coroutine[Any, Any, T], always: bool = False) -> T | None:
        if not always and time.monotonic() < self._paused_until:
            work.close()
            self._failed(None)
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away, a file that cannot be written, a timeout
            self._failed(exc)
            return None

    def _failed(self, exc: BaseException | None) -> None:
        self._failures += 1
        if self._report is not None:
            self._report()
        now = time.monotonic()
        if exc is None:
            return  # paused: the failure that paused the checks was logged
        self._paused_until = now + PAUSE
        if now - self._logged_at >= LOG_EVERY:
            log.warning("client limits: the counter store failed (%s: %s); letting clients through "
                        "(%d failed checks since the last such line)", type(exc).__name__, exc or "no answer",
                        self._failures)
            self._logged_at, self._failures = now, 0

    async def close(self) -> None:
        await self.store.close()


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.removeprefix("IPv6:").removeprefix("IPV6:"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
