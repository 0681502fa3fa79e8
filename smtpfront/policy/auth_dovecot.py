"""``auth-dovecot``: AUTH checked by Dovecot's auth service (``[auth] backend = "dovecot"``).

The client side of Dovecot's authentication protocol, version 1.2 (what Postfix's
``smtpd_sasl_type = dovecot`` speaks), over a unix socket (Dovecot's ``auth-client``
listener) or TCP (an ``inet_listener`` of ``service auth``): tab-separated lines. The client
sends ``VERSION 1 2`` and ``CPID``; the server answers ``VERSION``, its ``MECH`` lines,
``SPID``, ``CUID``, ``COOKIE`` and ``DONE``. Then each exchange is ``AUTH <id> PLAIN
service=smtp … resp=<base64>``, answered ``OK <id> …``, ``FAIL <id> …`` (``temp``: try again
later) or ``CONT <id> <base64>``.

smtpfront runs the SASL exchange itself, so what reaches Dovecot is a password: PLAIN and
LOGIN are forwarded as PLAIN (``check-config`` refuses CRAM-MD5 and SCRAM-SHA-256 with this
backend). One connection per worker, opened on first use and again after a failure, carries
every session's requests (by id). Every wait is bounded by ``timeout``; Dovecot unreachable,
slow or answering ``temp`` is ``454 4.7.0`` (RFC 4954 §6), not a wrong password.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os

from ..config import auth_socket
from ..core.events import SaslCredentials
from ..core.replies import Reply
from ..hooks import Hooks, Session

__all__ = ["DovecotAuth", "DovecotError"]

log = logging.getLogger(__name__)
TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
_LINE_LIMIT = 64 * 1024


class DovecotError(Exception):
    """The auth service cannot be reached, or answered outside the protocol."""


def _escape(value: str) -> str:
    """Dovecot's tab escaping: \\x01 → \\x011, TAB → \\x01t, LF → \\x01n, CR → \\x01r."""
    return value.replace("\x01", "\x011").replace("\t", "\x01t").replace("\n", "\x01n").replace("\r", "\x01r")


class DovecotAuth(Hooks):
    """Ask Dovecot at ``socket`` (a unix socket path, or ``HOST:PORT``) to check PLAIN/LOGIN passwords."""

    name = "auth-dovecot"

    def __init__(self, socket: str, service: str = "smtp", timeout: float = 5.0) -> None:
        self.target = auth_socket(socket)
        if not service or any(c in service for c in "\t\r\n"):
            raise ValueError("service: expected a name without tabs or line ends")
        if timeout <= 0:
            raise ValueError("timeout: expected a number > 0")
        self.service, self.timeout = service, timeout
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[list[str]]] = {}
        self._next_id = 0
        self._lock: asyncio.Lock | None = None

    async def on_auth(self, session: Session, credentials: SaslCredentials) -> bool | Reply | None:
        if credentials.password is None:
            return None  # CRAM-MD5, SCRAM, XOAUTH2: not a password to forward
        plain = f"{credentials.authzid}\x00{credentials.username}\x00{credentials.password}".encode()
        params = [f"service={self.service}", f"rip={session.client_address}", f"rport={session.client_port}"]
        if session.local_address:
            params += [f"lip={session.local_address}", f"lport={session.local_port}"]
        if session.tls:
            params.append("secured")
        params.append("resp=" + base64.b64encode(plain).decode())
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._request("PLAIN", params)
        except (OSError, TimeoutError, DovecotError) as exc:
            log.warning("dovecot auth at %s: %s", self._where(), str(exc) or type(exc).__name__)
            return TEMPORARY
        if answer[0] == "OK":
            return True
        if answer[0] == "FAIL" and "temp" in answer[2:]:
            return TEMPORARY
        return False

    def _where(self) -> str:
        return self.target if isinstance(self.target, str) else f"{self.target[0]}:{self.target[1]}"

    async def _request(self, mechanism: str, params: list[str]) -> list[str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            writer = self._writer if self._writer is not None and not self._writer.is_closing() else None
            if writer is None:
                writer = await self._connect()
            self._next_id += 1
            request_id = self._next_id
            future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            line = "\t".join(["AUTH", str(request_id), mechanism, *map(_escape, params)]) + "\n"
            writer.write(line.encode("utf-8"))
        try:
            answer = await future
        finally:
            self._pending.pop(request_id, None)
        if answer[0] == "CONT":  # PLAIN with its initial response needs no continuation
            with contextlib.suppress(OSError):
                writer.write(f"CANCEL\t{request_id}\n".encode())
            raise DovecotError("unexpected CONT to PLAIN with an initial response")
        return answer

    async def _connect(self) -> asyncio.StreamWriter:
        if isinstance(self.target, str):
            reader, writer = await asyncio.open_unix_connection(self.target, limit=_LINE_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(*self.target, limit=_LINE_LIMIT)
        try:
            writer.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
            mechanisms = set()
            while True:
                fields = await self._line(reader)
                if fields[0] == "VERSION" and (len(fields) < 2 or fields[1] != "1"):
                    raise DovecotError(f"auth protocol version {'.'.join(fields[1:])}, expected 1.x")
                if fields[0] == "MECH" and len(fields) > 1:
                    mechanisms.add(fields[1].upper())
                if fields[0] == "DONE":
                    break
            if "PLAIN" not in mechanisms:
                raise DovecotError(f"the auth service does not offer PLAIN (offers {', '.join(sorted(mechanisms))}); "
                                   "add plain to auth_mechanisms")
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
        return writer

    @staticmethod
    async def _line(reader: asyncio.StreamReader) -> list[str]:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise DovecotError("the auth service closed the connection") from None
        except asyncio.LimitOverrunError:
            raise DovecotError("a line from the auth service is too long") from None
        return raw.decode("utf-8", "replace").rstrip("\r\n").split("\t")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: BaseException = DovecotError("the auth service closed the connection")
        try:
            while True:
                fields = await self._line(reader)
                if fields[0] in ("OK", "FAIL", "CONT") and len(fields) > 1 and fields[1].isdigit():
                    future = self._pending.pop(int(fields[1]), None)
                    if future is not None and not future.done():
                        future.set_result(fields)
        except (DovecotError, OSError) as exc:
            error = exc
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else DovecotError(str(error)))
            self._pending.clear()
