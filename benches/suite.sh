#!/usr/bin/env bash
# suite.sh: Vane's whole benchmark suite in one command (issue 9). Each part measures Vane
# through its real binary and real control plane against peers in the same run, and prints
# its own markdown table; all of them are also collected in $OUT.
#
#   benches/suite.sh [--quick] [PART...]     # PART: peers tls policy control-plane swap
#
#   peers          ../shared/bench/peer_bench.sh with Vane as --sut (benches/vane-sut.sh):
#                  HTTP/1.1 64 B and 16 KiB at 50 and 256 connections, and h2c, against
#                  nginx and HAProxy (req/s, p50, p99, CPU us/req, RSS idle and under load)
#   tls            benches/tls-bench.sh: handshakes and HTTPS keep-alive against nginx
#   policy         benches/policy-bench.sh: JWT + rate limit against the same route bare
#   control-plane  cargo bench --bench control_plane: propagation to 1/10/100 nodes,
#                  1k/10k/100k routes, memory per node
#   swap           benches/swap-under-load.sh: config applies under wrk load
#
# Needs: apt-get install -y nginx haproxy wrk nghttp2-client apache2-utils (and python3).
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

(cd "$REPO" && cargo build --release -p vane)
export VANE=$REPO/target/release/vane
echo "# Vane benchmark suite, $(date -u +%FT%TZ), $(git -C "$REPO" rev-parse --short HEAD)" >"$OUT"

section() { echo; echo "## $1"; }
for part in "${PARTS[@]}"; do
  case "$part" in
    peers)
      section "Peers: nginx and HAProxy (peer_bench.sh)" | tee -a "$OUT"
      TARGETS=${TARGETS:-"direct nginx-w1 haproxy-t1"} H2=1 H2PORT=18400 \
        "$REPO/../shared/bench/peer_bench.sh" ${QUICK:+--quick} --sut vane 18400 "$HERE/vane-sut.sh" | tee -a "$OUT"
      ;;
    tls)
      section "TLS against nginx (tls-bench.sh)" | tee -a "$OUT"
      OUT_TLS=$(mktemp); OUT="$OUT_TLS" "$HERE/tls-bench.sh" ${QUICK:+--quick} >/dev/null; cat "$OUT_TLS" | tee -a "$OUT"; rm -f "$OUT_TLS"
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
