#!/usr/bin/env bash
# Runs every Go fuzz target in the module for FUZZTIME each (default 10s).
# Seed corpora always run as part of `go test`; this adds coverage-guided time.
set -euo pipefail
fuzztime=${FUZZTIME:-10s}
cd "$(dirname "$0")/.."
status=0
while IFS= read -r file; do
  pkg="./$(dirname "$file")"
  for fn in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)\(' "$file" | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/'); do
    echo "fuzz: $pkg $fn for $fuzztime"
    if ! go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$fuzztime" "$pkg"; then
      echo "fuzz: FAIL $pkg $fn" >&2
      status=1
    fi
  done
done < <(grep -rl --include='*_test.go' -E '^func Fuzz' . | sort)
exit $status
