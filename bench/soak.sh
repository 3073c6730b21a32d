#!/usr/bin/env bash
# Soak: the whole local mesh (`weft demo`: control plane, five sample
# services behind their own proxies, mTLS, a traffic generator at a fixed
# rate) for SOAK_MINUTES, sampling every process's RSS and open file
# descriptors every SOAK_EVERY seconds. Memory and descriptors must be flat
# after warm-up: the summary prints, per process, the value at the end of
# warm-up, at the end, and the peak, and fails when a proxy's RSS grew by
# more than SOAK_MAX_GROWTH_KIB or its descriptors by more than 16.
#
# Usage: bench/soak.sh   (SOAK_MINUTES=30 SOAK_RATE=300 SOAK_EVERY=10
#                         SOAK_WARMUP_MINUTES=3 SOAK_SKIP_BUILD=0)
# Runs on a developer's machine only; never from CI or the test suite.
set -euo pipefail

MINUTES=${SOAK_MINUTES:-30}
RATE=${SOAK_RATE:-300}
EVERY=${SOAK_EVERY:-10}
WARMUP_MINUTES=${SOAK_WARMUP_MINUTES:-3}
MAX_GROWTH_KIB=${SOAK_MAX_GROWTH_KIB:-4096}
SKIP_BUILD=${SOAK_SKIP_BUILD:-0}

if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    echo "bench/soak.sh: CI is set; the soak does not run in CI" >&2
    exit 0
fi

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH_DIR/results/soak-$STAMP"
mkdir -p "$OUT"
log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building weft (release)"
    (cd "$ROOT" && cargo build --release -p weft >"$OUT/build.log" 2>&1) || {
        log "build failed: $OUT/build.log"
        exit 1
    }
fi
WEFT="$ROOT/target/release/weft"

DEMO_PID=""
cleanup() {
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

log "weft demo --rate $RATE for ${MINUTES}m; samples every ${EVERY}s into $OUT/samples.tsv"
(cd "$ROOT" && exec "$WEFT" demo --rate "$RATE" --duration "${MINUTES}m") >"$OUT/demo.log" 2>&1 &
DEMO_PID=$!

# One line per process per sample: seconds, pid, role, RSS KiB, fds.
printf 'seconds\tpid\trole\trss_kib\tfds\n' >"$OUT/samples.tsv"
start=$(date +%s)
role_of() { # pid: what the process is, from its command line
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null |
        awk '{ for (i = 1; i <= NF; i++) if ($i == "proxy" || $i == "control" || $i == "sample-app") { r = $i; for (j = i + 1; j <= NF; j++) if ($j == "--workload" || $j == "--listen") { r = r ":" $(j + 1); break } print r; exit } print "demo" }'
}
while kill -0 "$DEMO_PID" 2>/dev/null; do
    now=$(($(date +%s) - start))
    for pid in "$DEMO_PID" $(pgrep -P "$DEMO_PID" || true); do
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n "$rss" ]] || continue
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\t%s\t%s\n' "$now" "$pid" "$(role_of "$pid")" "$rss" "$fds" >>"$OUT/samples.tsv"
    done
    sleep "$EVERY"
done
wait "$DEMO_PID" || true
DEMO_PID=""

log "summary (warm-up: first ${WARMUP_MINUTES}m)"
python3 - "$OUT/samples.tsv" "$((WARMUP_MINUTES * 60))" "$MAX_GROWTH_KIB" <<'EOF' | tee "$OUT/summary.txt"
import csv, sys
path, warm, max_growth = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(path), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["pid"], r["role"]), []).append(r)
bad = []
print(f"{'process':<28} {'RSS warm':>9} {'RSS end':>9} {'RSS peak':>9} {'fds warm':>8} {'fds end':>8}  (KiB)")
for (pid, role), rs in sorted(by.items(), key=lambda kv: kv[0][1]):
    after = [r for r in rs if int(r["seconds"]) >= warm] or rs
    w, e = after[0], after[-1]
    peak = max(int(r["rss_kib"]) for r in after)
    print(f"{role + ' ' + pid:<28} {w['rss_kib']:>9} {e['rss_kib']:>9} {peak:>9} {w['fds']:>8} {e['fds']:>8}")
    if role.startswith("proxy"):
        if int(e["rss_kib"]) - int(w["rss_kib"]) > max_growth:
            bad.append(f"{role} {pid}: RSS grew {int(e['rss_kib']) - int(w['rss_kib'])} KiB after warm-up")
        if int(e["fds"]) - int(w["fds"]) > 16:
            bad.append(f"{role} {pid}: descriptors grew from {w['fds']} to {e['fds']}")
last = max(int(r["seconds"]) for r in rows) if rows else 0
print(f"{last} s sampled, {len(rows)} samples")
for b in bad:
    print("NOT FLAT:", b)
sys.exit(1 if bad else 0)
EOF
tail -n 12 "$OUT/demo.log" >"$OUT/demo-tail.txt" || true
log "demo's last table: $OUT/demo-tail.txt"
