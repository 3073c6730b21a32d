#!/usr/bin/env bash
# Long runs of the property tests over everything that parses untrusted
# bytes (every `props::` test in weft-api, weft-proxy and weft-control;
# docs/architecture.md#fuzzing lists them). `cargo test` runs each with a
# few hundred cases; this runs each for FUZZ_MINUTES (default 10), in
# batches of FUZZ_CASES cases (default 2000) with a fresh seed per batch,
# and prints per target the cases run and the failing batches. A failing
# batch's output (proptest's minimal input, and its seed to replay with
# PROPTEST_RNG_SEED) is kept under bench/results/fuzz-<time>/.
#
# FUZZ_SECONDS, when set, overrides FUZZ_MINUTES (for a quick check).
#
# Never run in CI. Usage: bench/fuzz.sh [FILTER]   (only targets containing FILTER)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${CI:-}" ] && { echo "long fuzz runs do not run in CI" >&2; exit 1; }

seconds=${FUZZ_SECONDS:-$((${FUZZ_MINUTES:-10} * 60))}
cases=${FUZZ_CASES:-2000}
filter=${1:-}
out=$PWD/bench/results/fuzz-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

# The lib test binary of each crate, built once.
declare -A dir_of=([weft-api]=api [weft-proxy]=proxy [weft-control]=control-plane)
declare -A bin_of
for crate in weft-api weft-proxy weft-control; do
  bin_of[$crate]=$(cargo test -p "$crate" --lib --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -x "${bin_of[$crate]}" ] || { echo "no test binary for $crate" >&2; exit 1; }
done

printf '%-14s %-92s %10s %8s %8s\n' crate target cases failures seconds
total_failures=0
for crate in weft-api weft-proxy weft-control; do
  bin=${bin_of[$crate]}
  targets=$(cd "${dir_of[$crate]}" && "$bin" --list 2>/dev/null | sed -n 's/^\(.*props::[^:]*\): test$/\1/p')
  for target in $targets; do
    [[ -z "$filter" || "$target" == *"$filter"* ]] || continue
    start=$SECONDS
    end=$((SECONDS + seconds))
    ran=0
    failed=0
    while ((SECONDS < end)); do
      seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
      log="$out/${crate}-${target//::/-}-$seed.log"
      if (cd "${dir_of[$crate]}" &&
        PROPTEST_CASES=$cases PROPTEST_RNG_SEED=$seed PROPTEST_DISABLE_FAILURE_PERSISTENCE=1 \
          "$bin" --exact "$target" --test-threads 1 >"$log" 2>&1); then
        ran=$((ran + cases))
        rm -f "$log"
      else
        failed=$((failed + 1))
      fi
    done
    total_failures=$((total_failures + failed))
    printf '%-14s %-92s %10d %8d %8d\n' "$crate" "$target" "$ran" "$failed" $((SECONDS - start))
  done
done
if ((total_failures > 0)); then
  echo "$total_failures failing batches; their output is in $out" >&2
  exit 1
fi
rmdir "$out" 2>/dev/null || true
