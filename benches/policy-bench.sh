#!/usr/bin/env bash
# policy-bench.sh: what gateway policies cost. One Vane node (real control plane, real
# `vane apply`) serves two routes on one listener to the same backend:
#   /plain    no policy
#   /guarded  JWT (HS256, issuer/audience/exp checked, a claim copied to a header) and a
#             rate limit keyed by the consumer, high enough never to refuse
# wrk sends the same bearer token to both; REPS interleaved runs of DURATION each, and the
# table gives req/s, p50, p99 and proxy CPU per request for both with the ratio.
#
#   benches/policy-bench.sh [--quick]        # needs wrk, python3; VANE=path/to/vane
#
# The backend is benches/backend (built on first use; BACKEND_BIN overrides).
#
# The proxy runs alone on core 1 (PROXY_CPUS), wrk and the backend on core 0. Loopback only;
# every run is bounded; everything started here is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_NAME=policy-bench
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"   # start_bg, stop_on_exit, cpu_ticks_total
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
REPS=${REPS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
VANE=${VANE:-${CARGO_TARGET_DIR:-$REPO/target}/release/vane}
[ "${1:-}" = "--quick" ] && { REPS=1; DURATION=3s; }
PORT=18520 CP=127.0.0.1:18521 ADMIN=127.0.0.1:18522 BACKEND_PORT=18523

for tool in wrk python3 taskset curl; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
if [ ! -x "$VANE" ]; then (cd "$REPO" && cargo build --release --locked -p vane); VANE=${CARGO_TARGET_DIR:-$REPO/target}/release/vane; fi
# shellcheck source=benches/backend.sh
. "$HERE/backend.sh"
bench_backend || exit 1

TMP=$(mktemp -d /tmp/policy-bench.XXXXXX)
stop_on_exit

SECRET=bench-secret-0123456789abcdef
cat >"$TMP/config.yaml" <<EOF
listeners:
  - { name: bench, address: "127.0.0.1:$PORT" }
clusters:
  - { name: backend, endpoints: [ { address: "127.0.0.1:$BACKEND_PORT" } ] }
routes:
  - { name: plain, match: { prefix: /plain }, forward: { clusters: [ { name: backend } ], prefix_rewrite: / } }
  - name: guarded
    match: { prefix: /guarded }
    policies: [jwt, limit]
    forward: { clusters: [ { name: backend } ], prefix_rewrite: / }
policies:
  - name: jwt
    auth:
      jwt:
        issuer: https://id.bench
        audiences: [bench]
        hmac_secrets: [$SECRET]
        claims_to_headers: [ { claim: sub, header: x-user-id } ]
  - name: limit
    rate_limit: { requests: 100000000, per: 1s, key: [ { consumer: true } ] }
EOF
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench-user", "iss": "https://id.bench", "aud": "bench", "exp": int(time.time()) + 3600}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)

start_bg "$LOAD_CPUS" "$TMP/backend.log" "$BACKEND_BIN" "$BACKEND_PORT" 1
start_bg "$LOAD_CPUS" "$TMP/cp.log" env RUST_LOG=warn "$VANE" control-plane --data-dir "$TMP/store" --listen "$CP"
start_bg "$PROXY_CPUS" "$TMP/proxy.log" env RUST_LOG=warn "$VANE" proxy --control-plane "http://$CP" --node-id bench --admin "$ADMIN"
PROXY_PID=$LAST_PID
for _ in $(seq 100); do "$VANE" --server "http://$CP" apply -f "$TMP/config.yaml" >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/guarded")" = 200 ] && break
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/guarded")" = 401 ] || { echo "the guarded route does not refuse" >&2; exit 1; }

run() {  # run PATH -> "rps p50 p99 cpu_us_per_req"
  local before after out rps p50 p99 reqs
  before=$(cpu_ticks_total "$PROXY_PID")
  out=$(timeout $(( ${DURATION%s} + 30 )) taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"$DURATION" --latency \
        -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT$1")
  after=$(cpu_ticks_total "$PROXY_PID")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  grep -q "Non-2xx" <<<"$out" && { echo "non-2xx responses on $1" >&2; exit 1; }
  echo "$rps $p50 $p99 $(python3 -c "print(round(($after - $before) * 1e6 / $(getconf CLK_TCK) / $reqs, 1))")"
}
declare -a PLAIN GUARDED
for rep in $(seq "$REPS"); do
  PLAIN+=("$(run /plain)"); GUARDED+=("$(run /guarded)")
  echo "rep $rep: plain ${PLAIN[-1]} | guarded ${GUARDED[-1]}" >&2
done
python3 - "${PLAIN[@]}" -- "${GUARDED[@]}" <<'PY'
import statistics, sys
args = sys.argv[1:]; i = args.index("--")
rows = {"no policy": args[:i], "JWT + rate limit": args[i + 1:]}
med = {k: [statistics.median(float(r.split()[0]) for r in v), v[len(v) // 2].split()[1], v[len(v) // 2].split()[2],
           statistics.median(float(r.split()[3]) for r in v)] for k, v in rows.items()}
base = med["no policy"][0]
print("| route | req/s | p50 | p99 | CPU us/req | vs no policy |")
print("|---|---|---|---|---|---|")
for k, (rps, p50, p99, cpu) in med.items():
    print(f"| {k} | {rps:,.0f} | {p50} | {p99} | {cpu} | {rps / base:.2f} |")
PY
