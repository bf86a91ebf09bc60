#!/usr/bin/env bash
# pushgate beside its floor (issue 17): the same compare.sh scenarios, in
# one run, against target/release/pushgate and against bench/floor's
# pushgate-floor (one epoll loop, no runtime; see bench/floor/README.md).
#
#   bench/floor.sh [--quick] [ROUNDS] [SCENARIO...]
#
# Default scenarios: fanout-sse fanout-ws fanout-latency publish-rate
# idle-sse idle-ws; ROUNDS (default 3) alternate pushgate and floor so
# drift on a shared machine hits both. Results: $OUT (default
# /tmp/floor-results), one compare.sh JSON line per run in all.jsonl with
# `.target` = pushgate; the floor's lines are in floor/all.jsonl.
# ../shared/bench/table.py turns each into a table (medians).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=(); ROUNDS=3; SCEN=()
for a in "$@"; do
  case "$a" in
    --quick) QUICK=(--quick) ;;
    [0-9]*) ROUNDS=$a ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) SCEN+=("$a") ;;
  esac
done
[ ${#SCEN[@]} -gt 0 ] || SCEN=(fanout-sse fanout-ws fanout-latency publish-rate idle-sse idle-ws)
OUT="${OUT:-/tmp/floor-results}"
BENCH="${BENCH:-$ROOT/../shared/bench}"
export RTLOAD="${RTLOAD:-$BENCH/rtload/target/release/rtload}"
[ -x target/release/pushgate ] || cargo build --release --locked
(cd bench/floor && cargo build --release --locked)
mkdir -p "$OUT/floor"
for r in $(seq 1 "$ROUNDS"); do
  for s in "${SCEN[@]}"; do
    PUSHGATE_BIN="$ROOT/target/release/pushgate" \
      "$BENCH/compare.sh" pushgate "$s" "${QUICK[@]}" --out "$OUT"
    PUSHGATE_BIN="$ROOT/bench/floor/target/release/pushgate-floor" \
      "$BENCH/compare.sh" pushgate "$s" "${QUICK[@]}" --out "$OUT/floor"
  done
done
echo "pushgate: python3 $BENCH/table.py $OUT/all.jsonl"
echo "floor:    python3 $BENCH/table.py $OUT/floor/all.jsonl"
