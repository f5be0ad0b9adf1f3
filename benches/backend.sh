# shellcheck shell=bash
# backend.sh: sourced by the benchmark scripts. `bench_backend` sets BACKEND_BIN to the
# in-repo benchmark backend (benches/backend: HTTP/1.1 + h2c, 64 B on /, 16 KiB on /big,
# request bodies read to the end, /stats), building it with its committed Cargo.lock on
# first use (about a minute and a half on 2 cores) and again whenever its source changes.
#
#   . "$HERE/backend.sh"; bench_backend || exit 1     # then: "$BACKEND_BIN" PORT [THREADS]
#
# BACKEND_BIN set beforehand is used as it is (another backend, or one built elsewhere).
# It is built into BENCH_BACKEND_TARGET_DIR [${CARGO_TARGET_DIR:-<repo>/target}/bench-backend],
# a directory of its own: the backend is its own Cargo workspace, which CI never builds.
bench_backend() {
  local here dir target
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  if [ -n "${BACKEND_BIN:-}" ]; then
    [ -x "$BACKEND_BIN" ] && return 0
    echo "BACKEND_BIN=$BACKEND_BIN is not an executable" >&2
    return 1
  fi
  target=${CARGO_TARGET_DIR:-$(cd "$here/.." && pwd)/target}
  dir=${BENCH_BACKEND_TARGET_DIR:-$target/bench-backend}
  BACKEND_BIN=$dir/release/vane-bench-backend
  if command -v cargo >/dev/null; then
    [ -x "$BACKEND_BIN" ] || echo "building the benchmark backend (benches/backend) into $dir ..." >&2
    # A no-op taking a fraction of a second when the binary is up to date.
    nice -n 10 cargo build --release --locked --quiet \
      --manifest-path "$here/backend/Cargo.toml" --target-dir "$dir" >&2 || return 1
  elif [ ! -x "$BACKEND_BIN" ]; then
    echo "no benchmark backend at $BACKEND_BIN and no cargo to build it" >&2
    return 1
  fi
  export BACKEND_BIN
}
