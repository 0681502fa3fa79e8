"""One instance per address, with real ``smtpfront serve`` processes: a second one on an
address the first serves refuses to start and the first keeps all the mail; a master killed
with SIGKILL leaves nothing that blocks the next start; the master's own hand-over of the
port to respawned and reloaded workers goes on working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..conftest import free_port
from .test_serve import TIMEOUT, Serve


def second(tmp: Path, listen: str) -> subprocess.CompletedProcess[str]:
    """Another ``serve`` (its own spool and metrics port) on ``listen``; it must not stay up."""
    return subprocess.run(
        [sys.executable, "-m", "smtpfront", "serve", "--listen", listen, "--workers", "1", "--no-tls",
         "--queue", f"maildir:{tmp / 'second'}", "--metrics-listen", f"127.0.0.1:{free_port()}",
         "--log-format", "plain"],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )


def test_a_second_instance_on_the_same_address_refuses_to_start(tmp_path: Path) -> None:
    first = Serve(tmp_path, "--workers", "2")
    try:
        first.wait_workers(2)
        refused = second(tmp_path, f"127.0.0.1:{first.port}")
        assert refused.returncode != 0
        assert (f"127.0.0.1:{first.port} is already served by another smtpfront instance (pid {first.proc.pid})"
                in refused.stderr), refused.stderr
        assert "Traceback" not in refused.stderr
        wildcard = second(tmp_path, f"0.0.0.0:{first.port}")  # another spelling of the address
        assert wildcard.returncode != 0 and f"cannot listen on 0.0.0.0:{first.port}" in wildcard.stderr
        first.send(12)
        assert len(list((first.spool / "new").iterdir())) == 12  # the first kept all the mail
        assert not (tmp_path / "second").exists()
        # its own hand-over still works: a respawned worker, then a reload generation
        workers = first.wait_workers(2)
        os.kill(min(workers), signal.SIGKILL)
        first.wait_workers(1, exclude=workers)
        old = first.wait_workers(2)
        first.proc.send_signal(signal.SIGHUP)
        first.wait_workers(2, exclude=old)
        first.send(3)
        assert len(list((first.spool / "new").iterdir())) == 15
        assert first.stop() == 0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait(timeout=TIMEOUT)


def test_a_killed_master_does_not_block_the_next_start(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Serve(tmp_path / "a", "--workers", "2")
    port = first.port
    try:
        workers = first.wait_workers(2)
        first.proc.kill()  # SIGKILL: no cleanup runs in the master
        first.proc.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + 30  # its orphaned workers notice within a heartbeat and leave
        while any(os.path.exists(f"/proc/{pid}") for pid in workers):
            assert time.monotonic() < deadline, "the orphaned workers did not exit"
            time.sleep(0.1)
    finally:
        for pid in workers:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
    again = Serve.__new__(Serve)
    again.port, again.metrics_port = port, free_port()
    again.spool, again.log = tmp_path / "b" / "spool", tmp_path / "b" / "serve.log"
    again.proc = subprocess.Popen(
        [sys.executable, "-m", "smtpfront", "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1",
         "--queue", f"maildir:{again.spool}", "--no-tls", "--log-format", "plain",
         "--metrics-listen", f"127.0.0.1:{again.metrics_port}"],
        stdout=again.log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        again.ready()
        again.send(2)
        assert again.stop() == 0
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
            again.proc.wait(timeout=TIMEOUT)
