#!/usr/bin/env bash
# A node's resident memory while a 100k-route config is replaced by a three-resource one,
# three times over (issue 15): real control plane and node processes, real gRPC, configs
# applied with `vane apply`. Prints the node's RSS idle, after each big config and after
# each small one (read once the node serves the version and a few seconds have passed, so
# a trim after the swap has happened).
#
#   VANE=target/release/vane ROUTES=100000 CYCLES=3 benches/replace-memory.sh
set -euo pipefail
VANE=${VANE:-target/release/vane}
ROUTES=${ROUTES:-100000}
CYCLES=${CYCLES:-3}
CP_ADDR=${VANE_BENCH_CP:-127.0.0.1:18910}
ADMIN_ADDR=${VANE_BENCH_ADMIN:-127.0.0.1:18911}

work=$(mktemp -d /tmp/vane-mem.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM

python3 - "$work" "$ROUTES" <<'EOF'
import sys
work, routes = sys.argv[1], int(sys.argv[2])
head = "listeners:\n  - name: web\n    address: 127.0.0.1:0\nclusters:\n  - name: echo\n    endpoints:\n      - address: 127.0.0.1:9\nroutes:\n"
with open(f"{work}/big.yaml", "w") as f:
    f.write(head)
    for i in range(routes):
        f.write(f"  - {{ name: r{i}, match: {{ prefix: /api/some/longer/path/{i} }}, forward: {{ clusters: [ {{ name: echo }} ] }} }}\n")
with open(f"{work}/small.yaml", "w") as f:
    f.write(head + "  - { name: api, match: { prefix: /api }, forward: { clusters: [ { name: echo } ] } }\n")
EOF

export RUST_LOG=${RUST_LOG:-warn}
"$VANE" control-plane --data-dir "$work/store" --listen "$CP_ADDR" >"$work/cp.out" &
"$VANE" proxy --control-plane "http://$CP_ADDR" --node-id mem --admin "$ADMIN_ADDR" >"$work/node.out" &
node=$!

# Polls (bounded) until the node serves version $1.
serves() {
  for _ in $(seq 1 600); do
    v=$(curl -s "http://$ADMIN_ADDR/config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null || true)
    [ "$v" = "$1" ] && return 0
    sleep 0.2
  done
  echo "node never served version $1" >&2
  exit 1
}
rss() { awk '/VmRSS/ { printf "%.1f MB", $2 / 1024 }' "/proc/$node/status"; }

for _ in $(seq 1 100); do curl -s "http://$ADMIN_ADDR/ready" >/dev/null && break; sleep 0.1; done
echo "idle: $(rss)"
version=0
for cycle in $(seq 1 "$CYCLES"); do
  "$VANE" --server "http://$CP_ADDR" apply -f "$work/big.yaml" >/dev/null
  version=$((version + 1)); serves $version; sleep 3
  echo "cycle $cycle, $ROUTES routes: $(rss)"
  "$VANE" --server "http://$CP_ADDR" apply -f "$work/small.yaml" >/dev/null
  version=$((version + 1)); serves $version; sleep 3
  echo "cycle $cycle, 3 resources: $(rss)"
done
