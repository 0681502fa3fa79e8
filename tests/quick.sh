#!/usr/bin/env bash
# The fast inner loop (seconds, not minutes): ruff, mypy --strict, the import contracts and the
# protocol core's tests (bytes in, bytes out; no sockets, no Redis). Needs the .venv that
# `bash tests/run.sh` (or `bash deploy/install.sh dev`) made. Usage: bash tests/quick.sh [pytest args...]
# For other slices use the markers: .venv/bin/pytest -m "not deploy and not process" (see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/pytest ]; then
    echo "no .venv yet: run bash tests/run.sh (or bash deploy/install.sh dev) once" >&2
    exit 2
fi
.venv/bin/ruff check smtpfront tests
.venv/bin/mypy --strict smtpfront
.venv/bin/lint-imports --no-cache >/dev/null && echo "import contracts kept"
.venv/bin/pytest -q -m core "$@"
