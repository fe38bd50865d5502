#!/usr/bin/env bash
# The main job, on embedded defaults: start a local key vault, back up a chat
# app's database and media with a password, lose the device (its key cache
# with it), restore on a "new device" with the password, then show that 10
# wrong passwords erase the key for good.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

command -v cargo >/dev/null || { echo "demo.sh needs a Rust toolchain (cargo)"; exit 1; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }

if [ -n "${DEMO_BIN_DIR:-}" ]; then
    # Binaries already built (scripts/test.sh runs the demo with the test build's).
    COFFER="$DEMO_BIN_DIR/coffer"
    VAULT="$DEMO_BIN_DIR/coffer-vault"
    for b in "$COFFER" "$VAULT"; do
        [ -x "$b" ] || { echo "DEMO_BIN_DIR: no executable $b"; exit 1; }
    done
else
    say "Building coffer and coffer-vault (release)"
    cargo build --release --locked -q -p coffer-cli -p coffer-vault
    COFFER="$PWD/target/release/coffer"
    VAULT="$PWD/target/release/coffer-vault"
fi

WORK="${DEMO_DIR:-$PWD/target/demo}"
rm -rf "$WORK"; mkdir -p "$WORK"
PHONE="$WORK/old-phone"          # the device that will be lost
CLOUD="$WORK/cloud/repo"         # stands in for Google Drive / S3 / WebDAV
NEWPHONE="$WORK/new-phone"
PORT="${DEMO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"

VAULT_PID=""
start_vault() {
    "$VAULT" serve --data "$WORK/vault" --nvram "$WORK/vault-nvram/anchor" --listen "127.0.0.1:$PORT" \
        2>>"$WORK/vault.log" &
    VAULT_PID=$!
    python3 - "$PORT" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1); sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit("the vault did not start; see vault.log")
PY
}
stop_vault() { [ -n "$VAULT_PID" ] && kill "$VAULT_PID" 2>/dev/null && wait "$VAULT_PID" 2>/dev/null || true; VAULT_PID=""; }
trap stop_vault EXIT

say "A local key vault: one trusted core (software HSM), its NVRAM in a separate file"
"$VAULT" init --data "$WORK/vault" --nvram "$WORK/vault-nvram/anchor" --address "http://127.0.0.1:$PORT"
start_vault
echo "serving on 127.0.0.1:$PORT; the realm descriptor clients pin: $WORK/vault/realm.json"
export COFFER_VAULT="$WORK/vault/realm.json"
# The chat app vouches for its user with a signed token (a development tenant here).
export COFFER_VAULT_TOKEN
COFFER_VAULT_TOKEN=$("$VAULT" token --data "$WORK/vault" --tenant chat-app --user "+1 555 0123")

say "The old phone: a chat database and media"
python3 bench/gen_dataset.py "$PHONE" --db-bytes 8000000 --media-bytes 12000000 >/dev/null
ls -la "$PHONE" | head -10

say "coffer init with a password: K is registered in the vault behind OPAQUE and cached on the phone"
export XDG_DATA_HOME="$PHONE/.local/share"      # the phone's key cache lives here
export COFFER_CACHE_DIR="$PHONE/.cache/coffer"
export COFFER_PASSWORD="correct horse battery staple"
"$COFFER" init --repo "$CLOUD"

say "coffer backup: the database (consistent, via SQLite's online backup API) and the media"
"$COFFER" backup --repo "$CLOUD" --db "$PHONE/msgstore.db" "$PHONE/media"

say "Daily backups use the cached key: they work with the vault stopped"
stop_vault
python3 bench/gen_dataset.py "$PHONE" --mutate >/dev/null
unset COFFER_PASSWORD
"$COFFER" backup --repo "$CLOUD" --db "$PHONE/msgstore.db" "$PHONE/media"
"$COFFER" snapshots --repo "$CLOUD"
start_vault

say "The phone is lost: its data, its cache and its cached key are gone"
cp -a "$PHONE" "$WORK/what-was-on-the-old-phone"
rm -rf "$PHONE"

say "On the new phone: no key cache; restore with the password (the vault releases K after OPAQUE)"
export XDG_DATA_HOME="$NEWPHONE/.local/share"
export COFFER_CACHE_DIR="$NEWPHONE/.cache/coffer"
export COFFER_PASSWORD="correct horse battery staple"
"$COFFER" restore --repo "$CLOUD" latest --target "$NEWPHONE/restored"

say "Byte-identical?"
RESTORED="$NEWPHONE/restored${WORK}/old-phone"
diff -r "$WORK/what-was-on-the-old-phone/media" "$RESTORED/media" && echo "media: identical"
python3 - "$WORK/what-was-on-the-old-phone/msgstore.db" "$RESTORED/msgstore.db" <<'PY'
import sqlite3, sys
def dump(p):
    c = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    return list(c.iterdump())
a, b = dump(sys.argv[1]), dump(sys.argv[2])
print("database: identical content,", len(a), "statements" if a == b else "DIFFERENT")
sys.exit(0 if a == b else 1)
PY

say "A thief with a third device and the user's token, but not the password: 10 guesses, then nothing"
export XDG_DATA_HOME="$WORK/thief/.local/share"
export COFFER_CACHE_DIR="$WORK/thief/.cache/coffer"
set +e
for i in $(seq 1 10); do
    COFFER_PASSWORD="guess-$i" "$COFFER" snapshots --repo "$CLOUD" 2>&1 | tail -1
    code=${PIPESTATUS[0]}
    echo "   exit code: $code"
    want=3; [ "$i" = 10 ] && want=5      # 3: wrong password; 5: the key is erased
    [ "$code" = "$want" ] || { echo "expected exit code $want"; exit 1; }
done
say "The key is erased for good: now even the right password gets nothing"
COFFER_PASSWORD="correct horse battery staple" "$COFFER" snapshots --repo "$CLOUD" 2>&1 | tail -1
code=${PIPESTATUS[0]}
echo "   exit code: $code"
set -e
[ "$code" = 5 ] || { echo "expected exit code 5"; exit 1; }
echo
echo "(Backups the new phone already restored stay readable there; the vault learned nothing but"
echo " that a key existed. To keep a way back without the vault, use 'coffer key disable --to-recovery-key'.)"
echo; echo "Demo finished. Everything is under $WORK"
