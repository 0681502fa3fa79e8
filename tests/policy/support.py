"""A real ``smtpfront serve`` from a TOML file written by the test, and the tools around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from ..conftest import free_port, wait_greeting

TIMEOUT = 10


def run_cli(*args: str, stdin: str = "", env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m smtpfront ARGS`` with ``stdin``; bounded."""
    return subprocess.run([sys.executable, "-m", "smtpfront", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, cwd=cwd, check=False)


class Served:
    """``smtpfront serve --config FILE``: the file is ``toml`` with ``{port}``, ``{metrics}``,
    ``{spool}`` and ``{tmp}`` replaced (one worker, plain logs)."""

    def __init__(self, tmp: Path, toml: str, env: Mapping[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port, self.metrics = free_port(), free_port()
        self.spool = tmp / "spool"
        self.config = tmp / "smtpfront.toml"
        for name, value in {"port": self.port, "metrics": self.metrics, "spool": self.spool, "tmp": tmp}.items():
            toml = toml.replace("{" + name + "}", str(value))
        self.config.write_text(textwrap.dedent(toml))
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpfront", "serve", "--config", str(self.config), "--workers", "1",
             "--log-format", "plain", "--metrics-listen", f"127.0.0.1:{self.metrics}"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def ready(self) -> Served:
        """Wait for a greeting (fails at once if the master exited)."""
        wait_greeting(self.port, TIMEOUT, self.proc, self.log)
        return self

    def exited(self) -> int:
        """Wait for the master to exit by itself (a refused start); its exit code."""
        try:
            return self.proc.wait(timeout=TIMEOUT + 20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve did not exit:\n{self.log.read_text()}") from None

    def queued(self) -> list[bytes]:
        new = self.spool / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[type[Served]]:
    """Start ``Served(toml, env)`` objects; each is stopped after the test."""
    started: list[Served] = []

    def start(toml: str, env: Mapping[str, str] | None = None, *, wait: bool = True) -> Served:
        server = Served(tmp_path, toml, env)
        started.append(server)
        return server.ready() if wait else server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


def retry(check: object, timeout: float = TIMEOUT) -> None:
    """Call ``check()`` until it stops raising AssertionError (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()  # type: ignore[operator]
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
