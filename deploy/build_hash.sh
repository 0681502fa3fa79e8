#!/usr/bin/env bash
# Prints a hash of what installing smtpfront builds from (the compiled core's sources, setup.py,
# pyproject.toml, the version), of $1 (which install: "run" or "dev") and of SMTPFRONT_PURE_PYTHON.
# deploy/run.sh and tests/run.sh install (and compile the core, about a minute) again only when
# it differs from the one they stored after their last install. Run from the repository root.
set -euo pipefail
{ echo "$1 ${SMTPFRONT_PURE_PYTHON:-}"; cat pyproject.toml setup.py smtpfront/_version.py \
    smtpfront/core/*.py smtpfront/core/_scan.c; } | sha256sum | cut -d' ' -f1
