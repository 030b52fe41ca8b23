#!/usr/bin/env bash
# Finds or starts the PostgreSQL server the tests use (./test.sh runs it after install.sh):
#   scripts/postgres.sh start DIR   prints the server's URL on stdout: TEST_DATABASE_URL if set;
#                                   else the server on 127.0.0.1:5432 if it lets postgres in
#                                   without a password; else a private server it starts in DIR
#                                   (an empty folder), installing Debian's postgresql if needed
#   scripts/postgres.sh stop DIR    stops the private server in DIR, if one runs, and removes DIR
# TEST_POSTGRES_PRIVATE=1 skips the first two, for testing the private server itself.
# Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "== postgres: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# PostgreSQL refuses to run as root; Debian's package makes the postgres user to run it as
# (from /, as the project's folder may be closed to that user).
as_owner() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }

local_url=postgresql://postgres@127.0.0.1:5432/postgres

start_private() {
    local dir=$1 bin port
    if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        say "installing Debian's postgresql"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    bin=$(dirname "$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
    port=$(.venv/bin/python -c 'from tests.support import free_ports; print(free_ports(1)[0])')
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    say "starting a private server ($bin) on 127.0.0.1:$port in $dir"
    as_owner "$bin/initdb" -D "$dir" --auth=trust -U postgres --no-sync >/dev/null
    # fsync=off: the server and its data are thrown away when the run ends.
    if ! as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/log" -s -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start; then
        cat "$dir/log" >&2
        exit 1
    fi
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

stop_private() {
    local dir=$1
    [ -d "$dir" ] || return 0
    if [ -f "$dir/postmaster.pid" ]; then
        as_owner "/usr/lib/postgresql/$(cat "$dir/PG_VERSION")/bin/pg_ctl" -D "$dir" -m fast -s -w stop
        say "stopped the private server in $dir"
    fi
    rm -rf "$dir"
}

case "${1:-}:${2:-}" in
start:?*)
    if [ "${TEST_POSTGRES_PRIVATE:-}" != 1 ]; then
        if [ -n "${TEST_DATABASE_URL:-}" ]; then
            say "using TEST_DATABASE_URL (${TEST_DATABASE_URL#*@})"
            echo "$TEST_DATABASE_URL"
            exit 0
        fi
        if why=$(.venv/bin/python -c \
            'import sys; from tests.databases import refusal; sys.exit(refusal(sys.argv[1]))' \
            "$local_url" 2>&1); then
            say "using the server on 127.0.0.1:5432"
            echo "$local_url"
            exit 0
        fi
        say "127.0.0.1:5432 does not let postgres in ($why)"
    fi
    start_private "$2"
    ;;
stop:?*) stop_private "$2" ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
