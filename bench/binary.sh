#!/usr/bin/env bash
# Binary messages against text ones (issue 25): server CPU per delivery of
# a 1 KiB message to SUBS subscribers on one channel at RATE msg/s for
# SECS s, per mode, alternated REPS times, one release binary. pushgate on
# core 0, rtload on core 1 (its --payload-bytes and --decode-base64).
#
#   ws-text     WebSocket, a JSON `data` of ~1 KiB ({"seq","ts_ns","pad"})
#   ws-frames   WebSocket ?binary=frames, 1,024 bytes: header + binary frame
#   ws-base64   WebSocket, the same bytes as `data_base64` in the JSON frame
#   sse-text    SSE, the ~1 KiB JSON text
#   sse-base64  SSE, the 1,024 bytes as base64 under `pushgate.binary`
#
#   PUSHGATE_BIN=... RTLOAD=... bench/binary.sh [REPS] [SUBS] [RATE] [SECS]
# Prints one line per run (mode, server µs per delivery, p99 ms,
# received/expected) and keeps rtload's JSON in /tmp/binary-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-2}; SUBS=${2:-5000}; RATE=${3:-20}; SECS=${4:-10}
PG=${PUSHGATE_BIN:-$PWD/target/release/pushgate}
RTLOAD=${RTLOAD:-../shared/bench/rtload/target/release/rtload}
work=/tmp/binary-bench
rm -rf "$work"; mkdir -p "$work"
cat >"$work/pg.yaml" <<'YAML'
listen: { http: ["127.0.0.1:7080"] }
internal: { listen: "127.0.0.1:5571", tokens: ["bench"] }
routes:
  - name: sub
    match: { path: "/sub/{channel}" }
    realtime:
      channels: ["{channel}"]
      heartbeat: 25s
      queue: 1024
      history: { messages: 100, max_age: 10m }
YAML
# 1,024 bytes of JSON text: {"seq":S,"ts_ns":T,"pad":"xxx..."} (S, T vary by a few digits)
pad=$(head -c 968 /dev/zero | tr '\0' x)
text_body='{"channel":"{ch}","data":{"seq":{seq},"ts_ns":{ts_ns},"pad":"'$pad'"}}'
b64_body='{"channel":"{ch}","data_base64":"{b64}"}'
run() {  # mode
  local mode=$1 tr url body extra=()
  case $mode in
    ws-text) tr=ws; url='ws://127.0.0.1:7080/sub/{ch}'; body=$text_body ;;
    ws-frames) tr=ws; url='ws://127.0.0.1:7080/sub/{ch}?binary=frames'; body=$b64_body; extra=(--payload-bytes 1024) ;;
    ws-base64) tr=ws; url='ws://127.0.0.1:7080/sub/{ch}'; body=$b64_body; extra=(--payload-bytes 1024 --decode-base64) ;;
    sse-text) tr=sse; url='http://127.0.0.1:7080/sub/{ch}'; body=$text_body ;;
    sse-base64) tr=sse; url='http://127.0.0.1:7080/sub/{ch}'; body=$b64_body; extra=(--payload-bytes 1024 --decode-base64) ;;
  esac
  setsid taskset -c 0 "$PG" --config "$work/pg.yaml" >"$work/pg.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:5571/readyz >/dev/null && break; sleep 0.05; done
  local out="$work/$mode-$(date +%s%N).json"
  taskset -c 1 "$RTLOAD" fanout --transport "$tr" --url "$url" --conns "$SUBS" --channels 1 \
    --channel-prefix "bin" --publish-url http://127.0.0.1:5571/publish --publish-body "$body" \
    --publish-header 'Authorization: Bearer bench' \
    --messages $((RATE * SECS)) --rate "$RATE" --publish-conns 2 --settle 2 --drain 10 \
    --src-ips 127.0.0.1-127.0.0.8 --linger0 --concurrency 32 --connect-timeout 30 \
    --server-pid "$pid" --json "${extra[@]}" >"$out" 2>"$work/rtload.log" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  jq -r --arg m "$mode" '"\($m) server_us_per_delivery=\(.server_cpu.us_per_delivery) client_us_per_delivery=\(.client_cpu.us_per_delivery) p99_ms=\(.latency.p99_ms) received=\(.deliveries.received)/\(.deliveries.expected) lost=\(.deliveries.lost)"' "$out"
}
for _ in $(seq "$REPS"); do
  for mode in ws-text ws-frames ws-base64 sse-text sse-base64; do run "$mode"; done
done
