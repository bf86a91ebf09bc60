#!/usr/bin/env bash
# Heap profile of idle connections (issue 17): a pushgate built with
# `--features dhat-heap` serves ../shared/bench/pushgate-bench.yaml, rtload
# opens CONNS idle connections (default 5,000) of TRANSPORT (sse | ws,
# default sse) over 100 channels and holds them 5 s, pushgate is stopped
# and bench/dhat-sites.py prints bytes per connection by allocation site,
# live at the heap's peak (all connections open).
#   cargo build --release --bin pushgate --features dhat-heap
#   PUSHGATE_BIN=target/release/pushgate RTLOAD=.../rtload bench/idle-heap.sh [TRANSPORT] [CONNS]
# Writes $OUT (default /tmp/idle-heap-TRANSPORT.json), the dhat profile.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSPORT=${1:-sse}
CONNS=${2:-5000}
PG=${PUSHGATE_BIN:-target/release/pushgate}
RTLOAD=${RTLOAD:-../shared/bench/rtload/target/release/rtload}
OUT=${OUT:-/tmp/idle-heap-$TRANSPORT.json}
CONFIG=../shared/bench/pushgate-bench.yaml
case "$TRANSPORT" in sse) url='http://127.0.0.1:7080/sub/{ch}' ;; ws) url='ws://127.0.0.1:7080/sub/{ch}' ;;
  *) echo "transport: sse or ws" >&2; exit 2 ;; esac
rm -f "$OUT"
ulimit -n "$(ulimit -Hn)"
PUSHGATE_DHAT_FILE=$OUT "$PG" --config "$CONFIG" 2>/tmp/idle-heap-pushgate.log &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:5571/healthz && break; sleep 0.1; done
"$RTLOAD" idle --transport "$TRANSPORT" --url "$url" --channels 100 --conns "$CONNS" --hold 5 \
  --src-ips 127.0.0.1-127.0.0.8 --linger0 --concurrency 32 --connect-timeout 60 \
  --server-pid "$pid" --timeout 300 --json > /tmp/idle-heap-rtload.json 2>/tmp/idle-heap-rtload.log
jq -c '{established: .connections.established, failed: .connections.failed}' /tmp/idle-heap-rtload.json
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT
python3 bench/dhat-sites.py "$OUT" "$(jq .connections.established /tmp/idle-heap-rtload.json)"
