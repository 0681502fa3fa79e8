"""Worker liveness through a shared, unlinked temporary file (gunicorn's ``WorkerTmp``).

The master creates the file before forking; the worker bumps its change time with
``fchmod`` (cheap, no data written) every second; the master reads ``fstat().st_ctime``.
A worker whose event loop is stuck stops bumping it and is killed and replaced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["Heartbeat"]


class Heartbeat:
    """One worker's liveness file. Create it in the master, before the fork."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="smtpfront-worker-")
        os.unlink(path)  # only the descriptor is shared; nothing to clean up
        self._fd = fd
        self._spin = False

    def notify(self) -> None:
        """Called by the worker: "I am alive" (toggles the mode bits, which updates ctime)."""
        self._spin = not self._spin
        os.fchmod(self._fd, 0o600 if self._spin else 0o400)

    def last_update(self) -> float:
        """Called by the master: when the worker last notified (seconds since the epoch)."""
        return os.fstat(self._fd).st_ctime

    def close(self) -> None:
        """Release the descriptor (the master, once the worker is reaped)."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
