#!/usr/bin/env bash
# =============================================================================
# peer-bench.sh: Vane against nginx and HAProxy on loopback, the harness behind the peer
# tables of BENCHMARKS.md. Starts two benchmark backends (benches/backend, built on first
# use), nginx (1 worker) and HAProxy (1 thread) with the configs of benches/peer-configs.sh,
# and one Vane per build (benches/vane-sut.sh: a real control plane and node, configured by
# `vane apply`), runs the same bounded load matrix against every target, interleaved
# within each repetition, and prints a markdown table of medians with ratios to nginx.
#
#   benches/peer-bench.sh                     # the default matrix, about 6 minutes
#   benches/peer-bench.sh --quick             # smoke run: 1 rep of 3 s, GET / and h2c /
#   VANES="before=/tmp/old/vane after=target/release/vane" benches/peer-bench.sh
#   ROWS="get:/ get:/big" CONNS="50 256" REPS=3 DURATION=10s TARGETS="direct nginx haproxy" \
#     benches/peer-bench.sh
#
# Rows (ROWS, default "get:/ get:/big post:512 post:16384 h2:/"):
#   get:PATH    wrk -t1 -c CONNS --latency, HTTP/1.1 keep-alive: GET / (64 B) or /big (16 KiB)
#   post:BYTES  the same with POST / and a BYTES-byte body, which the backend reads to the end
#               before it answers (so a proxy can keep its upstream connection)
#   h2:PATH     h2load -t1 -c CONNS -m10, h2c with prior knowledge (p99 from --log-file)
# Targets (TARGETS, default "nginx haproxy"; every VANES build is added after them):
#   direct      the first backend itself, no proxy (wrk and the backend share core 0)
#   nginx       nginx, 1 worker, upstream keep-alive (nginx-log: the same with an access log)
#   haproxy     HAProxy, nbthread 1, http-reuse safe
#   VANES       "NAME=/path/to/vane ..." [vane=${CARGO_TARGET_DIR:-target}/release/vane, built
#               with `cargo build --release -p vane` when missing; VANES= runs no Vane]. A NAME
#               ending in -log runs that build with a JSON access log to a file. A build's
#               node is its `vane-node` when one sits next to its `vane`.
# Other knobs [defaults]: CONNS ["50"], REPS [3], DURATION [6s], WARMUP [2s] (unrecorded,
#   before each row and target in the first rep), PROXY_CPUS [1], LOAD_CPUS [0],
#   BACKEND_THREADS [1], OUT [/tmp/vane-peer-bench.md], BACKEND_BIN (see benches/backend.sh),
#   NGINX_CLIENT_BODY_BUFFER [nginx's default] (see benches/peer-configs.sh),
#   RETRY_BUSY [off]: a percentage; a run during which other processes used more of the
#   proxy core than that is done again after 20 s (3 times at most; the last one is kept).
#
# Layout: every proxy alone on core 1 (nginx's master and worker, HAProxy, Vane's node);
# wrk or h2load, both backends and Vane's control planes on core 0, as benches/ab.sh.
# Measured per run: req/s, p99, the proxy's CPU time (utime + stime over its process tree)
# per request, its RSS (VmRSS over the tree) idle and sampled mid-run, errors (socket
# errors and non-2xx), and the upstream connections the backends accepted per 1,000
# requests (their /stats): about 0 for a proxy that keeps its upstream connections.
#
# Needs: apt-get install -y nginx haproxy wrk nghttp2-client curl python3, and cargo (the
# backend, and Vane when no binary is given). Loopback only (ports 18301-18399, checked
# free first); every load run is bounded by its duration and by `timeout`, every wait loop
# by a count; everything started here is stopped on exit, and the temp dir removed.
# =============================================================================
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ROWS=${ROWS:-"get:/ get:/big post:512 post:16384 h2:/"}
TARGETS=${TARGETS:-"nginx haproxy"}
CONNS=${CONNS:-50}
REPS=${REPS:-3}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-2s}
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
BACKEND_THREADS=${BACKEND_THREADS:-1}
OUT=${OUT:-/tmp/vane-peer-bench.md}
RETRY_BUSY=${RETRY_BUSY:-}
CARGO_TARGET=${CARGO_TARGET_DIR:-$REPO/target}
DEFAULT_VANE=$CARGO_TARGET/release/vane
VANES=${VANES-vane=$DEFAULT_VANE}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) REPS=1; DURATION=3s; WARMUP=1s; ROWS="get:/ h2:/"; shift ;;
    -h|--help) sed -n '3,/^# =====/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
SECS=${DURATION%s}
WARM=${WARMUP%s}
case "$SECS" in ''|*[!0-9]*|0) echo "DURATION must be whole seconds, at least 1 (e.g. 6s)" >&2; exit 2 ;; esac
case "$WARM" in ''|*[!0-9]*) echo "WARMUP must be whole seconds (0s for none)" >&2; exit 2 ;; esac
case "$REPS" in ''|*[!0-9]*|0) echo "REPS must be a positive integer" >&2; exit 2 ;; esac
RUN_LIMIT=$((SECS + 30))   # hard cap (timeout) on every load-generator run

BENCH_NAME=peer-bench
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"   # log, die, ports_free, start_bg, stop_on_exit, wait_up, cpu_ticks, rss_kb

needs="wrk curl taskset setsid python3 ss"
for t in $TARGETS; do case "$t" in nginx*) needs="$needs nginx" ;; haproxy) needs="$needs haproxy" ;; esac; done
case " $ROWS " in *" h2:"*) needs="$needs h2load" ;; esac
for tool in $needs; do
  command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y nginx haproxy wrk nghttp2-client curl python3)"
done
for row in $ROWS; do
  case "$row" in get:/*|h2:/*) ;; post:[0-9]*) ;; *) die "unknown row $row (get:PATH, post:BYTES, h2:PATH)" ;; esac
done
for t in $TARGETS; do
  case "$t" in direct|nginx|nginx-log|haproxy) ;; *) die "unknown target $t (direct, nginx, nginx-log, haproxy; Vane builds go in VANES)" ;; esac
done

# ----------------------------------------------------------------------------- builds
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || die "no benchmark backend"
if [ "$VANES" = "vane=$DEFAULT_VANE" ] && [ ! -x "$DEFAULT_VANE" ]; then
  log "building Vane (cargo build --release -p vane; several minutes on 2 cores) ..."
  (cd "$REPO" && cargo build --release --locked -p vane) || die "cargo build failed"
fi
VANE_NAMES=()
declare -A VANE_BIN=()
for v in $VANES; do
  name=${v%%=*} bin=${v#*=}
  case "$name" in ''|direct|nginx|nginx-log|haproxy|*[!a-zA-Z0-9_-]*) die "bad Vane name '$name' in VANES" ;; esac
  [ -x "$bin" ] || die "$name: $bin is not an executable"
  VANE_NAMES+=("$name"); VANE_BIN[$name]=$bin
done
[ ${#VANE_NAMES[@]} -le 7 ] || die "at most 7 Vane builds"

# ----------------------------------------------------------------------------- ports
UP1=18301 UP2=18302
# shellcheck disable=SC2046
ports_free $UP1 $UP2 18310 18311 18312 18313 18315 18316 $(seq 18320 18394)

TMP=$(mktemp -d /tmp/vane-peer-bench.XXXXXX)
chmod 755 "$TMP"   # nginx's workers (www-data) write request bodies under it when they must
mkdir -p "$TMP/logs" "$TMP/runs"

# ----------------------------------------------------------------------------- processes
stop_on_exit
core_user() {  # user + nice ticks of the proxy core so far (NA unless PROXY_CPUS is one core)
  case "$PROXY_CPUS" in ''|*[!0-9]*) echo NA; return 0 ;; esac
  awk -v c="cpu$PROXY_CPUS" '$1 == c { print $2 + $3 }' /proc/stat
}
upstream_conns() {  # connections both backends have accepted since they started (NA: no /stats)
  local t=0 p v
  for p in $UP1 $UP2; do
    v=$(curl -s --max-time 2 "http://127.0.0.1:$p/stats" | sed -n 's/.*"connections":\([0-9]*\).*/\1/p')
    [ -n "$v" ] || { echo NA; return 0; }
    t=$((t + v))
  done
  echo "$t"
}

declare -A PORT_OF=() H2PORT_OF=() PID_OF=()
start_bg "$LOAD_CPUS" "$TMP/logs/backend1.log" "$BACKEND_BIN" "$UP1" "$BACKEND_THREADS"; BACKEND1_PID=$LAST_PID
start_bg "$LOAD_CPUS" "$TMP/logs/backend2.log" "$BACKEND_BIN" "$UP2" "$BACKEND_THREADS"
{ wait_up $UP1 && wait_up $UP2; } || die "the backends did not come up: $(cat "$TMP"/logs/backend*.log)"

# shellcheck source=benches/peer-configs.sh
. "$HERE/peer-configs.sh"
for t in $TARGETS; do
  case "$t" in
    direct) PORT_OF[$t]=$UP1; H2PORT_OF[$t]=$UP1; PID_OF[$t]=$BACKEND1_PID ;;
    nginx|nginx-log)
      if [ "$t" = nginx ]; then port=18310; alog=off; else port=18312; alog=on; fi
      write_nginx_conf "$TMP/$t" "$port" $((port + 1)) "127.0.0.1:$UP1" "127.0.0.1:$UP2" on "$alog"
      nginx -t -q -p "$TMP/$t" -c "$TMP/$t/nginx.conf" -e "$TMP/$t/err.log" || die "nginx refused its config"
      start_bg "$PROXY_CPUS" "$TMP/logs/$t.log" nginx -p "$TMP/$t" -c "$TMP/$t/nginx.conf" -e "$TMP/$t/err.log"
      PORT_OF[$t]=$port; H2PORT_OF[$t]=$((port + 1)); PID_OF[$t]=$LAST_PID ;;
    haproxy)
      write_haproxy_cfg "$TMP/haproxy.cfg" 18315 18316 "127.0.0.1:$UP1" "127.0.0.1:$UP2"
      haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy refused its config"
      start_bg "$PROXY_CPUS" "$TMP/logs/haproxy.log" haproxy -db -f "$TMP/haproxy.cfg"
      PORT_OF[$t]=18315; H2PORT_OF[$t]=18316; PID_OF[$t]=$LAST_PID ;;
  esac
done
i=0
for name in "${VANE_NAMES[@]}"; do
  port=$((18320 + i * 10)); cp=127.0.0.1:$((port + 3))
  alog=""; case "$name" in *-log) alog=$TMP/access-$name.log ;; esac
  VANE=${VANE_BIN[$name]} PB_LISTEN=127.0.0.1:$port PB_BACKENDS=127.0.0.1:$UP1,127.0.0.1:$UP2 \
    VANE_BENCH_CP=$cp VANE_BENCH_ADMIN=127.0.0.1:$((port + 4)) VANE_BENCH_CP_CPUS=$LOAD_CPUS \
    VANE_ACCESS_LOG=$alog start_bg "$PROXY_CPUS" "$TMP/logs/$name.log" "$HERE/vane-sut.sh"
  PORT_OF[$name]=$port; H2PORT_OF[$name]=$port
  TARGETS="$TARGETS $name"
  i=$((i + 1))
done
for t in $TARGETS; do
  wait_up "${PORT_OF[$t]}" 300 || die "$t does not answer on :${PORT_OF[$t]}: $(tail -5 "$TMP/logs/$t.log" 2>/dev/null)"
done
for name in "${VANE_NAMES[@]}"; do   # measure the node: the process serving the listener
  PID_OF[$name]=$(pgrep -f -- "--control-plane http://127.0.0.1:$((PORT_OF[$name] + 3)) --node-id" | head -1)
  [ -n "${PID_OF[$name]}" ] || die "$name: no node process found"
done

# ----------------------------------------------------------------------------- checks
NOTES=$TMP/notes.md
: >"$NOTES"
note() { echo "$*" >>"$NOTES"; log "$*"; }
head -c 16384 /dev/zero | tr '\0' x >"$TMP/body-16k"
for t in $TARGETS; do
  port=${PORT_OF[$t]}
  seen=$(for _ in 1 2 3 4 5 6; do { curl -s --max-time 2 "http://127.0.0.1:$port/" | awk 'match($0, /[0-9][0-9][0-9][0-9][0-9]/) { print substr($0, RSTART, 5) }'; } || true; done | sort -u | paste -sd' ')
  echoed=$(curl -s -o /dev/null -D - --max-time 5 --data-binary @"$TMP/body-16k" "http://127.0.0.1:$port/" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-body-bytes" {print $2}' || true)
  h2=$(curl -s -o /dev/null -w '%{http_version} %{http_code}' --max-time 5 --http2-prior-knowledge \
    "http://127.0.0.1:${H2PORT_OF[$t]}/" || true)
  note "- $t (:$port, h2c :${H2PORT_OF[$t]}): GET / answered by backends ${seen:-none}; a 16 KiB POST reached a backend with ${echoed:-?} body bytes; h2c GET / -> HTTP/$h2"
done

# ----------------------------------------------------------------------------- load
lua_for() {  # lua_for ROW FILE: a wrk script (the body, if any, and one machine-readable line)
  local row=$1 f=$2
  : >"$f"
  case "$row" in
    post:*) printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' "${row#post:}" >>"$f" ;;
  esac
  cat >>"$f" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("PB_RESULT %.1f %d %d %d\n", summary.requests / (summary.duration / 1e6),
    summary.requests, latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
EOF
}
url_for() {  # url_for ROW TARGET
  case "$1" in
    get:*) echo "http://127.0.0.1:${PORT_OF[$2]}${1#get:}" ;;
    post:*) echo "http://127.0.0.1:${PORT_OF[$2]}/" ;;
    h2:*) echo "http://127.0.0.1:${H2PORT_OF[$2]}${1#h2:}" ;;
  esac
}
load() {  # load ROW TARGET CONNS SECS [LATENCY]: prints "rate count p99_us errors"
  local row=$1 url out rate n bad p99
  url=$(url_for "$1" "$2")
  case "$row" in
    h2:*)
      rm -f "$TMP/runs/h2.log"
      out=$(taskset -c "$LOAD_CPUS" timeout -k 5 "$RUN_LIMIT" h2load -t1 -c"$3" -m10 -D "$4" \
        ${5:+--log-file="$TMP/runs/h2.log"} "$url" 2>&1 || true)
      echo "$out" >>"$TMP/logs/h2load.log"
      rate=$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
      n=$(echo "$out" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p')
      bad=$(echo "$out" | awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^(failed|errored|timeout)/) s += $i }
                               /^status codes:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^[345]xx/) s += $i } END { print s + 0 }')
      p99=NA
      if [ -s "$TMP/runs/h2.log" ]; then
        p99=$(python3 -c '
import sys
d = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.count("\t") >= 2)
print(d[min(len(d) - 1, int(0.99 * len(d)))] if d else "NA")' "$TMP/runs/h2.log")
      fi
      [ -n "$rate" ] && echo "$rate ${n:-0} $p99 $bad" ;;
    *)
      lua_for "$row" "$TMP/runs/wrk.lua"
      out=$(taskset -c "$LOAD_CPUS" timeout -k 5 "$RUN_LIMIT" wrk -t1 -c"$3" -d"$4s" --latency \
        -s "$TMP/runs/wrk.lua" "$url" 2>&1 || true)
      echo "$out" >>"$TMP/logs/wrk.log"
      echo "$out" | sed -n 's/^PB_RESULT //p' | tail -1 ;;
  esac
}

# measure ROW TARGET CONNS: one recorded run. Sets RUN_LINE (the CSV fields from rate to
# upstream_conns), RUN_LOG (the same for people) and RUN_BUSY (the share of the proxy core, in
# %, that processes other than the proxy used during the run: about 0 on an idle machine).
measure() {
  local row=$1 t=$2 c=$3 pid=${PID_OF[$2]} u0 u1 pu0 pk0 pu1 pk1 w0 w1 t0 t1 res sampler rss up
  local rate cnt p99 errs cpu
  u0=$(upstream_conns); read -r pu0 pk0 < <(cpu_ticks "$pid"); w0=$(core_user); t0=$(date +%s%N)
  ( sleep "$(awk -v s="$SECS" 'BEGIN { print s / 2 }')"; rss_kb "$pid" >"$TMP/runs/rss" ) &
  sampler=$!
  res=$(load "$row" "$t" "$c" "$SECS" latency || true)
  wait "$sampler" 2>/dev/null || true
  t1=$(date +%s%N); w1=$(core_user); read -r pu1 pk1 < <(cpu_ticks "$pid"); u1=$(upstream_conns)
  up=NA; [ "$u0" != NA ] && [ "$u1" != NA ] && up=$((u1 - u0))
  RUN_BUSY=NA   # direct runs on the load core: nothing to tell there
  if [ "$w0" != NA ] && [ "$t" != direct ]; then
    RUN_BUSY=$(awk -v w=$((w1 - w0 - (pu1 - pu0))) -v ns=$((t1 - t0)) -v hz="$CLK_TCK" \
      'BEGIN { b = w * 1e9 / hz / ns * 100; printf "%.1f", (b > 0 ? b : 0) }')
  fi
  rss=$(cat "$TMP/runs/rss" 2>/dev/null || echo 0)
  for f in "$TMP/nginx-log/access.log" "$TMP"/access-*.log; do [ -f "$f" ] && : >"$f"; done   # keep /tmp small
  if [ -z "$res" ]; then
    RUN_LINE="0,0,NA,NA,NA,$rss,$up"; RUN_LOG="the load generator FAILED (see $TMP/logs, kept until exit)"
    return 0
  fi
  read -r rate cnt p99 errs <<<"$res"
  cpu=$(awk -v t=$((pu1 - pu0 + pk1 - pk0)) -v hz="$CLK_TCK" -v r="$cnt" 'BEGIN { printf "%.2f", (r > 0 ? t * 1e6 / hz / r : 0) }')
  RUN_LINE="$rate,$cnt,$p99,$errs,$cpu,$rss,$up"
  RUN_LOG=$(printf '%9.0f req/s p99 %sus cpu %sus/req rss %sKB upstream conns %s errors %s' \
    "$rate" "$p99" "$cpu" "$rss" "$up" "$errs")
}

RAW=$TMP/raw.csv
echo "rep,row,conns,target,rate,count,p99_us,errors,cpu_us_per_req,rss_kb,upstream_conns,others_busy_pct" >"$RAW"
declare -A IDLE_KB=()
for t in $TARGETS; do IDLE_KB[$t]=$(rss_kb "${PID_OF[$t]}"); done
{
  echo "# peer-bench $(date -u +%FT%TZ), vane commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(h2load --version 2>/dev/null | head -1)"
  for name in "${VANE_NAMES[@]}"; do echo "- $name: ${VANE_BIN[$name]} ($("${VANE_BIN[$name]}" --version 2>/dev/null | head -1))"; done
  echo "- nginx client_body_buffer_size: ${NGINX_CLIENT_BODY_BUFFER:-default (16k)}"
  echo "- rows: $ROWS; conns: $CONNS; $REPS reps of ${SECS}s, interleaved; warm-up ${WARM}s per row and target in rep 1"
  echo "- proxies on cpu $PROXY_CPUS; load generator, backends ($(basename "$BACKEND_BIN"), $BACKEND_THREADS thread) and Vane's control planes on cpu $LOAD_CPUS; nproc=$(nproc); $(uname -sr); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$TMP/meta.md"

total=$((REPS * $(wc -w <<<"$ROWS") * $(wc -w <<<"$CONNS") * $(wc -w <<<"$TARGETS"))); n=0
log "$total runs of ${SECS}s"
for rep in $(seq "$REPS"); do
  order=$TARGETS
  [ $((rep % 2)) = 0 ] && order=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')   # alternate who goes first
  for row in $ROWS; do
    for c in $CONNS; do
      for t in $order; do
        n=$((n + 1))
        pid=${PID_OF[$t]}
        kill -0 "$pid" 2>/dev/null || die "$t (pid $pid) is gone: $(tail -5 "$TMP/logs/$t.log" 2>/dev/null)"
        # A warm-up whose load generator reports nothing (h2load given too short a time for
        # its connections) is no reason to stop.
        if [ "$rep" = 1 ] && [ "$WARM" -gt 0 ]; then load "$row" "$t" "$c" "$WARM" >/dev/null || true; fi
        for attempt in 1 2 3 4; do
          measure "$row" "$t" "$c"
          # Another process busy on the proxy core (a build on a shared machine) takes CPU
          # from the proxy under test: with RETRY_BUSY, such a run is done again, 3 times at most.
          if [ -z "$RETRY_BUSY" ] || [ "$attempt" = 4 ] || [ "$RUN_BUSY" = NA ] ||
            awk -v b="$RUN_BUSY" -v m="$RETRY_BUSY" 'BEGIN { exit (b > m) }'; then break; fi
          log "[$n/$total] rep$rep $row c=$c $t: other processes took ${RUN_BUSY}% of core $PROXY_CPUS; again in 20 s"
          sleep 20
        done
        echo "$rep,$row,$c,$t,$RUN_LINE,$RUN_BUSY" >>"$RAW"
        log "[$n/$total] rep$rep $(printf '%-10s c=%-3s %-10s' "$row" "$c" "$t") $RUN_LOG others on core $PROXY_CPUS ${RUN_BUSY}%"
        sleep 1   # let closed connections settle between runs
      done
    done
  done
done
for t in nginx nginx-log; do
  f="$TMP/$t/err.log"
  [ -s "$f" ] || continue
  note "- $t error log: $(wc -l <"$f") lines, $(grep -c 'buffered to a temporary file' "$f" || true) of them \"a client request body is buffered to a temporary file\" (NGINX_CLIENT_BODY_BUFFER=64k keeps 16 KiB bodies in memory); first: $(head -1 "$f" | cut -c1-160)"
done
for t in $TARGETS; do echo "$t,${IDLE_KB[$t]}"; done >"$TMP/idle.csv"
echo "- load average at the end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/meta.md"

# ----------------------------------------------------------------------------- table
python3 - "$RAW" "$TMP/idle.csv" "$TMP/meta.md" "$NOTES" "$TARGETS" "$RETRY_BUSY" <<'PY' | tee "$OUT"
import csv, statistics as st, sys
raw, idle_csv, meta, notes, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()
retry_busy = float(sys.argv[6]) if sys.argv[6] else None
rows = list(csv.DictReader(open(raw)))
idle = dict(line.strip().split(",") for line in open(idle_csv) if line.strip())
print(open(meta).read().rstrip())
print()
print("Checks before the runs:")
print(open(notes).read().rstrip())
print()
def med(rs, f):
    v = [float(r[f]) for r in rs if r[f] not in ("NA", "")]
    return st.median(v) if v else None
def us(v): return "-" if v is None else (f"{v / 1000:.2f}ms" if v >= 1000 else f"{v:.0f}us")
def label(row):
    kind, arg = row.split(":", 1)
    if kind == "get": return f"GET {arg}" + {"/": " (64 B)", "/big": " (16 KiB)"}.get(arg, "")
    if kind == "post": n = int(arg); return "POST " + (f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B")
    return f"h2c GET {arg}"
keys = []
for r in rows:
    if (r["row"], r["conns"]) not in keys: keys.append((r["row"], r["conns"]))
print("| load | conns | target | req/s (median) | spread min..max | p99 | CPU us/req | RSS idle/load MB | upstream conns per 1k req | vs nginx | others on proxy core | runs | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for row, c in keys:
    at = lambda t: [r for r in rows if r["row"] == row and r["conns"] == c and r["target"] == t]
    # A run whose load generator failed has no figures; with RETRY_BUSY, a run that stayed
    # contended after its retries is left out too (the "runs" column counts what is left).
    ok = lambda rs: [r for r in rs if r["errors"] != "NA" and not (
        retry_busy and r["others_busy_pct"] not in ("NA", "") and float(r["others_busy_pct"]) > retry_busy)]
    nginx_by_rep = {r["rep"]: float(r["rate"]) for r in ok(at("nginx"))}
    for t in targets:
        rs = ok(at(t))
        failed = sum(1 for r in at(t) if r["errors"] == "NA")
        if not rs: continue
        rate = med(rs, "rate") or 0.0
        lo, hi = min(float(r["rate"]) for r in rs), max(float(r["rate"]) for r in rs)
        count = sum(float(r["count"]) for r in rs)
        known = [r for r in rs if r["upstream_conns"] != "NA"]   # NA: a backend without /stats
        per_k = (sum(float(r["upstream_conns"]) for r in known) * 1000 / sum(float(r["count"]) for r in known)
                 if known and count else None)
        # Paired: each run against nginx's run of the same row in the same rep (minutes apart
        # at most), then the median of those ratios: steadier than a ratio of medians when
        # the machine's load changes during the reps.
        ratios = [float(r["rate"]) / nginx_by_rep[r["rep"]] for r in rs if nginx_by_rep.get(r["rep"])]
        ratio = f"{st.median(ratios):.2f}" if ratios else "-"
        busy = med(rs, "others_busy_pct")
        errs = str(sum(int(r["errors"]) for r in rs)) + (f" ({failed} runs failed)" if failed else "")
        cpu, rss = med(rs, "cpu_us_per_req"), med(rs, "rss_kb")
        print(f"| {label(row)} | {c} | {t} | {rate:,.0f} | {lo:,.0f}..{hi:,.0f} | {us(med(rs, 'p99_us'))} | "
              f"{'-' if cpu is None else f'{cpu:.1f}'} | {int(idle.get(t, 0)) / 1024:.1f}/{'-' if rss is None else f'{rss / 1024:.1f}'} | "
              f"{'-' if per_k is None else f'{per_k:.2f}'} | {ratio} | {'-' if busy is None else f'{busy:.0f}%'} | "
              f"{len(rs)}/{len(at(t))} | {errs} |")
print()
print("Medians over reps. CPU us/req: the proxy's utime + stime over the run / requests (nginx: master + worker; "
      "Vane: the node, its control plane is on the load core); RSS: VmRSS over the same processes, idle before "
      "the runs and sampled mid-run; upstream conns: connections the two backends accepted during the runs per "
      "1,000 requests (for direct: the client's own). p99: wrk's, or h2load's per-request times. vs nginx: the median "
      "over reps of each run's rate over nginx's in the same rep. Others on proxy core: the share of the proxy's core "
      "that other processes used during the run (user time), about 0% on an otherwise idle machine; runs: the runs "
      "counted (with RETRY_BUSY, those still above it after their retries are not) of those made.")
PY
cp "$RAW" "${OUT%.md}.csv"
log "table written to $OUT (raw rows: ${OUT%.md}.csv)"
