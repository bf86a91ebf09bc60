#!/usr/bin/env bash
# Plain reverse-proxy throughput and latency: wrk through pushgate and
# through nginx (worker_processes 1) to the same upstream, proxy pinned to
# core 0, wrk and the upstream on core 1. Loopback only; every run is 10 s.
#
#   bench/proxy.sh [RUNS]      (default 2; needs nginx and wrk from Debian)
#
# Prints one line per run and target: requests/s and p50/p99 latency, plus
# the direct-to-upstream baseline so the proxies' added latency shows.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-2}"
BIN="${PUSHGATE_BIN:-target/release/pushgate}"
W=/tmp/pushgate-proxy-bench
rm -rf "$W"; mkdir -p "$W"
UP=127.0.0.1:9101; NG=127.0.0.1:9102; PG=127.0.0.1:9103; PGI=127.0.0.1:9104

cat > "$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen $UP; location / { return 200 "hello from the upstream\n"; } } }
CONF
cat > "$W/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/ng.pid; error_log $W/ng.err;
events { worker_connections 4096; }
http { access_log off;
  upstream api { server $UP; keepalive 64; }
  server { listen $NG; location / { proxy_pass http://api; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header X-Forwarded-For \$remote_addr; } } }
CONF
cat > "$W/pushgate.yaml" <<CONF
listen: { http: ["$PG"] }
internal: { listen: "$PGI" }
upstreams: { api: { targets: ["http://$UP"] } }
routes: [ { name: api, match: { path_prefix: / }, upstream: api } ]
CONF

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 1 nginx -c "$W/upstream.conf" & pids+=($!)
taskset -c 0 nginx -c "$W/nginx.conf" & pids+=($!)
taskset -c 0 "$BIN" --config "$W/pushgate.yaml" 2>"$W/pg.log" & pids+=($!)
sleep 1

run() { # name url
  local out; out=$(taskset -c 1 wrk -t1 -c50 -d10s --latency "$2" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$1 run=$r rps=$rps p50=$p50 p99=$p99"
}
for r in $(seq 1 "$RUNS"); do
  run direct "http://$UP/"
  run nginx "http://$NG/"
  run pushgate "http://$PG/"
done
