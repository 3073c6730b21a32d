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
# FUZZ_JOBS targets run at once (default 1; each is single-threaded). The
# test binaries are copied before the first target starts, so editing and
# rebuilding the tree during a long run does not change what is fuzzed.
#
# Never run in CI. Usage: bench/fuzz.sh [FILTER]   (only targets containing FILTER)
set -euo pipefail
cd "$(dirname "$0")/.."

# One target: `fuzz.sh --worker CRATE BIN DIR TARGET` (what xargs runs).
if [ "${1:-}" = --worker ]; then
  crate=$2 bin=$3 dir=$4 target=$5
  start=$SECONDS
  end=$((SECONDS + FUZZ_SECONDS_EACH))
  ran=0
  failed=0
  while ((SECONDS < end)); do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    log="$FUZZ_OUT/${crate}-${target//::/-}-$seed.log"
    if (cd "$dir" &&
      PROPTEST_CASES=$FUZZ_CASES_EACH PROPTEST_RNG_SEED=$seed PROPTEST_DISABLE_FAILURE_PERSISTENCE=1 \
        "$bin" --exact "$target" --test-threads 1 >"$log" 2>&1); then
      ran=$((ran + FUZZ_CASES_EACH))
      rm -f "$log"
    else
      failed=$((failed + 1))
    fi
  done
  printf '%-14s %-92s %10d %8d %8d\n' "$crate" "$target" "$ran" "$failed" $((SECONDS - start))
  exit 0
fi

[ -n "${CI:-}" ] && { echo "long fuzz runs do not run in CI" >&2; exit 1; }
export FUZZ_SECONDS_EACH=${FUZZ_SECONDS:-$((${FUZZ_MINUTES:-10} * 60))}
export FUZZ_CASES_EACH=${FUZZ_CASES:-2000}
jobs=${FUZZ_JOBS:-1}
filter=${1:-}
export FUZZ_OUT=$PWD/bench/results/fuzz-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$FUZZ_OUT/bin"

# The lib test binary of each crate, built once and copied.
declare -A dir_of=([weft-api]=api [weft-proxy]=proxy [weft-control]=control-plane)
declare -A bin_of
for crate in weft-api weft-proxy weft-control; do
  built=$(cargo test -p "$crate" --lib --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -x "$built" ] || { echo "no test binary for $crate" >&2; exit 1; }
  bin_of[$crate]=$FUZZ_OUT/bin/$crate
  cp "$built" "${bin_of[$crate]}"
done

printf '%-14s %-92s %10s %8s %8s\n' crate target cases failures seconds
for crate in weft-api weft-proxy weft-control; do
  (cd "${dir_of[$crate]}" && "${bin_of[$crate]}" --list 2>/dev/null) |
    sed -n 's/^\(.*props::[^:]*\): test$/\1/p' |
    while read -r target; do
      [[ -z "$filter" || "$target" == *"$filter"* ]] || continue
      printf '%s\n' "$crate" "${bin_of[$crate]}" "$PWD/${dir_of[$crate]}" "$target"
    done
done | xargs -d '\n' -n 4 -P "$jobs" "$0" --worker | tee "$FUZZ_OUT/summary.txt"

rm -rf "$FUZZ_OUT/bin"
failures=$(awk '{ s += $4 } END { print s + 0 }' "$FUZZ_OUT/summary.txt")
if ((failures > 0)); then
  echo "$failures failing batches; their output is in $FUZZ_OUT" >&2
  exit 1
fi
echo "no failures; summary in $FUZZ_OUT/summary.txt"
