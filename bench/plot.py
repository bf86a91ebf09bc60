#!/usr/bin/env python3
"""Plots from compare.sh results: server RSS against idle connection count,
and fan-out p99 latency against publish rate, per target.

    bench/plot.py [RESULTS_DIR ...] [-o bench/plots.png]

Reads every RESULTS_DIR/all.jsonl (default /tmp/cmp-results) and the raw
rtload reports the lines point to. Idle runs of several sizes (full and
--quick) give several points per target; each run also gives its
"before" point at 0 connections. Needs matplotlib (pip install matplotlib).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"pushgate": "#1b9e77", "nchan": "#d95f02", "pushpin": "#7570b3"}


def rows(dirs):
    for d in dirs:
        path = os.path.join(d, "all.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def main():
    args = sys.argv[1:]
    out = "bench/plots.png"
    if "-o" in args:
        i = args.index("-o")
        out = args[i + 1]
        del args[i : i + 2]
    dirs = args or ["/tmp/cmp-results"]
    rss = {}
    lat = {}
    for r in rows(dirs):
        t, s = r["target"], r["scenario"]
        if s in ("idle-sse", "idle-ws") and r.get("server_rss_after"):
            pts = rss.setdefault((t, s), set())
            pts.add((0, r["server_rss_before"] / 2**20))
            pts.add((r["established"], r["server_rss_after"] / 2**20))
        if s in ("fanout-sse", "fanout-ws", "fanout-latency"):
            key = (t, "fanout-sse" if s == "fanout-latency" else s)
            steps = r.get("steps") or ([r["step"]] if r.get("step") else [])
            for step in steps:
                if step.get("p99_ms") is not None and step.get("lost") == 0:
                    lat.setdefault(key, set()).add((step["rate"] * r["subs"], step["p99_ms"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (t, s), pts in sorted(rss.items()):
        xs, ys = zip(*sorted(pts))
        a.plot(xs, ys, marker="o", color=COLORS.get(t), linestyle="-" if s == "idle-sse" else "--", label=f"{t} {s[5:]}")
    a.set_xlabel("idle connections")
    a.set_ylabel("server RSS (MiB)")
    a.set_title("Server memory against idle connections")
    a.legend()
    a.grid(alpha=0.3)
    for (t, s), pts in sorted(lat.items()):
        xs, ys = zip(*sorted(pts))
        b.plot(xs, ys, marker="o", color=COLORS.get(t), linestyle="-" if s == "fanout-sse" else "--", label=f"{t} {s[7:]}")
    b.set_xlabel("offered deliveries/s (rate x 10,000 subscribers)")
    b.set_ylabel("p99 latency (ms), steps with 100 % delivered")
    b.set_yscale("log")
    b.set_title("Fan-out p99 latency against rate")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
