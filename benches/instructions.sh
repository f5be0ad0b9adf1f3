#!/usr/bin/env bash
# instructions.sh: user-space instructions per proxied request, counted by valgrind's
# callgrind: repeatable to well under 1% for the same binary, where wall-clock A/B runs on
# a shared 2-core machine drift by 10-15%. Each build's node runs as benches/vane-sut.sh
# runs it (real control plane, real gRPC), under callgrind with instrumentation switched
# on only after a warm-up; h2load then sends a fixed number of requests over 50
# connections. The kernel's share is not counted (use benches/ab.sh for that).
#
#   VANES="before=/tmp/old/vane after=target/release/vane" benches/instructions.sh
#   H2=1 VANES=... benches/instructions.sh      # h2c, 10 streams per connection
#   PEERS=1 VANES=... benches/instructions.sh   # nginx and HAProxy too (1 worker/thread)
#   N=20000 KEEP=/tmp/cg benches/instructions.sh  # requests counted; keep callgrind files
#
# A build's node is its `vane-node` when one sits next to its `vane`, else `vane proxy`.
# Needs valgrind and h2load (apt-get install -y valgrind nghttp2-client), nginx and
# haproxy for PEERS=1; the backends are benches/backend (built on first use; BACKEND_BIN
# overrides). Loopback only; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_NAME=instructions
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"   # start_bg, stop_on_exit, wait_up
N=${N:-20000}
: "${VANES:?VANES=\"name=/path/to/vane ...\"}"
for tool in valgrind callgrind_control callgrind_annotate h2load taskset curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || exit 1
TMP=$(mktemp -d /tmp/vane-instr.XXXXXX)
OUT=${KEEP:-$TMP}
mkdir -p "$OUT"
stop_on_exit

start_bg 0 /dev/null "$BACKEND_BIN" 18901 1
start_bg 0 /dev/null "$BACKEND_BIN" 18902 1
load() {  # load PORT REQUESTS
  if [ -n "${H2:-}" ]; then taskset -c 0 h2load -c50 -m10 -n "$2" "http://127.0.0.1:$1/"
  else taskset -c 0 h2load --h1 -c50 -n "$2" "http://127.0.0.1:$1/"; fi
}
# count NAME PORT [UP_PORT]: waits for UP_PORT (HTTP/1.1; default PORT), warms up, counts
# N requests to PORT, prints instructions per request.
count() {
  local name=$1 port=$2 pid
  wait_up "${3:-$port}" 600 || die "nothing on :${3:-$port}"
  load "$port" 5000 >/dev/null
  pid=$(pgrep -f -- "--callgrind-out-file=$OUT/$name.out" | head -1)
  callgrind_control -i on "$pid" >/dev/null 2>&1
  load "$port" "$N" >"$TMP/load.txt"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  local answered failed total
  answered=$(awk '/^requests:/{print $8}' "$TMP/load.txt")
  failed=$(awk '/^requests:/{print $10 + $12}' "$TMP/load.txt")
  for _ in $(seq 50); do [ -s "$OUT/$name.out.1" ] && break; sleep 0.2; done
  total=$(callgrind_annotate "$OUT/$name.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
  awk -v n="$name" -v t="$total" -v d="$answered" -v f="$failed" \
    'BEGIN { printf "%-10s %9.0f instructions/request  (%d requests, %d failed)\n", n, t / d, d, f }'
}
cg() { echo valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$OUT/$1.out"; }

i=0
for v in $VANES; do
  name=${v%%=*} bin=${v#*=}
  port=$((18920 + i * 10))
  node=$(dirname "$bin")/vane-node
  wrapper="$TMP/node-$name"
  if [ -x "$node" ]; then
    printf '#!/bin/sh\nexec %s %q "$@"\n' "$(cg "$name")" "$node" >"$wrapper"
  else
    printf '#!/bin/sh\nexec %s %q proxy "$@"\n' "$(cg "$name")" "$bin" >"$wrapper"
  fi
  chmod +x "$wrapper"
  VANE=$bin VANE_NODE=$wrapper PB_LISTEN=127.0.0.1:$port PB_BACKENDS=127.0.0.1:18901,127.0.0.1:18902 \
    VANE_BENCH_CP=127.0.0.1:$((port + 3)) VANE_BENCH_ADMIN=127.0.0.1:$((port + 4)) \
    start_bg 1 "$TMP/sut-$name.log" "$HERE/vane-sut.sh"
  count "$name" "$port"
  stop_pid "$LAST_PID"
  i=$((i + 1))
done

if [ -n "${PEERS:-}" ]; then
  # shellcheck source=benches/peer-configs.sh
  . "$HERE/peer-configs.sh"
  write_nginx_conf "$TMP/ng" 18980 18981 127.0.0.1:18901 127.0.0.1:18902 off
  write_haproxy_cfg "$TMP/haproxy.cfg" 18985 18986 127.0.0.1:18901 127.0.0.1:18902
  h2=${H2:+1}
  # shellcheck disable=SC2046
  start_bg 1 /dev/null $(cg nginx) nginx -p "$TMP/ng" -c "$TMP/ng/nginx.conf"
  count nginx $((18980 + ${h2:-0})) 18980
  stop_pid "$LAST_PID"
  # shellcheck disable=SC2046
  start_bg 1 /dev/null $(cg haproxy) haproxy -db -f "$TMP/haproxy.cfg"
  count haproxy $((18985 + ${h2:-0})) 18985
fi
