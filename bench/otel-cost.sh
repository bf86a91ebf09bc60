#!/usr/bin/env bash
# What OpenTelemetry traces cost (issue 28): the shared bench's
# publish-rate scenario (100 SSE subscribers on 100 channels, 8 publisher
# connections, as fast as they go) with tracing off, at sample_ratio 0.01
# and at 1.0, alternated REPS times (default 3), one binary. Spans go to
# bench/otlp-sink.py on 127.0.0.1:4318 (pinned with rtload to core 1; the
# server is on core 0). Each mode runs from its own copy of the shared
# bench folder whose pushgate-bench.yaml gains the tracing block.
#   PUSHGATE_BIN=target/release/pushgate RTLOAD=... bench/otel-cost.sh [REPS]
# Results: /tmp/otel-cost/MODE/all.jsonl; a summary line per run on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
SHARED=${SHARED_BENCH:-../shared/bench}
export PUSHGATE_BIN=${PUSHGATE_BIN:-$PWD/target/release/pushgate}
work=/tmp/otel-cost
rm -rf "$work"; mkdir -p "$work"
for mode in off 0.01 1.0; do
  mkdir -p "$work/$mode"
  cp -r "$SHARED/compare.sh" "$SHARED/peers" "$SHARED/pushgate-bench.yaml" "$work/$mode/"
  if [ "$mode" != off ]; then
    printf 'tracing:\n  otlp: { endpoint: "http://127.0.0.1:4318", sample_ratio: %s }\n' "$mode" \
      >>"$work/$mode/pushgate-bench.yaml"
  fi
  "$PUSHGATE_BIN" check --config "$work/$mode/pushgate-bench.yaml" >/dev/null
done
taskset -c 1 python3 bench/otlp-sink.py 4318 >"$work/sink.log" 2>&1 &
sink=$!
trap 'kill "$sink" 2>/dev/null || true' EXIT
sleep 0.5
for rep in $(seq "$REPS"); do
  for mode in off 0.01 1.0; do
    printf '%s rep %s: ' "$mode" "$rep"
    "$work/$mode/compare.sh" pushgate publish-rate --out "$work/$mode/results" | tail -1
  done
done
kill "$sink"; wait "$sink" 2>/dev/null || true
cat "$work/sink.log"
