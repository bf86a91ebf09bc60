#!/usr/bin/env bash
# GRIP stream fan-out vs native SSE on pushgate: server CPU per delivery.
#
#   bench/grip-fanout.sh [SUBS] [RATE] [SECS] [RUNS]     (defaults 1000 20 10 2)
#
# Needs RTLOAD (rtload from ../shared/bench/rtload) and PUSHGATE_BIN (a
# release build). Starts, on loopback only and stopped by PID at the end:
# rtload's contrib/grip_backend.py (the GRIP origin: Grip-Hold: stream on
# /sse/CH, port 17900) and pushgate with one native SSE route (/sub/{ch})
# and one grip route (/sse/ -> the backend). Each run: SUBS subscribers on
# one channel, RATE messages/s for SECS s, native then GRIP, alternated
# RUNS times. Prints one line per run and the JSON paths.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${1:-1000} RATE=${2:-20} SECS=${3:-10} RUNS=${4:-2}
: "${RTLOAD:?set RTLOAD to the rtload binary}" "${PUSHGATE_BIN:?set PUSHGATE_BIN to a release pushgate}"
BACKEND=../shared/bench/rtload/contrib/grip_backend.py
OUT=${OUT:-/tmp/grip-fanout}
mkdir -p "$OUT"
cat > "$OUT/pushgate.yaml" <<YAML
listen: { http: ["127.0.0.1:7080"] }
internal: { listen: "127.0.0.1:5571", tokens: ["bench"] }
upstreams:
  grip: { targets: ["http://127.0.0.1:17900"] }
routes:
  - name: sub
    match: { path: "/sub/{channel}" }
    realtime: { channels: ["{channel}"], transports: [sse], heartbeat: 25s, queue: 1024,
                history: { messages: 100, max_age: 10m } }
  - name: grip
    match: { path_prefix: "/sse/" }
    upstream: grip
    grip: true
realtime: { queue: 1024 }
YAML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
python3 "$BACKEND" 900 & pids+=($!)
"$PUSHGATE_BIN" --config "$OUT/pushgate.yaml" > "$OUT/pushgate.log" 2>&1 & PG=$!; pids+=($PG)
for _ in $(seq 50); do curl -sf http://127.0.0.1:5571/readyz > /dev/null && break; sleep 0.2; done

NATIVE_BODY='{"channel":"{ch}","data":"{\"seq\":{seq},\"ts_ns\":{ts_ns}}"}'
GRIP_BODY='{"items":[{"channel":"{ch}","formats":{"http-stream":{"content":"data: {\"seq\":{seq},\"ts_ns\":{ts_ns}}\n\n"}}}]}'

run() {  # $1 name, $2 url, $3 publish url, $4 body, $5 channel prefix
  local json="$OUT/$1.json"
  "$RTLOAD" fanout --transport sse --url "$2" --conns "$SUBS" --channels 1 --channel-prefix "$5" \
    --publish-url "$3" --publish-body "$4" --publish-header 'Authorization: Bearer bench' \
    --publish-header 'Content-Type: application/json' \
    --messages "$((RATE * SECS))" --rate "$RATE" --settle 2 --drain 10 \
    --server-pid "$PG" --timeout 120 --json > "$json" 2> "$OUT/$1.log"
  jq -r --arg n "$1" '"\($n): \(.deliveries.received // .received)/\(.deliveries.expected // .expected) delivered, server \(.server_cpu.us_per_delivery) us/delivery, client \(.client_cpu.us_per_delivery) us/delivery, p99 \(.latency.p99_ms // .latency_ms.p99) ms"' "$json" || cat "$json"
}

for i in $(seq "$RUNS"); do
  run "native-$i" 'http://127.0.0.1:7080/sub/{ch}' 'http://127.0.0.1:5571/publish' "$NATIVE_BODY" "n${i}_"
  run "grip-$i" 'http://127.0.0.1:7080/sse/{ch}' 'http://127.0.0.1:5571/publish/' "$GRIP_BODY" "g${i}_"
done
echo "raw JSON: $OUT/*.json"
