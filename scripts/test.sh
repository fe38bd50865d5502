#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need,
# then format and lint checks, every test, and the fuzz targets' smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "scripts/test.sh needs a Rust toolchain (cargo)"; exit 1; }

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
echo "== format vectors, independent Python implementation"
VENV=target/pyvenv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check cryptography blake3
"$VENV/bin/python" docs/vectors/check_vectors.py
if [ -x fuzz/ci.sh ] || [ -f fuzz/ci.sh ]; then
  echo "== fuzz targets"
  bash fuzz/ci.sh
fi
