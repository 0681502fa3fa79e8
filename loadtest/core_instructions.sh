#!/usr/bin/env bash
# CPU instructions per pipelined 1 KB transaction through the sans-IO core: the deterministic
# twin of `python -m smtpfront.bench core` (whose timings vary by a third on a shared VM), for
# comparing two versions of the core. Runs the benchmark's own harness under callgrind for N
# and 3N transactions and divides the difference (start-up cancels out).
#
# usage: bash loadtest/core_instructions.sh [N]   (needs valgrind; N defaults to 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
run() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python - "$1" <<'PY' 2>&1 |
import sys
from smtpfront import bench
n = int(sys.argv[1])
_, answerer = bench._connection(10 * 1024 * 1024)
envelope = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<recipient@example.net>\r\nDATA\r\n"
body = bench.stuff(bench.english_body(1024)) + b".\r\n"
for _ in range(n):
    answerer.push(envelope)
    answerer.push(body)
assert answerer.messages == n
PY
        awk '/Collected/ {gsub(",", "", $4); print $4}'
}
a=$(run "$n")
b=$(run $((3 * n)))
echo "core.instructions_per_transaction=$(( (b - a) / (2 * n) ))"
