#!/usr/bin/env python3
"""Bytes per connection by allocation site, from a dhat heap profile taken
with CONNS idle connections open (bench/idle-heap.sh writes one).

    bench/dhat-sites.py dhat-heap.json CONNS [--top N]

Takes each site's bytes and blocks live at the heap's global peak (dhat's
t-gmax: with idle connections held, that is the moment they were all
open) and groups sites by the innermost frame outside the allocator and
the standard library (the allocating crate's function), labelled with the
first pushgate frame that led there. Sites holding fewer blocks than a
tenth of CONNS are summed as "fixed (not per connection)". Standard
library only.
"""
import json
import os
import re
import sys
from collections import defaultdict

# Frames of the allocator and the standard library's containers, also as
# inlined frames, which have no path ("alloc", "new<alloc::sync::ArcInner<..>>").
SKIP = re.compile(
    r"^(<?(alloc|core|std|dhat)::|__rust|<T as (alloc|core)::|\[root\]|"
    r"(alloc|alloc_impl|alloc_impl_runtime|allocate|box_new_uninit|with_capacity_in|"
    r"try_allocate_in|allocate_in|grow_one|grow_amortized|finish_grow|reserve|"
    r"from_slice|copy_from_slice|allocate_for_slice|allocate_for_layout|clone|to_vec|"
    r"new_uninit_in|new_in|new|from|into|freeze)(<.*)?$)"
)


def name(frame):
    # "0x55d1c8f2: tokio::runtime::task::core::Cell<T,S>::new (tokio-1.54.1/src/...:123:9)"
    f = frame.split(": ", 1)[-1]
    where = re.search(r"\(([^()]*)\)$", f)
    f = re.sub(r" \([^()]*\)$", "", f)
    f = re.sub(r"::h[0-9a-f]{16}$", "", f)
    return f, (where.group(1) if where else "")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ours_file(where):
    """Whether a frame's location is a file of this repository's src/."""
    m = re.match(r"^(?:wt-[a-z0-9]+/|main/)?(src/[^:]*\.rs)", where)
    return bool(m) and os.path.exists(os.path.join(REPO, m.group(1)))


def short(fn):
    fn = re.sub(r"<[^<>]*>", "", fn)
    fn = re.sub(r"<[^<>]*>", "", fn)
    return fn.replace("{{closure}}", "{closure}")


def main():
    args = sys.argv[1:]
    top = 25
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i : i + 2]
    path, conns = args[0], int(args[1])
    d = json.load(open(path))
    ftbl = d["ftbl"]
    groups = defaultdict(lambda: [0, 0])
    fixed = [0, 0]
    total = [0, 0]
    for pp in d["pps"]:
        gb, gbk = pp.get("gb", 0), pp.get("gbk", 0)
        if gbk == 0:
            continue
        total[0] += gb
        total[1] += gbk
        if gbk < conns / 10:
            fixed[0] += gb
            fixed[1] += gbk
            continue
        frames = [name(ftbl[i]) for i in pp["fs"]]
        inner = next((f for f, _ in frames if not SKIP.match(f)), "?")
        ours = next((w for f, w in frames
                     if not f.startswith("__rust") and ours_file(w)), "")
        ours = re.sub(r"^.*?(src/[^ ]*\.rs)", r"\1", ours)
        ours = re.sub(r":\d+$", "", ours)
        key = short(inner)[:90] + ("  <- " + ours if ours else "")
        groups[key][0] += gb
        groups[key][1] += gbk
    rows = sorted(groups.items(), key=lambda kv: -kv[1][0])
    print(f"heap at t-gmax: {total[0]} bytes in {total[1]} blocks; {conns} connections")
    print(f"{'B/conn':>8} {'blocks/conn':>11} {'B/block':>8}  site")
    shown = 0
    for key, (b, k) in rows:
        if shown < top:
            print(f"{b / conns:8.1f} {k / conns:11.2f} {b / k:8.0f}  {key}")
        shown += 1
    rest = rows[top:]
    if rest:
        rb = sum(v[0] for _, v in rest)
        rk = sum(v[1] for _, v in rest)
        print(f"{rb / conns:8.1f} {rk / conns:11.2f} {'':>8}  ({len(rest)} other per-connection sites)")
    per = sum(v[0] for _, v in rows)
    perk = sum(v[1] for _, v in rows)
    print(f"{per / conns:8.1f} {perk / conns:11.2f} {'':>8}  total per connection")
    print(f"{fixed[0] / conns:8.1f} {fixed[1] / conns:11.2f} {'':>8}  fixed (not per connection), {fixed[0]} bytes")


if __name__ == "__main__":
    main()
