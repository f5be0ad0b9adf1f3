#!/usr/bin/env bash
# =============================================================================
# l4-bench.sh — layer 4 (TCP and UDP) proxying: Vane against HAProxy `mode tcp` and
# nginx `stream`, loopback only, every target measured in the same run, interleaved.
#
# Backends: an iperf3 server, a redis-server (no persistence) and a UDP echo server
# (benches/udp-load.c, compiled here), on core 0.
# Proxies, each alone on core 1 (PROXY_CPUS) while measured: HAProxy (nbthread 1,
# mode tcp), nginx (1 worker, stream module), Vane (a real control plane on core 0 and a
# node on core 1, configured by `vane apply` with two TCP listeners), and `direct` (no
# proxy). Rows, each REPS times, targets interleaved within each repetition:
#
#   iperf3       bulk throughput client -> server, one stream (iperf3 -t DURATION):
#                Gbit/s, and the proxy's CPU seconds (utime+stime of its processes, from
#                /proc) per GB moved.
#   iperf3-R     the same, server -> client (-R).
#   redis        redis-benchmark -t set,get -c 50 -n REDIS_N -P 1, ops/s (mean of SET and GET).
#   connect      new connections per second: redis-benchmark -t ping_inline -k 0 -c 50
#                (a new TCP connection, proxied to a new upstream connection, per PING).
#   udp          UDP datagrams per second through a UDP listener (nginx `listen ... udp`;
#                HAProxy has no UDP): udp-load with UDP_SOCKETS client sockets (one
#                session each) keeping UDP_WINDOW 64-byte datagrams each in flight for
#                DURATION, counting answers; and the proxy's CPU microseconds per answer.
#
# Prints a markdown table of medians with the ratio of Vane to the better peer, and the raw
# rows as CSV beside it ($OUT, $OUT.csv).
#
# Usage:   VANE=/work/target-l4/release/vane benches/l4-bench.sh [--quick]
# Needs:   iperf3 redis-server redis-tools haproxy nginx libnginx-mod-stream cc (apt-get).
# Env:     REPS [3]  DURATION [5]  REDIS_N [200000]  TARGETS ["direct haproxy nginx vane"]
#          ROWS ["iperf3 iperf3-R redis connect udp"]  UDP_SOCKETS [16]  UDP_WINDOW [8]
#          PROXY_CPUS [1]  LOAD_CPUS [0]  OUT [/tmp/l4-bench.md]
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-5}
REDIS_N=${REDIS_N:-200000}
TARGETS=${TARGETS:-"direct haproxy nginx vane"}
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
OUT=${OUT:-/tmp/l4-bench.md}
ROWS=${ROWS:-"iperf3 iperf3-R redis connect udp"}
UDP_SOCKETS=${UDP_SOCKETS:-16}
UDP_WINDOW=${UDP_WINDOW:-8}
if [ "${1:-}" = --quick ]; then REPS=1; DURATION=3; REDIS_N=50000; fi
VANE=${VANE:-${CARGO_TARGET_DIR:-target}/release/vane}
[ -x "$VANE" ] || { echo "no Vane binary at $VANE (cargo build --release -p vane, or VANE=...)" >&2; exit 1; }
for tool in iperf3 redis-server redis-benchmark haproxy nginx taskset cc; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y iperf3 redis-server redis-tools haproxy nginx libnginx-mod-stream)" >&2; exit 1; }
done
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$STREAM_MODULE" ] || { echo "nginx has no stream module (apt-get install -y libnginx-mod-stream)" >&2; exit 1; }

work=$(mktemp -d /tmp/l4-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

# A free port, by binding port 0.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 (${2:-}) never opened" >&2; exit 1; }

udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Until a UDP port answers a datagram (10 s at most).
wait_udp() {
  python3 - "$1" "${2:-}" <<'PY' || exit 1
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.1)
deadline = time.time() + 10
while time.time() < deadline:
    s.sendto(b"ready?", ("127.0.0.1", int(sys.argv[1])))
    try:
        s.recvfrom(64); sys.exit(0)
    except OSError:
        pass
sys.exit(f"udp port {sys.argv[1]} ({sys.argv[2]}) never answered")
PY
}
cc -O2 -o "$work/udp-load" benches/udp-load.c

IPERF=$(port); REDIS=$(port); ECHO=$(udp_port)
taskset -c "$LOAD_CPUS" "$work/udp-load" echo "$ECHO" & pids+=($!)
taskset -c "$LOAD_CPUS" iperf3 -s -p "$IPERF" >/dev/null 2>&1 & pids+=($!)
taskset -c "$LOAD_CPUS" redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & pids+=($!)
wait_port "$IPERF"; wait_port "$REDIS"

wait_udp "$ECHO" echo

declare -A IPERF_PORT REDIS_PORT UDP_PORT PROC
IPERF_PORT[direct]=$IPERF; REDIS_PORT[direct]=$REDIS; UDP_PORT[direct]=$ECHO

# HAProxy: mode tcp, one thread.
IPERF_PORT[haproxy]=$(port); REDIS_PORT[haproxy]=$(port)
cat >"$work/haproxy.cfg" <<HA
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen iperf
    bind 127.0.0.1:${IPERF_PORT[haproxy]}
    server s1 127.0.0.1:$IPERF
listen redis
    bind 127.0.0.1:${REDIS_PORT[haproxy]}
    server s1 127.0.0.1:$REDIS
HA
taskset -c "$PROXY_CPUS" haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 & pids+=($!); PROC[haproxy]=$!

# nginx: stream module, one worker.
IPERF_PORT[nginx]=$(port); REDIS_PORT[nginx]=$(port); UDP_PORT[nginx]=$(udp_port)
cat >"$work/nginx.conf" <<NG
load_module $STREAM_MODULE;
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err warn;
events { worker_connections 8000; use epoll; multi_accept on; }
stream {
  server { listen 127.0.0.1:${IPERF_PORT[nginx]}; proxy_pass 127.0.0.1:$IPERF; }
  server { listen 127.0.0.1:${REDIS_PORT[nginx]}; proxy_pass 127.0.0.1:$REDIS; }
  server { listen 127.0.0.1:${UDP_PORT[nginx]} udp; proxy_pass 127.0.0.1:$ECHO; proxy_timeout 60s; }
}
NG
taskset -c "$PROXY_CPUS" nginx -c "$work/nginx.conf" -e "$work/nginx.err" >/dev/null 2>&1 & pids+=($!); PROC[nginx]=$!

# Vane: control plane on the load core, the node on the proxy core.
IPERF_PORT[vane]=$(port); REDIS_PORT[vane]=$(port); UDP_PORT[vane]=$(udp_port); CP=$(port); ADMIN=$(port)
cat >"$work/vane.yaml" <<YML
listeners:
  - { name: iperf, address: "127.0.0.1:${IPERF_PORT[vane]}", protocol: TCP, cluster: iperf }
  - { name: redis, address: "127.0.0.1:${REDIS_PORT[vane]}", protocol: TCP, cluster: redis }
  - { name: udp, address: "127.0.0.1:${UDP_PORT[vane]}", protocol: UDP, cluster: echo, idle_timeout: 60s }
clusters:
  - { name: echo, endpoints: [ { address: "127.0.0.1:$ECHO" } ] }
  - { name: iperf, endpoints: [ { address: "127.0.0.1:$IPERF" } ] }
  - { name: redis, endpoints: [ { address: "127.0.0.1:$REDIS" } ] }
YML
export RUST_LOG=warn
taskset -c "$LOAD_CPUS" "$VANE" control-plane --data-dir "$work/store" --listen "127.0.0.1:$CP" >/dev/null 2>&1 & pids+=($!)
NODE=$(dirname "$VANE")/vane-node
if [ -x "$NODE" ]; then node=("$NODE"); else node=("$VANE" proxy); fi
taskset -c "$PROXY_CPUS" "${node[@]}" --control-plane "http://127.0.0.1:$CP" --node-id bench --admin "127.0.0.1:$ADMIN" --cache-dir "$work/node" >/dev/null 2>&1 & pids+=($!); PROC[vane]=$!
for _ in $(seq 1 100); do "$VANE" --server "http://127.0.0.1:$CP" apply -f "$work/vane.yaml" >/dev/null 2>&1 && break; sleep 0.1; done
for t in haproxy nginx vane; do wait_port "${IPERF_PORT[$t]}" "$t"; wait_port "${REDIS_PORT[$t]}" "$t"; done
for t in nginx vane; do wait_udp "${UDP_PORT[$t]}" "$t"; done

# CPU seconds (user+system) of a process and its children threads/processes.
cpu() {
  local pid=$1 total=0 p
  [ -z "$pid" ] && { echo 0; return; }
  for p in $pid $(pgrep -P "$pid" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$(awk -v t="$total" '{ print t + $14 + $15 }' "/proc/$p/stat")
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

# gb: GB moved (iperf3 rows), or millions of answers (udp).
echo "target,row,rep,value,unit,cpu_s,gb" >"$OUT.csv"
run_iperf() { # target rep [-R]
  local t=$1 rep=$2 reverse=${3:-} c0 c1 json gbps bytes
  c0=$(cpu "${PROC[$t]:-}")
  json=$(taskset -c "$LOAD_CPUS" iperf3 -c 127.0.0.1 -p "${IPERF_PORT[$t]}" -t "$DURATION" $reverse -J)
  c1=$(cpu "${PROC[$t]:-}")
  gbps=$(python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]["sum_received"]; print(round(d["bits_per_second"]/1e9,2), d["bytes"])' <<<"$json")
  bytes=${gbps#* }; gbps=${gbps% *}
  local row=iperf3${reverse:+-R}
  echo "$t,$row,$rep,$gbps,Gbit/s,$(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}'),$(awk -v b="$bytes" 'BEGIN{printf "%.3f", b/1e9}')" >>"$OUT.csv"
}
run_redis() { # target rep
  local t=$1 rep=$2 out ops
  out=$(taskset -c "$LOAD_CPUS" redis-benchmark -p "${REDIS_PORT[$t]}" -t set,get -c 50 -n "$REDIS_N" -q --csv)
  ops=$(awk -F'"' '/^"(SET|GET)"/ { s += $4; n++ } END { printf "%.0f", s / n }' <<<"$out")
  echo "$t,redis,$rep,$ops,ops/s,," >>"$OUT.csv"
}
run_connect() { # target rep
  local t=$1 rep=$2 out ops
  out=$(taskset -c "$LOAD_CPUS" redis-benchmark -p "${REDIS_PORT[$t]}" -t ping_inline -k 0 -c 50 -n $((REDIS_N / 10)) -q --csv)
  ops=$(awk -F'"' '/^"PING_INLINE"/ { printf "%.0f", $4 }' <<<"$out")
  echo "$t,connect,$rep,$ops,conn/s,," >>"$OUT.csv"
}

run_udp() { # target rep
  local t=$1 rep=$2 c0 c1 rate
  [ -n "${UDP_PORT[$t]:-}" ] || return 0
  c0=$(cpu "${PROC[$t]:-}")
  rate=$(taskset -c "$LOAD_CPUS" "$work/udp-load" load "${UDP_PORT[$t]}" "$UDP_SOCKETS" "$UDP_WINDOW" "$DURATION" 64)
  c1=$(cpu "${PROC[$t]:-}")
  echo "$t,udp,$rep,$rate,datagrams/s,$(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}'),$(awk -v r="$rate" -v d="$DURATION" 'BEGIN{printf "%.3f", r*d/1e6}')" >>"$OUT.csv"
}
row() { [[ " $ROWS " == *" $1 "* ]]; }

for rep in $(seq 1 "$REPS"); do
  for t in $TARGETS; do
    if row iperf3; then run_iperf "$t" "$rep"; fi
    if row iperf3-R; then run_iperf "$t" "$rep" -R; fi
    if row redis; then run_redis "$t" "$rep"; fi
    if row connect; then run_connect "$t" "$rep"; fi
    if row udp; then run_udp "$t" "$rep"; fi
  done
done

python3 - "$OUT.csv" "$TARGETS" >"$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
targets = sys.argv[2].split()
kinds = [("iperf3", "Gbit/s"), ("iperf3-R", "Gbit/s"), ("redis", "ops/s"), ("connect", "conn/s"), ("udp", "datagrams/s")]
kinds = [(k, u) for k, u in kinds if any(r["row"] == k for r in rows)]
def med(t, k, f="value"):
    v = [float(r[f]) for r in rows if r["target"] == t and r["row"] == k and r[f] != ""]
    return statistics.median(v) if v else None
def cpu_per_gb(t, k):
    v = [float(r["cpu_s"]) / float(r["gb"]) for r in rows if r["target"] == t and r["row"] == k and r["cpu_s"] and float(r["gb"]) > 0]
    return statistics.median(v) if v else None
print("| row | " + " | ".join(targets) + " | vane / better peer |")
print("|---|" + "---|" * (len(targets) + 1))
for k, unit in kinds:
    vals = {t: med(t, k) for t in targets}
    peers = [vals[t] for t in ("haproxy", "nginx") if vals.get(t)]
    ratio = f"{vals['vane'] / max(peers):.2f}" if vals.get("vane") and peers else "-"
    print(f"| {k} ({unit}) | " + " | ".join("-" if vals[t] is None else f"{vals[t]:.2f}" if unit == "Gbit/s" else f"{vals[t]:.0f}" for t in targets) + f" | {ratio} |")
    if k.startswith("iperf3"):
        cpus = {t: cpu_per_gb(t, k) for t in targets if t != "direct"}
        peers = [cpus[t] for t in ("haproxy", "nginx") if cpus.get(t)]
        ratio = f"{cpus['vane'] / min(peers):.2f}" if cpus.get("vane") and peers else "-"
        print(f"| {k} proxy CPU s/GB | " + " | ".join("-" if cpus.get(t) is None else f"{cpus[t]:.3f}" for t in targets) + f" | {ratio} (lower is better) |")
    if k == "udp":
        # cpu_s per million answers = microseconds per answer.
        cpus = {t: cpu_per_gb(t, k) for t in targets if t != "direct"}
        peers = [cpus[t] for t in ("haproxy", "nginx") if cpus.get(t)]
        ratio = f"{cpus['vane'] / min(peers):.2f}" if cpus.get("vane") and peers else "-"
        print(f"| udp proxy CPU µs/datagram | " + " | ".join("-" if cpus.get(t) is None else f"{cpus[t]:.2f}" for t in targets) + f" | {ratio} (lower is better) |")
PY
cat "$OUT"
