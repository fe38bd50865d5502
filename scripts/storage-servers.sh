#!/usr/bin/env bash
# Real storage servers for coffer-storage's tests, on loopback only:
# an S3 server (moto, PyPI `moto[server]`) and a WebDAV server (PyPI `wsgidav`).
#
#   eval "$(scripts/storage-servers.sh start)"   # set up (once), start, print exports
#   eval "$(scripts/storage-servers.sh env)"     # exports of the running servers
#   scripts/storage-servers.sh stop
#
# `start` is idempotent: servers already running and answering are kept.
# The only download is the venv set-up (target/pyvenv-storage), done once;
# tests never download anything. Logs, pid and port files: target/storage-servers/.
# Everything but the `export` lines goes to stderr, so `eval` sees only those.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

VENV="$top/target/pyvenv-storage"
STATE="$top/target/storage-servers"
BUCKET=coffer-test
# Pinned to the versions ADR 0010 and the research notes were checked against.
PACKAGES=('moto[server]==5.2.5' 'wsgidav==4.4.0' 'cheroot' 'boto3')

log() { echo "storage-servers: $*" >&2; }

# A free loopback port (the kernel picks one; a race with another process
# binding it before the server does is possible but harmless: start fails loudly).
free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { # name
    local pid
    [[ -f "$STATE/$1.pid" ]] || return 1
    pid=$(cat "$STATE/$1.pid")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

port_of() { cat "$STATE/$1.port"; }

answers() { # url
    "$VENV/bin/python" - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="GET"), timeout=2)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is up
EOF
}

wait_until_answers() { # name url
    for _ in $(seq 1 150); do
        if answers "$2"; then return 0; fi
        if ! alive "$1"; then
            log "$1 exited during start-up; its log:"
            tail -n 30 "$STATE/$1.log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    log "$1 did not answer on $2 within 30 s; its log:"
    tail -n 30 "$STATE/$1.log" >&2 || true
    return 1
}

setup_venv() {
    if [[ -x "$VENV/bin/moto_server" && -x "$VENV/bin/wsgidav" ]] \
        && "$VENV/bin/python" -c 'import boto3, cheroot' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null || { log "python3 is needed (with the venv module)"; exit 1; }
    log "setting up $VENV (one-time download: ${PACKAGES[*]})"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PACKAGES[@]}" >&2
}

start_moto() {
    if alive moto && answers "http://127.0.0.1:$(port_of moto)/"; then return 0; fi
    local port
    port=$(free_port)
    echo "$port" >"$STATE/moto.port"
    # setsid: the server must not die with the shell that started it, nor get its signals.
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 </dev/null &
    echo $! >"$STATE/moto.pid"
    wait_until_answers moto "http://127.0.0.1:$port/"
    log "moto (S3) on 127.0.0.1:$port"
}

start_wsgidav() {
    if alive wsgidav && answers "http://127.0.0.1:$(port_of wsgidav)/"; then return 0; fi
    local port
    port=$(free_port)
    echo "$port" >"$STATE/wsgidav.port"
    mkdir -p "$STATE/webdav-root"
    setsid "$VENV/bin/wsgidav" --host 127.0.0.1 --port "$port" --root "$STATE/webdav-root" \
        --auth anonymous -q >"$STATE/wsgidav.log" 2>&1 </dev/null &
    echo $! >"$STATE/wsgidav.pid"
    wait_until_answers wsgidav "http://127.0.0.1:$port/"
    log "wsgidav (WebDAV) on 127.0.0.1:$port, root $STATE/webdav-root"
}

create_bucket() {
    # moto keeps everything in memory: after every (re)start the bucket is new.
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
        "$VENV/bin/python" - "http://127.0.0.1:$(port_of moto)" "$BUCKET" <<'EOF' >&2
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if sys.argv[2] not in names:
    s3.create_bucket(Bucket=sys.argv[2])
EOF
}

print_env() {
    cat <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$(port_of moto)
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export COFFER_TEST_S3_URL=s3://$BUCKET/coffer-tests
export COFFER_TEST_WEBDAV_URL=webdav://127.0.0.1:$(port_of wsgidav)/coffer-tests
export COFFER_TEST_WSGIDAV=$VENV/bin/wsgidav
EOF
}

stop_one() { # name
    if alive "$1"; then
        kill "$(cat "$STATE/$1.pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do alive "$1" || break; sleep 0.1; done
        if alive "$1"; then kill -9 "$(cat "$STATE/$1.pid")" 2>/dev/null || true; fi
        log "stopped $1"
    fi
    rm -f "$STATE/$1.pid"
}

case "${1:-}" in
start)
    mkdir -p "$STATE"
    setup_venv
    start_moto
    start_wsgidav
    create_bucket
    print_env
    ;;
env)
    if ! alive moto || ! alive wsgidav; then
        log "the servers are not running: eval \"\$(scripts/storage-servers.sh start)\""
        exit 1
    fi
    print_env
    ;;
stop)
    stop_one moto
    stop_one wsgidav
    ;;
*)
    echo "usage: $0 start|env|stop" >&2
    exit 2
    ;;
esac
