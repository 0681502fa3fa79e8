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
# Installing compiles the protocol core (about a minute): done again only when what the build
# reads has changed since the last install from this script.
sum=$(bash deploy/build_hash.sh run)
if [ "$(cat .venv/.smtpfront-run-build 2>/dev/null)" != "$sum" ] || ! .venv/bin/python -c "import smtpfront" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
    echo "$sum" > .venv/.smtpfront-run-build
fi
exec .venv/bin/smtpfront serve "$@"
