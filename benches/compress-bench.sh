#!/usr/bin/env bash
# =============================================================================
# compress-bench.sh: Vane's response compression against nginx's gzip (and brotli, when
# nginx's brotli filter module is installed) on loopback, in one run: the figures of
# BENCHMARKS.md "Issue 19: compression".
#
#   benches/compress-bench.sh                  # about 2.5 minutes
#   REPS=1 DURATION=3s benches/compress-bench.sh
#   VANE=/path/to/vane CONNS=16 BODY_KB=64 benches/compress-bench.sh
#
# The origin is a static nginx (core 0, no compression) serving one JSON document of
# BODY_KB KiB [64], built here from a seeded generator (keys, numbers, words: it
# compresses about 5x with gzip 6, like API answers). The proxies under test, each alone on
# core 1, forward to it over keep-alive connections and compress:
#   nginx     1 worker, gzip_comp_level 1 and 6 (two server blocks), brotli_comp_level 4
#             (when /usr/lib/nginx/modules/ngx_http_brotli_filter_module.so exists)
#   vane      a real control plane and node (`vane apply`), four routes by Host naming
#             compressions gzip level 1, gzip level 6, brotli level 4 and zstd level 3 (no peer)
# wrk (core 0, -t1 -c CONNS) asks each for DURATION [6s] per rep, REPS [3] reps,
# interleaved, with `Accept-Encoding: gzip` (or br). Reported per row, medians over reps:
# req/s, MB/s of uncompressed body compressed (req/s x body size), the proxy's CPU ms
# (utime + stime over its process tree) per MB compressed, the compressed size, and
# Vane's ratios to nginx.
#
# Needs: nginx, wrk, curl, python3 (apt-get install -y nginx wrk curl python3, and
# libnginx-mod-http-brotli-filter for the brotli peer), a release `vane`
# [${CARGO_TARGET_DIR:-target}/release/vane, built with `cargo build --release -p vane`
# when missing]. Ports 18501-18507 on 127.0.0.1, checked free first. Every load run is
# bounded by `timeout`, every wait by a count (benches/lib.sh); everything started here
# is stopped on exit, the temp dir removed.
# =============================================================================
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
REPS=${REPS:-3}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-16}
BODY_KB=${BODY_KB:-64}
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
OUT=${OUT:-/tmp/vane-compress-bench.md}
VANE=${VANE:-${CARGO_TARGET_DIR:-$REPO/target}/release/vane}
BENCH_NAME=compress-bench
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"
SECS=${DURATION%s}
case "$SECS" in ''|*[!0-9]*|0) die "DURATION must be whole seconds (e.g. 6s)" ;; esac
for tool in nginx wrk curl python3 taskset ss; do
  command -v "$tool" >/dev/null || die "missing $tool"
done
if [ ! -x "$VANE" ]; then
  log "building $VANE (cargo build --release -p vane) ..."
  (cd "$REPO" && cargo build --release -p vane --quiet)
fi
BROTLI_MOD=/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so
[ -f "$BROTLI_MOD" ] || BROTLI_MOD=

ORIGIN=18501 NG1=18502 NG6=18503 NGBR=18504 VWEB=18505 VCP=18506 VADMIN=18507
ports_free $ORIGIN $NG1 $NG6 $NGBR $VWEB $VCP $VADMIN
TMP=$(mktemp -d /tmp/vane-compress-bench.XXXXXX)
stop_on_exit
work=$TMP
chmod 755 "$work"

# The document: seeded, so every run compresses the same bytes.
python3 - "$work/www/doc.json" "$BODY_KB" <<'PY'
import json, os, random, sys
path, kb = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.dirname(path), exist_ok=True)
rng = random.Random(19)
words = [w for w in "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu".split()]
items, size = [], 0
while size < kb * 1024:
    item = {"id": rng.randrange(10**9), "name": " ".join(rng.choice(words) for _ in range(3)),
            "price": round(rng.uniform(1, 1000), 2), "tags": rng.sample(words, 3),
            "active": rng.random() < 0.5, "sku": "%08x" % rng.getrandbits(32)}
    items.append(item)
    size += len(json.dumps(item)) + 1
text = json.dumps({"items": items})[: kb * 1024 - 2]
text = text[: text.rfind("}") + 1] + "]}"
open(path, "w").write(text)
PY
BODY_BYTES=$(stat -c %s "$work/www/doc.json")
chmod -R a+rX "$work/www"

mkdir -p "$work/tmp"
common() {  # common NAME: what both nginx configs start with, NAME in the error log's file name
  echo "worker_processes 1; daemon off; master_process on; user www-data; error_log $work/err-$1.log warn;"
  echo "events { worker_connections 4096; use epoll; }"
}
common origin >"$work/origin.conf"
cat >>"$work/origin.conf" <<NG
pid $work/origin.pid;
http { access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000; types { application/json json; }
 client_body_temp_path $work/tmp/ob; proxy_temp_path $work/tmp/op; fastcgi_temp_path $work/tmp/of; uwsgi_temp_path $work/tmp/ou; scgi_temp_path $work/tmp/os;
 server { listen 127.0.0.1:$ORIGIN; root $work/www; } }
NG
{
  [ -n "$BROTLI_MOD" ] && echo "load_module $BROTLI_MOD;"
  common proxy
  cat <<NG
pid $work/proxy.pid;
http { access_log off; tcp_nodelay on; keepalive_requests 1000000;
 client_body_temp_path $work/tmp/b; proxy_temp_path $work/tmp/p; fastcgi_temp_path $work/tmp/f; uwsgi_temp_path $work/tmp/u; scgi_temp_path $work/tmp/s;
 upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
 gzip_types application/json; gzip_min_length 256; gzip_proxied any;
 server { listen 127.0.0.1:$NG1; gzip on; gzip_comp_level 1;
  location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
 server { listen 127.0.0.1:$NG6; gzip on; gzip_comp_level 6;
  location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
NG
  [ -n "$BROTLI_MOD" ] && cat <<NG
 server { listen 127.0.0.1:$NGBR; brotli on; brotli_comp_level 4; brotli_types application/json; brotli_min_length 256;
  location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
NG
  echo "}"
} >"$work/proxy.conf"

start_bg "$LOAD_CPUS" "$work/origin.out" nginx -c "$work/origin.conf" -p "$work"
start_bg "$PROXY_CPUS" "$work/nginx.out" nginx -c "$work/proxy.conf" -p "$work"
NGINX_MASTER=$LAST_PID

cat >"$work/vane.yaml" <<YAML
listeners:
  - { name: web, address: "127.0.0.1:$VWEB" }
clusters:
  - { name: origin, endpoints: [ { address: "127.0.0.1:$ORIGIN" } ] }
compressions:
  - { name: gzip1, encodings: [gzip], gzip_level: 1 }
  - { name: gzip6, encodings: [gzip], gzip_level: 6 }
  - { name: br4, encodings: [br], brotli_level: 4 }
  - { name: zstd3, encodings: [zstd], zstd_level: 3 }
routes:
  - { name: gzip1, match: { prefix: /, hosts: [gzip1.test] }, forward: { clusters: [ { name: origin } ] }, compression: gzip1 }
  - { name: gzip6, match: { prefix: /, hosts: [gzip6.test] }, forward: { clusters: [ { name: origin } ] }, compression: gzip6 }
  - { name: br4, match: { prefix: /, hosts: [br4.test] }, forward: { clusters: [ { name: origin } ] }, compression: br4 }
  - { name: zstd3, match: { prefix: /, hosts: [zstd3.test] }, forward: { clusters: [ { name: origin } ] }, compression: zstd3 }
YAML
export RUST_LOG=warn
start_bg "$LOAD_CPUS" "$work/cp.out" "$VANE" control-plane --data-dir "$work/store" --listen "127.0.0.1:$VCP"
start_bg "$PROXY_CPUS" "$work/proxy.out" "$VANE" proxy --control-plane "http://127.0.0.1:$VCP" --node-id bench \
  --admin "127.0.0.1:$VADMIN"
VANE_NODE=$LAST_PID
for _ in $(seq 1 100); do
  "$VANE" --server "http://127.0.0.1:$VCP" apply -f "$work/vane.yaml" >/dev/null 2>&1 && break
  sleep 0.1
done
wait_http "http://127.0.0.1:$VWEB/doc.json" -H "Host: gzip1.test" -H "Accept-Encoding: gzip" || die "vane does not answer"
wait_http "http://127.0.0.1:$NG6/doc.json" -H "Accept-Encoding: gzip" || die "nginx does not answer"
size_of() {  # compressed size of the document as a target sends it
  curl -s -H "Host: $2" -H "Accept-Encoding: $3" "http://127.0.0.1:$1/doc.json" | wc -c
}
HZ=$CLK_TCK

# Rows: label, port, host, encoding, process to account CPU to.
rows=("nginx gzip 1|$NG1|x|gzip|$NGINX_MASTER" "vane gzip 1|$VWEB|gzip1.test|gzip|$VANE_NODE"
      "nginx gzip 6|$NG6|x|gzip|$NGINX_MASTER" "vane gzip 6|$VWEB|gzip6.test|gzip|$VANE_NODE")
[ -n "$BROTLI_MOD" ] && rows+=("nginx brotli 4|$NGBR|x|br|$NGINX_MASTER")
rows+=("vane brotli 4|$VWEB|br4.test|br|$VANE_NODE" "vane zstd 3|$VWEB|zstd3.test|zstd|$VANE_NODE")

results=$work/results.tsv
: >"$results"
for rep in $(seq 1 "$REPS"); do
  for row in "${rows[@]}"; do
    IFS='|' read -r label port host enc pid <<<"$row"
    before=$(cpu_ticks_total "$pid")
    out=$(timeout $((SECS + 30)) taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"$DURATION" \
      -H "Host: $host" -H "Accept-Encoding: $enc" "http://127.0.0.1:$port/doc.json" 2>&1 || true)
    after=$(cpu_ticks_total "$pid")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rep" "${rps:-0}" "$((after - before))" "$errors" >>"$results"
    log "rep $rep $label: ${rps:-0} req/s"
  done
done

{
  echo "Body: $BODY_BYTES bytes of JSON; wrk -t1 -c$CONNS, $REPS x $DURATION; proxies on core $PROXY_CPUS, origin and wrk on core $LOAD_CPUS."
  echo
  echo "| proxy, encoding | req/s | MB/s compressed | CPU ms per MB | bytes sent | vs nginx (MB/s) | vs nginx (CPU/MB) |"
  echo "|---|---|---|---|---|---|---|"
  for row in "${rows[@]}"; do
    IFS='|' read -r label port host enc pid <<<"$row"
    size=$(size_of "$port" "$host" "$enc")
    python3 - "$results" "$label" "$BODY_BYTES" "$SECS" "$HZ" "$size" <<'PY'
import statistics, sys
path, label, body, secs, hz, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rows = [l.rstrip("\n").split("\t") for l in open(path)]
def stats(name):
    mine = [r for r in rows if r[0] == name]
    if not mine:
        return None
    rps = statistics.median(float(r[2]) for r in mine)
    mbps = rps * body / 1e6
    # CPU ms per MB of body compressed, per rep, then the median.
    cpu = statistics.median((int(r[3]) / hz * 1000) / max(float(r[2]) * secs * body / 1e6, 1e-9) for r in mine)
    return rps, mbps, cpu
mine = stats(label)
peer = stats(label.replace("vane", "nginx")) if label.startswith("vane") else None
rps, mbps, cpu = mine
ratio = f"{mbps / peer[1]:.2f}x" if peer else ""
cratio = f"{cpu / peer[2]:.2f}x" if peer else ""
print(f"| {label} | {rps:.0f} | {mbps:.1f} | {cpu:.2f} | {size} ({body / max(size, 1):.1f}x smaller) | {ratio} | {cratio} |")
PY
  done
  echo
  echo "MB/s: uncompressed body bytes compressed per second (req/s x $BODY_BYTES). CPU ms per MB: the proxy's"
  echo "utime + stime over the run per MB compressed (nginx: master + worker). vs nginx: Vane over nginx at the"
  echo "same encoding and level (MB/s: higher is better; CPU/MB: lower is better). Errors counted: $(awk -F'\t' '{ n += $5 } END { print n + 0 }' "$results")."
} | tee "$OUT"
