#!/usr/bin/env bash
# Connect rate and memory per connection with presence off and on (issue
# 18): 10,000 idle SSE connections over 100 channels, pushgate on core 0,
# rtload on core 1, alternating off/on ROUNDS times. Both modes use an
# HS256 auth route and every connection carries the same valid ?token=
# (sub "bench", channels ["**"]); "on" adds `presence: {events: true}`
# (so each channel gets one member with 100 connections and one join).
#   RTLOAD=<path>/rtload bench/presence-connect.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PG=${PUSHGATE_BIN:-target/release/pushgate}
RT=${RTLOAD:-../shared/bench/rtload/target/release/rtload}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base=../shared/bench/pushgate-bench.yaml
python3 - "$base" "$work" <<'PY'
import base64, hashlib, hmac, json, sys, time
base, work = sys.argv[1], sys.argv[2]
secret = "bench-secret-0123456789"
hist = "      history: { messages: 100, max_age: 10m }"
auth = "\n    auth:\n      jwt:\n        hs256_secret: \"%s\"" % secret
s = open(base).read()
open(f"{work}/off.yaml", "w").write(s.replace(hist, hist + auth))
open(f"{work}/on.yaml", "w").write(s.replace(hist, hist + "\n      presence: { events: true }" + auth))
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400, "channels": ["**"]}).encode())
sig = b(hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest())
open(f"{work}/token", "w").write(f"{head}.{claims}.{sig}")
PY
token=$(cat "$work/token")
echo "mode round established failed conn/s handshake_p50_ms handshake_p99_ms rss_bytes_per_conn server_cpu_us_per_conn"
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    taskset -c 0 "$PG" --config "$work/$mode.yaml" >"$work/pg.log" 2>&1 &
    pid=$!
    sleep 1
    timeout 90 taskset -c 1 "$RT" idle --transport sse --url "http://127.0.0.1:7080/sub/{ch}?token=$token" \
      --channels 100 --conns 10000 --hold 2 --src-ips 127.0.0.1-127.0.0.8 --linger0 --concurrency 32 \
      --server-pid "$pid" --json >"$work/r.json" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$work/r.json" "$mode" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["connections"]
per = (r.get("server_rss") or {}).get("bytes_per_conn")
cpu = (r.get("server_cpu") or {}).get("connect_secs")
cpu = round(cpu / c["established"] * 1e6, 1) if cpu is not None and c["established"] else None
print(sys.argv[2], sys.argv[3], c["established"], c["failed"], c["connect_rate"],
      c["handshake"]["p50_ms"], c["handshake"]["p99_ms"], per, cpu)
PY
  done
done
