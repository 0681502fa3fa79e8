#!/usr/bin/env bash
# Prints a hash of what installing smtpfront builds from (the compiled core's sources and the
# modules compiled with it: core.COMPILED_WITH_CORE, setup.py, pyproject.toml, the version, the
# lock $1 installs from), of $1 (which install: "run" or "dev")
# and of SMTPFRONT_PURE_PYTHON. deploy/install.sh installs (and compiles the core, about a minute)
# again only when it differs from the one it stored after its last install. Run from the
# repository root.
set -euo pipefail
{ echo "$1 ${SMTPFRONT_PURE_PYTHON:-}"; cat pyproject.toml setup.py smtpfront/_version.py "requirements/$1.lock" \
    smtpfront/core/*.py smtpfront/core/_scan.c smtpfront/aio/*.py \
    smtpfront/held.py smtpfront/logs.py smtpfront/sink/*.py smtpfront/sink/redis/*.py; } | sha256sum | cut -d' ' -f1
