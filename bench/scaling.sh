#!/usr/bin/env bash
# Scaling curves (issue 17): CPU per delivery and fan-out p99 as the
# subscriber count grows, and as the same subscribers spread over more
# channels. Server on core 0 (CPUS), rtload on core 1; ports 7180/5671 so
# it does not collide with compare.sh. Every point starts a fresh server.
#
#   bench/scaling.sh [OUT.jsonl]     (default /tmp/scaling.jsonl)
#
# Sweeps (each point publishes for 10 s over SSE):
#   subscribers  1k, 5k, 10k, 15k on one channel, 5 msg/s
#   channels     10k subscribers on 1, 100, 10,000 channels, the same
#                10,000 deliveries/s: 1, 100 and 10,000 msg/s
# One JSON line per point: sweep, conns, channels, rate, server CPU µs per
# delivery, p99 ms, received/expected. bench/plot.py --scaling plots them.
# Environment: PUSHGATE_BIN (or bench/floor's pushgate-floor), RTLOAD,
# CPUS (server cores, default 0),
# SUBS, CHANNELS (override the sweeps), ROUNDS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTF="${1:-/tmp/scaling.jsonl}"
BIN="${PUSHGATE_BIN:-target/release/pushgate}"
RTLOAD="${RTLOAD:-../shared/bench/rtload/target/release/rtload}"
CPUS="${CPUS:-0}"
SUBS="${SUBS:-1000 5000 10000 15000}"
CHANNELS="${CHANNELS:-1 100 10000}"
ROUNDS="${ROUNDS:-1}"
W=/tmp/pushgate-scaling; mkdir -p "$W"
sed 's/127.0.0.1:7080/127.0.0.1:7180/; s/127.0.0.1:5571/127.0.0.1:5671/' \
  ../shared/bench/pushgate-bench.yaml > "$W/pushgate.yaml"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

# bench/floor's server takes its addresses as flags.
if [ "$(basename "$BIN")" = pushgate-floor ]; then
  ARGS=(--sub 127.0.0.1:7180 --pub 127.0.0.1:5671)
else
  ARGS=(--config "$W/pushgate.yaml")
fi

point() { # sweep conns channels rate
  taskset -c "$CPUS" "$BIN" "${ARGS[@]}" 2>"$W/pg.log" & pid=$!
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/5671) 2>/dev/null && break; sleep 0.1; done
  local out
  out=$(taskset -c 1 "$RTLOAD" fanout --transport sse --url 'http://127.0.0.1:7180/sub/{ch}' \
    --conns "$2" --channels "$3" --channel-prefix "s$RANDOM" \
    --publish-url http://127.0.0.1:5671/publish \
    --publish-body '{"channel":"{ch}","data":{"seq":{seq},"ts_ns":{ts_ns}}}' \
    --publish-header 'Authorization: Bearer bench' --publish-header 'Content-Type: application/json' \
    --messages "$(($4 * 10))" --rate "$4" --publish-conns 8 --settle 3 --drain 10 \
    --server-pid "$pid" --src-ips 127.0.0.1-127.0.0.8 --linger0 --concurrency 32 \
    --timeout 120 --json -q 2>/dev/null) || true
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  jq -c --arg sweep "$1" --argjson rate "$4" --arg cpus "$CPUS" '{sweep: $sweep, conns, channels, rate: $rate, cpus: $cpus,
    server_us_per_delivery: .server_cpu.us_per_delivery, p99_ms: .latency.p99_ms, p50_ms: .latency.p50_ms,
    received: .deliveries.received, expected: .deliveries.expected, established: .connections.established}' <<<"$out" \
    | tee -a "$OUTF"
  sleep 2
}

for _ in $(seq "$ROUNDS"); do
  for n in $SUBS; do point subscribers "$n" 1 5; done
  for k in $CHANNELS; do point channels 10000 "$k" "$((k < 10000 ? k : 10000))"; done
done
