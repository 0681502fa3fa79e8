"""Session budgets (``[limits]`` ``idle_commands``, ``session_duration``, ``messages_per_session``).

Checked where the commands they count are handled (``protocol.py``: ``_on_simple``,
``_on_helo``, ``_on_mail``, ``_end_message``), so a message under the budgets costs one counter
and no timer: a session's age is read only when RSET/NOOP/VRFY/HELP, HELO/EHLO or MAIL arrives.
Idle commands are RSET, NOOP, VRFY, HELP and HELO/EHLO (Postfix's junk commands are NOOP, VRFY,
ETRN and RSET; a client repeating EHLO is stalling just the same); MAIL ends a run. Past a budget
the client gets a ``421`` and the connection closes (RFC 5321 §3.8: the server may close after
a 421). The replies are policy refusals (``smtpfront_policy_rejections_total{reason}``).
"""

from __future__ import annotations

from ..core.replies import Reply
from ..hooks import rejection_reason

__all__ = ["TOO_MANY_IDLE_COMMANDS", "SESSION_TOO_LONG", "TOO_MANY_MESSAGES"]

# Postfix's smtpd_junk_command_limit answers "421 4.7.0 … Error: too many errors" style lines.
TOO_MANY_IDLE_COMMANDS = rejection_reason(
    Reply(421, "4.7.0", "Error: too many commands without a transaction, closing connection"), "idle_commands")
SESSION_TOO_LONG = rejection_reason(
    Reply(421, "4.4.2", "Error: session time limit exceeded, closing connection"), "session_duration")
TOO_MANY_MESSAGES = rejection_reason(
    Reply(421, "4.7.0", "Error: too many messages in one session, closing connection"), "messages_per_session")
