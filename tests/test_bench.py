"""``python -m smtpfront.bench core`` runs and ends with its two machine-readable lines.

Only that it works is tested here (its own checks: every message accepted, every body octet
unstuffed); what it measures belongs in the issue notes, not in a test's pass or fail.
"""

from __future__ import annotations

import re
import subprocess
import sys


def test_core_benchmark_runs_and_reports() -> None:
    done = subprocess.run([sys.executable, "-m", "smtpfront.bench", "core", "--seconds", "0.2"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"core\.transactions_per_s=[1-9][0-9]*", lines[-2]), lines
    assert re.fullmatch(r"core\.unstuff_mb_per_s=[1-9][0-9]*", lines[-1]), lines
    assert "pipelined 1 KB transactions" in done.stdout
