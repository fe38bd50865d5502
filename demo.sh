#!/usr/bin/env bash
# The main job, on embedded defaults: back up a chat app's SQLite database and
# media, lose the device, restore everything on a "new device" with the
# 64-digit recovery key, and check it is byte-identical.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

command -v cargo >/dev/null || { echo "demo.sh needs a Rust toolchain (cargo)"; exit 1; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }

say "Building coffer (release)"
cargo build --release --locked -q -p coffer-cli
COFFER="$PWD/target/release/coffer"

WORK="${DEMO_DIR:-$PWD/target/demo}"
rm -rf "$WORK"; mkdir -p "$WORK"
PHONE="$WORK/old-phone"          # the device that will be lost
CLOUD="$WORK/cloud/repo"         # stands in for Google Drive / S3 / WebDAV
NEWPHONE="$WORK/new-phone"

say "The old phone: a chat database and media"
python3 bench/gen_dataset.py "$PHONE" --db-bytes 8000000 --media-bytes 12000000 >/dev/null
ls -la "$PHONE" "$PHONE/media" | head -20

say "coffer init: a new repository; the recovery key is shown once"
export COFFER_CACHE_DIR="$PHONE/.cache/coffer"
KEY_JSON=$("$COFFER" init --repo "$CLOUD" --json)
export COFFER_RECOVERY_KEY
COFFER_RECOVERY_KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["recovery_key"])' "$KEY_JSON")
echo "recovery key: $COFFER_RECOVERY_KEY"

say "coffer backup: the database (consistent, via SQLite's online backup API) and the media"
"$COFFER" backup --repo "$CLOUD" --db "$PHONE/msgstore.db" "$PHONE/media"

say "A day later: new messages and photos; the incremental backup reads only what changed"
python3 bench/gen_dataset.py "$PHONE" --mutate >/dev/null
"$COFFER" backup --repo "$CLOUD" --db "$PHONE/msgstore.db" "$PHONE/media"
"$COFFER" snapshots --repo "$CLOUD"

say "The phone is lost: its data and its cache are gone"
cp -a "$PHONE" "$WORK/what-was-on-the-old-phone"
rm -rf "$PHONE"

say "On the new phone: restore with the recovery key (typed in upper case, with dashes: both are fine)"
export COFFER_CACHE_DIR="$NEWPHONE/.cache/coffer"
COFFER_RECOVERY_KEY=$(echo "$COFFER_RECOVERY_KEY" | tr 'a-f ' 'A-F-')
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

say "A wrong key is refused as a wrong key (exit code 3), not as damage"
set +e
COFFER_RECOVERY_KEY=$(printf '0%.0s' $(seq 64)) "$COFFER" snapshots --repo "$CLOUD"; echo "exit code: $?"
set -e

say "coffer verify --read-data: every pack read back and authenticated"
"$COFFER" verify --repo "$CLOUD" --read-data
echo; echo "Demo finished. Everything is under $WORK"
