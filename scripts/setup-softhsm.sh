#!/usr/bin/env bash
# Install SoftHSM2 (Debian package `softhsm2`) for the PKCS#11 key-custody tests
# of coffer-vault (crates/coffer-vault/tests/custody.rs).
#
# Idempotent: does nothing, silently, when both the module
# (/usr/lib/softhsm/libsofthsm2.so) and `softhsm2-util` are already present.
# Uses sudo only when not running as root; runs `apt-get update` only if the
# install fails without it.
set -euo pipefail

MODULE=/usr/lib/softhsm/libsofthsm2.so

have_softhsm() {
    [[ -e "$MODULE" ]] && command -v softhsm2-util >/dev/null 2>&1
}

if have_softhsm; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-softhsm: apt-get not found; install SoftHSM2 by hand so that $MODULE and softhsm2-util exist" >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "setup-softhsm: not root and sudo not found" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
install_pkg() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends softhsm2 >/dev/null
}

echo "setup-softhsm: installing softhsm2 ..." >&2
if ! install_pkg; then
    echo "setup-softhsm: install failed; running apt-get update and retrying ..." >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    install_pkg
fi

if ! have_softhsm; then
    echo "setup-softhsm: softhsm2 installed but $MODULE or softhsm2-util is still missing" >&2
    exit 1
fi
echo "setup-softhsm: SoftHSM2 ready ($MODULE)" >&2
