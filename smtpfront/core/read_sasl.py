"""The reader of a SASL exchange (state AUTH, RFC 4954 §4): lines are responses, not commands.

AUTH's handler (``verbs.py``) checks the command and hands the mechanism's name and initial
response to :meth:`SaslReader.begin`; each step's challenge is a ``334`` the core sends
itself; the exchange ends with :class:`AuthCredentials` for the application to judge (its
reply is AUTH's), or with :class:`AuthSecretNeeded` first for SCRAM.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import replies as R
from .buffer import LineTooLong
from .errors import LocalProtocolError
from .events import AuthCredentials, AuthSecretNeeded, Event
from .sasl import Challenge, Done, Mechanism, NeedSecret, ScramSecret, Step, new_mechanism
from .sentinels import NEED_DATA, Sentinel
from .states import AFTER_SASL, COMMANDS, SASL_EXCHANGE, SCRAM_SECRET

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["SaslReader"]


class SaslReader:
    """Runs a session's SASL exchanges; owns the mechanism of the one under way.

    Args:
        nonce: a fixed SASL nonce, for tests only (None: a fresh random one per exchange).
    """

    def __init__(self, nonce: str | None = None) -> None:
        self.nonce = nonce
        self.mechanism: Mechanism | None = None

    def begin(self, conn: ServerConnection, name: str, initial: str | None) -> Event | None:
        """Start the exchange of mechanism ``name`` (offered: AUTH's handler checked)."""
        self.mechanism = new_mechanism(name, hostname=conn.hostname, nonce=self.nonce)
        conn.state = SASL_EXCHANGE
        return self._step(conn, lambda mechanism: mechanism.start(initial))

    def read(self, conn: ServerConnection) -> Event | Sentinel | None:
        """The client's next response line, one step of the exchange."""
        buf = conn.buffer
        try:
            line = buf.next_line(conn.limits.max_auth_line)
        except LineTooLong as exc:
            # Refuse now; drop the rest of the line quietly, whenever it arrives.
            conn.command_reader.skip_rest_quietly(exc.complete or buf.skip_line())
            self._end(conn)
            raise LocalProtocolError(R.AUTH_LINE_TOO_LONG) from None
        if line is None:
            return NEED_DATA
        text = line.rstrip(b"\r\n").decode("ascii", "replace")
        return self._step(conn, lambda mechanism: mechanism.respond(text))

    def supply_secret(self, conn: ServerConnection, secret: ScramSecret | None) -> Event | None:
        """Continue a SCRAM exchange with the user's stored secret (None: unknown user)."""
        mechanism = self.mechanism
        assert mechanism is not None
        return self._after(conn, mechanism.supply_secret(secret))

    def _step(self, conn: ServerConnection, advance: Callable[[Mechanism], Step]) -> Event | None:
        mechanism = self.mechanism
        assert mechanism is not None
        conn.verb = "AUTH"
        try:
            step: Step = advance(mechanism)
        except LocalProtocolError:
            self._end(conn)
            raise
        return self._after(conn, step)

    def _after(self, conn: ServerConnection, step: Step) -> Event | None:
        if isinstance(step, Challenge):
            payload = base64.b64encode(step.payload).decode("ascii")
            conn.out.append(f"334 {payload}\r\n".encode("ascii"))
            return None
        if isinstance(step, NeedSecret):
            conn.awaiting = SCRAM_SECRET
            return AuthSecretNeeded(self.mechanism.name if self.mechanism else "", step.username)
        assert isinstance(step, Done)
        self._end(conn)
        conn.awaiting = COMMANDS["AUTH"]
        return AuthCredentials(step.credentials)

    def _end(self, conn: ServerConnection) -> None:
        self.mechanism = None
        conn.state = AFTER_SASL
