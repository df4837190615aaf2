#!/usr/bin/env bash
# Runs the reliability and security suite (issue 6) in its long form: the
# reliability package in soak mode (HERMOD_SOAK=1, the same as its -long
# test flag, which cmd/hermod does not define: 100 sessions for 60s, …) and
# the kill -9 crash test with 20 kills, then prints each promise's summary.
# The fast form of the same suite runs in every `go test ./...`.
#
# Environment: HERMOD_CRASH_KILLS (default 20).
set -uo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp)
trap 'rm -f "$out"' EXIT
HERMOD_SOAK=1 HERMOD_SPOOL_SUMMARY=1 HERMOD_CRASH_KILLS="${HERMOD_CRASH_KILLS:-20}" \
  go test ./reliability/ ./cmd/hermod/ ./queue/ -run 'Test' -count=1 -v -timeout 30m 2>&1 | tee "$out"
status=${PIPESTATUS[0]}

echo
echo "== reliability summary"
grep -E '^(smuggling|open relay|forged bounces|remote faults|outbound|api|auth|auth flood|limits|crash|load|signals|identity|spool|submission|submission data|smtputf8|bounce listener|verp guessing|cluster etcd|cluster node|cluster membership|cluster bench):' "$out"
if [ "$status" -ne 0 ]; then
  echo "== FAILED (go test exit $status)"
  grep -E '^(--- FAIL|FAIL)' "$out" | sort -u
fi
exit "$status"
