#!/usr/bin/env bash
# Set up .venv for one of the two README commands, from the lock of exact versions:
#   bash deploy/install.sh run   the runtime (requirements/run.lock), for deploy/run.sh
#   bash deploy/install.sh dev   with the test and dev tools (requirements/dev.lock), for tests/run.sh
# Every package comes from the lock, checked against its hashes; smtpfront itself is then
# installed in place without build isolation, so the compiled core is built with the locked
# setuptools and mypy too. A new release of anything cannot change what a fresh clone gets:
# refreshing the lock is its own change (bash deploy/lock.sh).
# Installing compiles the protocol core (about a minute): done again only when what the build
# reads (deploy/build_hash.sh, the lock included) has changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: bash deploy/install.sh run|dev}
case "$kind" in run|dev) ;; *) echo "usage: bash deploy/install.sh run|dev" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
sum=$(bash deploy/build_hash.sh "$kind")
stamp=.venv/.smtpfront-$kind-build
if [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ] && .venv/bin/python -c "import smtpfront" 2>/dev/null; then
    echo "== smtpfront is installed and its build inputs are unchanged" >&2
    exit 0
fi
echo "== installing from requirements/$kind.lock, then smtpfront (compiles the core)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r "requirements/$kind.lock"
# A module taken off the compiled list must not keep loading from its old extension file.
find smtpfront -name '*.cpython-*.so' -delete
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -m pip check --disable-pip-version-check >&2
echo "$sum" > "$stamp"
