#!/usr/bin/env bash
# =============================================================================
# tls-bench.sh — HTTPS termination: Vane (rustls) against nginx (OpenSSL), loopback only.
#
# One command builds what it needs (Vane from a clone of this repo's HEAD, never touching
# the work tree's target/; the 1-thread benchmark backend of benches/backend),
# makes a throwaway CA and an ECDSA P-256 certificate for bench.test (+ IP SAN 127.0.0.1),
# starts one backend, nginx (1 worker) and a real Vane control plane + node, and runs
# REPS repetitions of this matrix, both targets interleaved within every repetition:
#
#   handshakes          a full TLS handshake per request: ab -c50 -t DURATION (HTTP/1.0, no
#                       keep-alive, -n capped at 20000/s; ab never offers a session, checked
#                       below; Debian package apache2-utils), or, without ab,
#                       S_TIME_PROCS parallel `openssl s_time -new`. Rate = handshakes/s.
#   handshakes-resumed  wrk -c50 -H 'Connection: close': a new TCP+TLS connection per
#                       request, but wrk offers the previous session on every reconnect, so
#                       these are TLS 1.3 PSK resumptions (the script measures the share with
#                       nginx's $ssl_session_reused on a probe port and prints it).
#   keepalive-h1        wrk -c50 --latency over 50 long-lived HTTP/1.1 connections.
#   h2                  h2load -c50 -m10 (ALPN h2) over 50 long-lived connections.
#
# For every run: rate, p50/p99 (ab: whole request incl. connect+handshake; wrk: request to
# response; h2load: per-request durations from --log-file), proxy CPU time (utime+stime of
# the proxy's process tree from /proc, delta over the run) per request/handshake, proxy RSS
# (VmRSS summed over the tree) after the run, and errors. Prints a markdown table of medians
# with the vane/nginx ratio on the rate and writes it to $OUT (raw rows beside it, .csv).
#
# Layout (as benches/peer-bench.sh): the proxy under load (nginx master+worker, or the
# `vane proxy` process) alone on core 1 (PROXY_CPUS); load generator, backend and the Vane
# control plane on core 0 (LOADGEN_CPUS / BACKEND_CPUS / CP_CPUS). With a 2-core machine the
# client side of a full handshake (ECDHE + signature check) costs about as much as the
# server side, so the handshake rows may be bound by core 0: read CPU us/handshake too.
#
# Usage:
#   benches/tls-bench.sh [--quick]          # --quick: REPS=1 DURATION=3s WARMUP=1s
#   VANE=/path/to/vane benches/tls-bench.sh # skip building Vane
#
# Environment (defaults in brackets):
#   REPS [3]  DURATION [10s]  CONNS [50]  WARMUP [2s] (unrecorded wrk warm-up per target)
#   ROWS ["handshakes handshakes-resumed keepalive-h1 h2"]  TARGETS ["nginx vane"]
#   VANE               a vane binary; unset = clone HEAD of this repo into a temp dir and
#                      `cargo build --release -p vane` there with CARGO_TARGET_DIR
#   CARGO_TARGET_DIR   [/tmp/vane-bench-target] (Vane is built here, the backend in
#                      its bench-backend/ subdirectory)
#   BACKEND_BIN        [benches/backend, built on first use: see benches/backend.sh]
#   OUT                [/tmp/tls-bench-results.md]   (raw rows: ${OUT%.md}.csv)
#   S_TIME_PROCS [8]   parallel `openssl s_time` when ab is missing
#   H2_LATENCY [1]     h2load --log-file for p50/p99 (0: rate only, a little less client work)
#
# Ports (127.0.0.1 only): backend 18181, nginx 18443 (+ 18445: same server with an access
# log of $ssl_session_reused, used only by the resumption probe), vane 18444, vane control
# plane 18910, vane node admin 18911. Every load run is bounded by its duration and by
# `timeout`; every wait loop is bounded; every process started here is stopped by its PID
# (process group) on exit and the temp dir is removed.
# =============================================================================
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
REPS=${REPS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
WARMUP=${WARMUP:-2s}
ROWS=${ROWS:-"handshakes handshakes-resumed keepalive-h1 h2"}
TARGETS=${TARGETS:-"nginx vane"}
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/vane-bench-target}
OUT=${OUT:-/tmp/tls-bench-results.md}
S_TIME_PROCS=${S_TIME_PROCS:-8}
H2_LATENCY=${H2_LATENCY:-1}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-0}
CP_CPUS=${CP_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-1}

BACKEND_PORT=18181
NGINX_PORT=18443
PROBE_PORT=18445
VANE_PORT=18444
CP_ADDR=127.0.0.1:18910
ADMIN_ADDR=127.0.0.1:18911

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) REPS=1; DURATION=3s; WARMUP=1s; shift ;;
    -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
SECS=${DURATION%s}
case "$SECS" in ''|*[!0-9]*) echo "DURATION must be whole seconds (e.g. 10s)" >&2; exit 2 ;; esac
case "$REPS" in ''|*[!0-9]*|0) echo "REPS must be a positive integer" >&2; exit 2 ;; esac
[ "$SECS" -ge 1 ] || { echo "DURATION must be at least 1s" >&2; exit 2; }
RUN_LIMIT=$((SECS + 30))   # hard cap (timeout) on every load-generator run

BENCH_NAME=tls-bench
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"   # log, die, ports_free, start_bg, stop_on_exit, wait_http, cpu_ticks_total, rss_kb

for tool in wrk h2load openssl curl taskset setsid nginx python3 git ss; do
  command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install -y nginx wrk nghttp2-client)"
done
HAVE_AB=0; command -v ab >/dev/null && HAVE_AB=1

ports_free $BACKEND_PORT $NGINX_PORT $PROBE_PORT $VANE_PORT ${CP_ADDR##*:} ${ADMIN_ADDR##*:}

TMP=$(mktemp -d /tmp/tls-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers (www-data) need to traverse to their temp paths
mkdir -p "$TMP/logs" "$TMP/pki" "$TMP/nginx" "$TMP/vane" "$TMP/runs"
RAW="$TMP/raw.csv"

# ----------------------------------------------------------------------------- processes
declare -A PID_OF=()
stop_on_exit
start_named() {  # start_named NAME CPUS LOGFILE CMD...: start_bg, its pid kept as PID_OF[NAME]
  local name=$1; shift
  start_bg "$@"
  PID_OF[$name]=$LAST_PID
}

vane_handshakes() {  # "ok failed" from the node's /metrics (summed over listeners)
  curl -s --max-time 2 "http://$ADMIN_ADDR/metrics" 2>/dev/null |
    awk '/^vane_tls_handshakes_total\{/ { if ($0 ~ /result="ok"/) ok += $NF; else bad += $NF } END { printf "%d %d\n", ok, bad }' ||
    echo "0 0"
}

# ----------------------------------------------------------------------------- 1. build
if [ -n "${VANE:-}" ]; then
  [ -x "$VANE" ] || die "VANE=$VANE is not an executable"
  VANE_BIN=$VANE; VANE_REV="(given binary $VANE)"
else
  VANE_REV=$(git -C "$REPO" rev-parse --short HEAD)
  log "building vane at $VANE_REV (clone of $REPO HEAD; CARGO_TARGET_DIR=$CARGO_TARGET_DIR) ..."
  git clone -q "$REPO" "$TMP/src"
  if ! (cd "$TMP/src" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR" cargo build --release --locked -p vane) >"$TMP/logs/build.log" 2>&1; then
    tail -30 "$TMP/logs/build.log" >&2; die "cargo build failed"
  fi
  cp "$CARGO_TARGET_DIR/release/vane" "$TMP/vane-bin"   # fixed copy: a later build can't swap it mid-run
  VANE_BIN="$TMP/vane-bin"
fi
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || die "no benchmark backend"

# ----------------------------------------------------------------------------- 2. certificates
PKI="$TMP/pki"
(
  cd "$PKI"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=Vane tls-bench test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem 2>/dev/null   # PKCS#8
  openssl req -new -key key.pem -subj "/CN=bench.test" -out server.csr
  printf '%s\n' "subjectAltName=DNS:bench.test,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
    -days 2 -sha256 -extfile server.ext -out cert.pem 2>/dev/null
  chmod 600 ca.key key.pem
) || die "openssl could not make the test certificates"
CERT="$PKI/cert.pem"; KEY="$PKI/key.pem"; CA="$PKI/ca.pem"

# ----------------------------------------------------------------------------- backend
start_named backend "$BACKEND_CPUS" "$TMP/logs/backend.log" "$BACKEND_BIN" "$BACKEND_PORT" 1
wait_http "http://127.0.0.1:$BACKEND_PORT/" || die "backend did not come up: $(tail -5 "$TMP/logs/backend.log")"

# ----------------------------------------------------------------------------- 3. nginx
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if [ "$(printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -1)" = 1.25.1 ]; then H2_STYLE=directive; else H2_STYLE=listen; fi
NG="$TMP/nginx"
gen_nginx() {
  local listen_h2='' h2_on='' user=''
  if [ "$H2_STYLE" = listen ]; then listen_h2=' http2'; else h2_on='http2 on;'; fi
  if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then user='user www-data;'; fi
  cat >"$NG/nginx.conf" <<EOF
# tls-bench.sh: nginx $NGINX_VERSION terminating TLS, 1 worker, HTTP/1.1 keep-alive upstream
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
master_process on;
$user
pid $NG/nginx.pid;
error_log $NG/error.log warn;

events {
    worker_connections 8192;
    use epoll;
    multi_accept on;
}

http {
    default_type application/octet-stream;
    access_log off;
    log_format resumption '\$ssl_protocol \$ssl_session_reused \$server_protocol';
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    server_tokens off;
    client_body_temp_path $NG/body;
    proxy_temp_path       $NG/proxy;
    fastcgi_temp_path     $NG/fastcgi;
    uwsgi_temp_path       $NG/uwsgi;
    scgi_temp_path        $NG/scgi;

    ssl_certificate     $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;

    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 512;
        keepalive_requests 100000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$NGINX_PORT ssl$listen_h2 backlog=4096;
        $h2_on
        server_name bench.test;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    # Same server on a probe port, logging whether each TLS session was resumed
    # (used once, before the measured runs, to see what the load generators do).
    server {
        listen 127.0.0.1:$PROBE_PORT ssl$listen_h2;
        $h2_on
        server_name bench.test;
        access_log $NG/resumption.log resumption;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}
gen_nginx
if ! nginx -t -q -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" 2>"$TMP/logs/nginx-t.log"; then
  # the other http2 syntax (1.25.1 deprecated `listen ... http2` in favour of `http2 on;`)
  if [ "$H2_STYLE" = listen ]; then H2_STYLE=directive; else H2_STYLE=listen; fi
  gen_nginx
  nginx -t -q -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" 2>>"$TMP/logs/nginx-t.log" ||
    die "nginx -t failed: $(cat "$TMP/logs/nginx-t.log")"
fi
start_named nginx "$PROXY_CPUS" "$TMP/logs/nginx.log" nginx -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log"
wait_http "https://bench.test:$NGINX_PORT/" -k --resolve "bench.test:$NGINX_PORT:127.0.0.1" ||
  die "nginx did not answer 200 on :$NGINX_PORT: $(tail -5 "$NG/error.log" 2>/dev/null)"

# ----------------------------------------------------------------------------- 4. vane
export RUST_LOG=${RUST_LOG:-warn,rustls=error}
VD="$TMP/vane"
cat >"$VD/bench.yaml" <<EOF
certificates:
  - name: bench
    certificate_chain: { filename: $CERT }
    private_key: { filename: $KEY }
listeners:
  - name: tls
    address: 127.0.0.1:$VANE_PORT
    protocol: HTTPS
    tls: { certificates: [bench] }
clusters:
  - name: backend
    endpoints: [ { address: "127.0.0.1:$BACKEND_PORT" } ]
routes:
  - { name: all, match: { prefix: / }, forward: { clusters: [ { name: backend } ] } }
EOF
start_named vane-cp "$CP_CPUS" "$TMP/logs/vane-cp.log" "$VANE_BIN" control-plane --data-dir "$VD/store" --listen "$CP_ADDR"
start_named vane "$PROXY_CPUS" "$TMP/logs/vane-proxy.log" \
  "$VANE_BIN" proxy --control-plane "http://$CP_ADDR" --node-id bench --admin "$ADMIN_ADDR"
applied=0
for _ in $(seq 100); do
  if "$VANE_BIN" --server "http://$CP_ADDR" apply -f "$VD/bench.yaml" >"$TMP/logs/apply.log" 2>&1; then applied=1; break; fi
  kill -0 "${PID_OF[vane-cp]}" 2>/dev/null || break
  sleep 0.2
done
if [ "$applied" != 1 ]; then
  cat "$TMP/logs/apply.log" >&2; tail -20 "$TMP/logs/vane-cp.log" >&2; die "vane apply failed"
fi
log "vane apply: $(tr '\n' ' ' <"$TMP/logs/apply.log")"
if ! wait_http "https://bench.test:$VANE_PORT/" -k --resolve "bench.test:$VANE_PORT:127.0.0.1"; then
  echo "--- vane proxy log" >&2; tail -30 "$TMP/logs/vane-proxy.log" >&2
  echo "--- vane control-plane log" >&2; tail -10 "$TMP/logs/vane-cp.log" >&2
  echo "--- admin /ready: $(curl -s --max-time 2 "http://$ADMIN_ADDR/ready" || true)" >&2
  die "vane did not answer 200 on https://bench.test:$VANE_PORT/"
fi

# ----------------------------------------------------------------------------- checks
declare -A PORT_OF=([nginx]=$NGINX_PORT [vane]=$VANE_PORT)
NOTES="$TMP/notes.md"; : >"$NOTES"
note() { echo "$*" | tee -a "$NOTES" >&2; }

tls_facts() {  # tls_facts PORT -> "verify=.. proto/cipher=.. alpn(h2,http/1.1)=.. resumption=.."
  local port=$1 first second verify proto alpn resumed
  first=$(printf 'GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n' |
    timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername bench.test -CAfile "$CA" \
      -alpn h2,http/1.1 -sess_out "$TMP/sess-$port.pem" -ign_eof 2>&1 | tr -d '\000' || true)
  verify=$(echo "$first" | sed -n 's/^Verify return code: \([0-9]*\).*/\1/p' | tail -1)
  proto=$(echo "$first" | sed -n 's/^New, \(.*\), Cipher is \(.*\)/\1 \2/p' | head -1)
  alpn=$(echo "$first" | sed -n 's/^ALPN protocol: //p' | head -1)
  second=$(printf 'GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n' |
    timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername bench.test \
      -sess_in "$TMP/sess-$port.pem" -ign_eof 2>&1 | tr -d '\000' || true)
  if echo "$second" | grep -q '^Reused,'; then resumed=yes; else resumed=no; fi
  echo "verify=${verify:-?}(0=ok) ${proto:-?} alpn=${alpn:-none} resumes-openssl-session=$resumed"
}
for t in $TARGETS; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CA" \
    --resolve "bench.test:${PORT_OF[$t]}:127.0.0.1" "https://bench.test:${PORT_OF[$t]}/" || true)
  note "- $t :${PORT_OF[$t]}: curl with the test CA -> $code; $(tls_facts "${PORT_OF[$t]}")"
done

resumption_probe() {  # resumption_probe LABEL CMD... (against the nginx probe port)
  local label=$1 log="$NG/resumption.log" total reused; shift
  : >"$log"; kill -USR1 "$(cat "$NG/nginx.pid")" 2>/dev/null || true; sleep 0.3
  taskset -c "$LOADGEN_CPUS" timeout -k 2 15 "$@" >/dev/null 2>&1 || true
  sleep 0.5
  total=$(grep -c . "$log" || true); reused=$(grep -c ' r ' "$log" || true)
  note "- $label: ${reused:-0} of ${total:-0} requests (one per TLS connection) came on a resumed session (nginx \$ssl_session_reused)"
}
PROBE_URL="https://127.0.0.1:$PROBE_PORT/"
resumption_probe "wrk -H 'Connection: close' (row handshakes-resumed)" wrk -t1 -c10 -d1s -H 'Connection: close' "$PROBE_URL"
if [ "$HAVE_AB" = 1 ]; then
  resumption_probe "ab (row handshakes)" ab -q -r -c10 -n 500 "$PROBE_URL"
else
  resumption_probe "openssl s_time -new (row handshakes)" openssl s_time -connect "127.0.0.1:$PROBE_PORT" -new -time 1 -www /
fi

# ----------------------------------------------------------------------------- 5/6. load
WRK_LUA="$TMP/wrk_report.lua"
cat >"$WRK_LUA" <<'EOF'
-- one machine-readable line, latencies in microseconds
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("TB_RESULT %.1f %d %d %d %d\n",
    summary.requests / secs, summary.requests, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

# Each runner prints "rate count p50_us p99_us errors" (NA where the tool has no figure).
run_wrk() {  # run_wrk URL [extra wrk args]
  local url=$1 out; shift
  out=$(taskset -c "$LOADGEN_CPUS" timeout -k 5 "$RUN_LIMIT" wrk -t1 -c"$CONNS" -d"$SECS"s --latency "$@" -s "$WRK_LUA" "$url" 2>&1 || true)
  echo "$out" >>"$TMP/logs/wrk.log"
  echo "$out" | sed -n 's/^TB_RESULT //p' | tail -1
}
run_ab() {
  local url=$1 out rate n failed non2xx p50 p99
  out=$(taskset -c "$LOADGEN_CPUS" timeout -k 5 "$RUN_LIMIT" ab -q -r -c "$CONNS" -t "$SECS" -n $((SECS * 20000)) "$url" 2>&1 || true)
  echo "$out" >>"$TMP/logs/ab.log"
  rate=$(echo "$out" | awk '/^Requests per second:/ {print $4}')
  n=$(echo "$out" | awk '/^Complete requests:/ {print $3}')
  failed=$(echo "$out" | awk '/^Failed requests:/ {print $3}')
  non2xx=$(echo "$out" | awk '/^Non-2xx responses:/ {print $3}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2 * 1000}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2 * 1000}')
  [ -n "$rate" ] && echo "$rate $n ${p50:-NA} ${p99:-NA} $(( ${failed:-0} + ${non2xx:-0} ))"
}
run_s_time() {  # S_TIME_PROCS parallel `openssl s_time -new`: full handshakes + HTTP/1.0 GET
  local port=$1 i t0 t1 total=0 n
  t0=$(date +%s.%N)
  for i in $(seq "$S_TIME_PROCS"); do
    taskset -c "$LOADGEN_CPUS" timeout -k 5 "$RUN_LIMIT" openssl s_time -connect "127.0.0.1:$port" -new \
      -time "$SECS" -www / >"$TMP/runs/s_time.$i" 2>&1 &
  done
  wait
  t1=$(date +%s.%N)
  for i in $(seq "$S_TIME_PROCS"); do
    n=$(awk '/connections in .* real seconds/ {print $1}' "$TMP/runs/s_time.$i" | tail -1)
    total=$((total + ${n:-0}))
  done
  awk -v n="$total" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f %d NA NA 0\n", n / (b - a), n }'
}
run_h2load() {
  local url=$1 out rate n bad lat="" alpn
  if [ "$H2_LATENCY" = 1 ]; then lat="--log-file=$TMP/runs/h2.log"; rm -f "$TMP/runs/h2.log"; fi
  out=$(taskset -c "$LOADGEN_CPUS" timeout -k 5 "$RUN_LIMIT" h2load -t1 -c"$CONNS" -m10 -D "$SECS" ${lat:+"$lat"} "$url" 2>&1 || true)
  echo "$out" >>"$TMP/logs/h2load.log"
  alpn=$(echo "$out" | sed -n 's/^Application protocol: //p' | head -1)
  [ "$alpn" = h2 ] || echo "h2load negotiated '${alpn:-nothing}' instead of h2 on $url" >>"$TMP/alpn-warnings"
  rate=$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
  n=$(echo "$out" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p')
  bad=$(echo "$out" | awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^(failed|errored|timeout)/) s += $i }
                           /^status codes:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^[345]xx/) s += $i } END { print s + 0 }')
  if [ -n "$lat" ] && [ -s "$TMP/runs/h2.log" ]; then
    read -r p50 p99 < <(python3 -c '
import sys
d = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.count("\t") >= 2)
q = lambda p: d[min(len(d) - 1, int(p * len(d)))] if d else "NA"
print(q(0.50), q(0.99))' "$TMP/runs/h2.log")
  else p50=NA; p99=NA; fi
  [ -n "$rate" ] && echo "$rate ${n:-0} $p50 $p99 $bad"
}

run_row() {  # run_row ROW TARGET
  local row=$1 t=$2 port=${PORT_OF[$2]}
  local url="https://127.0.0.1:$port/"
  case "$row" in
    handshakes)         if [ "$HAVE_AB" = 1 ]; then run_ab "$url"; else run_s_time "$port"; fi ;;
    handshakes-resumed) run_wrk "$url" -H 'Connection: close' ;;
    keepalive-h1)       run_wrk "$url" ;;
    h2)                 run_h2load "$url" ;;
    *) die "unknown row $row" ;;
  esac
}

{
  echo "# tls-bench $(date -Is)"
  echo
  echo "- vane $VANE_REV vs $(nginx -v 2>&1 | sed 's/^nginx version: //') ($(openssl version)); http2 syntax: $H2_STYLE; $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(h2load --version | head -1); ab: $([ "$HAVE_AB" = 1 ] && echo yes || echo "missing -> openssl s_time x$S_TIME_PROCS")"
  echo "- reps=$REPS duration=${SECS}s conns=$CONNS; proxy on cpu $PROXY_CPUS; load generator cpu $LOADGEN_CPUS, backend cpu $BACKEND_CPUS, vane control plane cpu $CP_CPUS; nproc=$(nproc)"
  echo "- certificate: ECDSA P-256 leaf for bench.test + IP 127.0.0.1 (test CA); backend: vane-bench-backend 1 thread, 64-byte body on /"
} >"$TMP/meta.md"
cat "$TMP/meta.md" >&2

echo "rep,row,target,rate,count,p50_us,p99_us,errors,cpu_ms,cpu_us_per_req,rss_kb,vane_hs_ok,vane_hs_failed" >"$RAW"
if [ -n "$WARMUP" ] && [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
  for t in $TARGETS; do
    taskset -c "$LOADGEN_CPUS" timeout -k 5 60 wrk -t1 -c"$CONNS" -d"$WARMUP" "https://127.0.0.1:${PORT_OF[$t]}/" >/dev/null 2>&1 || true
  done
fi
total=$((REPS * $(wc -w <<<"$ROWS") * $(wc -w <<<"$TARGETS"))); n=0
for rep in $(seq "$REPS"); do
  order=$TARGETS
  [ $((rep % 2)) = 0 ] && order=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')   # alternate who goes first
  for row in $ROWS; do
    for t in $order; do
      n=$((n + 1))
      pid=${PID_OF[$t]}
      kill -0 "$pid" 2>/dev/null || die "$t (pid $pid) is gone; see its log in $TMP/logs (kept until exit)"
      hs0="0 0"; [ "$t" = vane ] && hs0=$(vane_handshakes)
      c0=$(cpu_ticks_total "$pid")
      res=$(run_row "$row" "$t" || true)
      c1=$(cpu_ticks_total "$pid")
      rss=$(rss_kb "$pid")
      hs1="0 0"; [ "$t" = vane ] && hs1=$(vane_handshakes)
      read -r ok0 bad0 <<<"$hs0"; read -r ok1 bad1 <<<"$hs1"
      if [ -z "$res" ]; then
        log "[$n/$total] rep$rep $row $t: load generator FAILED (see logs)"
        echo "$rep,$row,$t,0,0,NA,NA,NA,0,NA,$rss,$((ok1 - ok0)),$((bad1 - bad0))" >>"$RAW"
        continue
      fi
      read -r rate cnt p50 p99 errs <<<"$res"
      cpu_ms=$(( (c1 - c0) * 1000 / CLK_TCK ))
      cpu_req=$(awk -v ms="$cpu_ms" -v r="$cnt" 'BEGIN { printf "%.1f", (r > 0 ? ms * 1000 / r : 0) }')
      echo "$rep,$row,$t,$rate,$cnt,$p50,$p99,$errs,$cpu_ms,$cpu_req,$rss,$((ok1 - ok0)),$((bad1 - bad0))" >>"$RAW"
      extra=""; [ "$t" = vane ] && extra=" vane handshakes ok/failed=$((ok1 - ok0))/$((bad1 - bad0))"
      log "$(printf '[%d/%d] rep%d %-18s %-5s %9.0f/s p50=%sus p99=%sus err=%s cpu=%sus/req rss=%sKB%s' \
        "$n" "$total" "$rep" "$row" "$t" "$rate" "$p50" "$p99" "$errs" "$cpu_req" "$rss" "$extra")"
      sleep 1   # let closed connections settle between runs
    done
  done
done
[ -s "$TMP/alpn-warnings" ] && while read -r w; do note "- WARNING: $w"; done <"$TMP/alpn-warnings"
for t in $TARGETS; do
  if [ "$t" = vane ]; then f="$TMP/logs/vane-proxy.log"; else f="$NG/error.log"; fi
  if [ -s "$f" ]; then   # line count and the most frequent messages (colours and timestamps stripped)
    note "- $t log: $(wc -l <"$f") lines; most frequent: $(sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9TZ:.\/ -]+//' "$f" |
      sort | uniq -c | sort -rn | head -3 | sed -E 's/^ +//' | tr '\n' '|' | cut -c1-700)"
  fi
done

# ----------------------------------------------------------------------------- 7. table
python3 - "$RAW" "$TMP/meta.md" "$NOTES" "$TARGETS" <<'PY' | tee "$OUT"
import csv, statistics as st, sys
raw, meta, notes, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
rows = list(csv.DictReader(open(raw)))
print(open(meta).read().rstrip())
print()
print("Checks before the runs:")
print(open(notes).read().rstrip())
print()
def med(rs, f):
    v = [float(r[f]) for r in rs if r[f] not in ("NA", "")]
    return st.median(v) if v else None
def us(v): return "-" if v is None else (f"{v/1000:.2f}ms" if v >= 1000 else f"{v:.0f}us")
unit = {"handshakes": "handshakes/s (full)", "handshakes-resumed": "conns/s (resumed TLS)",
        "keepalive-h1": "req/s", "h2": "req/s"}
order = []
for r in rows:
    if r["row"] not in order: order.append(r["row"])
print("| row | target | rate (median) | unit | spread min..max | p50 | p99 | CPU us/req | RSS MB | vane/nginx | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row in order:
    base = [r for r in rows if r["row"] == row and r["target"] == "nginx"]
    b = med(base, "rate") if base else None
    for t in targets:
        rs = [r for r in rows if r["row"] == row and r["target"] == t]
        if not rs: continue
        rate = med(rs, "rate") or 0.0
        lo, hi = min(float(r["rate"]) for r in rs), max(float(r["rate"]) for r in rs)
        ratio = f"{rate / b:.2f}" if b and t != "nginx" else ("1.00" if t == "nginx" else "-")
        cpu = med(rs, "cpu_us_per_req"); rss = med(rs, "rss_kb")
        errs = sum(int(r["errors"]) for r in rs if r["errors"] not in ("NA", ""))
        failed = sum(1 for r in rs if r["errors"] == "NA")
        err = f"{errs}" + (f" ({failed} runs failed)" if failed else "")
        print(f"| {row} | {t} | {rate:,.0f} | {unit.get(row, '')} | {lo:,.0f}..{hi:,.0f} | {us(med(rs, 'p50_us'))} | "
              f"{us(med(rs, 'p99_us'))} | {'-' if cpu is None else f'{cpu:.1f}'} | "
              f"{'-' if rss is None else f'{rss/1024:.1f}'} | {ratio} | {err} |")
hs = [r for r in rows if r["target"] == "vane"]
if hs:
    per = {}
    for r in hs:
        a = per.setdefault(r["row"], [0, 0]); a[0] += int(r["vane_hs_ok"]); a[1] += int(r["vane_hs_failed"])
    print()
    print("Vane /metrics `vane_tls_handshakes_total` over the runs (ok/failed, summed over reps): "
          + "; ".join(f"{k} {v[0]}/{v[1]}" for k, v in per.items()))
print()
print("Medians over reps. CPU us/req = proxy utime+stime over the run / requests (handshakes rows: per "
      "connection); RSS = VmRSS of the proxy's process tree after the run (nginx: master + worker). "
      "p50/p99: ab = whole request including connect and handshake (ms resolution); wrk = request "
      "written to response read; h2load = per-request duration.")
PY
cp "$RAW" "${OUT%.md}.csv"
log "table written to $OUT (raw rows: ${OUT%.md}.csv)"
