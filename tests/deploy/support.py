"""Helpers of the deployment tests: paths, bounded waits, a real ``smtpfront serve``, tools."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "smtpfront"
TIMEOUT = 10.0
T = TypeVar("T")


def tool(name: str, package: str) -> str:
    """The path of a system program the tests drive; a failure (never a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run the tests with `bash tests/run.sh`, which installs {package}")
    return path


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = TIMEOUT, log: Path | None = None) -> T:
    """Call ``probe`` until it returns something other than None/False, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            tail = f"\n--- {log}:\n{log.read_text(errors='replace')[-4000:]}" if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{tail}")
        time.sleep(0.05)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on loopback; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a process we started, if it still runs (for ``finally``)."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=TIMEOUT)


@contextlib.contextmanager
def serve(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``smtpfront serve ARGS`` as a real subprocess; killed on exit if it still runs."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")}
    proc = subprocess.Popen([sys.executable, "-m", "smtpfront", "serve", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env={**environ, **(env or {})})
    try:
        yield proc
    finally:
        stop(proc)


def wait_ready(proc: subprocess.Popen[bytes], metrics_port: int, log: Path) -> None:
    """Until the master's /readyz answers 200 (fails at once if it exited)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"smtpfront serve exited with {proc.returncode}:\n{log.read_text()}")
        return http_get(metrics_port, "/readyz")[0] == 200

    wait_for("smtpfront /readyz", ready, log=log)


def terminate(proc: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM and the exit status (bounded)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"smtpfront did not stop:\n{log.read_text()}") from None
