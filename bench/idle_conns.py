#!/usr/bin/env python3
"""Holds N idle HTTP/1.1 keep-alive connections open to a proxy, for
bench/run.sh's idle-connection phase.

Each connection sends one GET (with the given Host), reads the whole
response, and then stays open and quiet. Once every connection has been
tried, the counts go to --ready-file as JSON ({"held": ..., "failed":
...}); the connections are then held until SIGTERM or --hold seconds,
whichever comes first. Bounded: at most --count connections, opened
--parallel at a time, each with a 10 s budget for its request.
"""

import argparse
import asyncio
import json
import signal


async def one(host, port, header_host, held, failed):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError):
        failed.append(1)
        return
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {header_host}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await asyncio.wait_for(reader.readexactly(length), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ValueError(head[:40])
        held.append(writer)
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        failed.append(1)
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True, help="host:port of the proxy")
    ap.add_argument("--host", required=True, help="the Host header")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--parallel", type=int, default=200)
    ap.add_argument("--hold", type=float, default=300)
    ap.add_argument("--ready-file", required=True)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    held, failed = [], []
    sem = asyncio.Semaphore(a.parallel)

    async def bounded():
        async with sem:
            await one(host, int(port), a.host, held, failed)

    await asyncio.gather(*(bounded() for _ in range(a.count)))
    with open(a.ready_file, "w") as f:
        json.dump({"held": len(held), "failed": len(failed)}, f)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), a.hold)
    except asyncio.TimeoutError:
        pass
    for w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
