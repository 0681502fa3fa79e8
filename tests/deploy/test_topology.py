"""The whole topology under faults (``loadtest/topology/run.sh --short``): HAProxy, two
``smtpfront serve`` hosts, Redis with a replica and three Sentinels, two consumers, each in its
own network namespace; a host killed, a host drained, the primary killed, a host cut from
Redis, a consumer killed, all under load. Every message that got a 250 must reach a Maildir.

It needs root (network namespaces) and about two minutes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from .support import REPO, tool

RUN = REPO / "loadtest" / "topology" / "run.sh"
SCENARIOS = {"kill-host", "drain-host", "kill-redis-primary", "cut-redis", "kill-consumer"}
LINE = re.compile(r"^scenario=(\S+) sent=(\d+) acked=(\d+) delivered=(\d+) lost=(\d+) duplicates=(\d+)")
LIMIT = 400.0  # the short run takes about 110 s; it stops by itself well before this


@pytest.mark.timeout(LIMIT + 60)
def test_every_acknowledged_message_is_delivered_through_every_fault() -> None:
    if os.geteuid() != 0:
        pytest.fail("loadtest/topology/run.sh needs root (network namespaces): run the tests as root")
    for name, package in (("ip", "iproute2"), ("redis-server", "redis-server"), ("haproxy", "haproxy")):
        tool(name, package)
    proc = subprocess.Popen(["bash", str(RUN), "--short"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # its trap removes the namespaces and the processes
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"run.sh --short did not finish in {LIMIT} s:\n{out}\n{err[-4000:]}")
    report = f"\n--- stdout:\n{out}\n--- stderr (end):\n{err[-6000:]}"
    seen = {}
    for line in out.splitlines():
        if m := LINE.match(line):
            name, sent, acked, delivered, lost, _ = m.groups()
            seen[name] = line
            assert int(lost) == 0, f"acknowledged messages lost in {name}: {line}{report}"
            assert int(acked) > 0 and int(sent) >= int(acked), line + report
            assert int(delivered) >= int(acked), line + report
    assert set(seen) == SCENARIOS, report
    assert proc.returncode == 0, report
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert f"sft{proc.pid}-" not in leftover, f"namespaces left behind:\n{leftover}"
