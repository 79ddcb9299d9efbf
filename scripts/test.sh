#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run through `phase` and traps look unreachable
# Runs the whole test suite, the same way on a new developer machine and in CI:
#   1. PostgreSQL: uses TEST_POSTGRES_URL when set; otherwise installs Debian's `postgresql` when
#      missing and starts a private throwaway server on 127.0.0.1 (stopped and removed at exit).
#   2. Node tools: `npm ci` in tools/node when its lock file exists and node_modules is stale;
#      Debian's `chromium` (and an emoji font) for the Adaptive Cards renderer check.
#   3. cargo fmt --check, cargo clippy --all-targets -D warnings, cargo test.
# Every phase runs even when an earlier one failed; the exit status is non-zero if any failed.
#
# Usage: scripts/test.sh [--without-postgres] [-- ARGS FOR cargo test]
#   --without-postgres  skip the PostgreSQL set-up; the store tests run on SQLite only
#                       (sets M365BOT_TESTS_WITHOUT_POSTGRES=1; that variable set to 1 does
#                       the same).
# Environment:
#   TEST_POSTGRES_URL   an existing server (a role allowed to CREATE DATABASE) instead of the
#                       throwaway one.
#   M365BOT_PG_DIR      where the throwaway cluster lives (default: target/pg, or a folder
#                       under /tmp when run as root, since PostgreSQL runs as the postgres user).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

without_postgres=0
cargo_test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --without-postgres) without_postgres=1 ;;
        -h | --help)
            sed -n "3,/^set -euo/p" "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        --)
            shift
            cargo_test_args=("$@")
            break
            ;;
        *)
            echo "scripts/test.sh: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

# CI builds from scratch every time: skip incremental data and full debug info (line tables
# still give backtraces their file and line).
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
    export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
fi

# ---------------------------------------------------------------------------------------------
# Phases, timings and the summary.

phase_names=()
phase_results=()
phase_seconds=()
failed=0

now_us() { echo "${EPOCHREALTIME/./}"; }

# record NAME RESULT START_US
record() {
    local elapsed=$(($(now_us) - $3))
    phase_names+=("$1")
    phase_results+=("$2")
    phase_seconds+=("$(printf '%d.%01d' $((elapsed / 1000000)) $((elapsed % 1000000 / 100000)))")
    if [ "$2" = "FAILED" ]; then
        failed=1
    fi
    echo "==> $1: $2 (${phase_seconds[-1]}s)"
}

# phase NAME COMMAND...: runs a command as one timed phase.
phase() {
    local name=$1 start
    shift
    echo
    echo "==> $name: $*"
    start=$(now_us)
    if "$@"; then
        record "$name" ok "$start"
    else
        record "$name" FAILED "$start"
    fi
}

banner_without_postgres() {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!  PostgreSQL tests were SKIPPED (--without-postgres / M365BOT_TESTS_WITHOUT_POSTGRES=1)"
    echo "!!  Storage was tested on SQLite only. Run scripts/test.sh without the flag for both."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
}

summary() {
    local i
    echo
    echo "==> timings"
    for i in "${!phase_names[@]}"; do
        printf '    %-10s %8ss  %s\n' "${phase_names[$i]}" "${phase_seconds[$i]}" "${phase_results[$i]}"
    done
    if [ "${M365BOT_TESTS_WITHOUT_POSTGRES:-}" = "1" ]; then
        banner_without_postgres
    fi
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL.

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

pg_bin=""
pg_base=""
pg_data=""
pg_started=0

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

stop_cluster() {
    if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
        as_pg "$pg_bin/pg_ctl" -D "$pg_data" stop -m fast -w -t 30 >/dev/null 2>&1 ||
            as_pg "$pg_bin/pg_ctl" -D "$pg_data" stop -m immediate -w -t 30 >/dev/null 2>&1 ||
            true
    fi
}

# Stops a server left running by an earlier, killed run, and removes its files.
clear_stale_cluster() {
    local pid
    if [ -f "$pg_data/postmaster.pid" ]; then
        echo "    stopping a PostgreSQL left over from an earlier run in $pg_data"
        stop_cluster
        if [ -f "$pg_data/postmaster.pid" ]; then
            pid=$(head -n1 "$pg_data/postmaster.pid")
            if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "postgres" ]; then
                kill -KILL "$pid" 2>/dev/null || true
                sleep 1
            fi
        fi
    fi
    rm -rf "$pg_base"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$pg_started" = 1 ]; then
        echo "==> stopping the test PostgreSQL"
        stop_cluster
        rm -rf "$pg_base"
    fi
    summary
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

setup_postgres() {
    if ! pg_bin=$(find_pg_bin); then
        echo "    PostgreSQL is not installed: installing Debian's postgresql"
        if ! command -v apt-get >/dev/null; then
            echo "    no apt-get here: install PostgreSQL (initdb, pg_ctl), or set TEST_POSTGRES_URL," >&2
            echo "    or run scripts/test.sh --without-postgres" >&2
            return 1
        fi
        "${SUDO[@]}" apt-get update -qq || return 1
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends postgresql >/dev/null || return 1
        pg_bin=$(find_pg_bin) || {
            echo "    postgresql installed, but initdb/pg_ctl were not found" >&2
            return 1
        }
    fi
    echo "    using $pg_bin"

    local owner
    if [ "$(id -u)" -eq 0 ]; then
        if ! id postgres >/dev/null 2>&1; then
            echo "    running as root needs the 'postgres' OS user (PostgreSQL refuses root)" >&2
            return 1
        fi
        owner=postgres
        pg_base=${M365BOT_PG_DIR:-/tmp/m365bot-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)}
    else
        owner=$(id -un)
        pg_base=${M365BOT_PG_DIR:-$ROOT/target/pg}
    fi
    pg_data=$pg_base/data

    # One run at a time per cluster folder: a second run would stop this one's server.
    # (This function runs inside `if`, where `set -e` does not act: failures are checked.)
    mkdir -p "$(dirname "$pg_base")" || return 1
    if command -v flock >/dev/null; then
        exec 9>"$pg_base.lock"
        if ! flock -n 9; then
            echo "    another scripts/test.sh is using $pg_base: wait for it to finish" >&2
            return 1
        fi
    fi

    clear_stale_cluster || return 1
    mkdir -p "$pg_base" && chown "$owner" "$pg_base" && chmod 700 "$pg_base" || return 1

    if ! as_pg "$pg_bin/initdb" -D "$pg_data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$pg_base/initdb.log" 2>&1; then
        cat "$pg_base/initdb.log" >&2
        return 1
    fi
    # A throwaway server: TCP on loopback only, no Unix socket, durability off for speed.
    cat >>"$pg_data/postgresql.conf" <<'EOF' || return 1

# scripts/test.sh: throwaway test server
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

    local attempt port=""
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 40000))
        if port_in_use "$port"; then
            continue
        fi
        # 9>&-: the server outlives a killed run and must not keep holding the run lock.
        if as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_base/server.log" -o "-p $port" \
            -w -t 60 start >/dev/null 2>&1 9>&-; then
            pg_started=1
            break
        fi
        echo "    PostgreSQL did not start on port $port (attempt $attempt); retrying"
        stop_cluster
    done
    if [ "$pg_started" != 1 ]; then
        echo "    PostgreSQL failed to start; its log:" >&2
        tail -n 30 "$pg_base/server.log" >&2 || true
        return 1
    fi

    local psql=("$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    "${psql[@]}" -c "CREATE ROLE m365bot LOGIN CREATEDB" \
        -c "CREATE DATABASE m365bot OWNER m365bot" || return 1
    export TEST_POSTGRES_URL="postgres://m365bot@127.0.0.1:$port/m365bot"
    echo "    PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') ready:" \
        "TEST_POSTGRES_URL=$TEST_POSTGRES_URL (data in $pg_data)"
}

# ---------------------------------------------------------------------------------------------
# Node tools.

setup_node_tools() {
    local dir=tools/node
    local installed=$dir/node_modules/.package-lock.json
    if [ ! -f "$installed" ] || [ "$dir/package-lock.json" -nt "$installed" ] ||
        [ "$dir/package.json" -nt "$installed" ]; then
        npm ci --prefix "$dir" --no-audit --no-fund
    else
        echo "    $dir/node_modules is up to date"
    fi
}

# Headless Chromium: the Playground journeys render every card with the official Adaptive Cards
# renderer in it (tools/node/render-cards.js); the emoji font draws the check marks.
setup_chromium() {
    if command -v chromium >/dev/null && fc-list 2>/dev/null | grep -qi "color emoji"; then
        echo "    using $(chromium --version 2>/dev/null | head -1)"
        return 0
    fi
    echo "    installing Debian's chromium and fonts-noto-color-emoji"
    if ! command -v apt-get >/dev/null; then
        echo "    no apt-get here: install chromium (headless) for the card renderer check" >&2
        return 1
    fi
    "${SUDO[@]}" apt-get update -qq || return 1
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium fonts-noto-color-emoji >/dev/null || return 1
}

# ---------------------------------------------------------------------------------------------
# cargo test, with one closing line that adds up every test binary's result.

run_cargo_test() {
    local log status
    log=$(mktemp) || return 1
    set +e
    cargo test --no-fail-fast "${cargo_test_args[@]}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    awk '
        /^test result: / {
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^passed/) passed += $(i - 1)
                if ($i ~ /^failed/) failed += $(i - 1)
                if ($i ~ /^ignored/) ignored += $(i - 1)
            }
            seen = 1
        }
        END { if (seen) printf "\ntests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }
    ' "$log"
    rm -f "$log"
    return "$status"
}

# ---------------------------------------------------------------------------------------------

if [ "$without_postgres" = 1 ] || [ "${M365BOT_TESTS_WITHOUT_POSTGRES:-}" = 1 ]; then
    export M365BOT_TESTS_WITHOUT_POSTGRES=1
    unset TEST_POSTGRES_URL
    banner_without_postgres
elif [ -n "${TEST_POSTGRES_URL:-}" ]; then
    echo "==> postgres: using the server in TEST_POSTGRES_URL"
else
    unset M365BOT_TESTS_WITHOUT_POSTGRES
    phase postgres setup_postgres
    if [ "$pg_started" != 1 ]; then
        echo "PostgreSQL could not be set up: the tests that need it would fail." >&2
        echo "Fix it, set TEST_POSTGRES_URL, or run scripts/test.sh --without-postgres." >&2
        exit 1
    fi
fi

if [ -f tools/node/package-lock.json ]; then
    phase npm setup_node_tools
fi
phase chromium setup_chromium

phase fmt cargo fmt --check
phase clippy cargo clippy --all-targets -- -D warnings
phase test run_cargo_test

exit "$failed"
