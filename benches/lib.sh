# shellcheck shell=bash
# lib.sh: sourced by the benchmark scripts (peer-bench.sh, tls-bench.sh, ab.sh,
# instructions.sh, profile.sh, policy-bench.sh): what they share to start processes, stop
# them, wait for them and measure them. Sourced, not run.
#
#   BENCH_NAME=peer-bench                       # the prefix of log and die
#   . "$HERE/lib.sh"
#   ports_free 18301 18302                      # dies naming the first port in use
#   TMP=$(mktemp -d /tmp/x.XXXXXX); stop_on_exit   # on exit: stop what start_bg started, rm -rf $TMP
#   start_bg CPUS LOGFILE CMD...                # pinned to CPUS, in a session of its own (pid == pgid); LAST_PID
#   wait_up PORT [TRIES] / wait_http URL [CURL_ARGS...]   # until GET answers 200, bounded
#   cpu_ticks PID / cpu_ticks_total PID / rss_kb PID      # over the process tree, from /proc
#
# Every process start_bg started is stopped on exit, newest first: SIGTERM to its process
# group, SIGKILL after 5 s. Every wait is bounded by a count.

log() { echo "[${BENCH_NAME:-bench}] $*" >&2; }
die() { echo "[${BENCH_NAME:-bench}] ERROR: $*" >&2; exit 1; }

ports_free() {  # ports_free PORT...: dies if any of them has a listener on this machine
  local p
  for p in "$@"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then die "port $p is already in use on this machine"; fi
  done
}

# ----------------------------------------------------------------------------- processes
STARTED=()
start_bg() {  # start_bg CPUS LOGFILE CMD...: pinned, in a session of its own (pid == pgid)
  local cpus=$1 logf=$2; shift 2
  setsid taskset -c "$cpus" "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
}

stop_pid() {  # TERM the process group (the process alone when it leads none), KILL after 5 s
  local pid=$1 pgid
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  pgid=$(ps -o pgid= -p "$pid" | tr -d ' ' || true)
  if [ "$pgid" = "$pid" ]; then kill -TERM -- "-$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    if [ "$pgid" = "$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null || true; else kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {  # stops what start_bg started, newest first, and removes $TMP
  local i
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[$i]}"; done
  if [ -n "${TMP:-}" ]; then rm -rf "$TMP"; fi
}

stop_on_exit() {  # cleanup on exit; Ctrl-C and TERM exit (130) through it
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

# ----------------------------------------------------------------------------- waits
wait_http() {  # wait_http URL [CURL_ARGS...]: 0 once URL answers 200 (WAIT_TRIES [200], 0.1 s apart)
  local url=$1 code; shift
  for _ in $(seq "${WAIT_TRIES:-200}"); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" 2>/dev/null || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

wait_up() {  # wait_up PORT [TRIES]: until GET http://127.0.0.1:PORT/ answers 200 (0.1 s apart)
  WAIT_TRIES=${2:-200} wait_http "http://127.0.0.1:$1/"
}

# ----------------------------------------------------------------------------- /proc
tree_pids() { local p=$1 c; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done; }

cpu_ticks() {  # "utime stime" (clock ticks, all threads) over the process tree
  local u=0 k=0 p a b
  for p in $(tree_pids "$1"); do
    read -r a b < <(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$p/stat" 2>/dev/null || echo 0 0)
    u=$((u + ${a:-0})); k=$((k + ${b:-0}))
  done
  echo "$u $k"
}

cpu_ticks_total() {  # utime + stime (clock ticks, all threads) over the process tree
  local u k
  read -r u k < <(cpu_ticks "$1")
  echo $((u + k))
}

rss_kb() {  # VmRSS over the process tree
  local t=0 p v
  for p in $(tree_pids "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# shellcheck disable=SC2034  # read by the scripts that source this file
CLK_TCK=$(getconf CLK_TCK)   # clock ticks per second, for cpu_ticks
