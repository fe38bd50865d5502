#!/usr/bin/env bash
# Vault login benchmark (issue #3 point 10): server-side OPAQUE logins per second per core through
# the whole path (HTTP, channel, core, sealing, store, NVRAM) vs raw opaque-ke, same machine, same
# run, plus a floor server that does only HTTP + the channel + opaque-ke (the least any conforming
# server must do), and the same server answering with no crypto (what HTTP alone costs; with raw
# and the HPKE accept it gives the ceiling from parts). See docs/benchmarks.md ("Vault logins") and
# crates/coffer-vault/examples/loginbench.rs.
#
#   bench/vault.sh                      # 3 runs, C = 1,8,32,64,128, profile of the last run
#   RUNS=1 PERF=0 bench/vault.sh        # one quick run, no profile
#   bench/vault.sh --phase-logins 3000  # extra arguments go to `loginbench all`
#   bench/vault.sh --no-floor           # without the floor server's phases
#   bench/vault.sh --no-http-floor      # without the HTTP-only phases (the floor server, no crypto)
#   bench/vault.sh --engine inline      # the daemon with `serve --engine inline` (ADR 0016)
#
# Knobs (environment): RUNS (3), PERF (1: profile the server with `perf record` in the last run, if
# perf is installed), BUILD (1: cargo build --release first), SERVER_CPU (0), CLIENT_CPU (1),
# OUT (bench/work/vault). Needs 2+ CPUs, taskset and getconf; nothing is downloaded at run time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RUNS="${RUNS:-3}"
PERF="${PERF:-1}"
BUILD="${BUILD:-1}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
OUT="${OUT:-$HERE/work/vault}"

say() { printf '[vault-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v taskset >/dev/null || { say "taskset (util-linux) is needed"; exit 1; }
if [ "$(nproc)" -lt 2 ]; then say "needs 2 CPUs (server and load generator on separate cores)"; exit 1; fi

if [ "$BUILD" = 1 ]; then
  say "building (cargo build --release -p coffer-vault --examples --bins)"
  (cd "$ROOT" && cargo build --release -p coffer-vault --examples --bins)
fi

PERF_ARGS=()
if [ "$PERF" = 1 ]; then
  if command -v perf >/dev/null && perf record -o /dev/null -- true >/dev/null 2>&1; then
    PERF_ARGS=(--perf)
  else
    say "perf not usable here; running without a profile"
  fi
fi

mkdir -p "$OUT"
{
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel:  $(uname -sr); filesystem of the realms: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
  echo "git:     $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "date:    $(date '+%Y-%m-%d %H:%M')"
  echo "pinning: server and raw/core on CPU $SERVER_CPU, load generator on CPU $CLIENT_CPU"
} | tee "$OUT/machine.txt" >&2

cd "$ROOT"
"$TARGET/release/examples/loginbench" all \
  --bin "$TARGET/release/coffer-vault" \
  --runs "$RUNS" \
  --server-cpu "$SERVER_CPU" --client-cpu "$CLIENT_CPU" \
  --out "$OUT" \
  "${PERF_ARGS[@]}" "$@"
say "tables in $OUT/results.md, raw numbers in $OUT/results.json, server logs and perf data in $OUT/"
