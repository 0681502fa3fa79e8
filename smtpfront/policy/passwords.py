"""The credentials file: one ``user:{SCHEME}secret`` line per user, and what each scheme can check.

Schemes (the names Dovecot uses for the same formats are accepted too):

- ``{ARGON2ID}$argon2id$v=19$m=…`` (argon2-cffi): checks a password (PLAIN, LOGIN).
- ``{BCRYPT}$2b$…`` (also ``{BLF-CRYPT}``): checks a password (PLAIN, LOGIN); bcrypt reads at
  most 72 octets of a password, so ``smtpfront passwd`` refuses longer ones for it.
- ``{SCRAM-SHA-256}ITERATIONS:SALT$STOREDKEY:SERVERKEY`` (RFC 5803's authInfo$authValue,
  base64 fields): SCRAM-SHA-256 directly, and a password (PLAIN, LOGIN) by deriving its
  StoredKey; the password itself is not stored.
- ``{PLAIN}secret`` (also ``{CLEAR}``): the clear secret. The only scheme CRAM-MD5 can use:
  CRAM-MD5's HMAC is keyed by the password itself, so a server that checks it must hold the
  password (or an equivalent key); a hash cannot answer it.

Blank lines and lines starting with ``#`` are ignored. Errors name the file and line, never
the secret.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import tempfile
from dataclasses import dataclass

from ..core.sasl import ScramSecret, scram_secret_from_password

__all__ = ["SCHEMES", "Entry", "parse_line", "load", "hash_password", "set_password"]

SCHEMES = ("argon2id", "bcrypt", "scram-sha-256", "plain")
_ALIASES = {"ARGON2ID": "ARGON2ID", "BCRYPT": "BCRYPT", "BLF-CRYPT": "BCRYPT", "SCRAM-SHA-256": "SCRAM-SHA-256",
            "PLAIN": "PLAIN", "CLEAR": "PLAIN"}
SCRAM_ITERATIONS = 10000
BCRYPT_MAX = 72


@dataclass(frozen=True, slots=True)
class Entry:
    """One user's stored secret: ``scheme`` (canonical upper-case name) and its text."""

    scheme: str
    secret: str

    @property
    def clear(self) -> str | None:
        """The clear secret, for CRAM-MD5 (only ``{PLAIN}`` lines have one)."""
        return self.secret if self.scheme == "PLAIN" else None

    def scram(self) -> ScramSecret | None:
        """The SCRAM-SHA-256 secret, for ``{SCRAM-SHA-256}`` lines (None for a hash)."""
        return _scram(self.secret) if self.scheme == "SCRAM-SHA-256" else None

    def verify(self, password: str) -> bool:
        """Check a password (slow on purpose for argon2id and bcrypt: call it off the event loop)."""
        if self.scheme == "PLAIN":
            return hmac.compare_digest(self.secret.encode("utf-8"), password.encode("utf-8"))
        if self.scheme == "SCRAM-SHA-256":
            stored = _scram(self.secret)
            derived = scram_secret_from_password(password, stored.salt, stored.iterations)
            return hmac.compare_digest(derived.stored_key, stored.stored_key)
        if self.scheme == "BCRYPT":
            import bcrypt

            data = password.encode("utf-8")
            return len(data) <= BCRYPT_MAX and bcrypt.checkpw(data, self.secret.encode("ascii"))
        import argon2

        try:
            return argon2.PasswordHasher().verify(self.secret, password)
        except argon2.exceptions.VerificationError:
            return False


def _scram(text: str) -> ScramSecret:
    info, sep, value = text.partition("$")
    iterations, sep2, salt = info.partition(":")
    stored, sep3, server = value.partition(":")
    if not (sep and sep2 and sep3 and iterations.isdigit()):
        raise ValueError("expected {SCRAM-SHA-256}ITERATIONS:SALT$STOREDKEY:SERVERKEY")
    try:
        return ScramSecret(base64.b64decode(salt, validate=True), int(iterations),
                           base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("expected {SCRAM-SHA-256}ITERATIONS:SALT$STOREDKEY:SERVERKEY (base64 fields)") from None


def parse_line(line: str) -> tuple[str, Entry]:
    """``user:{SCHEME}secret`` → ``(user, Entry)``; raises ValueError (the secret is not quoted)."""
    user, sep, rest = line.partition(":")
    if not sep or not user or any(c.isspace() or ord(c) < 32 for c in user):
        raise ValueError("expected user:{SCHEME}secret (a user name without spaces)")
    scheme, sep, secret = rest[1:].partition("}") if rest.startswith("{") else ("", "", "")
    if not sep or scheme.upper() not in _ALIASES or not secret:
        raise ValueError(f"expected {{SCHEME}}secret after the user name, SCHEME one of {', '.join(sorted(_ALIASES))}")
    entry = Entry(_ALIASES[scheme.upper()], secret)
    if entry.scheme == "SCRAM-SHA-256":
        entry.scram()
    elif entry.scheme == "ARGON2ID" and not secret.startswith("$argon2id$"):
        raise ValueError("expected an argon2id hash ($argon2id$v=19$…)")
    elif entry.scheme == "BCRYPT" and not (secret.startswith("$2") and len(secret) == 60):
        raise ValueError("expected a bcrypt hash ($2b$…, 60 characters)")
    return user, entry


def load(path: str) -> dict[str, Entry]:
    """Read the credentials file; raises OSError or ValueError naming ``path:LINE``."""
    users: dict[str, Entry] = {}
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                user, entry = parse_line(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            if user in users:
                raise ValueError(f"{path}:{number}: {user!r} is listed twice")
            users[user] = entry
    return users


def hash_password(scheme: str, password: str) -> str:
    """The ``{SCHEME}secret`` text for ``password`` (scheme one of :data:`SCHEMES`); raises ValueError."""
    if not password:
        raise ValueError("an empty password")
    if scheme == "plain":
        return "{PLAIN}" + password
    if scheme == "scram-sha-256":
        s = scram_secret_from_password(password, iterations=SCRAM_ITERATIONS)
        b64 = base64.b64encode
        return (f"{{SCRAM-SHA-256}}{s.iterations}:{b64(s.salt).decode()}$"
                f"{b64(s.stored_key).decode()}:{b64(s.server_key).decode()}")
    if scheme == "bcrypt":
        import bcrypt

        data = password.encode("utf-8")
        if len(data) > BCRYPT_MAX:
            raise ValueError(f"bcrypt reads at most {BCRYPT_MAX} octets of a password; use argon2id")
        return "{BCRYPT}" + bcrypt.hashpw(data, bcrypt.gensalt()).decode("ascii")
    if scheme == "argon2id":
        import argon2

        return "{ARGON2ID}" + argon2.PasswordHasher().hash(password)
    raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(SCHEMES)}")


def set_password(path: str, user: str, secret: str) -> bool:
    """Add or replace ``user``'s line (atomically: a new file renamed over the old one, mode 0600
    or the old file's); returns True when a line was replaced."""
    parse_line(f"{user}:{secret}")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        lines, mode = [], 0o600
    replaced = False
    out = []
    for line in lines:
        if line.partition(":")[0] == user and not line.lstrip().startswith("#"):
            if not replaced:
                out.append(f"{user}:{secret}")
            replaced = True
        else:
            out.append(line)
    if not replaced:
        out.append(f"{user}:{secret}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".passwd.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(out) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return replaced

