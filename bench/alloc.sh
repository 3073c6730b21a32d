#!/usr/bin/env bash
# Which allocator gives memory back: the connection-bounds test
# (tests/tests/bounds.rs: 10,000 connections to each listener, capped at
# 1,000 and timed out, then 10,000 silent ones) against a release
# weft-proxy, once per allocator setting, printing the proxy's RSS before,
# with 1,000 idle keep-alive connections, and after the storm.
#
# Settings: glibc as built; glibc with a low trim threshold and two arenas
# (GLIBC_TUNABLES); jemalloc and mimalloc preloaded (Debian libjemalloc2,
# libmimalloc2.0: installed when missing); the build's own allocator
# ("built-in", the binary as shipped).
#
# Usage: bench/alloc.sh   (ALLOC_ROUNDS=1)
# Runs on a developer's machine only; never from CI or the test suite.
set -euo pipefail

ROUNDS=${ALLOC_ROUNDS:-1}
if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    echo "bench/alloc.sh: CI is set; the allocator comparison does not run in CI" >&2
    exit 0
fi

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
mkdir -p "$BENCH_DIR/results"
OUT="$BENCH_DIR/results/alloc-$(date -u +%Y%m%dT%H%M%SZ).txt"
LIB=/usr/lib/x86_64-linux-gnu
if [[ ! -e $LIB/libjemalloc.so.2 || ! -e $LIB/libmimalloc.so.2 ]]; then
    apt-get install -y libjemalloc2 libmimalloc2.0 >/dev/null
fi

cd "$ROOT"
cargo build --release --workspace --bins
bin=$(cargo test --release --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bounds" and m.get("executable"):
        print(m["executable"])')
[[ -x "$bin" ]] || { echo "bounds test binary not found" >&2; exit 1; }

# name|environment for the proxy (the test's processes inherit it).
settings=(
    "built-in|"
    "glibc trim 128 KiB, 2 arenas|GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072:glibc.malloc.arena_max=2"
    "glibc 1 arena|GLIBC_TUNABLES=glibc.malloc.arena_max=1"
    "jemalloc (preloaded)|LD_PRELOAD=$LIB/libjemalloc.so.2"
    "mimalloc (preloaded)|LD_PRELOAD=$LIB/libmimalloc.so.2"
)
for round in $(seq "$ROUNDS"); do
    for s in "${settings[@]}"; do
        name=${s%%|*}
        envs=${s#*|}
        echo "== $name (round $round)" | tee -a "$OUT"
        # shellcheck disable=SC2086
        # CARGO=true: the binaries were just built; the test must not rebuild them.
        (cd tests && env CARGO=true $envs "$bin" --test-threads 1 --nocapture ten_thousand 2>&1) |
            grep -E '^(outbound|inbound|silent|RSS)' | tee -a "$OUT"
    done
done
echo "results: $OUT"
