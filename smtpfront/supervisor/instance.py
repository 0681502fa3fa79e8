"""One ``smtpfront serve`` per listening address.

Workers bind with ``SO_REUSEPORT`` (ARCHITECTURE.md, "One message, end to end"), which would let a second
instance started on the same address by mistake bind too and silently take a share of the
connections. Two guards, both taken by the master before it forks:

* **A lock per address**: a listening Unix socket in Linux's abstract namespace named
  ``smtpfront:listen:HOST:PORT``. Binding it is atomic (two masters starting together cannot
  both win), and the kernel drops it with the last process holding it, however that process
  ends (a ``kill -9`` leaves nothing behind to clean up). The master's workers inherit it by
  the fork, so an instance whose master died holds the address until its last worker is gone
  (they notice within a heartbeat). The holder's pid is read with ``SO_PEERCRED`` for the
  message. The namespace is the network namespace's, like the ports themselves.
* **A probe bind** without ``SO_REUSEPORT`` (``SO_REUSEADDR`` only, so connections left in
  TIME_WAIT do not count): it fails while anything listens on the address, another
  smtpfront under another spelling of it (``0.0.0.0`` against ``127.0.0.1``) included.

The master's own hand-over of sockets to respawned and reloaded workers binds nothing and
is not concerned.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys

__all__ = ["InstanceError", "InstanceLock"]


class InstanceError(Exception):
    """The address is served already: ``str()`` says by whom."""


def _holder(name: bytes) -> int | None:
    """The pid that holds the lock ``name`` (None when it cannot be told)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # the lock never accepts: a full backlog must not make us wait
        try:
            probe.connect(name)
            pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                  struct.calcsize("3i")))
        except OSError:
            return None
    return int(pid) or None


class InstanceLock:
    """The locks of one instance's addresses; held until :meth:`release` or the process ends."""

    def __init__(self) -> None:
        self._held: dict[str, socket.socket] = {}

    def acquire(self, host: str, port: int) -> None:
        """Take ``HOST:PORT``; raises :class:`InstanceError` when another instance serves it."""
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if where in self._held:  # listed twice in the configuration: ours already
            return
        if sys.platform.startswith("linux") and port != 0:  # port 0: any free port, nothing to share
            name = b"\0smtpfront:listen:" + where.encode()
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(name)
                lock.listen(64)
            except OSError:
                lock.close()
                pid = _holder(name)
                raise InstanceError(f"{where} is already served by another smtpfront instance"
                                    + (f" (pid {pid})" if pid else "")
                                    + ": stop it first (one instance per address)") from None
            self._held[where] = lock
        _probe(host, port, where)

    def release(self) -> None:
        for lock in self._held.values():
            lock.close()
        self._held.clear()


def _probe(host: str, port: int, where: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            hint = " (another process listens there; one instance per address)" if exc.errno == errno.EADDRINUSE else ""
            raise InstanceError(f"cannot listen on {where}: {exc.strerror}{hint}") from None
