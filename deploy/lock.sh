#!/usr/bin/env bash
# Refresh the locks of exact versions that both README commands and CI install from:
#   requirements/run.lock  the runtime dependencies and what building the compiled core needs
#   requirements/dev.lock  the same plus the test, deploy, loadtest and dev tools
# The ranges stay in pyproject.toml ([project] dependencies and extras, [build-system] requires);
# a lock holds one exact version of every direct and transitive dependency, with the hashes of
# every file of that version, resolved for CPython 3.11 on Linux.
#
# Refreshing is a deliberate change: run `bash deploy/lock.sh`, then `bash tests/run.sh` (it
# reinstalls, since the locks are build inputs), and commit the locks with what the new versions
# required. The resolver (uv, pinned below) runs from a throw-away virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.10
PYTHON=${PYTHON:-python3}
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
"$PYTHON" -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
# What the build needs (setuptools, mypy for mypyc) comes from [build-system] requires: installs
# build without isolation from the locked versions, so a new setuptools cannot break a fresh clone.
"$tool/venv/bin/python" - > "$tool/build.in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY
compile=("$tool/venv/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11
         --python-platform x86_64-manylinux_2_28 --no-header --annotation-style line)
header="# Exact versions (with hashes) of everything smtpfront needs; made by: bash deploy/lock.sh"
{ echo "$header"; "${compile[@]}" pyproject.toml "$tool/build.in"; } > requirements/run.lock
{ echo "$header"; "${compile[@]}" pyproject.toml "$tool/build.in" --extra dev; } > requirements/dev.lock
echo "requirements/run.lock: $(grep -c '==' requirements/run.lock) packages;" \
     "requirements/dev.lock: $(grep -c '==' requirements/dev.lock) packages"
