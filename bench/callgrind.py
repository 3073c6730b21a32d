#!/usr/bin/env python3
"""Totals of one callgrind dump, per request: instructions executed, and how
often the allocator and memcpy/memmove were called.

Usage: callgrind.py DUMP OHA_JSON PATH PROTOCOL  -> one tab-separated line:
path, protocol, requests (the 2xx responses oha counted), instructions,
instructions per request, allocator calls per request (malloc, calloc,
realloc), memcpy/memmove calls per request, the dump

The dump's own `summary:` line is 0 when instrumentation was switched on
and off by callgrind_control, so the self costs are summed here (a cost line
right after a `calls=` line is the call's inclusive cost, not a self cost).
"""
import json
import re
import sys

COUNTED = ("malloc", "free", "realloc", "calloc", "memcpy", "memmove")


def main():
    dump = sys.argv[1]
    with open(sys.argv[2]) as f:
        codes = json.load(f).get("statusCodeDistribution", {})
    requests = max(sum(v for k, v in codes.items() if k.startswith("2")), 1)
    names, calls = {}, dict.fromkeys(COUNTED, 0)
    total, after_calls, callee = 0, False, None
    cost = re.compile(r"^[0-9+*-]")
    with open(dump) as f:
        for line in f:
            if line.startswith("calls="):
                after_calls = True
                if callee is not None:
                    calls[callee] += int(line.split()[0][6:])
                continue
            if line.startswith("cfn="):
                m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                name = names.get(m.group(1), "")
                base = next((c for c in COUNTED if name == c or name.startswith(("__" + c, c + "_"))), None)
                callee = base
                continue
            if line.startswith("fn="):
                m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
                continue
            if cost.match(line):
                if not after_calls:
                    parts = line.split()
                    if len(parts) > 1:
                        total += int(parts[1])
                after_calls = False
                callee = None
    per = {k: round(v / requests, 1) for k, v in calls.items()}
    path, protocol = sys.argv[3], sys.argv[4]
    allocs = per["malloc"] + per["calloc"] + per["realloc"]
    copies = per["memcpy"] + per["memmove"]
    fields = [path, protocol, requests, total, round(total / requests), round(allocs, 1), round(copies, 1), dump]
    print("\t".join(map(str, fields)))


if __name__ == "__main__":
    main()
