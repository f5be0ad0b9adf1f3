#!/usr/bin/env bash
# Config swaps under load (issue #9's "swap under load"): wrk drives a Vane node (real
# control plane + real node, as benches/vane-sut.sh starts them) over two backends while
# a loop applies a changed config 10 times a second; the run must show no non-2xx answer
# and no socket error. A first run without swaps gives the baseline for the req/s dip.
#
#   VANE=target/release/vane DURATION=30 benches/swap-under-load.sh
# The backends are benches/backend (built on first use; BACKEND_BIN overrides). Loopback
# only; every process started here is stopped on exit.
set -euo pipefail
VANE=${VANE:-target/release/vane}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || exit 1
DURATION=${DURATION:-30}
PORT=${PORT:-18420}
CP=127.0.0.1:18930
work=$(mktemp -d /tmp/vane-swap.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

"$BACKEND_BIN" 18081 1 >/dev/null 2>&1 & pids+=($!)
"$BACKEND_BIN" 18082 1 >/dev/null 2>&1 & pids+=($!)
PB_LISTEN=127.0.0.1:$PORT PB_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 \
  VANE="$VANE" VANE_BENCH_CP=$CP VANE_BENCH_ADMIN=127.0.0.1:18931 "$HERE/vane-sut.sh" & pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done

config() {  # config N: the bench config with a per-version route timeout
  cat <<YAML
listeners:
  - { name: bench, address: "127.0.0.1:$PORT" }
clusters:
  - { name: backends, endpoints: [ { address: "127.0.0.1:18081" }, { address: "127.0.0.1:18082" } ] }
routes:
  - { name: all, match: { prefix: / }, forward: { clusters: [ { name: backends } ], timeout: "$((10 + $1 % 2))s" } }
YAML
}

run_wrk() { wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$PORT/" 2>&1; }

echo "== baseline (no swaps)"
base=$(run_wrk); echo "$base" | grep -E "Requests/sec|Non-2xx|Socket errors" || true
echo "== with 10 applies per second"
( i=0; end=$((SECONDS + DURATION)); while [ $SECONDS -lt $end ] && [ $i -lt $((DURATION * 12)) ]; do
    config $i > "$work/c.yaml"; "$VANE" --server "http://$CP" apply -f "$work/c.yaml" >/dev/null; i=$((i + 1)); sleep 0.06
  done; echo "$i" > "$work/applies" ) &
swapper=$!
swapped=$(run_wrk); wait $swapper
echo "$swapped" | grep -E "Requests/sec|Non-2xx|Socket errors" || true
applies=$(cat "$work/applies")
versions=$("$VANE" --server "http://$CP" history | tail -n +2 | wc -l)
b=$(echo "$base" | awk '/Requests\/sec/ {print $2}'); s=$(echo "$swapped" | awk '/Requests\/sec/ {print $2}')
echo "applies: $applies, versions stored: $versions, req/s: $b -> $s ($(python3 -c "print(f'{$s/$b:.3f}')")x)"
if echo "$swapped" | grep -qE "Non-2xx|Socket errors"; then echo "FAILED: errors during swaps"; exit 1; fi
echo "no non-2xx answers, no socket errors"
