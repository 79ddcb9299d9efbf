#!/usr/bin/env bash
# Runs the property tests (tests/properties.rs) with 10,000 cases each (PROPTEST_CASES,
# default 10000), prints how many cases of each property passed, and exits non-zero when
# any property fails.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${PROPTEST_CASES:-10000}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "property tests with PROPTEST_CASES=$cases"
status=0
PROPTEST_CASES="$cases" cargo test --test properties -- --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
grep -oE 'property [a-z ]+: [0-9]+ cases passed' "$log" || true
if [ "$status" -ne 0 ]; then
    grep -E 'panicked|minimal failing input|test result' "$log" || tail -n 40 "$log"
    echo "property tests FAILED" >&2
    exit "$status"
fi
passed=$(grep -oE "property [a-z ]+: $cases cases passed" "$log" | wc -l)
tests=$(grep -c '^#\[test\]' tests/properties.rs)
if [ "$passed" -ne "$tests" ]; then
    echo "expected $tests properties with $cases cases each, $passed reported" >&2
    exit 1
fi
echo "all $tests properties passed $cases cases each"
