#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv, install smtpfront, run `smtpfront serve`.
# With no arguments it listens on 127.0.0.1:2525 and queues mail into the Maildir ./spool.
# Usage: bash deploy/run.sh [serve options...]   (see: bash deploy/run.sh --help)
set -euo pipefail
cd "$(dirname "$0")/.."
# .venv from the lock of exact versions (requirements/run.lock), with the compiled core.
bash deploy/install.sh run
exec .venv/bin/smtpfront serve "$@"
