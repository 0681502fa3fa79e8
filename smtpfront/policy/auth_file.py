"""``auth-file``: AUTH checked against a credentials file (``[auth] backend = "file"``).

The file (:mod:`smtpfront.policy.passwords`) is read when the plugin is built: in each worker
at its start, so a SIGHUP (a new generation of workers) reads it again; ``check-config`` and
``serve`` build it once first, so a missing or malformed file is an error naming it.

Which mechanism works for which line: PLAIN and LOGIN for every scheme; SCRAM-SHA-256 for
``{SCRAM-SHA-256}`` and ``{PLAIN}`` lines; CRAM-MD5 only for ``{PLAIN}`` lines (its HMAC is
keyed by the password itself). Password hashes are checked in the plugin's own threads
(argon2id and bcrypt take tens of milliseconds and argon2id 64 MiB on purpose), never on the
event loop; at most ``threads`` checks run at once per worker, the others wait their turn. A user who is not in the file
costs the same check against another line, so timing does not tell who exists. An
authorization identity (PLAIN's authzid, SCRAM's a=) other than the user itself is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..core.events import SaslCredentials
from ..core.sasl import ScramSecret, scram_secret_from_password, verify_cram_md5
from ..hooks import Hooks, Session
from .passwords import Entry, load

__all__ = ["FileAuth"]

_T = TypeVar("_T")


class FileAuth(Hooks):
    """Check AUTH against ``file``'s ``user:{SCHEME}secret`` lines."""

    name = "auth-file"

    def __init__(self, file: str, threads: int = 2) -> None:
        if threads < 1:
            raise ValueError("threads: expected an integer >= 1")
        self.path = file
        self.users: dict[str, Entry] = load(file)
        self._key = hashlib.sha256(repr(sorted(self.users.items())).encode()).digest()
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None  # made on first use: never in the master, before a fork

    async def _off_loop(self, work: Callable[[], _T]) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="auth-file")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool | None:
        entry = self.users.get(credentials.username)
        if credentials.authzid and credentials.authzid != credentials.username:
            return False
        if credentials.mechanism == "SCRAM-SHA-256":
            return bool(credentials.verified) if entry is not None else None
        if credentials.mechanism == "CRAM-MD5":
            if entry is None or entry.clear is None or credentials.challenge is None or credentials.response is None:
                return None if entry is None else False
            return verify_cram_md5(entry.clear, credentials.challenge, credentials.response)
        if credentials.password is None:
            return None  # XOAUTH2: not ours to decide
        password = credentials.password
        if entry is None:
            if self.users:  # the same work as for a real user, whose answer is thrown away
                stand_in = next(iter(self.users.values()))
                await self._off_loop(lambda: stand_in.verify(password + "\x00"))
            return None
        return await self._off_loop(lambda: entry.verify(password))

    async def scram_secret(self, session: Session, username: str) -> ScramSecret | None:
        entry = self.users.get(username)
        if entry is None:
            return None
        if entry.clear is not None:  # derived with a salt stable per user, as a stored one would be
            salt = hmac.digest(self._key, username.encode("utf-8"), "sha256")[:16]
            clear = entry.clear
            return await self._off_loop(lambda: scram_secret_from_password(clear, salt))
        return entry.scram()
