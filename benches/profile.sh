#!/usr/bin/env bash
# profile.sh: where a Vane node spends its CPU under the peer-bench load (HTTP/1.1,
# keep-alive, 64-byte responses, 50 connections). Runs `benches/vane-sut.sh` (real control
# plane and node) in front of two benches/backend (built on first use; BACKEND_BIN
# overrides), loads it with wrk for DURATION, samples
# the node with `perf record -e cpu-clock` and prints the hottest symbols, then the same
# grouped by crate. No hardware counters are needed (cpu-clock is a software event).
#
#   benches/profile.sh            # VANE=target/release/vane, DURATION=15s, TOP=40
#   H2=1 benches/profile.sh       # h2c instead: h2load -c50 -m10 (apt-get install -y nghttp2-client)
#
# Loopback only; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_NAME=profile
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"   # start_bg, stop_on_exit, wait_up
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
export VANE=${VANE:-${CARGO_TARGET_DIR:-$REPO/target}/release/vane}
DURATION=${DURATION:-15s}
TOP=${TOP:-40}
PORT=18600 BACKENDS=127.0.0.1:18601,127.0.0.1:18602
for tool in perf wrk taskset curl; do command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y linux-perf wrk)" >&2; exit 1; }; done
[ -x "$VANE" ] || (cd "$REPO" && cargo build --release --locked -p vane)
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || exit 1

TMP=$(mktemp -d /tmp/vane-profile.XXXXXX)
stop_on_exit

start_bg 0 "$TMP/b1.log" "$BACKEND_BIN" 18601 1
start_bg 0 "$TMP/b2.log" "$BACKEND_BIN" 18602 1
PB_LISTEN=127.0.0.1:$PORT PB_BACKENDS=$BACKENDS VANE_BENCH_CP=127.0.0.1:18603 VANE_BENCH_ADMIN=127.0.0.1:18604 \
  start_bg 1 "$TMP/sut.log" "$HERE/vane-sut.sh"
wait_up "$PORT" || true   # the check below says what is missing
NODE=$(pgrep -f -- "--control-plane http://127.0.0.1:18603 --node-id" | head -1)
[ -n "$NODE" ] || { echo "the node did not start" >&2; cat "$TMP/sut.log" >&2; exit 1; }

load() {
  if [ "${H2:-0}" = 1 ]; then taskset -c 0 h2load -c50 -m10 -D "${1%s}" "http://127.0.0.1:$PORT/"
  else taskset -c 0 wrk -t1 -c50 -d"$1" "http://127.0.0.1:$PORT/"; fi
}
load 2s >/dev/null   # warm-up
load "$DURATION" >"$TMP/wrk.txt" &
WRK=$!
perf record -q -e cpu-clock -F 2999 -p "$NODE" -o "$TMP/perf.data" -- sleep "${DURATION%s}" 2>/dev/null
wait "$WRK"
cp "$TMP/perf.data" "${KEEP:-/tmp/vane-profile.data}"
grep -E "Requests/sec|Latency|finished in|requests:" "$TMP/wrk.txt"
echo
echo "## hottest symbols (self time, % of the node's samples)"
perf report -i "$TMP/perf.data" --stdio --no-children --sort symbol 2>/dev/null | grep -E '^ +[0-9.]+%' \
  | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | head -"$TOP" || true
echo
echo "## by crate / library (self time)"
perf report -i "$TMP/perf.data" --stdio --no-children --sort symbol 2>/dev/null | grep -E '^ +[0-9.]+%' | python3 -c '
import re, sys, collections
groups = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+)%\s+\[(.)\]\s+(.*)", line)
    if not m: continue
    pct, where, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    if where == "k": key = "kernel"
    else:
        sym = re.sub(r"^<", "", sym)
        crate = re.split(r"::|<| ", sym)[0] or "?"
        key = crate if not crate.startswith("0x") else "unresolved"
    groups[key] += pct
for k, v in groups.most_common(25):
    print(f"{v:6.2f}%  {k}")
'
