#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a short time.
#
#   bash fuzz/ci.sh                 # 10 s per target
#   FUZZ_SECONDS=60 bash fuzz/ci.sh # longer
#
# Needs a nightly toolchain (FUZZ_TOOLCHAIN, default `nightly`) (cargo-fuzz builds with -Zsanitizer=address).
# Without one it says why and exits 0; cargo-fuzz is installed from crates.io
# when missing. A crash fails the script (exit 1) and names the artifact to
# replay with `cargo +nightly fuzz run <target> <artifact>`.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-10}"
tc="${FUZZ_TOOLCHAIN:-nightly}"
started=$(date +%s)

skip() {
    echo "fuzz: SKIPPED: $*"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
if ! cargo "+$tc" --version >/dev/null 2>&1; then
    skip "no '$tc' toolchain (cargo-fuzz needs nightly for -Zsanitizer); \
install one with 'rustup toolchain install nightly' to run the fuzz targets"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz missing; installing it (cargo install --locked cargo-fuzz)"
    t0=$(date +%s)
    cargo install --locked cargo-fuzz ||
        skip "cargo-fuzz could not be installed from crates.io"
    echo "fuzz: cargo-fuzz installed in $(($(date +%s) - t0)) s"
fi
echo "fuzz: $(cargo "+$tc" --version), $(cargo fuzz --version)"

t0=$(date +%s)
cargo "+$tc" fuzz build
echo "fuzz: built all targets in $(($(date +%s) - t0)) s"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
summary=""
for target in $(cargo fuzz list); do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz: running $target for ${secs} s"
    if ! cargo "+$tc" fuzz run "$target" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: FAILED: $target crashed; artifact under fuzz/artifacts/$target/"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    summary+=$(printf '%-18s %10s runs %8s/s  cov %s' "$target" "${runs:-?}" \
        "$(( ${runs:-0} / secs ))" "${cov:-?}")$'\n'
done
printf 'fuzz: all targets ran without a crash\n%s' "$summary"
echo "fuzz: total $(($(date +%s) - started)) s"
