#!/usr/bin/env bash
# cache-bench.sh: cache hits, Vane's response cache against nginx's proxy_cache. Both
# proxies hold the backend's answers (64 B on /, 16 KiB on /big) and are warmed until every
# path is a hit; then wrk asks each for the same path, REPS interleaved runs of DURATION
# per path. The table gives req/s, p50, p99 and the proxy's CPU per request, with Vane's
# ratio to nginx.
#
#   benches/cache-bench.sh [--quick]     # needs wrk, nginx, python3, curl; VANE=path/to/vane
#
# Vane: a real control plane and node (`vane apply`), one route through a cache with
# `default_ttl: 3600s` (the backend sends no Cache-Control). nginx: 1 worker,
# `proxy_cache_path` on tmpfs (/dev/shm) with `proxy_cache_valid 200 1h`, keys_zone 10m,
# access log off. Both run alone on core 1 (PROXY_CPUS), wrk and the backend on core 0;
# 50 connections, one wrk thread. Loopback only; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
REPS=${REPS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-50}
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
NGINX=${NGINX:-/usr/sbin/nginx}
VANE=${VANE:-${CARGO_TARGET_DIR:-$REPO/target}/release/vane}
[ "${1:-}" = "--quick" ] && { REPS=1; DURATION=3s; }
VPORT=18530 NPORT=18531 CP=127.0.0.1:18532 ADMIN=127.0.0.1:18533 BACKEND_PORT=18534

for tool in wrk python3 taskset curl "$NGINX"; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
if [ ! -x "$VANE" ]; then (cd "$REPO" && cargo build --release --locked -p vane); VANE=${CARGO_TARGET_DIR:-$REPO/target}/release/vane; fi
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || exit 1

TMP=$(mktemp -d /tmp/cache-bench.XXXXXX)
chmod 755 "$TMP"
NCACHE=$(mktemp -d /dev/shm/cache-bench-nginx.XXXXXX)
chmod 777 "$NCACHE"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP" "$NCACHE"
}
trap cleanup EXIT INT TERM

cat >"$TMP/config.yaml" <<EOF
listeners:
  - { name: bench, address: "127.0.0.1:$VPORT" }
clusters:
  - { name: backend, endpoints: [ { address: "127.0.0.1:$BACKEND_PORT" } ] }
caches:
  - { name: edge, default_ttl: 3600s }
routes:
  - { name: all, match: { prefix: / }, forward: { clusters: [ { name: backend } ] }, cache: edge }
EOF
mkdir -p "$TMP/nginx/tmp"
cat >"$TMP/nginx/nginx.conf" <<NG
worker_processes 1; daemon off; master_process on; user www-data;
pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/err.log warn;
events { worker_connections 8192; use epoll; multi_accept on; }
http { access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_timeout 65s; keepalive_requests 100000;
 client_body_temp_path $TMP/nginx/tmp/b; proxy_temp_path $NCACHE/tmp; fastcgi_temp_path $TMP/nginx/tmp/f;
 uwsgi_temp_path $TMP/nginx/tmp/u; scgi_temp_path $TMP/nginx/tmp/s;
 proxy_cache_path $NCACHE/zone levels=1:2 keys_zone=edge:10m max_size=256m inactive=1h use_temp_path=off;
 upstream backends { server 127.0.0.1:$BACKEND_PORT; keepalive 512; }
 server { listen 127.0.0.1:$NPORT backlog=4096 reuseport;
  location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection "";
   proxy_cache edge; proxy_cache_valid 200 1h; proxy_cache_lock on; add_header X-Cache \$upstream_cache_status; } } }
NG

taskset -c "$LOAD_CPUS" "$BACKEND_BIN" "$BACKEND_PORT" 1 >"$TMP/backend.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn taskset -c "$LOAD_CPUS" "$VANE" control-plane --data-dir "$TMP/store" --listen "$CP" >"$TMP/cp.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn taskset -c "$PROXY_CPUS" "$VANE" proxy --control-plane "http://$CP" --node-id bench --admin "$ADMIN" >"$TMP/proxy.log" 2>&1 & PIDS+=($!)
VANE_PID=$!
taskset -c "$PROXY_CPUS" "$NGINX" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.out" 2>&1 & PIDS+=($!)
NGINX_MASTER=$!
for _ in $(seq 100); do "$VANE" --server "http://$CP" apply -f "$TMP/config.yaml" >/dev/null 2>&1 && break; sleep 0.1; done

# Warm both until every path is a hit (bounded).
warm() {  # warm PORT PATH
  for _ in $(seq 100); do
    curl -s -o /dev/null -D - "http://127.0.0.1:$1$2" | grep -qi '^x-cache: HIT' && return 0
    sleep 0.1
  done
  echo "127.0.0.1:$1$2 never became a cache hit" >&2; exit 1
}
for path in / /big; do warm "$VPORT" "$path"; warm "$NPORT" "$path"; done
NGINX_WORKER=$(ps -o pid= --ppid "$NGINX_MASTER" | head -1 | tr -d ' ')
[ -n "$NGINX_WORKER" ] || { echo "no nginx worker" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {  # run PORT PID PATH -> "rps p50 p99 cpu_us_per_req"
  local before after out rps p50 p99 reqs
  before=$(cpu_ticks "$2")
  out=$(timeout $(( ${DURATION%s} + 30 )) taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1$3")
  after=$(cpu_ticks "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  grep -q "Non-2xx" <<<"$out" && { echo "non-2xx responses on $1$3" >&2; exit 1; }
  echo "$rps $p50 $p99 $(python3 -c "print(round(($after - $before) * 1e6 / $(getconf CLK_TCK) / $reqs, 2))")"
}
before_backend=$(curl -s "http://127.0.0.1:$BACKEND_PORT/stats" || true)
ROWS=()
for rep in $(seq "$REPS"); do
  for path in / /big; do
    v=$(run "$VPORT" "$VANE_PID" "$path"); n=$(run "$NPORT" "$NGINX_WORKER" "$path")
    ROWS+=("$path|$v|$n")
    echo "rep $rep $path: vane $v | nginx $n" >&2
  done
done
after_backend=$(curl -s "http://127.0.0.1:$BACKEND_PORT/stats" || true)
echo "backend /stats before the runs: $before_backend; after: $after_backend" >&2
python3 - "${ROWS[@]}" <<'PY'
import statistics, sys
by = {}
for row in sys.argv[1:]:
    path, v, n = row.split("|")
    by.setdefault(path, []).append((v.split(), n.split()))
print("| path | Vane req/s | nginx req/s | ratio | Vane p50 / p99 | nginx p50 / p99 | Vane CPU us/req | nginx CPU us/req |")
print("|---|---|---|---|---|---|---|---|")
for path, runs in by.items():
    med = lambda i, k: statistics.median(float(r[i][k]) for r in runs)
    mid = runs[len(runs) // 2]
    vr, nr = med(0, 0), med(1, 0)
    print(f"| {path} | {vr:,.0f} | {nr:,.0f} | {vr / nr:.2f}x | {mid[0][1]} / {mid[0][2]} | {mid[1][1]} / {mid[1][2]} "
          f"| {med(0, 3)} | {med(1, 3)} |")
PY
