#!/usr/bin/env python3
"""Turns the raw outputs of bench/run.sh into a table (stdout) and a JSON file.

Input: the manifest written by run.sh, one tab-separated line per load phase:
    path  protocol  kind(max|rate)  tool(wrk|oha)  output-file  proc-file  exit-code  command
and for each phase a proc file, one line per monitored process:
    label  pid  cpu-ticks-before  cpu-ticks-after  rss-end-kB  rss-max-sampled-kB  VmHWM-kB  [rss-anon-end-kB]
"""

import argparse
import json
import os
import re
import sys

PROXY_LABELS = ("A", "B")  # proxy A (client side) and B (server side): weft-proxy or Envoy
# Log files of the proxies (weft-proxy at RUST_LOG=warn, Envoy at -l warn) and
# lines in them that are expected, not problems.
PROXY_LOG = re.compile(r"^(weft-proxy|envoy)-[ab]\.log$")
EXPECTED_LOG_LINES = (re.compile(r"\]\[warning\]\[main\] .*caught ENVOY_SIGTERM$"),)


def parse_wrk(text):
    """Requests, rate, errors and closed-loop latency from `wrk --latency`."""
    r = {"requests": None, "requests_per_sec": None, "non_2xx_3xx": 0, "socket_errors": {}}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        r["requests_per_sec"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        r["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat["p" + pct] = float(val) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    r["closed_loop_latency_ms"] = lat
    r["errors"] = r["non_2xx_3xx"] + sum(r["socket_errors"].values())
    return r


def parse_oha(text):
    """Requests, rate, status codes, errors and latency percentiles from oha's JSON."""
    d = json.loads(text)
    s = d.get("summary", {})
    codes = {str(k): int(v) for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errs = {str(k): int(v) for k, v in (d.get("errorDistribution") or {}).items()}
    # Requests oha itself cancels when the duration ends are not the server's
    # fault; keep them apart from real errors.
    aborted = sum(v for k, v in errs.items() if k == "aborted due to deadline")
    responses = sum(codes.values())
    non_2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
    pcts = d.get("latencyPercentiles") or {}
    lat = {k: (v * 1e3 if isinstance(v, (int, float)) else None) for k, v in pcts.items()}
    return {
        "requests": responses,
        "requests_per_sec": s.get("requestsPerSec"),
        "success_rate": s.get("successRate"),
        "status_codes": codes,
        "error_distribution": errs,
        "non_2xx": non_2xx,
        "aborted_at_deadline": aborted,
        "errors": non_2xx + sum(errs.values()) - aborted,
        "latency_ms": lat,
        "average_ms": s["average"] * 1e3 if isinstance(s.get("average"), (int, float)) else None,
        "slowest_ms": s["slowest"] * 1e3 if isinstance(s.get("slowest"), (int, float)) else None,
    }


def parse_proc(path, clk_tck, requests):
    procs = {}
    if not os.path.exists(path):
        return procs
    for line in open(path):
        f = line.split()
        if len(f) not in (7, 8):
            continue
        label, pid, before, after, rss_end, rss_max, hwm = f[0], *map(int, f[1:7])
        anon_end = int(f[7]) if len(f) == 8 else None
        cpu_us = (after - before) * 1e6 / clk_tck
        procs[label] = {
            "pid": pid,
            "cpu_s": cpu_us / 1e6,
            "cpu_us_per_req": (cpu_us / requests) if requests else None,
            "rss_end_mib": rss_end / 1024,
            "rss_anon_end_mib": anon_end / 1024 if anon_end is not None else None,
            "rss_max_sampled_mib": rss_max / 1024,
            "vm_hwm_mib": hwm / 1024,
        }
    return procs


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def per_proxy(procs, key, spec):
    vals = [procs[l][key] for l in PROXY_LABELS if l in procs]
    if not vals or any(v is None for v in vals):
        return "-"
    return "/".join(spec.format(v) for v in vals)


def table_lines(headers, lines):
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) if i < 1 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths))) for l in lines]
    return out


def extra_tables(phases, logs):
    """The 1 MiB body, idle-connection and start-to-ready results."""
    extras = {"body_1mib": [], "idle": [], "start_to_ready_ms": {}}
    out = []
    for ph in phases:
        if ph["protocol"] != "http1-post-1mib":
            continue
        rps, procs = ph.get("requests_per_sec"), ph.get("processes", {})
        extras["body_1mib"].append({
            "path": ph["path"], "requests_per_sec": rps, "mib_per_sec": rps,
            "cpu_us_per_req": {l: procs[l]["cpu_us_per_req"] for l in PROXY_LABELS if l in procs},
            "errors": ph.get("errors"),
        })
    if extras["body_1mib"]:
        out += ["", "HTTP/1.1 POST of a 1 MiB body, max rate (oha):"]
        out += table_lines(["path", "req/s = MiB/s", "CPU µs/req A/B", "errors"], [[
            r["path"], fmt(r["requests_per_sec"], "{:.0f}"),
            "/".join(f"{v:.0f}" for v in r["cpu_us_per_req"].values() if v is not None) or "-",
            fmt(r["errors"], "{}"),
        ] for r in extras["body_1mib"]])
    extras["tcp_new_connections"] = []
    for ph in phases:
        if ph["protocol"] != "tcp-new-conn":
            continue
        procs = ph.get("processes", {})
        extras["tcp_new_connections"].append({
            "path": ph["path"], "connections_per_sec": ph.get("requests_per_sec"),
            "cpu_us_per_connection": {l: procs[l]["cpu_us_per_req"] for l in PROXY_LABELS if l in procs},
            "p99_ms": (ph.get("closed_loop_latency_ms") or {}).get("p99"), "errors": ph.get("errors"),
        })
    if extras["tcp_new_connections"]:
        out += ["", "New connections through an opaque TCP tunnel, each a new mTLS connection A -> B "
                    "(wrk, Connection: close):"]
        out += table_lines(["path", "conns/s", "CPU µs/conn A/B", "p99 ms (closed loop)", "errors"], [[
            r["path"], fmt(r["connections_per_sec"], "{:.0f}"),
            "/".join(f"{v:.0f}" for v in r["cpu_us_per_connection"].values() if v is not None) or "-",
            fmt(r["p99_ms"], "{:.3f}"), fmt(r["errors"], "{}"),
        ] for r in extras["tcp_new_connections"]])
    for ph in phases:
        m = re.fullmatch(r"http1-idle(\d+)", ph["protocol"])
        if not m:
            continue
        n = int(m.group(1))
        mem = os.path.join(logs, f"{ph['path']}-idle{n}.mem")
        per, held = {}, None
        if os.path.exists(mem):
            for line in open(mem):
                f = line.split()
                if f and f[0] == "held":
                    held = json.loads(" ".join(f[1:]))
                elif len(f) == 5:
                    label, _, before, during, after = f[0], *map(int, f[1:])
                    per[label] = {"rss_before_kib": before, "rss_held_kib": during, "rss_after_load_kib": after}
        count = (held or {}).get("held") or 0
        for v in per.values():
            v["kib_per_connection"] = (v["rss_held_kib"] - v["rss_before_kib"]) / count if count else None
        lat = ph.get("latency_ms") or {}
        extras["idle"].append({"path": ph["path"], "connections": n, "held": held, "memory": per,
                               "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "p99_9_ms": lat.get("p99.9"),
                               "errors": ph.get("errors")})
    if extras["idle"]:
        out += ["", "Idle HTTP/1.1 keep-alive connections held (bench/idle_conns.py) during the fixed-rate run:"]
        out += table_lines(["path", "conns", "held", "KiB/conn A/B", "RSS held MiB A/B", "p50 ms", "p99 ms",
                            "p99.9 ms", "errors"], [[
            r["path"], str(r["connections"]), fmt((r["held"] or {}).get("held"), "{}"),
            "/".join(fmt(r["memory"].get(l, {}).get("kib_per_connection"), "{:.1f}") for l in PROXY_LABELS
                     if l in r["memory"]) or "-",
            "/".join(f"{r['memory'][l]['rss_held_kib'] / 1024:.1f}" for l in PROXY_LABELS if l in r["memory"]) or "-",
            fmt(r["p50_ms"], "{:.3f}"), fmt(r["p99_ms"], "{:.3f}"), fmt(r["p99_9_ms"], "{:.3f}"),
            fmt(r["errors"], "{}"),
        ] for r in extras["idle"]])
    ready = os.path.join(logs, "ready.tsv")
    if os.path.exists(ready):
        for line in open(ready):
            name, _, ms = line.strip().partition("\t")
            if ms:
                extras["start_to_ready_ms"][name] = int(ms)
        out += ["", "From process start to its first 200 (weft: /ready; Envoy, HAProxy: a request through A), ms:"]
        out += ["  " + ", ".join(f"{k} {v}" for k, v in extras["start_to_ready_ms"].items())]
    return extras, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clk-tck", type=int, default=100)
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()

    meta = dict(m.split("=", 1) for m in a.meta)
    phases = []
    for line in open(a.manifest):
        line = line.rstrip("\n")
        if not line:
            continue
        path, proto, kind, tool, out, procf, rc, cmd = line.split("\t", 7)
        text = open(out).read() if os.path.exists(out) else ""
        ph = {"path": path, "protocol": proto, "kind": kind, "tool": tool, "command": cmd, "exit_code": int(rc)}
        try:
            ph.update(parse_wrk(text) if tool == "wrk" else parse_oha(text))
        except (ValueError, KeyError) as e:
            ph["parse_error"] = f"{type(e).__name__}: {e}"
            ph["raw_output_head"] = text[:2000]
            ph["requests"] = None
        ph["processes"] = parse_proc(procf, a.clk_tck, ph.get("requests"))
        phases.append(ph)

    # One row per (path, protocol): max req/s from the "max" phase, latency and
    # CPU per request from the fixed-rate phase, RSS at the end of the max phase
    # and the peak (VmHWM) after both.
    rows, order = {}, []
    for ph in phases:
        key = (ph["path"], ph["protocol"])
        if key not in rows:
            rows[key] = {"path": ph["path"], "protocol": ph["protocol"]}
            order.append(key)
        rows[key][ph["kind"]] = ph

    table = []
    for key in order:
        r = rows[key]
        if r["protocol"] not in ("http1", "http2"):
            continue
        mx, rt = r.get("max", {}), r.get("rate", {})
        lat = rt.get("latency_ms") or {}
        mprocs, rprocs = mx.get("processes", {}), rt.get("processes", {})
        hwm = {l: {"vm_hwm_mib": max(p.get("processes", {}).get(l, {}).get("vm_hwm_mib", 0) for p in (mx, rt))}
               for l in PROXY_LABELS if l in mprocs or l in rprocs}
        row = {
            "path": r["path"],
            "protocol": r["protocol"],
            "max_rps": mx.get("requests_per_sec"),
            "max_rps_tool": mx.get("tool"),
            "rate_rps_target": float(meta.get("rate_rps", "nan")),
            "rate_rps_achieved": rt.get("requests_per_sec"),
            "p50_ms": lat.get("p50"),
            "p90_ms": lat.get("p90"),
            "p99_ms": lat.get("p99"),
            "p99_9_ms": lat.get("p99.9"),
            "errors_max": mx.get("errors"),
            "errors_rate": rt.get("errors"),
            "proxies": {
                l: {
                    "rss_end_of_max_load_mib": mprocs.get(l, {}).get("rss_end_mib"),
                    "rss_anon_end_of_max_load_mib": mprocs.get(l, {}).get("rss_anon_end_mib"),
                    "rss_end_of_rate_load_mib": rprocs.get(l, {}).get("rss_end_mib"),
                    "vm_hwm_mib": hwm.get(l, {}).get("vm_hwm_mib"),
                    "cpu_us_per_req_at_rate": rprocs.get(l, {}).get("cpu_us_per_req"),
                    "cpu_us_per_req_at_max": mprocs.get(l, {}).get("cpu_us_per_req"),
                }
                for l in PROXY_LABELS
                if l in mprocs or l in rprocs
            },
        }
        table.append(row)

    headers = ["path", "proto", "max req/s", "at rate", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
               "errors", "RSS MiB A/B", "anon MiB A/B", "peak MiB A/B", "CPU µs/req A/B"]
    lines = []
    for row in table:
        px = row["proxies"]
        errs = [e for e in (row["errors_max"], row["errors_rate"]) if e is not None]
        lines.append([
            row["path"],
            {"http1": "HTTP/1.1", "http2": "HTTP/2"}.get(row["protocol"], row["protocol"]),
            fmt(row["max_rps"], "{:.0f}") + ("" if row["max_rps_tool"] in (None, "wrk") else "*"),
            fmt(row["rate_rps_achieved"], "{:.0f}"),
            fmt(row["p50_ms"], "{:.3f}"),
            fmt(row["p90_ms"], "{:.3f}"),
            fmt(row["p99_ms"], "{:.3f}"),
            fmt(row["p99_9_ms"], "{:.3f}"),
            str(sum(errs)) if errs else "-",
            per_proxy(px, "rss_end_of_max_load_mib", "{:.1f}"),
            per_proxy(px, "rss_anon_end_of_max_load_mib", "{:.1f}"),
            per_proxy(px, "vm_hwm_mib", "{:.1f}"),
            per_proxy(px, "cpu_us_per_req_at_rate", "{:.1f}"),
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = [
        f"Weft benchmark {meta.get('timestamp', '')} (rev {meta.get('git_rev', '?')}; "
        f"{meta.get('cpus', '?')} CPUs; proxy worker threads: {meta.get('proxy_worker_threads', '?')}; "
        f"{meta.get('duration_s', '?')}s per phase; load average before: {meta.get('loadavg_at_start', '?')})",
        "  ".join(h.ljust(w) for h, w in zip(headers, widths)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths))) for l in lines]
    out += [
        "",
        f"max req/s: HTTP/1.1 by wrk ({meta.get('wrk', '')}), HTTP/2 by oha (* ; -c {meta.get('oha_connections', '?')}).",
        f"latency: oha at a fixed {meta.get('rate_rps', '?')} req/s with latency correction, -c {meta.get('oha_connections', '?')}"
        " ('at rate': the rate achieved).",
        "errors: non-2xx responses + transport errors over both phases of the row.",
        "RSS: VmRSS at the end of the max-throughput phase (anon: its RssAnon part, without mapped files",
        "such as the binary); peak: VmHWM. CPU: utime+stime during the fixed-rate phase divided by the",
        "responses received. A = client-side proxy, B = server-side proxy.",
    ]
    extras, extra_lines = extra_tables(phases, a.logs)
    out += extra_lines
    print("\n".join(out))

    problems = []
    for ph in phases:
        tag = f"{ph['path']} {ph['protocol']} {ph['kind']}"
        if ph.get("parse_error"):
            problems.append(f"{tag}: could not parse {ph['tool']} output ({ph['parse_error']})")
        if ph["exit_code"] != 0:
            problems.append(f"{tag}: {ph['tool']} exited {ph['exit_code']}")
        if ph.get("errors"):
            detail = ph.get("status_codes") or {}
            problems.append(f"{tag}: {ph['errors']} errors (status codes {detail}, "
                            f"errors {ph.get('error_distribution') or ph.get('socket_errors')})")
    # Warnings and errors the proxies logged (weft-proxy: RUST_LOG=warn, Envoy: -l warn).
    proxy_log_lines = {}
    for name in sorted(os.listdir(a.logs)):
        if PROXY_LOG.match(name):
            text = open(os.path.join(a.logs, name), errors="replace").read().splitlines()
            text = [t for t in text if not any(e.search(t) for e in EXPECTED_LOG_LINES)]
            proxy_log_lines[name] = {"lines": len(text), "first": text[:20]}
            if text:
                problems.append(f"{name}: {len(text)} log lines, first: {text[0][:300]}")
    if problems:
        print("\nproblems seen:")
        for p in problems:
            print("  - " + p)

    doc = {"meta": meta, "rows": table, "extras": extras, "phases": phases, "proxy_logs": proxy_log_lines,
           "problems": problems}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
