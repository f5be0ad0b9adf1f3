#!/usr/bin/env bash
# ab.sh: interleaved A/B of Vane builds against nginx, with the proxy's CPU split into user
# and kernel time per request: how BENCHMARKS.md compares one change with the build before
# it. Each build runs as benches/vane-sut.sh runs it (real control plane and node); the
# node alone is on core 1, wrk, both peer-bench backends and the control planes on core 0.
#
#   VANES="before=/tmp/vane-old after=target/release/vane" benches/ab.sh
#   P=/big CONNS="50 256" REPS="1 2 3 4 5" D=6 VANES=... benches/ab.sh
#   POST=512 VANES=... benches/ab.sh     # POST requests with a 512-byte body (a wrk script)
#   H2=1 VANES=... benches/ab.sh          # h2c: h2load -c$CONNS -m10 (apt-get install -y nghttp2-client)
#
# HAProxy (1 thread, the peer-bench config) runs beside nginx on core 1 when it is installed.
# Prints one line per run and, at the end, the medians per target. A build's node runs as
# `vane-node` when one sits next to its `vane` binary (VANE_NODE is not used here).
# Needs nginx and wrk (apt-get install -y nginx wrk); the backends are benches/backend
# (built on first use; BACKEND_BIN overrides, see benches/backend.sh), which read request
# bodies to the end. Loopback only; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_NAME=ab
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"   # start_bg, stop_on_exit, wait_up
D=${D:-6}
: "${VANES:?VANES=\"name=/path/to/vane ...\"}"
for tool in nginx wrk taskset curl python3 ${H2:+h2load}; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || exit 1
TMP=$(mktemp -d /tmp/vane-ab.XXXXXX)
# nginx's worker (www-data) writes request bodies over 16 KiB to files under it: without
# this it answered every such POST with a 500 (open() failed: permission denied).
chmod 755 "$TMP"
stop_on_exit

start_bg 0 /dev/null "$BACKEND_BIN" 18701 1
start_bg 0 /dev/null "$BACKEND_BIN" 18702 1
# shellcheck source=benches/peer-configs.sh
. "$HERE/peer-configs.sh"
write_nginx_conf "$TMP/ng" 18710 18711 127.0.0.1:18701 127.0.0.1:18702 on
start_bg 1 "$TMP/ng/out.log" nginx -p "$TMP/ng" -c "$TMP/ng/nginx.conf" -e "$TMP/ng/err.log"
wait_up 18710 || die "nothing on :18710"
# Targets are name:pid:port:h2port (Vane serves h2c on its HTTP/1.1 port).
TARGETS="nginx:$(pgrep -f 'nginx: worker' | head -1):18710:18711"
if command -v haproxy >/dev/null; then
  write_haproxy_cfg "$TMP/haproxy.cfg" 18715 18716 127.0.0.1:18701 127.0.0.1:18702
  start_bg 1 "$TMP/haproxy.log" haproxy -db -f "$TMP/haproxy.cfg"
  wait_up 18715 || die "nothing on :18715"
  TARGETS="$TARGETS haproxy:$(pgrep -f "haproxy -db -f $TMP/haproxy.cfg" | head -1):18715:18716"
fi
i=0
for v in $VANES; do
  name=${v%%=*} bin=${v#*=}
  port=$((18720 + i * 10))
  VANE=$bin PB_LISTEN=127.0.0.1:$port PB_BACKENDS=127.0.0.1:18701,127.0.0.1:18702 \
    VANE_BENCH_CP=127.0.0.1:$((port + 3)) VANE_BENCH_ADMIN=127.0.0.1:$((port + 4)) \
    start_bg 1 "$TMP/sut-$name.log" "$HERE/vane-sut.sh"
  wait_up "$port" || die "nothing on :$port"
  node=$(pgrep -f -- "--control-plane http://127.0.0.1:$((port + 3)) --node-id" | head -1)
  taskset -a -p -c 0 "$(pgrep -f -- "--listen 127.0.0.1:$((port + 3))" | head -1)" >/dev/null
  TARGETS="$TARGETS $name:$node:$port:$port"
  i=$((i + 1))
done
WRK_SCRIPT=()
if [ -n "${POST:-}" ]; then
  python3 -c "import sys; print('wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", %d)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"' % int(sys.argv[1]))" "$POST" >"$TMP/post.lua"
  WRK_SCRIPT=(-s "$TMP/post.lua")
fi
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
for rep in ${REPS:-1 2 3}; do
  for c in ${CONNS:-50}; do
    for t in $TARGETS; do
      IFS=: read -r name pid port h2port <<<"$t"
      if [ -n "${H2:-}" ]; then
        [ "$rep" = "${REPS%% *}" ] && taskset -c 0 h2load -c"$c" -m10 -D 2 "http://127.0.0.1:$h2port${P:-/}" >/dev/null
        read -r u0 s0 < <(cpu "$pid")
        taskset -c 0 h2load -c"$c" -m10 -D "$D" "http://127.0.0.1:$h2port${P:-/}" >"$TMP/h2load.txt" &
      else
        [ "$rep" = "${REPS%% *}" ] && taskset -c 0 wrk -t1 -c"$c" -d2s "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port${P:-/}" >/dev/null
        read -r u0 s0 < <(cpu "$pid")
        taskset -c 0 wrk -t1 -c"$c" -d"${D}s" --latency "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port${P:-/}" >"$TMP/wrk.txt" &
      fi
      w=$!
      sleep $((D / 2))
      kb=$(rss "$pid")
      [ "$name" = nginx ] && kb=$((kb + $(rss "$(cat "$TMP/ng/nginx.pid")")))
      wait "$w"
      read -r u1 s1 < <(cpu "$pid")
      if [ -n "${H2:-}" ]; then
        # h2load: "requests: N total, N started, N done, N succeeded, F failed, E errored, ..."
        reqs=$(awk '/^requests:/{print $8}' "$TMP/h2load.txt")
        rps=$(awk '/finished in/{print $4}' "$TMP/h2load.txt")
        p99=-
        errors=$(awk '/^requests:/{print $10 + $12}' "$TMP/h2load.txt")
      else
        reqs=$(awk '/requests in/{print $1}' "$TMP/wrk.txt")
        rps=$(awk '/Requests\/sec/{print $2}' "$TMP/wrk.txt")
        p99=$(awk '$1 == "99%" {print $2}' "$TMP/wrk.txt")
        # "Non-2xx or 3xx responses: N" and "Socket errors: connect N, read N, write N, timeout N"
        errors=$(awk '/^ *Non-2xx/ { e += $NF } /Socket errors/ { gsub(",", ""); e += $4 + $6 + $8 + $10 } END { print e + 0 }' "$TMP/wrk.txt")
      fi
      # utime/stime are in clock ticks (100 per second): ticks * 1e4 / requests = us/request.
      awk -v c="$c" -v rep="$rep" -v name="$name" -v rps="$rps" -v p99="$p99" -v r="$reqs" -v u=$((u1 - u0)) \
        -v s=$((s1 - s0)) -v kb="$kb" -v e="$errors" 'BEGIN {
          printf "c=%s rep%s %-10s %9.0f req/s p99 %s user %5.2f kernel %5.2f total %5.2f us/req rss %5.1f MB errors %s\n",
            c, rep, name, rps, p99, u * 1e4 / r, s * 1e4 / r, (u + s) * 1e4 / r, kb / 1024, e }' | tee -a "$TMP/lines"
    done
  done
done
echo
echo "medians:"
python3 - "$TMP/lines" <<'PY'
import re, statistics, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"c=(\d+) rep\d+ (\S+)\s+(\d+) req/s p99 (\S+) user\s+([\d.]+) kernel\s+([\d.]+) total\s+([\d.]+) us/req rss\s+([\d.]+) MB errors (\d+)", line)
    if m:
        runs[(m[1], m[2])].append(m)
for (c, name), ms in runs.items():
    med = lambda i: statistics.median(float(m[i]) for m in ms)
    print(f"c={c} {name:10s} {med(3):9.0f} req/s user {med(5):5.2f} kernel {med(6):5.2f} total {med(7):5.2f} us/req rss {med(8):5.1f} MB errors {sum(int(m[9]) for m in ms)} ({len(ms)} runs)")
PY
