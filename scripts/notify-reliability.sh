#!/usr/bin/env bash
# Notification delivery reliability at scale (the tests run the same scenarios smaller):
#   1. SIGKILL of the bot process in the middle of a 10,000-message fan-out, then a restart:
#      every message delivered, duplicates <= deliveries in flight at the kill (SQLite, then
#      PostgreSQL when TEST_POSTGRES_URL is set).
#   2. A connector failing 30% with 503, 10% with 429 and sometimes too slow: every message
#      delivered, none dead-lettered (SQLite and PostgreSQL).
#   3. Two workers with separate pools on one PostgreSQL: each message delivered exactly once.
# Release build; each scenario prints its figures.
#
# Usage: scripts/notify-reliability.sh [MESSAGES_IN_HUNDREDS]   (default 100 = 10,000)
# Environment: TEST_POSTGRES_URL  a server where the role may create databases. Without it only
#              the SQLite scenarios run, and the script says so and exits 1.
# Exits non-zero when any scenario fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

hundreds=${1:-100}
if [ -z "${TEST_POSTGRES_URL:-}" ]; then
    echo "TEST_POSTGRES_URL is not set: the PostgreSQL scenarios are skipped" >&2
    export M365BOT_TESTS_WITHOUT_POSTGRES=1
fi

failures=0

# run CARGO_TEST_ARGS...: one scenario; its figures are printed, a failure is counted.
run() {
    local log status
    echo "== $*" >&2
    log=$(mktemp)
    set +e
    cargo test --release "$@" -- --nocapture --test-threads=1 >"$log" 2>&1
    status=$?
    set -e
    grep -E "crash run|faults:|^test |test result|panicked|assert" "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "FAILED: cargo test $* (exit $status); its last lines:" >&2
        tail -n 40 "$log" >&2
        failures=$((failures + 1))
    fi
    rm -f "$log"
}

# 1. The crash: 100 channels x (hundreds) cases.
export NOTIFY_CRASH_CONVERSATIONS=100 NOTIFY_CRASH_CASES=$hundreds
NOTIFY_CRASH_DB=sqlite run --test notify_delivery_crash
if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    NOTIFY_CRASH_DB=postgres run --test notify_delivery_crash
fi

# 2. and 3.: 20 channels x (5 x hundreds) cases, 50 channels x (2 x hundreds) cases.
NOTIFY_FLAKY_CASES=$((hundreds * 5)) run --test notify_delivery a_failing_connector
if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    NOTIFY_TWO_WORKER_CASES=$((hundreds * 2)) run --test notify_delivery two_workers
fi

if [ "$failures" -ne 0 ]; then
    echo "notify-reliability: $failures scenario(s) FAILED" >&2
    exit 1
fi
if [ -z "${TEST_POSTGRES_URL:-}" ]; then
    echo "notify-reliability: the SQLite scenarios passed; the PostgreSQL ones were NOT run" \
        "(set TEST_POSTGRES_URL)" >&2
    exit 1
fi
echo "notify-reliability: every scenario passed"
