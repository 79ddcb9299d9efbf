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
# Environment: TEST_POSTGRES_URL  a server where the role may create databases (scenarios on
#              PostgreSQL are skipped without it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

hundreds=${1:-100}
if [ -z "${TEST_POSTGRES_URL:-}" ]; then
    echo "TEST_POSTGRES_URL is not set: the PostgreSQL scenarios are skipped" >&2
    export M365BOT_TESTS_WITHOUT_POSTGRES=1
fi

run() {
    echo "== $*" >&2
    cargo test --release "$@" -- --nocapture --test-threads=1 2>&1 |
        grep -E "crash run|faults:|^test |test result|panicked|assert" || true
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
