#!/usr/bin/env python3
"""Plots from compare.sh results: server RSS against idle connection count,
and fan-out p99 latency against publish rate, per target.

    bench/plot.py [RESULTS_DIR ...] [-o bench/plots.png]
    bench/plot.py --scaling SCALING.jsonl [...] [-o bench/scaling.png]

The second form plots bench/scaling.sh's points: CPU per delivery and p99
against subscribers, and against channels for the same deliveries, one
line per file (its name is the label, e.g. pushgate.jsonl, floor.jsonl).

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


def scaling(files, out):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for path in files:
        label = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            pts = [json.loads(line) for line in f if line.strip()]
        for col, (sweep, x) in enumerate((("subscribers", "conns"), ("channels", "channels"))):
            by_x = {}
            for p in pts:
                if p["sweep"] == sweep and p.get("received") == p.get("expected"):
                    by_x.setdefault(p[x], []).append(p)
            xs = sorted(by_x)
            if not xs:
                continue
            med = lambda k: [sorted(q[k] for q in by_x[v])[len(by_x[v]) // 2] for v in xs]  # noqa: E731
            color = COLORS.get(label.split("-")[0])
            style = "--" if "-" in label else "-"  # pushgate-2cores: a variant
            for row, key in enumerate(("server_us_per_delivery", "p99_ms")):
                axes[row][col].plot(xs, med(key), marker="o", color=color, linestyle=style, label=label)
    for col, (xl, title) in enumerate(
        (
            ("subscribers on one channel (5 msg/s)", "as subscribers grow"),
            ("channels (10,000 subscribers, 10,000 deliveries/s)", "as channels grow"),
        )
    ):
        for row, yl in enumerate(("server CPU per delivery (µs)", "fan-out p99 (ms)")):
            ax = axes[row][col]
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{yl.split(' (')[0]} {title}")
            if col == 1:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


def main():
    args = sys.argv[1:]
    out = None
    if "-o" in args:
        i = args.index("-o")
        out = args[i + 1]
        del args[i : i + 2]
    if args and args[0] == "--scaling":
        return scaling(args[1:], out or "bench/scaling.png")
    out = out or "bench/plots.png"
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
