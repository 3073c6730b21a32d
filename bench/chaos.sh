#!/usr/bin/env bash
# The chaos suite (tests/tests/chaos.rs) over and over, for longer than CI
# runs it: CHAOS_ROUNDS rounds (default 10) of every scenario, each
# scenario's line (requests, failures by reason, p99, the client proxy's
# RSS) kept in bench/results/chaos-<stamp>.txt. Stops at the first failed
# round and keeps its output.
#
# Usage: bench/chaos.sh   (CHAOS_ROUNDS=10 CHAOS_FILTER=<test name part>)
# Runs on a developer's machine only; never from CI or the test suite.
set -euo pipefail

ROUNDS=${CHAOS_ROUNDS:-10}
FILTER=${CHAOS_FILTER:-}

if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    echo "bench/chaos.sh: CI is set; the long chaos runs do not run in CI" >&2
    exit 0
fi

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
mkdir -p "$BENCH_DIR/results"
OUT="$BENCH_DIR/results/chaos-$(date -u +%Y%m%dT%H%M%SZ).txt"

cd "$ROOT"
# The e2e tests run the workspace's binaries: build them with the tests.
cargo build --workspace --bins
bin=$(cargo test --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "chaos" and m.get("executable"):
        print(m["executable"])')
[[ -x "$bin" ]] || { echo "chaos test binary not found" >&2; exit 1; }

for round in $(seq "$ROUNDS"); do
    echo "== round $round/$ROUNDS" | tee -a "$OUT"
    if ! (cd tests && "$bin" --test-threads 1 --nocapture $FILTER) >"$OUT.round" 2>&1; then
        cat "$OUT.round" >>"$OUT"
        echo "round $round failed; its output is in $OUT" >&2
        exit 1
    fi
    grep -E '^chaos ' "$OUT.round" | tee -a "$OUT"
done
rm -f "$OUT.round"
echo "all $ROUNDS rounds passed: $OUT"
