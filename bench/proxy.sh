#!/usr/bin/env bash
# Plain reverse-proxy throughput and latency: wrk through pushgate and
# through nginx (worker_processes 1) to the same upstream, proxy pinned to
# core 0, wrk and the upstream on core 1. Loopback only; every run is 10 s.
#
#   bench/proxy.sh [RUNS]      (default 2; needs nginx and wrk from Debian)
#
# Prints one line per run, target, concurrency and connection mode:
# requests/s and p50/p99 latency, plus the direct-to-upstream baseline so
# the proxies' added latency shows. Environment:
#   PUSHGATE_BINS="name=path ..."  several pushgate builds side by side
#                                  (default: pushgate=$PUSHGATE_BIN)
#   CONNS="50 500"                 wrk connection counts
#   MODES="keepalive close"        close: a new connection per request
#   SECS=10                        seconds per wrk run
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-2}"
BIN="${PUSHGATE_BIN:-target/release/pushgate}"
BINS="${PUSHGATE_BINS:-pushgate=$BIN}"
CONNS="${CONNS:-50 500}"
MODES="${MODES:-keepalive close}"
SECS="${SECS:-10}"
W=/tmp/pushgate-proxy-bench
rm -rf "$W"; mkdir -p "$W"
UP=127.0.0.1:9101; NG=127.0.0.1:9102

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
pg_config() { # http internal
  cat <<CONF
listen: { http: ["$1"] }
internal: { listen: "$2" }
upstreams: { api: { targets: ["http://$UP"] } }
routes: [ { name: api, match: { path_prefix: / }, upstream: api } ]
CONF
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 1 nginx -c "$W/upstream.conf" & pids+=($!)
taskset -c 0 nginx -c "$W/nginx.conf" & pids+=($!)
targets=("direct=http://$UP/" "nginx=http://$NG/")
declare -A cpu_pid # target -> the process whose CPU time is counted
sleep 0.5
cpu_pid[nginx]=$(pgrep -P "${pids[1]}" | head -1) # nginx's worker
port=9103
for spec in $BINS; do
  name=${spec%%=*}; bin=${spec#*=}
  pg_config "127.0.0.1:$port" "127.0.0.1:$((port + 1))" > "$W/$name.yaml"
  taskset -c 0 "$bin" --config "$W/$name.yaml" 2>"$W/$name.log" & pids+=($!)
  targets+=("$name=http://127.0.0.1:$port/")
  cpu_pid[$name]=${pids[-1]}
  port=$((port + 2))
done
sleep 1

ticks() { # utime + stime of a process, in clock ticks
  [ -n "${1:-}" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
HZ=$(getconf CLK_TCK)
run() { # name url conns mode
  local extra=(); [ "$4" = close ] && extra=(-H "Connection: close")
  local pid=${cpu_pid[$1]:-} before after
  before=$(ticks "$pid")
  local out; out=$(taskset -c 1 wrk -t1 -c"$3" -d"${SECS}s" --latency "${extra[@]}" "$2" 2>&1)
  after=$(ticks "$pid")
  local reqs cpu=""
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # CPU per request of the proxy process: less load-sensitive than req/s.
  [ -n "$pid" ] && [ "${reqs:-0}" -gt 0 ] &&
    cpu="cpu_us_per_req=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
  local rps p50 p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
  echo "$1 run=$r c=$3 mode=$4 rps=$rps p50=$p50 p99=$p99 $cpu ${errs}"
}
for r in $(seq 1 "$RUNS"); do
  for mode in $MODES; do for c in $CONNS; do
    for t in "${targets[@]}"; do run "${t%%=*}" "${t#*=}" "$c" "$mode"; done
  done; done
done
