#!/usr/bin/env bash
# Installs what is missing (chromium too, for the page's tests), then checks style (ruff), types
# (mypy) and runs the test suite against a PostgreSQL server (scripts/postgres.sh).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh --tests
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
# The tests' PostgreSQL (scripts/postgres.sh): one found, or a private one stopped at the end.
pg_dir=$(mktemp -d)
trap 'scripts/postgres.sh stop "$pg_dir"' EXIT
TEST_DATABASE_URL=$(scripts/postgres.sh start "$pg_dir")
export TEST_DATABASE_URL
echo "== pytest"
.venv/bin/pytest "$@"
