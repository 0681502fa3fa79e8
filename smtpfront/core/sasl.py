"""Server side of SASL for SMTP AUTH (RFC 4954), as sans-IO state machines.

Rule: a mechanism sees only the base64 text the client sent and answers with a
:data:`Step`: a :class:`Challenge` to send as ``334``, a :class:`NeedSecret` (SCRAM asks
the application for the user's stored secret), or :class:`Done` with the credentials
for the application to verify. Only SCRAM checks a proof here, against the secret the
application supplied. Every client mistake raises :class:`LocalProtocolError`:
``AUTH_CANCELLED`` for ``*`` (RFC 4954 §4), ``AUTH_MALFORMED`` for anything that does not
decode or parse. A call out of order is a bug in the caller and raises ``RuntimeError``.
A mechanism object serves one exchange and is then thrown away.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeAlias

from .errors import LocalProtocolError
from .events import SaslCredentials
from .replies import AUTH_CANCELLED, AUTH_MALFORMED

__all__ = [
    "Challenge", "NeedSecret", "Done", "Step", "Mechanism", "MECHANISMS", "new_mechanism",
    "Plain", "Login", "CramMd5", "XOAuth2", "ScramSha256",
    "ScramSecret", "scram_secret_from_password", "verify_cram_md5",
]


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334 <base64(payload)>``; an empty payload is sent as ``334 ``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class NeedSecret:
    """SCRAM needs the user's stored secret: answer with :meth:`Mechanism.supply_secret`."""

    username: str


@dataclass(frozen=True, slots=True)
class Done:
    """The exchange is over; the application verifies and answers 235 or 535."""

    credentials: SaslCredentials


Step: TypeAlias = Challenge | NeedSecret | Done

MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "SCRAM-SHA-256")


def _malformed() -> NoReturn:
    raise LocalProtocolError(AUTH_MALFORMED)


def _decode(text: str, *, initial: bool = False) -> bytes:
    # RFC 4954 §4: "*" cancels the exchange; "=" is an empty *initial* response only.
    # We also read "*" as an initial response as a cancel: it is not base64 anyway.
    if text == "*":
        raise LocalProtocolError(AUTH_CANCELLED)
    if initial and text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        _malformed()


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _malformed()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _name(text: str) -> str:
    # Usernames reach logs, hooks and the AUTH= parameter: no empty names, no controls.
    if not text or _CONTROL.search(text):
        _malformed()
    return text


class _Phase(enum.Enum):
    NEW = "start() not called"
    RESPONSE = "waiting for a client response"
    SECRET = "waiting for supply_secret()"
    DONE = "finished"


class Mechanism(ABC):
    """One server-side SASL exchange: :meth:`start`, then :meth:`respond` to each Challenge."""

    name: str = ""

    def __init__(self) -> None:
        self._phase = _Phase.NEW

    def start(self, initial: str | None) -> Step:
        """Begin the exchange and return the first step.

        Args:
            initial: the AUTH command's initial response, base64 text (``"="`` is an
                empty one, RFC 4954 §4), or None when there was none.

        Raises:
            LocalProtocolError: the client cancelled, or sent something malformed.
            RuntimeError: the exchange was already started.
        """
        self._expect(_Phase.NEW)
        return self._advance(lambda: self._first(None if initial is None else _decode(initial, initial=True)))

    def respond(self, line: str) -> Step:
        """Take one client response line (base64 text, without CRLF).

        Raises:
            LocalProtocolError: the client cancelled, or sent something malformed.
            RuntimeError: no response is expected now (not started, or finished).
        """
        self._expect(_Phase.RESPONSE)
        return self._advance(lambda: self._next(_decode(line)))

    def supply_secret(self, secret: ScramSecret | None) -> Step:
        """Answer a :class:`NeedSecret` step (None: no such user); RuntimeError if none was asked."""
        raise RuntimeError(f"{self.name} does not ask for a secret")

    def _first(self, data: bytes | None) -> Step:
        # Client-first mechanisms: without an initial response the server sends an empty
        # challenge, "334 " (RFC 4954 §4); with one, it is the first response.
        return Challenge(b"") if data is None else self._next(data)

    @abstractmethod
    def _next(self, data: bytes) -> Step:
        """The step after a decoded client response."""

    def _expect(self, phase: _Phase) -> None:
        if self._phase is not phase:
            raise RuntimeError(f"{self.name} exchange: {self._phase.value}")

    def _advance(self, step: Callable[[], Step]) -> Step:
        try:
            result = step()
        except LocalProtocolError:
            self._phase = _Phase.DONE
            raise
        if isinstance(result, Challenge):
            self._phase = _Phase.RESPONSE
        elif isinstance(result, NeedSecret):
            self._phase = _Phase.SECRET
        else:
            self._phase = _Phase.DONE
        return result


# -- PLAIN, LOGIN, CRAM-MD5, XOAUTH2 ------------------------------------------------


class Plain(Mechanism):
    """PLAIN (RFC 4616): ``[authzid] NUL authcid NUL passwd``, UTF-8."""

    name = "PLAIN"

    def _next(self, data: bytes) -> Step:
        parts = data.split(b"\x00")
        # RFC 4616 §2: authcid and passwd are 1*SAFE; the 255-octet caps are not enforced.
        if len(parts) != 3 or not parts[2]:
            _malformed()
        authzid, authcid, passwd = (_utf8(p) for p in parts)
        return Done(SaslCredentials(self.name, _name(authcid), authzid=authzid, password=passwd))


class Login(Mechanism):
    """LOGIN (draft-murchison-sasl-login): ``Username:``, then ``Password:``."""

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._username: str | None = None

    def _first(self, data: bytes | None) -> Step:
        # draft-murchison-sasl-login §2: an initial response carries the username.
        return Challenge(b"Username:") if data is None else self._next(data)

    def _next(self, data: bytes) -> Step:
        if self._username is None:
            self._username = _name(_utf8(data))
            return Challenge(b"Password:")
        return Done(SaslCredentials(self.name, self._username, password=_utf8(data)))


class CramMd5(Mechanism):
    """CRAM-MD5 (RFC 2195): a ``<digits.digits@host>`` challenge, answered by ``user digest``."""

    name = "CRAM-MD5"

    def __init__(self, hostname: str, nonce: str | None = None) -> None:
        super().__init__()
        # RFC 2195 §2: "random digits, a timestamp, and the fully-qualified primary host
        # name" in msg-id form. The core has no clock, so both parts are random.
        if nonce is None:
            nonce = f"{secrets.randbits(32)}.{secrets.randbits(64)}"
        self.challenge = f"<{nonce}@{hostname}>".encode()

    def _first(self, data: bytes | None) -> Step:
        # Server-first mechanism: an initial response is a protocol error (RFC 4422 §5).
        if data is not None:
            _malformed()
        return Challenge(self.challenge)

    def _next(self, data: bytes) -> Step:
        # RFC 2195 §2: "user SP digest", digest 32 lowercase hex digits. rpartition lets
        # a username contain spaces.
        user, sep, digest = _utf8(data).rpartition(" ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{32}", digest):
            _malformed()
        return Done(
            SaslCredentials(self.name, _name(user), challenge=self.challenge, response=digest.lower())
        )


def verify_cram_md5(password: str, challenge: bytes, response: str) -> bool:
    """Check a CRAM-MD5 response digest (RFC 2195 §2) in constant time.

    Args:
        password: the user's clear-text password (UTF-8 encoded for the HMAC key).
        challenge: ``SaslCredentials.challenge``.
        response: ``SaslCredentials.response``, the hex digest.

    Returns:
        True when ``response`` is HMAC-MD5(password, challenge).
    """
    expected = hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
    return response.isascii() and hmac.compare_digest(expected.encode(), response.lower().encode())


class XOAuth2(Mechanism):
    """XOAUTH2 (Google): ``user=<user>^Aauth=Bearer <token>^A^A``."""

    name = "XOAUTH2"

    def _next(self, data: bytes) -> Step:
        text = _utf8(data)
        if not text.endswith("\x01\x01"):
            _malformed()
        fields: dict[str, str] = {}
        for kv in text[:-2].split("\x01"):
            key, sep, value = kv.partition("=")
            if not sep or key in fields:
                _malformed()
            fields[key] = value
        # The scheme is case-insensitive (RFC 6750 §2.1 via RFC 7235 §2.1).
        scheme, _, token = fields.get("auth", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            _malformed()
        return Done(SaslCredentials(self.name, _name(fields.get("user", "")), token=token.strip()))


# -- SCRAM-SHA-256 (RFC 5802, RFC 7677) ---------------------------------------------

DEFAULT_SCRAM_ITERATIONS = 4096  # RFC 7677 §4: at least 4096 iterations


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """What a server stores for a SCRAM-SHA-256 user (RFC 5802 §3); never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        if not self.salt or self.iterations < 1:
            raise ValueError("SCRAM secret needs a salt and at least one iteration")
        if len(self.stored_key) != 32 or len(self.server_key) != 32:
            raise ValueError("SCRAM-SHA-256 keys are 32 octets")


def scram_secret_from_password(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_SCRAM_ITERATIONS
) -> ScramSecret:
    """Derive the stored SCRAM-SHA-256 secret from a password (RFC 5802 §3).

    The password is not SASLprep-ed (RFC 4013): ASCII passwords are unaffected; a
    non-ASCII one must be in the form clients send (normally NFKC).

    Args:
        password: the clear-text password.
        salt: random salt; 16 fresh random octets when None.
        iterations: the PBKDF2 iteration count.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return _from_salted(salted, salt, iterations)


def _from_salted(salted: bytes, salt: bytes, iterations: int) -> ScramSecret:
    # RFC 5802 §3: StoredKey = H(HMAC(SaltedPassword, "Client Key")),
    # ServerKey = HMAC(SaltedPassword, "Server Key").
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ScramSecret(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


# A per-process key for the fake secrets of unknown users: the salt an unknown user
# gets is stable (repeated attempts see the same one, like a real user) yet not
# computable from outside, so server-first messages do not reveal which users exist.
_FAKE_KEY = secrets.token_bytes(32)


def _fake_secret(username: str) -> ScramSecret:
    seed = hmac.digest(_FAKE_KEY, username.encode("utf-8"), "sha256")
    return _from_salted(seed, seed[:16], DEFAULT_SCRAM_ITERATIONS)


# RFC 5802 §7: printable = %x21-2B / %x2D-7E (no ","); value-safe-char excludes NUL,
# "=" and ","; saslname escapes "," as "=2C" and "=" as "=3D".
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_SASLNAME = re.compile(r"(?:[^\x00,=]|=2C|=3D)+")
_ATTR_VAL = re.compile(r"[A-Za-z]=[^\x00]+")


def _saslname(value: str) -> str:
    if not _SASLNAME.fullmatch(value):
        _malformed()
    return re.sub("=2C|=3D", lambda m: "," if m[0] == "=2C" else "=", value)


class ScramSha256(Mechanism):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding.

    Usernames are saslname-decoded but not SASLprep-ed (RFC 4013); the application
    compares them as received.
    """

    name = "SCRAM-SHA-256"

    def __init__(self, nonce: str | None = None) -> None:
        super().__init__()
        if nonce is None:
            nonce = secrets.token_urlsafe(24)
        elif not _PRINTABLE.fullmatch(nonce):
            raise ValueError("a SCRAM nonce is printable ASCII without ','")
        self._server_nonce = nonce
        # _bare: client-first-message-bare; _nonce: client nonce + server nonce
        self._gs2_header = self._authzid = self._username = self._bare = self._nonce = self._server_first = ""
        self._secret: ScramSecret | None = None
        self._known = False
        self._verified = False

    def _next(self, data: bytes) -> Step:
        if not self._bare:
            return self._client_first(_utf8(data))
        if not self._verified:
            return self._client_final(_utf8(data))
        # RFC 4954 §4 / RFC 5802 §5: after the server-final message in a 334, the client
        # sends an empty response and the exchange ends.
        if data:
            _malformed()
        return Done(SaslCredentials(self.name, self._username, authzid=self._authzid, verified=True))

    def _client_first(self, text: str) -> Step:
        # client-first-message = gs2-header client-first-message-bare (RFC 5802 §7)
        flag, sep1, rest = text.partition(",")
        authz, sep2, bare = rest.partition(",")
        # "n": client cannot bind; "y": client can but thinks we cannot -- true, as we
        # never offer SCRAM-SHA-256-PLUS, so no downgrade. "p=..." asks for channel
        # binding we do not offer (RFC 5802 §6): refused.
        if not (sep1 and sep2) or flag not in ("n", "y"):
            _malformed()
        if authz:
            if not authz.startswith("a="):
                _malformed()
            self._authzid = _saslname(authz[2:])
        fields = bare.split(",")
        # RFC 5802 §5.1: a leading "m=" is a mandatory extension we do not know, so
        # authentication MUST fail; the n= check refuses it.
        if len(fields) < 2 or not fields[0].startswith("n=") or not fields[1].startswith("r="):
            _malformed()
        if not _PRINTABLE.fullmatch(fields[1][2:]) or not all(_ATTR_VAL.fullmatch(f) for f in fields[2:]):
            _malformed()
        self._username = _name(_saslname(fields[0][2:]))
        self._gs2_header = f"{flag},{authz},"
        self._bare = bare
        self._nonce = fields[1][2:] + self._server_nonce
        return NeedSecret(self._username)

    def supply_secret(self, secret: ScramSecret | None) -> Step:
        """Answer :class:`NeedSecret`; return the server-first message as a Challenge.

        None (no such user) gets a fake secret, stable per username, so the exchange
        looks the same as for a real user and ends in ``Done(verified=False)``.
        """
        self._expect(_Phase.SECRET)
        self._known = secret is not None
        self._secret = secret if secret is not None else _fake_secret(self._username)
        salt = base64.b64encode(self._secret.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._secret.iterations}"
        return self._advance(lambda: Challenge(self._server_first.encode()))

    def _client_final(self, text: str) -> Step:
        # client-final-message = channel-binding "," nonce ["," extensions] "," proof
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        fields = without_proof.split(",")
        if not sep or len(fields) < 2 or not all(_ATTR_VAL.fullmatch(f) for f in fields[2:]):
            _malformed()
        # Without channel binding, c= is exactly base64(gs2-header): "biws" for "n,,".
        expected_c = "c=" + base64.b64encode(self._gs2_header.encode()).decode()
        if fields[0] != expected_c:
            _malformed()
        if not hmac.compare_digest(fields[1].encode(), f"r={self._nonce}".encode()):
            _malformed()
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            _malformed()
        if len(proof) != hashlib.sha256().digest_size:
            _malformed()
        assert self._secret is not None  # set by supply_secret, the only way here
        # RFC 5802 §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), and the
        # proof holds when H(ClientKey) == StoredKey.
        auth_message = f"{self._bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(self._secret.stored_key, auth_message, "sha256")
        client_key = bytes(p ^ s for p, s in zip(proof, signature, strict=True))
        valid = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._secret.stored_key)
        if not (valid and self._known):
            return Done(SaslCredentials(self.name, self._username, authzid=self._authzid, verified=False))
        self._verified = True
        server_signature = hmac.digest(self._secret.server_key, auth_message, "sha256")
        return Challenge(b"v=" + base64.b64encode(server_signature))


def new_mechanism(name: str, *, hostname: str, nonce: str | None = None) -> Mechanism:
    """A fresh server-side exchange for mechanism ``name``.

    Args:
        name: one of :data:`MECHANISMS` (matched case-insensitively).
        hostname: this server's name, for the CRAM-MD5 challenge.
        nonce: the server nonce (CRAM-MD5, SCRAM); a fresh random one when None.
            Tests inject it; production leaves it None.

    Raises:
        KeyError: ``name`` is not a mechanism this module knows.
        ValueError: ``nonce`` is not a valid SCRAM nonce.
    """
    match name.upper():
        case "PLAIN":
            return Plain()
        case "LOGIN":
            return Login()
        case "CRAM-MD5":
            return CramMd5(hostname, nonce)
        case "XOAUTH2":
            return XOAuth2()
        case "SCRAM-SHA-256":
            return ScramSha256(nonce)
    raise KeyError(f"unknown SASL mechanism: {name!r}")
