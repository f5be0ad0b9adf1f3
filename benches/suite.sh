#!/usr/bin/env bash
# suite.sh: Vane's whole benchmark suite in one command (issue 9). Each part measures Vane
# through its real binary and real control plane against peers in the same run, and prints
# its own markdown table; all of them are also collected in $OUT.
#
#   benches/suite.sh [--quick] [PART...]     # PART: peers tls policy control-plane swap
#
#   peers          benches/peer-bench.sh: HTTP/1.1 64 B and 16 KiB, POST 512 B and 16 KiB
#                  at 50 and 256 connections, and h2c, against nginx, HAProxy and the
#                  backend alone (req/s, p99, CPU us/req, RSS idle and under load)
#   tls            benches/tls-bench.sh: handshakes and HTTPS keep-alive against nginx
#   policy         benches/policy-bench.sh: JWT + rate limit against the same route bare
#   control-plane  cargo bench --bench control_plane: propagation to 1/10/100 nodes,
#                  1k/10k/100k routes, memory per node
#   swap           benches/swap-under-load.sh: config applies under wrk load
#
# Needs: apt-get install -y nginx haproxy wrk nghttp2-client apache2-utils (and python3);
# the benchmark backend (benches/backend) and Vane are built here.
# Loopback only; every part bounds its runs and stops what it starts. --quick shortens each.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
cd "$REPO"
OUT=${OUT:-/tmp/vane-bench-suite.md}
QUICK=""
PARTS=()
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    peers|tls|policy|control-plane|swap) PARTS+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -gt 0 ] || PARTS=(peers tls policy control-plane swap)

(cd "$REPO" && cargo build --release --locked -p vane)
export VANE=${CARGO_TARGET_DIR:-$REPO/target}/release/vane
echo "# Vane benchmark suite, $(date -u +%FT%TZ), $(git -C "$REPO" rev-parse --short HEAD)" >"$OUT"

section() { echo; echo "## $1"; }
for part in "${PARTS[@]}"; do
  case "$part" in
    peers)
      section "Peers: nginx and HAProxy (peer-bench.sh)" | tee -a "$OUT"
      OUT_PEERS=$(mktemp)
      TARGETS=${TARGETS:-"direct nginx haproxy"} CONNS=${CONNS:-"50 256"} DURATION=${DURATION:-10s} \
        VANES="vane=$VANE" OUT="$OUT_PEERS" "$HERE/peer-bench.sh" ${QUICK:+--quick} >/dev/null
      tee -a "$OUT" <"$OUT_PEERS"; rm -f "$OUT_PEERS" "${OUT_PEERS%.md}.csv"
      ;;
    tls)
      section "TLS against nginx (tls-bench.sh)" | tee -a "$OUT"
      OUT_TLS=$(mktemp); OUT="$OUT_TLS" "$HERE/tls-bench.sh" ${QUICK:+--quick} >/dev/null; tee -a "$OUT" <"$OUT_TLS"; rm -f "$OUT_TLS"
      ;;
    policy)
      section "Gateway policies (policy-bench.sh)" | tee -a "$OUT"
      "$HERE/policy-bench.sh" ${QUICK:+--quick} | tee -a "$OUT"
      ;;
    control-plane)
      section "Control plane (cargo bench --bench control_plane)" | tee -a "$OUT"
      (cd "$REPO" && if [ -n "$QUICK" ]; then export QUICK=1; else unset QUICK; fi
       cargo bench --bench control_plane 2>/dev/null) | grep -v '^$' | tee -a "$OUT"
      ;;
    swap)
      section "Swaps under load (swap-under-load.sh)" | tee -a "$OUT"
      "$HERE/swap-under-load.sh" | tee -a "$OUT"
      ;;
  esac
done
echo; echo "all tables: $OUT"
