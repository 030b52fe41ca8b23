#!/usr/bin/env bash
# Installs what is missing, then runs Pushpin and the origin together (clients on port 7999).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/python -m app "$@"
