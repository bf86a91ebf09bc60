#!/usr/bin/env python3
"""Drives a fixed SSE fan-out workload for instruction counting (stdlib only).

  sse-drive.py --url URL --publish-url URL --body BODY [--subs N] [--messages M]
               [--before CMD] [--after CMD] [--prime PATH]

Opens SUBS SSE streams on URL (loopback), waits until every stream has its
response head, runs --before (e.g. `callgrind_control -z PID`), then
publishes MESSAGES messages one at a time -- the next one only once every
stream has the previous one, so each delivery is one wake-up of its
stream -- and runs --after (e.g. `callgrind_control -d PID`) once all
SUBS * MESSAGES deliveries arrived. BODY's `{seq}` is replaced by the
message number. With --pids, the CPU time (user + system, /proc) those
processes spent meanwhile. Prints one JSON line: subs, messages,
deliveries, seconds, server_cpu_us_per_delivery.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request


async def open_stream(url, prime=""):
    u = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    if prime:
        # A first request on the connection, so the stream is its second
        # (served by hyper, not on the claimed raw socket).
        writer.write(f"GET {prime} HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    path = u.path + (("?" + u.query) if u.query else "")
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"stream refused: {head[:80]!r}")
    return reader, writer


def cpu_seconds(pids):
    """User + system CPU time of `pids` (and their threads), from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def publish(url, body, token):
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--publish-url", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--subs", type=int, default=200)
    p.add_argument("--messages", type=int, default=50)
    p.add_argument("--before", default="")
    p.add_argument("--after", default="")
    p.add_argument("--pids", default="", help="comma-separated server PIDs: report their CPU time")
    p.add_argument("--prime", default="", help="a path requested first on each connection")
    a = p.parse_args()

    streams = []
    for i in range(0, a.subs, 50):
        streams += await asyncio.gather(*(open_stream(a.url, a.prime) for _ in range(min(50, a.subs - i))))
    counts = [0] * a.subs
    cond = asyncio.Condition()

    async def read(i, reader):
        while True:
            data = await reader.read(65536)
            if not data:
                return
            n = data.count(b'"seq":')
            if n:
                async with cond:
                    counts[i] += n
                    cond.notify_all()

    tasks = [asyncio.create_task(read(i, r)) for i, (r, _) in enumerate(streams)]
    await asyncio.sleep(1)
    if a.before:
        subprocess.run(a.before, shell=True, check=True)
    pids = [int(x) for x in a.pids.split(",") if x]
    cpu = cpu_seconds(pids)
    start = time.monotonic()
    loop = asyncio.get_running_loop()
    for seq in range(1, a.messages + 1):
        await loop.run_in_executor(None, publish, a.publish_url, a.body.replace("{seq}", str(seq)), a.token)
        async with cond:
            await asyncio.wait_for(cond.wait_for(lambda: min(counts) >= seq), 120)
    seconds = time.monotonic() - start
    cpu = cpu_seconds(pids) - cpu
    if a.after:
        subprocess.run(a.after, shell=True, check=True)
    for t in tasks:
        t.cancel()
    for _, w in streams:
        w.close()
    print(json.dumps({"subs": a.subs, "messages": a.messages, "deliveries": sum(counts), "seconds": round(seconds, 2),
                      "server_cpu_us_per_delivery": round(cpu * 1e6 / max(1, sum(counts)), 2)}))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
