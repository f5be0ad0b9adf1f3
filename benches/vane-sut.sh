#!/usr/bin/env bash
# Runs Vane as a proxy under test for the benchmark scripts (benches/peer-bench.sh, ab.sh,
# instructions.sh, profile.sh, swap-under-load.sh): a real control plane and one real node
# (separate `vane` processes, real gRPC), with a config built from PB_LISTEN and
# PB_BACKENDS applied by `vane apply`: one listener, one round-robin cluster over the
# backends, one route. Stays in the foreground until signalled; the caller stops the whole
# process group.
#
#   VANE=target/release/vane PB_LISTEN=127.0.0.1:18400 \
#     PB_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 benches/vane-sut.sh
#
# VANE_ACCESS_LOG=/path/file turns the listener's access log on (JSON; VANE_ACCESS_LOG_FORMAT=TEXT
# for text). VANE_BENCH_CP / VANE_BENCH_ADMIN move the control plane and node admin ports so
# that two SUTs can run side by side. VANE_BENCH_CP_CPUS pins the control plane to other
# cores than the node (`taskset -c`), so that only the node shares the proxies' core.
set -euo pipefail
VANE=${VANE:-target/release/vane}
CP_ADDR=${VANE_BENCH_CP:-127.0.0.1:18900}
ADMIN_ADDR=${VANE_BENCH_ADMIN:-127.0.0.1:18901}
: "${PB_LISTEN:?PB_LISTEN=ip:port to listen on}" "${PB_BACKENDS:?PB_BACKENDS=ip:port,ip:port}"

work=$(mktemp -d /tmp/vane-sut.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM

{
  echo "listeners:"
  if [ -n "${VANE_ACCESS_LOG:-}" ]; then
    echo "  - { name: bench, address: \"$PB_LISTEN\", access_log: { path: \"$VANE_ACCESS_LOG\", format: ${VANE_ACCESS_LOG_FORMAT:-JSON} } }"
  else
    echo "  - { name: bench, address: \"$PB_LISTEN\" }"
  fi
  echo "clusters:"
  echo "  - name: backends"
  echo "    endpoints:"
  IFS=, read -ra ups <<<"$PB_BACKENDS"
  for u in "${ups[@]}"; do echo "      - address: \"$u\""; done
  echo "routes:"
  echo "  - { name: all, match: { prefix: / }, forward: { clusters: [ { name: backends } ] } }"
} >"$work/bench.yaml"

export RUST_LOG=${RUST_LOG:-warn}
cp=("$VANE" control-plane --data-dir "$work/store" --listen "$CP_ADDR")
if [ -n "${VANE_BENCH_CP_CPUS:-}" ]; then cp=(taskset -c "$VANE_BENCH_CP_CPUS" "${cp[@]}"); fi
"${cp[@]}" >"$work/cp.out" &
# The node runs as `vane-node` (the node alone: a smaller binary, less resident memory)
# when it was built next to $VANE, else as `vane proxy`; VANE_NODE overrides.
NODE=${VANE_NODE:-$(dirname "$VANE")/vane-node}
if [ -x "$NODE" ]; then node=("$NODE"); else node=("$VANE" proxy); fi
"${node[@]}" --control-plane "http://$CP_ADDR" --node-id bench --admin "$ADMIN_ADDR" >"$work/proxy.out" &
for _ in $(seq 1 100); do
  "$VANE" --server "http://$CP_ADDR" apply -f "$work/bench.yaml" >/dev/null 2>&1 && break
  sleep 0.1
done
for _ in $(seq 1 100); do
  curl -fs "http://$ADMIN_ADDR/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
wait
