#!/usr/bin/env bash
# The test command: set up everything on a fresh machine, then lint, type-check, check the
# import layers, and run the test suite. Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# .venv from the lock of exact versions (requirements/dev.lock), with the compiled core.
bash deploy/install.sh dev

# System programs the wire tests drive (real clients and servers, never mocks).
need=()
for pair in swaks:swaks redis-server:redis-server redis-cli:redis-tools openssl:openssl haproxy:haproxy \
        promtool:prometheus dovecot:dovecot-core ip:iproute2 ps:procps setsid:util-linux; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    if [ "$(id -u)" = 0 ]; then apt=(apt-get); else apt=(sudo apt-get); fi
    "${apt[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${need[@]}" >/dev/null
fi

echo "== ruff"
.venv/bin/ruff check smtpfront tests
echo "== mypy --strict"
.venv/bin/mypy --strict smtpfront
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/pytest "$@"
