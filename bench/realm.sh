#!/usr/bin/env bash
# Replicated-realm login benchmark (issue #4 point 6): logins/s and p50/p99 of a single-node vault
# (`coffer-vault init`, the baseline of bench/vault.sh) and of `coffer-vault realm new` realms of
# 1, 3 and 5 nodes on loopback, same wrong-password login workload, same machine, same run; for
# 3 nodes also sent to a follower (which forwards to the leader). See docs/benchmarks.md
# ("Replicated realms") and `loginbench realm --help` (crates/coffer-vault/examples/loginbench.rs).
#
#   bench/realm.sh                          # single,1,3,5 at C = 1,32,128 (about 6-8 minutes)
#   PERF=0 bench/realm.sh                   # no flush counts, no profile
#   bench/realm.sh --setups single,3 --concurrency 1,64   # extra arguments go to `loginbench realm`
#
# Knobs (environment): PERF (1: count fsyncs per node with `perf stat` and profile the 3-node realm
# with `perf record`, if perf works here), BUILD (1: cargo build --release first), SERVER_CPUS (0:
# every vault process, all nodes together, on this taskset list), CLIENT_CPUS (1), OUT
# (bench/work/realm). Needs 2+ CPUs, taskset and getconf; nothing is downloaded at run time.
#
# All nodes run on this one machine: with the defaults, 5 node processes share CPU 0 and the load
# generator has CPU 1. The figures measure the protocol's overhead under CPU contention (every
# fsync, MAC and peer round trip of every node paid on one core), not what 5 machines would do.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
PERF="${PERF:-1}"
BUILD="${BUILD:-1}"
SERVER_CPUS="${SERVER_CPUS:-0}"
CLIENT_CPUS="${CLIENT_CPUS:-1}"
OUT="${OUT:-$HERE/work/realm}"

say() { printf '[realm-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v taskset >/dev/null || { say "taskset (util-linux) is needed"; exit 1; }
if [ "$(nproc)" -lt 2 ]; then say "needs 2 CPUs (vault processes and load generator on separate cores)"; exit 1; fi

if [ "$BUILD" = 1 ]; then
  say "building (cargo build --release -p coffer-vault --examples --bins)"
  (cd "$ROOT" && cargo build --release -p coffer-vault --examples --bins)
fi

PERF_ARGS=(--flush-concurrency 0)
if [ "$PERF" = 1 ]; then
  if command -v perf >/dev/null && perf record -o /dev/null -- true >/dev/null 2>&1 \
     && perf stat -e syscalls:sys_enter_fsync -- true >/dev/null 2>&1; then
    PERF_ARGS=(--perf-nodes 3)
  else
    say "perf (or its syscall tracepoints) not usable here; running without flush counts and profile"
  fi
fi

mkdir -p "$OUT"
{
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel:  $(uname -sr); filesystem of the realms: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
  echo "git:     $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "date:    $(date '+%Y-%m-%d %H:%M')"
  echo "pinning: every vault process on CPU $SERVER_CPUS, load generator on CPU $CLIENT_CPUS"
} | tee "$OUT/machine.txt" >&2

cd "$ROOT"
START=$SECONDS
"$TARGET/release/examples/loginbench" realm \
  --bin "$TARGET/release/coffer-vault" \
  --server-cpus "$SERVER_CPUS" --client-cpus "$CLIENT_CPUS" \
  --out "$OUT" \
  "${PERF_ARGS[@]}" "$@"
say "done in $((SECONDS - START)) s; tables in $OUT/results.md, raw numbers in $OUT/results.json, node logs and perf data in $OUT/"
