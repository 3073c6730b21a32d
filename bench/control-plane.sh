#!/usr/bin/env bash
# Control-plane fan-out: N simulated proxy watch streams over M services on a
# real weft-control; time for one change to reach all of them, and RSS.
# Never run in CI. Usage: bench/control-plane.sh [N...]   (default: 1000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${CI:-}" ] && { echo "benchmarks do not run in CI" >&2; exit 1; }
cargo build --release --workspace --quiet
mkdir -p bench/results
ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/control-plane-$ts.json
ulimit -n 65536 2>/dev/null || true
echo "[" > "$out"
first=1
for n in "${@:-1000 10000}"; do
  for m in 100 1000; do
    echo "== $n watchers over $m services" >&2
    r=$(timeout 300 target/release/cp-load --watchers "$n" --services "$m" --control target/release/weft-control)
    echo "$r" >&2
    [ $first = 1 ] || echo "," >> "$out"
    first=0
    echo "$r" >> "$out"
  done
done
echo "]" >> "$out"
echo "wrote $out" >&2
