#!/usr/bin/env bash
# Builds every cargo-fuzz target (`cargo fuzz list`: every [[bin]] of
# fuzz/Cargo.toml) and runs each for a short time, starting from its corpus
# (fuzz/corpus/<target>, git-ignored) and its checked-in seeds
# (fuzz/seeds/<target>, if any).
#
#   bash fuzz/ci.sh                 # FUZZ_BUDGET (default 150) target-seconds, shared out
#   FUZZ_SECONDS=60 bash fuzz/ci.sh # 60 s per target
#
# Targets run FUZZ_JOBS at a time (default: the cores, at most 2), so the
# fuzzing takes about FUZZ_BUDGET / FUZZ_JOBS seconds of wall time.
#
# Needs a nightly toolchain (FUZZ_TOOLCHAIN, default `nightly`) (cargo-fuzz builds with -Zsanitizer=address).
# Without one it says why and exits 0; cargo-fuzz is installed from crates.io
# when missing. A crash fails the script (exit 1) and names the artifact to
# replay with `cargo +nightly fuzz run <target> <artifact>`.
set -euo pipefail
cd "$(dirname "$0")/.."

budget="${FUZZ_BUDGET:-150}"
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

targets=$(cargo fuzz list)
count=$(echo "$targets" | wc -w)
# Per target: FUZZ_SECONDS if set, else the budget shared out (at least 5 s).
secs="${FUZZ_SECONDS:-$((budget / count > 5 ? budget / count : 5))}"
# Targets run side by side, one per core (FUZZ_JOBS, default: the cores, at most 2).
cores=$(nproc 2>/dev/null || echo 1)
jobs="${FUZZ_JOBS:-$((cores < 2 ? cores : 2))}"
echo "fuzz: $count targets, ${secs} s each, $jobs at a time"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run_target() {
    local target=$1
    local corpora=("fuzz/corpus/$target")
    [ -d "fuzz/seeds/$target" ] && corpora+=("fuzz/seeds/$target")
    if cargo "+$tc" fuzz run "$target" "${corpora[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$logs/$target.log" 2>&1; then
        touch "$logs/$target.ok"
    fi
}
running=0
for target in $targets; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz: running $target for ${secs} s"
    run_target "$target" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

summary=""
failed=""
for target in $targets; do
    log="$logs/$target.log"
    if [ ! -e "$logs/$target.ok" ]; then
        tail -n 60 "$log"
        echo "fuzz: FAILED: $target crashed; artifact under fuzz/artifacts/$target/"
        failed+=" $target"
        continue
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    summary+=$(printf '%-18s %10s runs %8s/s  cov %s' "$target" "${runs:-?}" \
        "$(( ${runs:-0} / secs ))" "${cov:-?}")$'\n'
done
if [ -n "$failed" ]; then
    printf '%s' "$summary"
    echo "fuzz: FAILED:$failed (replay: cargo +$tc fuzz run <target> <artifact>)"
    exit 1
fi
printf 'fuzz: all targets ran without a crash\n%s' "$summary"
echo "fuzz: total $(($(date +%s) - started)) s"
