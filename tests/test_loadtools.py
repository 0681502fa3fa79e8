"""The measuring tools in ``loadtest/`` run and report (what they measure belongs in the issue
notes, not in a test's pass or fail)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

LOADTEST = Path(__file__).resolve().parent.parent / "loadtest"


def test_calls_per_message_counts_a_real_workers_calls() -> None:
    done = subprocess.run([sys.executable, str(LOADTEST / "calls_per_message.py"), "--queue", "null:",
                           "--messages", "100", "--top", "40", "--driver", "loadgen"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    total = re.fullmatch(r"python calls per message: ([0-9.]+); C calls: ([0-9.]+)", lines[0])
    assert total is not None, lines
    assert float(total[1]) > 10  # metrics, hooks, the null sink...
    # (the core, the adapter's per-command modules, the sink's and logs.py run compiled:
    # setprofile does not see them); the null sink's commit runs once per message
    assert any(line.split()[-2:] == ["null.py", "commit"] for line in lines[1:]), lines


def test_redis_dedup_cost_compares_xadd_with_the_dedup_script() -> None:
    done = subprocess.run([sys.executable, str(LOADTEST / "redis_dedup_cost.py"), "--count", "50",
                           "--sizes", "1024"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    row = re.search(r"^\| 1,024 \| ([0-9.]+) \| ([0-9.]+) \| [0-9.]+x \|$", done.stdout, re.MULTILINE)
    assert row is not None, done.stdout
    assert float(row[1]) > 0 and float(row[2]) > 0
