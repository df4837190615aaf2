#!/usr/bin/env bash
# Runs every hermod test: vet, the Go tests (race detector on), a short run of
# each fuzz target, and the end-to-end script against real peers (swaks,
# Postfix's smtp-sink, dkimpy). Installs the tools it needs (scripts/deps.sh)
# when run as root on a machine that lacks them. `.ci/run` calls exactly this.
#
# Environment: FUZZTIME (default 5s per target), SKIP_E2E=1 to skip the
# end-to-end script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every outside tool the tests use is listed, probed exactly as the tests
# use it, installed when missing and reported with its version
# (scripts/deps.sh).
. scripts/deps.sh
echo "== tools"
deps_ensure
# Tests that need one of these tools fail rather than skip when it is missing.
export HERMOD_REQUIRE_TOOLS=1

echo "== go vet"
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

echo "== staticcheck"
"$(go env GOPATH)/bin/staticcheck" ./...

echo "== go test -race"
go test -race -shuffle=on -count=1 -timeout 15m ./...

echo "== fuzz (${FUZZTIME:-5s} per target)"
fuzzlog=$(mktemp)
trap 'rm -f "$fuzzlog"' EXIT
grep -rHoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed -E 's#^(.*)/[^/]*:func (Fuzz.*)#\1 \2#' | sort -u |
while read -r pkg target; do
  for try in 1 2 3; do
    if go test -run '^$' -fuzz "^${target}\$" -fuzztime "${FUZZTIME:-5s}" "$pkg" >"$fuzzlog" 2>&1; then
      echo "ok - fuzz $target ($pkg)"
      break
    fi
    cat "$fuzzlog"
    # A crasher is written to testdata/fuzz: that is a real failure. An
    # engine hiccup (Go's fuzzer sometimes ends a run with "context deadline
    # exceeded" while a worker is still busy) records nothing and is tried
    # again, up to three times.
    if [ -n "$(git status --porcelain -- "$pkg/testdata/fuzz" 2>/dev/null)" ] || [ "$try" = 3 ]; then
      echo "not ok - fuzz $target ($pkg)"
      exit 1
    fi
    echo "# fuzz $target: no crasher recorded; trying again"
  done
done

if [ "${SKIP_E2E:-0}" != 1 ]; then
  echo "== end to end"
  bash scripts/e2e.sh
fi
echo "== all tests passed"
