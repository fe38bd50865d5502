#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need,
# then format and lint checks, every test, and the fuzz targets' smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "scripts/test.sh needs a Rust toolchain (cargo)"; exit 1; }

# Disk: a clean build of every test binary with full debug info is ~10 GB of
# target/ (a CI run once failed with "No space left on device" in the crash
# tests). Line tables keep file:line in backtraces at a fraction of the size,
# and a one-shot build has no use for incremental caches. Set either variable
# to override.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
disk_report() {
  echo "disk: $(df -Ph . | awk 'NR==2 {print $4 " free of " $2}') ($1)"
}
disk_report "before the build"

echo "== test dependencies (SoftHSM2 for the PKCS#11 tests)"
bash scripts/setup-softhsm.sh
echo "== storage test servers (moto S3, WsgiDAV WebDAV, loopback)"
storage_env=$(bash scripts/storage-servers.sh start)
eval "$storage_env"
trap 'bash scripts/storage-servers.sh stop >/dev/null 2>&1 || true' EXIT
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
disk_report "after the tests"
echo "== the README's demo (./demo.sh), on the test build's binaries"
DEMO_BIN_DIR="$PWD/target/debug" DEMO_DIR="$PWD/target/demo-ci" ./demo.sh
echo "== format vectors, independent Python implementation"
VENV=target/pyvenv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check cryptography blake3
"$VENV/bin/python" docs/vectors/check_vectors.py
if [ -x fuzz/ci.sh ] || [ -f fuzz/ci.sh ]; then
  echo "== fuzz targets"
  bash fuzz/ci.sh
fi
