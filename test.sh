#!/usr/bin/env bash
# Installs what is missing, then checks style (ruff), types (mypy) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
