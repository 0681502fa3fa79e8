#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv, install smtpfront, run `smtpfront serve`.
# With no arguments it listens on 127.0.0.1:2525 and queues mail into the Maildir ./spool.
# Usage: bash deploy/run.sh [serve options...]   (see: bash deploy/run.sh --help)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/smtpfront serve "$@"
