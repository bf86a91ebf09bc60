#!/usr/bin/env bash
# The hub's memory cap (issue 16, SPEC §9 realtime.history.max_total):
# publish N messages (default 10 million), each to a new channel, in
# batches of 1,000 on 4 kept-alive connections, against a release build with
# `max_total` MAX_TOTAL (default 256MiB). Prints one line per 500,000
# publishes: publishes, server RSS (MiB), pushgate_history_bytes (MiB),
# pushgate_history_evictions_total, pushgate_channels.
#   bench/history-cap.sh [N] [MAX_TOTAL]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
MAX_TOTAL=${2:-256MiB}
PG=${PUSHGATE_BIN:-target/release/pushgate}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/pg.yaml" <<YAML
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0", tokens: ["bench"] }
realtime:
  history: { messages: 100, max_age: 10m, max_total: $MAX_TOTAL }
routes:
  - name: sub
    match: { path: "/sub/{channel}" }
    realtime: { channels: ["{channel}"] }
YAML
"$PG" --log-format json --config "$work/pg.yaml" 2>"$work/pg.log" &
pid=$!
for _ in $(seq 50); do grep -q '"internal"' "$work/pg.log" 2>/dev/null && break; sleep 0.1; done
internal=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: j=json.loads(l)
    except ValueError: continue
    f=j.get("fields",j)
    if f.get("listener")=="internal" and "addr" in f: print(f["addr"]); break' "$work/pg.log")
python3 - "$N" "$pid" "$internal" <<'PY'
import http.client, sys, threading, time
n, pid, internal = int(sys.argv[1]), sys.argv[2], sys.argv[3]
host, port = internal.rsplit(":", 1)
BATCH, THREADS, STEP = 1000, 4, 500_000
data = '"' + "d" * 100 + '"'
def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def metrics():
    c = http.client.HTTPConnection(host, int(port))
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        out[k] = float(v)
    return out
lock = threading.Lock()
next_batch = [0]
def worker():
    c = http.client.HTTPConnection(host, int(port))
    while True:
        with lock:
            b = next_batch[0]
            if b * BATCH >= n:
                return
            next_batch[0] += 1
        start = b * BATCH
        body = '{"messages":[' + ",".join(
            '{"channel":"flood-%d","data":%s}' % (i, data) for i in range(start, start + BATCH)
        ) + "]}"
        c.request("POST", "/publish", body, {"content-type": "application/json",
                                              "authorization": "Bearer bench"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
print("publishes rss_mib history_mib evictions channels elapsed_s")
t0 = time.time()
threads = [threading.Thread(target=worker) for _ in range(THREADS)]
for t in threads:
    t.start()
def line(done):
    m = metrics()
    print(done, round(rss_mib(), 1), round(m.get("pushgate_history_bytes", 0) / 2**20, 1),
          int(m.get("pushgate_history_evictions_total", 0)), int(m.get("pushgate_channels", 0)),
          round(time.time() - t0, 1), flush=True)
mark = STEP
while any(t.is_alive() for t in threads):
    time.sleep(0.5)
    with lock:
        done = next_batch[0] * BATCH
    if done >= mark:
        line(done)
        mark += STEP
line(n)
PY
