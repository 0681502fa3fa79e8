"""The client limits' counters shared by one host's workers, without Redis (``queue = "maildir:…"``).

A SQLite file (``[client_limits] state_file``; default ``smtpfront-client-limits-UID.sqlite`` in
the temporary directory), opened by each worker on first use: SQLite's file locks make each
check one atomic transaction across the host's processes, and every row carries its expiry
(a slot a killed worker kept lapses after its ``hold``; expired rows are swept now and then).
Two ``serve`` masters on one host that name the same file share their counts. A check is a
few tens of µs of blocking file I/O on the worker's loop, bounded by a 200 ms lock wait; a
file that cannot be used fails the check, which lets the client through (``limits.py``).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time

__all__ = ["LocalCounters", "default_state_file"]

LOCK_WAIT = 0.2  # seconds a check waits for another worker's transaction
SWEEP_EVERY = 1000  # checks between two sweeps of expired rows
_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (key TEXT NOT NULL, member TEXT NOT NULL, expires REAL NOT NULL,
                                  PRIMARY KEY (key, member));
CREATE TABLE IF NOT EXISTS counts (key TEXT PRIMARY KEY, n INTEGER NOT NULL, expires REAL NOT NULL);
"""


def default_state_file() -> str:
    """Where the counts live when ``state_file`` is not set (one file per user on this host)."""
    return os.path.join(tempfile.gettempdir(), f"smtpfront-client-limits-{os.getuid()}.sqlite")


class LocalCounters:
    """A :class:`~smtpfront.policy.limits.CounterStore` in one SQLite file shared by the host's workers."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_state_file()
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValueError(f"state_file: {directory} is not a directory")
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._checks = 0

    def _open(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # a forked worker opens its own
            db = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # counters, not mail: a lost update after a crash is fine
            db.executescript(_SCHEMA)
            self._db, self._pid = db, os.getpid()
        return self._db

    def _transaction(self) -> sqlite3.Connection:
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        self._checks += 1
        if self._checks % SWEEP_EVERY == 0:
            now = time.time()
            db.execute("DELETE FROM slots WHERE expires <= ?", (now,))
            db.execute("DELETE FROM counts WHERE expires <= ?", (now,))
        return db

    async def acquire(self, key: str, member: str, limit: int, hold: float) -> bool:
        db, now = self._transaction(), time.time()
        try:
            db.execute("DELETE FROM slots WHERE key = ? AND expires <= ?", (key, now))
            (held,) = db.execute("SELECT COUNT(*) FROM slots WHERE key = ?", (key,)).fetchone()
            if held >= limit:
                return False
            db.execute("INSERT OR REPLACE INTO slots VALUES (?, ?, ?)", (key, member, now + hold))
            return True
        finally:
            db.execute("COMMIT")

    async def release(self, key: str, member: str) -> None:
        self._open().execute("DELETE FROM slots WHERE key = ? AND member = ?", (key, member))

    async def add(self, key: str, amount: int, window: float) -> int:
        db, now = self._transaction(), time.time()
        try:
            row = db.execute("SELECT n, expires FROM counts WHERE key = ?", (key,)).fetchone()
            if row is None or row[1] <= now:
                count = amount
                db.execute("INSERT OR REPLACE INTO counts VALUES (?, ?, ?)", (key, count, now + window))
            else:
                count = row[0] + amount
                if amount:
                    db.execute("UPDATE counts SET n = ? WHERE key = ?", (count, key))
            return int(count)
        finally:
            db.execute("COMMIT")

    async def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None
