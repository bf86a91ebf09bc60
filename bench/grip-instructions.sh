#!/usr/bin/env bash
# GRIP held-stream fan-out vs native SSE: server instructions per delivery
# (callgrind: counts do not depend on the machine's load).
#
#   bench/grip-instructions.sh [SUBS] [MESSAGES] [RUNS]     (defaults 200 50 3)
#
# Needs PUSHGATE_BIN (a release build) and valgrind. Starts on loopback,
# stopped by PID at the end: rtload's contrib/grip_backend.py (the GRIP
# origin, Grip-Hold: stream on /sse/CH) and pushgate under callgrind with a
# native SSE route (/sub/{ch}) and a grip route (/sse/). Each run opens
# SUBS streams on a fresh channel, zeroes the counters, publishes MESSAGES
# messages in lock step (bench/sse-drive.py) and dumps the counters: the
# instructions of exactly SUBS*MESSAGES deliveries and their publishes.
# Native, GRIP (raw socket) and GRIP as a connection's second request
# (hyper's body path) alternate RUNS times; prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${1:-200} MESSAGES=${2:-50} RUNS=${3:-3}
: "${PUSHGATE_BIN:?set PUSHGATE_BIN to a release pushgate}"
BACKEND=../shared/bench/rtload/contrib/grip_backend.py
OUT=${OUT:-/tmp/grip-instructions}
rm -rf "$OUT" && mkdir -p "$OUT"
cat > "$OUT/pushgate.yaml" <<YAML
listen: { http: ["127.0.0.1:17081"] }
internal: { listen: "127.0.0.1:15572", tokens: ["bench"] }
upstreams:
  grip: { targets: ["http://127.0.0.1:17900"] }
routes:
  - name: sub
    match: { path: "/sub/{channel}" }
    realtime: { channels: ["{channel}"], transports: [sse], heartbeat: 25s, queue: 1024 }
  - name: grip
    match: { path_prefix: "/sse/" }
    upstream: grip
    grip: true
realtime: { queue: 1024 }
YAML
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
python3 "$BACKEND" 3600 & pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
  "$PUSHGATE_BIN" --config "$OUT/pushgate.yaml" > "$OUT/pushgate.log" 2>&1 & PG=$!; pids+=($PG)
for _ in $(seq 300); do curl -sf http://127.0.0.1:15572/readyz > /dev/null && break; sleep 0.5; done

NATIVE='{"channel":"CH","data":"{\"seq\":{seq}}"}'
GRIP='{"items":[{"channel":"CH","formats":{"http-stream":{"content":"data: {\"seq\":{seq}}\n\n"}}}]}'
run() {  # $1 name, $2 url, $3 publish url, $4 body, [$5 prime path]
  python3 bench/sse-drive.py --url "$2" --publish-url "$3" --body "$4" --token bench --prime "${5:-}" \
    --subs "$SUBS" --messages "$MESSAGES" \
    --before "callgrind_control -z $PG > /dev/null" --after "callgrind_control -d $1 $PG > /dev/null" \
    > "$OUT/$1.json"
  local dump; dump=$(grep -l "^desc: Trigger: .* $1$" "$OUT"/cg.* | head -1)
  local ir; ir=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
  local n; n=$(jq .deliveries "$OUT/$1.json")
  echo "$1: $n deliveries, $ir instructions, $((ir / n)) instructions/delivery"
}
for i in $(seq "$RUNS"); do
  run "native-$i" "http://127.0.0.1:17081/sub/n$i" http://127.0.0.1:15572/publish "${NATIVE/CH/n$i}"
  run "grip-$i" "http://127.0.0.1:17081/sse/g$i" http://127.0.0.1:15572/publish/ "${GRIP/CH/g$i}"
  # The same held stream as a connection's second request: served by
  # hyper's body path (what every held stream took before the raw path).
  run "griphyper-$i" "http://127.0.0.1:17081/sse/h$i" http://127.0.0.1:15572/publish/ "${GRIP/CH/h$i}" /sse/prime/x
done
