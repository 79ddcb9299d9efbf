#!/usr/bin/env bash
# shellcheck disable=SC2317 # the cleanup function runs from a trap
# Runs benchmarks against a throwaway PostgreSQL that keeps its promises: the production
# durability settings (fsync, synchronous_commit and full_page_writes on, written out
# explicitly), its data on a disk folder (not tmpfs), TCP on 127.0.0.1 only. Every PostgreSQL
# figure in the README comes from this script.
#   1. Starts the server (as the `postgres` OS user when run as root; PostgreSQL refuses root)
#      on a free port, creates the role m365bot (CREATEDB) and exports TEST_POSTGRES_URL.
#   2. Prints the conditions: the server's settings as it reports them (SHOW), its version,
#      the file system of its data, cores and /proc/loadavg.
#   3. Runs each bench given (`cargo bench --bench NAME`, release build); the benches print
#      their own headers (durability read from the server, cores, measured process, load).
#   4. Stops the server and removes its files at exit.
# Exits non-zero when a bench fails or the server cannot start.
#
# Usage: scripts/bench-postgres.sh [BENCH...]
#   (default: notify notify_latency notify_scale notify_serve notify_replicas, every notify figure)
# Environment:
#   M365BOT_PG_DIR   where the throwaway cluster lives (default: target/bench-pg, or a folder
#                    under /var/tmp when run as root).
#   The benches' knobs pass through (NOTIFY_BENCH_RUNS, NOTIFY_LATENCY_SECONDS,
#   NOTIFY_SCALE_ROWS, NOTIFY_SERVE_ROWS, …; see each bench's header comment).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n "3,/^set -euo/p" "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
    benches=(notify notify_latency notify_scale notify_serve notify_replicas)
fi

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

if ! pg_bin=$(find_pg_bin); then
    echo "bench-postgres: PostgreSQL is not installed (initdb, pg_ctl): install Debian's postgresql" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        echo "bench-postgres: running as root needs the 'postgres' OS user" >&2
        exit 1
    fi
    owner=postgres
    pg_base=${M365BOT_PG_DIR:-/var/tmp/m365bot-bench-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)}
else
    owner=$(id -un)
    pg_base=${M365BOT_PG_DIR:-$ROOT/target/bench-pg}
fi
pg_data=$pg_base/data
pg_started=0

stop_cluster() {
    if [ -f "$pg_data/postmaster.pid" ]; then
        as_pg "$pg_bin/pg_ctl" -D "$pg_data" stop -m fast -w -t 60 >/dev/null 2>&1 ||
            as_pg "$pg_bin/pg_ctl" -D "$pg_data" stop -m immediate -w -t 30 >/dev/null 2>&1 ||
            true
    fi
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$pg_started" = 1 ]; then
        echo "==> stopping the benchmark PostgreSQL"
        stop_cluster
    fi
    rm -rf "$pg_base"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$(dirname "$pg_base")"
exec 9>"$pg_base.lock"
if command -v flock >/dev/null && ! flock -n 9; then
    echo "bench-postgres: another run is using $pg_base: wait for it to finish" >&2
    trap - EXIT
    exit 1
fi
stop_cluster
rm -rf "$pg_base"
mkdir -p "$pg_base"
chown "$owner" "$pg_base"
chmod 700 "$pg_base"

if ! as_pg "$pg_bin/initdb" -D "$pg_data" -U postgres -A trust -E UTF8 --locale=C \
    >"$pg_base/initdb.log" 2>&1; then
    cat "$pg_base/initdb.log" >&2
    exit 1
fi
cat >>"$pg_data/postgresql.conf" <<'EOF'

# scripts/bench-postgres.sh: a throwaway server with the production durability settings
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
fsync = on
synchronous_commit = on
full_page_writes = on
EOF

port=""
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    if port_in_use "$port"; then
        continue
    fi
    if as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_base/server.log" -o "-p $port" \
        -w -t 60 start >/dev/null 2>&1 9>&-; then
        pg_started=1
        break
    fi
    echo "    PostgreSQL did not start on port $port (attempt $attempt); retrying"
    stop_cluster
done
if [ "$pg_started" != 1 ]; then
    echo "bench-postgres: PostgreSQL failed to start; its log:" >&2
    tail -n 30 "$pg_base/server.log" >&2 || true
    exit 1
fi

psql=("$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
"${psql[@]}" -c "CREATE ROLE m365bot LOGIN CREATEDB" -c "CREATE DATABASE m365bot OWNER m365bot"
export TEST_POSTGRES_URL="postgres://m365bot@127.0.0.1:$port/m365bot"
unset M365BOT_TESTS_WITHOUT_POSTGRES

echo "==> benchmark PostgreSQL on 127.0.0.1:$port (data in $pg_data)"
"${psql[@]}" -A -t -c "SELECT 'server: ' || version()" \
    -c "SELECT 'durability: fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit') || ' full_page_writes=' || current_setting('full_page_writes') || ' wal_sync_method=' || current_setting('wal_sync_method')"
echo "data file system: $(df -T "$pg_data" | awk 'NR == 2 {print $2 " on " $1}')"
echo "cores: $(nproc); load (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$("${psql[@]}" -A -t -c "SHOW fsync")" != on ] ||
    [ "$("${psql[@]}" -A -t -c "SHOW synchronous_commit")" != on ] ||
    [ "$("${psql[@]}" -A -t -c "SHOW full_page_writes")" != on ]; then
    echo "bench-postgres: the server does not report the durability settings asked for" >&2
    exit 1
fi

failed=()
for bench in "${benches[@]}"; do
    echo
    echo "==> cargo bench --bench $bench   ($(date -u '+%H:%M:%S') UTC; load $(cut -d' ' -f1-3 /proc/loadavg))"
    if ! cargo bench --bench "$bench"; then
        failed+=("$bench")
    fi
done

echo
if [ ${#failed[@]} -ne 0 ]; then
    echo "bench-postgres: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "bench-postgres: every bench passed (${benches[*]})"
