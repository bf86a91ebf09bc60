#!/usr/bin/env bash
# Memory bound with subscribers that never read (issue 16): CONNS WebSocket
# subscribers (default 10,000), each on its own channel, with a 4 KiB
# receive buffer and no read after the 101; a steady publish stream of
# RATE messages/s (default 5,000, SIZE bytes each, default 512) round-robin
# over the channels for SECS seconds (default 300). `on_lag: drop_oldest`
# and a 10 min `pong_timeout`, so no peer is dropped during the run and
# every queue stays full: the worst case. VmRSS is sampled every 10 s.
# Bound: max_total + CONNS × (queue × per-message cost + per-connection
# overhead measured before publishing).
#   bench/never-reading.sh [CONNS] [SECS] [RATE] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-10000}
SECS=${2:-300}
RATE=${3:-5000}
SIZE=${4:-512}
QUEUE=16
PG=${PUSHGATE_BIN:-target/release/pushgate}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/pg.yaml" <<YAML
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0", tokens: ["bench"] }
limits: { header_read_timeout: 60s }
realtime:
  queue: $QUEUE
  on_lag: drop_oldest
  pong_timeout: 10m
  heartbeat: 10m
  history: { messages: 10, max_age: 10m, max_total: 32MiB }
routes:
  - name: sub
    match: { path: "/sub/{channel}" }
    realtime: { channels: ["{channel}"] }
YAML
ulimit -n 20000
"$PG" --log-format json --config "$work/pg.yaml" 2>"$work/pg.log" &
pid=$!
for _ in $(seq 50); do grep -q '"internal"' "$work/pg.log" 2>/dev/null && break; sleep 0.1; done
python3 - "$CONNS" "$SECS" "$RATE" "$SIZE" "$QUEUE" "$pid" "$work/pg.log" <<'PY'
import asyncio, http.client, json, socket, sys, threading, time
conns, secs, rate, size, queue, pid, log = map(str, sys.argv[1:8])
conns, secs, rate, size, queue = int(conns), int(secs), int(rate), int(size), int(queue)
addrs = {}
for line in open(log):
    try:
        f = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if f.get("message") == "listening":
        addrs[f["listener"]] = f["addr"]
def hostport(a):
    h, p = a.rsplit(":", 1)
    return h, int(p)
def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def metric(name):
    c = http.client.HTTPConnection(*hostport(addrs["internal"]))
    c.request("GET", "/metrics")
    total = 0.0
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
async def subscribe(i, held):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, hostport(addrs["http"]))
    await loop.sock_sendall(s, (f"GET /sub/c{i} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
        "connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "sec-websocket-version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(s, 1024)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    held.append(s)  # never read again
async def open_all():
    held = []
    for start in range(0, conns, 200):
        await asyncio.gather(*(subscribe(i, held) for i in range(start, min(conns, start + 200))))
    return held
base = rss_mib()
held = asyncio.run(open_all())
time.sleep(3)
idle = rss_mib()
per_conn_kib = (idle - base) * 1024 / conns
print(f"# {conns} never-reading WebSockets open: RSS {base:.1f} -> {idle:.1f} MiB ({per_conn_kib:.2f} KiB each)")
data = json.dumps("x" * size)
stop = time.time() + secs
def publisher():
    c = http.client.HTTPConnection(*hostport(addrs["internal"]))
    batch, sent, t0 = 100, 0, time.time()
    while time.time() < stop:
        body = '{"messages":[' + ",".join(
            '{"channel":"c%d","data":%s}' % ((sent + k) % conns, data) for k in range(batch)) + "]}"
        c.request("POST", "/publish", body, {"content-type": "application/json",
                                              "authorization": "Bearer bench"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        sent += batch
        ahead = sent / rate - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)
    print(f"# published {sent} messages", flush=True)
t = threading.Thread(target=publisher)
t0 = time.time()
t.start()
print("t_s rss_mib sessions dropped_total history_mib")
while t.is_alive():
    print(round(time.time() - t0), round(rss_mib(), 1), int(metric("pushgate_sessions")),
          int(metric("pushgate_messages_dropped_total")),
          round(metric("pushgate_history_bytes") / 2**20, 1), flush=True)
    t.join(10)
print(round(time.time() - t0), round(rss_mib(), 1), int(metric("pushgate_sessions")),
      int(metric("pushgate_messages_dropped_total")),
      round(metric("pushgate_history_bytes") / 2**20, 1), flush=True)
PY
