#!/usr/bin/env bash
# Installs what is missing: Pushpin and nginx (Debian's packages; nginx is the TLS front of the
# publish tests), a virtual environment in .venv, and the project with its dev tools; with
# --tests also Debian's chromium, the browser the page's tests drive. Safe to run again: it
# only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pushpin >/dev/null 2>&1; then
    echo "== installing pushpin from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pushpin >/dev/null
    # The package enables a system-wide Pushpin on port 7999 where systemd runs; this project
    # starts its own, so keep that one off.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pushpin 2>/dev/null; then
        as_root systemctl disable --now pushpin || true
    fi
fi

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "== installing nginx from Debian's packages (the tests' TLS front)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    # The package may start a system-wide nginx on port 80; the tests start their own.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
        as_root systemctl disable --now nginx || true
    elif [ -s /run/nginx.pid ]; then
        as_root /usr/sbin/nginx -s quit || true
    fi
fi

if [ "${1:-}" = "--tests" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "== installing chromium from Debian's packages (the page's tests drive it)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    if ! python3 -m venv .venv 2>/dev/null; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf .venv
        python3 -m venv .venv
    fi
fi

stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "== installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
