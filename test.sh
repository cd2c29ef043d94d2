#!/usr/bin/env bash
# Installs the package with its development extras into ./.venv and runs every
# check: ruff, mypy --strict and the whole pytest suite (real-host tests included;
# they install their hosts into a cache dir outside the repo on first use).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${TOKEN_OPTIMIZER_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "== ruff"
"$VENV/bin/python" -m ruff check .
echo "== mypy --strict"
"$VENV/bin/python" -m mypy --strict
echo "== pytest"
# pytest exits 5 when it collects nothing; set -e turns that into a failure too.
exec "$VENV/bin/python" -m pytest "$@"
