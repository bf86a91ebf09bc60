#!/usr/bin/env python3
"""The issue's summary table from compare.sh results: one figure per row,
the median over full-size runs of each target, and pushgate's ratio to Nchan.

    bench/summary.py [RESULTS_DIR]      (default /tmp/cmp-results)

Standard library only. Quick (--quick) runs are ignored.
"""
import json
import os
import statistics
import sys

TARGETS = ["pushpin", "nchan", "pushgate"]


def load(results):
    runs = {}
    with open(os.path.join(results, "all.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("quick"):
                continue
            runs.setdefault((r["target"], r["scenario"]), []).append(r)
    return runs


def best_step(r):
    """The highest passing fan-out step (max rate), or None."""
    passed = [s for s in r.get("steps", []) if s.get("pass")]
    return max(passed, key=lambda s: s["rate"]) if passed else None


def raw_step(step):
    """rtload's figures for a step, from its raw report."""
    if not step or not step.get("raw") or not os.path.exists(step["raw"]):
        return None
    with open(step["raw"]) as f:
        return json.load(f)


FIGURES = [
    ("server RSS per idle SSE connection (15k), KiB", "idle-sse",
     lambda r: r["server_rss_bytes_per_conn"] / 1024, "{:.1f}"),
    ("server RSS per idle WS connection (15k), KiB", "idle-ws",
     lambda r: r["server_rss_bytes_per_conn"] / 1024, "{:.1f}"),
    ("connect rate SSE, conn/s", "idle-sse", lambda r: r["connect_rate"], "{:,.0f}"),
    ("connect rate WS, conn/s", "idle-ws", lambda r: r["connect_rate"], "{:,.0f}"),
    ("server CPU per delivery, fan-out 10k SSE, base 20 msg/s, µs", "fanout-sse",
     lambda r: r["base"]["server_us_per_delivery"], "{:.2f}"),
    ("server CPU per delivery, fan-out 10k WS, base 20 msg/s, µs", "fanout-ws",
     lambda r: r["base"]["server_us_per_delivery"], "{:.2f}"),
    ("max fan-out rate 10k SSE (100 %, p99 ≤ 1 s), msg/s", "fanout-sse",
     lambda r: (best_step(r) or {}).get("rate"), "{:.0f}"),
    ("max fan-out rate 10k WS (100 %, p99 ≤ 1 s), msg/s", "fanout-ws",
     lambda r: (best_step(r) or {}).get("rate"), "{:.0f}"),
    ("server CPU per delivery at the max rate, SSE, µs", "fanout-sse",
     lambda r: ((raw_step(best_step(r)) or {}).get("server_cpu") or {}).get("us_per_delivery"),
     "{:.2f}"),
    ("fan-out p99 latency, 5 msg/s to 10k SSE, ms", "fanout-latency",
     lambda r: r["step"]["p99_ms"], "{:.1f}"),
    ("server CPU per delivery in fanout-latency, µs", "fanout-latency",
     lambda r: r["step"]["server_us_per_delivery"], "{:.2f}"),
    ("accepted publishes/s (8 conns)", "publish-rate", lambda r: r["accepted_per_s"], "{:,.0f}"),
    ("server CPU per accepted publish, µs", "publish-rate",
     lambda r: r["server_cpu_secs"] * 1e6 / r["ok"] if r.get("ok") else None, "{:.1f}"),
]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "/tmp/cmp-results"
    runs = load(results)
    print("| figure | " + " | ".join(TARGETS) + " | pushgate / Nchan |")
    print("|---|" + "---|" * (len(TARGETS) + 1))
    for label, scenario, get, fmt in FIGURES:
        cells, values = [], {}
        for t in TARGETS:
            rs = runs.get((t, scenario), [])
            try:
                v = median(get(r) for r in rs)
            except (KeyError, TypeError):
                v = None
            values[t] = v
            n = len(rs)
            cells.append("–" if v is None else fmt.format(v) + (f" (n={n})" if n > 1 else ""))
        g, n = values.get("pushgate"), values.get("nchan")
        ratio = f"{g / n:.2f}×" if g is not None and n else "–"
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
