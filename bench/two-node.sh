#!/usr/bin/env bash
# Two pushgate nodes on one Redis, beside one node alone (issue 11).
#
#   bench/two-node.sh [--quick] [--rate R] [--secs S]
#
# Runs rtload's fan-out (../shared/bench/rtload, see its README) twice:
#   single  one node (memory backplane): subscribers and publisher on it;
#   redis   node A takes the publishes, node B holds the N SSE subscribers,
#           both on redis-server (loopback, no persistence).
# Servers (pushgate nodes and redis-server) run on core 0, rtload on core 1,
# as in ../shared/bench/compare.sh. N = 10,000 (--quick: 1,000); R msg/s
# (default 5) for S seconds (default 10). Prints one line per run and
# writes the raw rtload JSON to $OUT (default /tmp/two-node-results).
#
# Figures: publish -> delivery p50/p99 (rtload: publish request written ->
# payload parsed), CPU per delivery on node B (rtload --server-pid), and
# node A's and redis-server's CPU per published message (from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=10000; RATE=5; SECS=10
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) SUBS=1000 ;;
    --rate) RATE=$2; shift ;;
    --secs) SECS=$2; shift ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
  shift
done

PUSHGATE_BIN=${PUSHGATE_BIN:-target/release/pushgate}
RTLOAD=${RTLOAD:-../shared/bench/rtload/target/release/rtload}
OUT=${OUT:-/tmp/two-node-results}
WORK=$(mktemp -d /tmp/two-node.XXXXXX)
REDIS_PORT=${REDIS_PORT:-6391}
mkdir -p "$OUT"
for bin in "$PUSHGATE_BIN" "$RTLOAD"; do
  [ -x "$bin" ] || { echo "two-node.sh: $bin is not built" >&2; exit 1; }
done
command -v redis-server > /dev/null || { echo "two-node.sh: redis-server is not installed" >&2; exit 1; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# node NAME HTTP INTERNAL BACKPLANE -> starts a node on core 0; its PID in $LAST_PID
node() {
  local name=$1 http=$2 internal=$3 backplane=$4
  cat > "$WORK/$name.yaml" <<EOF
listen: { http: ["127.0.0.1:$http"] }
internal: { listen: "127.0.0.1:$internal", tokens: ["bench"] }
backplane: $backplane
routes:
  - name: sub
    match: { path: "/sub/{channel}" }
    realtime:
      channels: ["{channel}"]
      transports: [websocket, sse, longpoll]
      heartbeat: 25s
      queue: 1024
      history: { messages: 100, max_age: 10m }
EOF
  taskset -c 0 "$PUSHGATE_BIN" --config "$WORK/$name.yaml" > "$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$internal/readyz" > /dev/null && return 0
    sleep 0.1
  done
  echo "two-node.sh: node $name did not become ready; see $WORK/$name.log" >&2
  exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME SUB_HTTP PUB_INTERNAL SUB_PID EXTRA_PIDS...
run() {
  local name=$1 sub=$2 pub=$3 sub_pid=$4; shift 4
  local before=() p
  for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
  taskset -c 1 "$RTLOAD" fanout --transport sse --url "http://127.0.0.1:$sub/sub/{ch}" \
    --conns "$SUBS" --channels 1 --channel-prefix "two_${name}_" \
    --publish-url "http://127.0.0.1:$pub/publish" --publish-header 'Authorization: Bearer bench' \
    --publish-body '{"channel":"{ch}","data":{"seq":{seq},"ts_ns":{ts_ns}}}' \
    --messages "$((RATE * SECS))" --rate "$RATE" --publish-conns 8 --settle 3 \
    --src-ips 127.0.0.1-127.0.0.8 --linger0 --concurrency 32 --connect-timeout 30 \
    --server-pid "$sub_pid" --timeout 150 --json > "$OUT/$name.json" 2> "$OUT/$name.log"
  local hz extra="" i=0
  hz=$(getconf CLK_TCK)
  for p in "$@"; do
    local used
    used=$(( $(cpu_ticks "$p") - ${before[$i]} ))
    extra+=" pid$p=$(awk -v t="$used" -v hz="$hz" -v m="$((RATE * SECS))" 'BEGIN { printf "%.0f us/msg", t / hz / m * 1e6 }')"
    i=$((i + 1))
  done
  jq -r --arg name "$name" --arg extra "$extra" \
    '"\($name): \(.deliveries.received)/\(.deliveries.expected) delivered, lost \(.deliveries.lost), dup \(.deliveries.duplicated), ooo \(.deliveries.out_of_order), p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, subscriber node \(.server_cpu.us_per_delivery) us/delivery;\($extra)"' \
    "$OUT/$name.json"
}

echo "== single node (memory backplane)"
node single 7080 5571 '{ type: memory }'
SINGLE=$LAST_PID
run single 7080 5571 "$SINGLE"
kill "$SINGLE"

echo "== two nodes on redis (publisher -> node A, $SUBS SSE subscribers on node B)"
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no > "$WORK/redis.log" 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
sleep 0.5
BP="{ type: redis, url: \"redis://127.0.0.1:$REDIS_PORT/0\", prefix: bench }"
node a 7081 5572 "$BP"
A=$LAST_PID
node b 7082 5573 "$BP"
B=$LAST_PID
echo "node A pid $A, node B pid $B, redis pid $REDIS"
run redis 7082 5572 "$B" "$A" "$REDIS"
