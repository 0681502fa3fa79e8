"""Events the core produces, and the parsed values they carry.

Values (addresses, parameters) are frozen, slotted dataclasses; events are slotted
dataclasses, read-only by convention (not frozen: a frozen dataclass costs 2.5 times as
much to build, and the core builds ~7 per transaction). The ones built for every
transaction write their ``__init__`` out, so that mypyc compiles it (a dataclass-generated
one stays interpreted). Message content is
``memoryview``/``bytes``, never ``str``; only addresses, parameters and domain names are decoded, at the parser
edge (ASCII, or UTF-8 when the transaction declared SMTPUTF8).

Events marked *needs a reply* leave the connection waiting until the application
answers with :meth:`ServerConnection.send`; a positive reply (2xx/3xx) moves the
state machine, a negative one leaves it where it was.
"""

from __future__ import annotations

from builtins import memoryview  # a module name: mypyc looks a dataclass field's type up there
from dataclasses import dataclass, field

from .replies import Reply

__all__ = [
    "Address", "MailParams", "RcptParams", "Recipient", "ProxyInfo", "SaslCredentials",
    "Event", "Helo", "StartTls", "AuthCredentials", "AuthSecretNeeded",
    "MailFrom", "RcptTo", "Data", "BdatChunk",
    "BodyChunk", "BodyEnd", "Rset", "Noop", "Quit", "Vrfy", "Help", "Xclient", "Xforward",
    "ProxyHeader", "Rejected", "ConnectionClosed",
]


# -- values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class Address:
    """A mailbox from a reverse- or forward-path.

    ``local_part`` keeps a quoted local part quoted (``"john doe"``), as received.
    The null reverse-path ``<>`` is ``Address("", "")``; ``<postmaster>`` has an
    empty domain.
    """

    local_part: str
    domain: str

    def __init__(self, local_part: str, domain: str) -> None:
        # Written out: mypyc compiles this one, while a generated dataclass __init__ runs
        # interpreted (3.4k instructions instead of ~300 per MAIL and RCPT).
        object.__setattr__(self, "local_part", local_part)
        object.__setattr__(self, "domain", domain)

    @property
    def is_null(self) -> bool:
        """True for the null reverse-path ``<>`` (bounces, RFC 5321 §4.5.5)."""
        return not self.local_part and not self.domain

    @property
    def is_utf8(self) -> bool:
        """True when the address needs SMTPUTF8 (RFC 6531)."""
        return not (self.local_part.isascii() and self.domain.isascii())

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part


@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM (RFC 1870, 6152, 3030, 6531, 3461, 4954, 8689)."""

    size: int | None = None
    body: str | None = None  # "7BIT" | "8BITMIME" | "BINARYMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None  # xtext-decoded
    auth: str | None = None  # xtext-decoded mailbox, or "<>"
    requiretls: bool = False


@dataclass(frozen=True, slots=True)
class RcptParams:
    """ESMTP parameters of RCPT TO (RFC 3461 DSN)."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of SUCCESS/FAILURE/DELAY
    orcpt: tuple[str, str] | None = None  # (address type, xtext-decoded address)


@dataclass(frozen=True, slots=True)
class Recipient:
    """An accepted recipient: its address (possibly rewritten by a hook) and parameters."""

    address: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY protocol v1/v2 header says about the real client.

    ``local`` is True for a v2 LOCAL command or a v1 ``UNKNOWN`` line: the connection
    comes from the proxy itself (a health check) and the socket addresses stand.
    """

    version: int
    local: bool
    family: str  # "TCP4" | "TCP6" | "UNIX" | "UNKNOWN"
    source_address: str | None = None
    source_port: int | None = None
    dest_address: str | None = None
    dest_port: int | None = None
    tlvs: dict[int, bytes] = field(default_factory=dict)
    alpn: bytes | None = None
    authority: str | None = None  # the SNI the proxy saw
    ssl: bool = False  # the client connected to the proxy over TLS
    ssl_version: str | None = None
    ssl_cn: str | None = None
    netns: str | None = None


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    """What a finished SASL exchange yields, for the application to verify.

    Which fields are set depends on the mechanism: PLAIN/LOGIN give ``password``;
    CRAM-MD5 gives ``challenge`` and ``response`` (hex digest); XOAUTH2 gives
    ``token``; SCRAM-SHA-256 gives ``verified`` (the proof was checked against the
    secret the application supplied).
    """

    mechanism: str
    username: str
    authzid: str = ""
    password: str | None = None
    challenge: bytes | None = None
    response: str | None = None
    token: str | None = None
    verified: bool | None = None


# -- events ------------------------------------------------------------------------


class Event:
    """Base class of every event (for typing only)."""

    __slots__ = ()


@dataclass(slots=True)
class Helo(Event):
    """HELO, EHLO or LHLO (*needs a reply*). ``esmtp`` for EHLO/LHLO."""

    verb: str
    hostname: str
    esmtp: bool


@dataclass(slots=True)
class StartTls(Event):
    """STARTTLS (*needs a reply*); after a 220 the application runs the handshake
    and calls :meth:`ServerConnection.tls_established`."""


@dataclass(slots=True)
class AuthCredentials(Event):
    """A completed SASL exchange (*needs a reply*: 235 accepts, 535 refuses)."""

    credentials: SaslCredentials


@dataclass(slots=True)
class AuthSecretNeeded(Event):
    """SCRAM needs the user's stored secret (*answer with* :meth:`ServerConnection.supply_scram_secret`)."""

    mechanism: str
    username: str


@dataclass(slots=True, init=False)
class MailFrom(Event):
    """MAIL FROM (*needs a reply*)."""

    address: Address
    params: MailParams

    def __init__(self, address: Address, params: MailParams) -> None:
        self.address = address
        self.params = params


@dataclass(slots=True, init=False)
class RcptTo(Event):
    """RCPT TO (*needs a reply*)."""

    address: Address
    params: RcptParams

    def __init__(self, address: Address, params: RcptParams) -> None:
        self.address = address
        self.params = params


@dataclass(slots=True)
class Data(Event):
    """DATA (*needs a reply*: 354 starts the body, anything else refuses it)."""


@dataclass(slots=True)
class BdatChunk(Event):
    """A BDAT command (RFC 3030): ``size`` octets of body follow at once, no reply yet.

    ``first`` marks the first chunk of the transaction (the place to open a sink).
    """

    size: int
    last: bool
    first: bool


@dataclass(slots=True, init=False)
class BodyChunk(Event):
    """Message content, already dot-unstuffed. Valid only until the next ``next_event()``."""

    data: memoryview

    def __init__(self, data: memoryview) -> None:
        self.data = data


@dataclass(slots=True, init=False)
class BodyEnd(Event):
    """End of DATA, or of one BDAT chunk (*needs a reply*).

    ``error`` is set when the core already knows the message must be refused
    (size limit, bare line ending, over-long line): the application aborts its sink
    and sends that reply. In LMTP mode a DATA end or a BDAT LAST end takes one
    reply per accepted recipient (RFC 2033 §4.2).
    """

    size: int
    last: bool
    error: Reply | None = None

    def __init__(self, size: int, last: bool, error: Reply | None = None) -> None:
        self.size = size
        self.last = last
        self.error = error


@dataclass(slots=True)
class Rset(Event):
    """RSET (*needs a reply*); the transaction is reset on a positive reply."""


@dataclass(slots=True)
class Noop(Event):
    """NOOP (*needs a reply*)."""


@dataclass(slots=True)
class Quit(Event):
    """QUIT (*needs a reply*); the connection closes after it."""


@dataclass(slots=True)
class Vrfy(Event):
    """VRFY (*needs a reply*)."""

    argument: str


@dataclass(slots=True)
class Help(Event):
    """HELP (*needs a reply*)."""

    argument: str


@dataclass(slots=True)
class Xclient(Event):
    """XCLIENT (Postfix) attributes, names upper-cased, values xtext-decoded (*needs a reply*)."""

    attributes: dict[str, str]


@dataclass(slots=True)
class Xforward(Event):
    """XFORWARD (Postfix) attributes, names upper-cased, values xtext-decoded (*needs a reply*)."""

    attributes: dict[str, str]


@dataclass(slots=True)
class ProxyHeader(Event):
    """A PROXY protocol header was read (no reply: the greeting follows)."""

    info: ProxyInfo


@dataclass(slots=True)
class Rejected(Event):
    """The core refused a command by itself and queued ``reply`` (for logs and metrics).

    ``fatal`` means the connection closes once the reply is written.
    """

    verb: str
    reply: Reply
    fatal: bool = False


@dataclass(slots=True)
class ConnectionClosed(Event):
    """The peer closed its side (``receive_data(b"")``), or the session ended."""

