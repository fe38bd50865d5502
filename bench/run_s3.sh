#!/usr/bin/env bash
# Coffer vs restic against the same local S3 server (moto), same dataset, same run.
# See bench/README.md ("Against S3") and docs/benchmarks.md.
#
#   bench/run_s3.sh                  # full scale: the 3.3 GB dataset of bench/run.sh
#   SCALE=0.1 bench/run_s3.sh        # smaller
#
# Steps, each timed with the page cache dropped: a. first backup of msgstore.db + media into a
# fresh S3 prefix; c. full restore of that snapshot into an empty directory (checked after, untimed);
# d. verify / check with a full data read. moto runs on loopback, started by this script (a server
# of its own, so other users of scripts/storage-servers.sh neither disturb it nor share its memory).
# moto's CPU time and peak RSS are sampled from /proc around every step: when its CPU time is
# close to the step's wall time, moto (one Python process) is the bottleneck, not the client.
#
# Knobs: SCALE (1.0), BENCH_DIR (bench/work/s3), DATASET_DIR (bench/work: where run.sh keeps its
# pristine datasets; generated there if missing), COFFER_BUILD (1), COFFER_BIN, TOOLS ("coffer
# restic"), KEEP_RESTORES (0).
set -uo pipefail # no -e: a failing tool step is recorded in the table, not fatal

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SCALE="${SCALE:-1.0}"
BENCH_DIR="${BENCH_DIR:-$HERE/work/s3}"
DATASET_DIR="${DATASET_DIR:-$HERE/work}"
COFFER_BUILD="${COFFER_BUILD:-1}"
COFFER_BIN="${COFFER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/coffer}"
TOOLS="${TOOLS:-coffer restic}"
KEEP_RESTORES="${KEEP_RESTORES:-0}"
VENV="$ROOT/target/pyvenv-storage"
BUCKET=coffer-bench
export RESTIC_PASSWORD="coffer-bench-password"
export DEBIAN_FRONTEND=noninteractive

say() { printf '[bench-s3 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- one benchmark at a time
while pgrep -f loginbench >/dev/null || pgrep -f 'bench/run.sh' >/dev/null; do
  say "another benchmark is running (loginbench or bench/run.sh); waiting"
  sleep 30
done

# ---------------------------------------------------------------------------- tools
command -v python3 >/dev/null || die "python3 is needed"
[ -x /usr/bin/time ] || apt-get install -y -q time >/dev/null || die "apt-get install time failed"
case " $TOOLS " in
  *" restic "*)
    if ! command -v restic >/dev/null; then
      say "installing restic"
      apt-get install -y -q restic >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q restic >/dev/null; } || die "apt-get install restic failed"
    fi ;;
esac
if [ ! -x "$VENV/bin/moto_server" ]; then
  say "setting up moto (scripts/storage-servers.sh start: its venv)"
  bash "$ROOT/scripts/storage-servers.sh" start >/dev/null || die "storage-servers.sh start failed"
fi
COFFER_NA=""
case " $TOOLS " in
  *" coffer "*)
    if [ "$COFFER_BUILD" = 1 ]; then
      say "building coffer (cargo build --release -p coffer-cli)"
      (cd "$ROOT" && cargo build --release -p coffer-cli) || COFFER_NA="n/a (build failed)"
    fi
    [ -n "$COFFER_NA" ] || [ -x "$COFFER_BIN" ] || COFFER_NA="n/a (binary missing)" ;;
  *) COFFER_NA="n/a (not run)" ;;
esac
case " $TOOLS " in *" restic "*) RESTIC_NA="" ;; *) RESTIC_NA="n/a (not run)" ;; esac

# ---------------------------------------------------------------------------- dataset
mkdir -p "$BENCH_DIR" "$DATASET_DIR"
BENCH_DIR="$(cd "$BENCH_DIR" && pwd)"
SCALE_TAG="$(python3 -c 'import sys; print(f"{float(sys.argv[1]):g}")' "$SCALE")" || die "bad SCALE=$SCALE"
DATASET="$DATASET_DIR/dataset-scale$SCALE_TAG"
if [ ! -s "$DATASET.json" ]; then
  say "generating dataset (scale $SCALE_TAG) into $DATASET"
  rm -rf "$DATASET"
  python3 "$HERE/gen_dataset.py" "$DATASET" --scale "$SCALE" >"$DATASET.json.tmp" || die "dataset generation failed"
  mv "$DATASET.json.tmp" "$DATASET.json"
fi
DATA="$BENCH_DIR/data"
LOGS="$BENCH_DIR/logs"
say "fresh working copy: $DATA"
rm -rf "$DATA" "$LOGS" "$BENCH_DIR"/restore-* "$BENCH_DIR"/cache-*
cp -a "$DATASET" "$DATA" || die "copy failed"
mkdir -p "$LOGS"
RESULTS="$LOGS/results.tsv"
: >"$RESULTS"
put() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# ---------------------------------------------------------------------------- moto
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOGS/moto.log" 2>&1 </dev/null &
MOTO=$!
trap 'kill "$MOTO" 2>/dev/null' EXIT
for _ in $(seq 1 150); do
  "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null && break
  kill -0 "$MOTO" 2>/dev/null || die "moto exited; see $LOGS/moto.log"
  sleep 0.2
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
"$VENV/bin/python" -c "
import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='$BUCKET')" || die "cannot create the bucket"
say "moto (pid $MOTO) on 127.0.0.1:$PORT, bucket $BUCKET"

# Bytes stored under a prefix of the bucket.
s3_bytes() {
  "$VENV/bin/python" - "$1" <<EOF
import sys, boto3
s3 = boto3.client("s3", endpoint_url="$AWS_ENDPOINT_URL")
total = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="$BUCKET", Prefix=sys.argv[1]):
    total += sum(o["Size"] for o in page.get("Contents", []))
print(total)
EOF
}
moto_cpu_ticks() { awk '{print $14 + $15}' "/proc/$MOTO/stat"; }
moto_rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$MOTO/status"; }
moto_hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$MOTO/status"; }
TICKS="$(getconf CLK_TCK)"

DROP_OK=1
drop_caches() {
  sync
  if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then DROP_OK=0; fi
}

# run_step TOOL STEP CMD...: drop caches, time it, record rc, wall s, client CPU s, peak RSS, moto CPU s.
run_step() {
  local tool=$1 step=$2
  shift 2
  local base="$LOGS/$tool-$step"
  drop_caches
  say "$tool: $step"
  local t0
  t0="$(moto_cpu_ticks)"
  /usr/bin/time -v -o "$base.time" "$@" >"$base.out" 2>"$base.err"
  local rc=$?
  local t1
  t1="$(moto_cpu_ticks)"
  put "$tool" "$step" rc "$rc"
  put "$tool" "$step" wall_s "$(awk -F': ' '/Elapsed \(wall clock\)/ {
      n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$base.time")"
  put "$tool" "$step" cpu_s "$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$base.time")"
  put "$tool" "$step" rss_kb "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$base.time")"
  put "$tool" "$step" moto_cpu_s "$(awk -v a="$t0" -v b="$t1" -v t="$TICKS" 'BEGIN {print (b - a) / t}')"
  put "$tool" "$step" moto_rss_kb "$(moto_rss_kb)"
  [ "$rc" = 0 ] || say "$tool $step failed (rc=$rc), see $base.err"
  return "$rc"
}

C=("$COFFER_BIN")
CREPO="s3://$BUCKET/coffer"
export COFFER_CACHE_DIR="$BENCH_DIR/cache-coffer"
export RESTIC_CACHE_DIR="$BENCH_DIR/cache-restic"
R=(restic -r "s3:$AWS_ENDPOINT_URL/$BUCKET/restic")
active() { case $1 in coffer) [ -z "$COFFER_NA" ] ;; restic) [ -z "$RESTIC_NA" ] ;; esac; }

# ---------------------------------------------------------------------------- init (untimed)
if active coffer; then
  if "${C[@]}" init --repo "$CREPO" --json >"$LOGS/coffer-init.out" 2>"$LOGS/coffer-init.err"; then
    COFFER_RECOVERY_KEY="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["recovery_key"])' <"$LOGS/coffer-init.out")"
    export COFFER_RECOVERY_KEY
  else
    COFFER_NA="n/a (init failed)"
  fi
fi
if active restic; then
  "${R[@]}" init >"$LOGS/restic-init.out" 2>"$LOGS/restic-init.err" || RESTIC_NA="n/a (init failed, see $LOGS/restic-init.err)"
fi
BYTES=$(find "$DATA" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}')
FILES=$(find "$DATA" -type f | wc -l)

# a. first backup
active coffer && run_step coffer a-backup "${C[@]}" backup --repo "$CREPO" --db "$DATA/msgstore.db" "$DATA/media"
active coffer && put coffer a-backup repo_bytes "$(s3_bytes coffer/)"
active restic && run_step restic a-backup "${R[@]}" backup "$DATA/msgstore.db" "$DATA/media"
active restic && put restic a-backup repo_bytes "$(s3_bytes restic/)"

# c. full restore of that snapshot; the check is not timed
for tool in coffer restic; do
  active "$tool" || continue
  target="$BENCH_DIR/restore-$tool"
  rm -rf "$target" && mkdir -p "$target"
  if [ "$tool" = coffer ]; then
    run_step coffer c-restore "${C[@]}" restore --repo "$CREPO" latest --target "$target"
  else
    run_step restic c-restore "${R[@]}" restore latest --target "$target"
  fi
  if [ "$(awk -F'\t' -v t="$tool" '$1 == t && $2 == "c-restore" && $3 == "rc" {print $4}' "$RESULTS")" = 0 ]; then
    say "$tool: checking restored tree"
    put "$tool" c-restore check "$(python3 "$HERE/compare_restore.py" "$DATA" "$target" 2>&1 | tail -1)"
  fi
  [ "$KEEP_RESTORES" = 1 ] || rm -rf "$target"
done

# d. verify with a full data read
active coffer && run_step coffer d-verify "${C[@]}" verify --repo "$CREPO" --read-data
active restic && run_step restic d-verify "${R[@]}" check --read-data
put moto all hwm_kb "$(moto_hwm_kb)"

# ---------------------------------------------------------------------------- report
COFFER_VERSION="$( (active coffer && "$COFFER_BIN" --version 2>/dev/null | head -1) || true)"
COFFER_VERSION="${COFFER_VERSION:-coffer} (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
RESTIC_VERSION="$(restic version 2>/dev/null | awk '{print $1, $2}')"
MOTO_VERSION="moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)')"
CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
export SCALE_TAG BYTES FILES DROP_OK COFFER_NA RESTIC_NA COFFER_VERSION RESTIC_VERSION MOTO_VERSION CPU RESULTS
export CORES="$(nproc)" MEM_GIB="$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
python3 - >"$BENCH_DIR/results.md" <<'PY' || die "report failed"
import os, time
E = os.environ
MiB = 1 << 20
res = {}
for line in open(E["RESULTS"], encoding="utf-8"):
    tool, step, key, val = line.rstrip("\n").split("\t", 3)
    res[(tool, step, key)] = val
na = {"coffer": E["COFFER_NA"], "restic": E["RESTIC_NA"]}
size = int(E["BYTES"])


def num(tool, step, key):
    try:
        return float(res.get((tool, step, key)))
    except (TypeError, ValueError):
        return None


def cell(tool, step, metric):
    if na[tool]:
        return na[tool], None
    rc = res.get((tool, step, "rc"))
    if rc is None:
        return "n/a", None
    if metric == "check":
        return res.get((tool, step, "check"), "n/a"), None
    if rc != "0":
        return f"FAILED (rc={rc})", None
    wall = num(tool, step, "wall_s")
    if metric == "wall":
        return f"{wall:.2f}", wall
    if metric == "tput":
        v = size / MiB / max(wall, 0.01)
        return f"{v:.1f}", v
    if metric == "cpu":
        v = num(tool, step, "cpu_s")
        return f"{v:.1f}", v
    if metric == "rss":
        v = num(tool, step, "rss_kb") / 1024
        return f"{v:.0f}", v
    if metric == "moto":
        v = num(tool, step, "moto_cpu_s")
        return f"{v:.1f} ({100 * v / max(wall, 0.01):.0f}% of wall)", v
    if metric == "repo":
        v = num(tool, step, "repo_bytes") / MiB
        return f"{v:.1f}", v


steps = [("a-backup", "a. first backup"), ("c-restore", "c. full restore"),
         ("d-verify", "d. verify, full data read")]
names = {"wall": "wall time, s", "tput": "throughput, dataset MiB/s", "cpu": "client CPU (user+sys), s",
         "rss": "client peak RSS, MiB", "moto": "moto CPU, s", "repo": "bytes stored in S3, MiB",
         "check": "restored tree vs source"}
rows = []
for step, title in steps:
    ms = ["wall", "tput", "cpu", "rss", "moto"] + (["repo"] if step == "a-backup" else []) + (["check"] if step == "c-restore" else [])
    for i, m in enumerate(ms):
        (ct, cv), (rt, rv) = cell("coffer", step, m), cell("restic", step, m)
        if m in ("wall", "cpu", "rss", "repo") and cv is not None and rv:
            ratio = f"{rv / cv:.2f}× faster" if m == "wall" else f"{cv / rv:.2f}"
        else:
            ratio = ""
        rows.append(f"| {title if i == 0 else ''} | {names[m]} | {ct} | {rt} | {ratio} |")

hwm = num("moto", "all", "hwm_kb")
print(f"### Coffer vs restic on S3 (moto) — SCALE={E['SCALE_TAG']}, {time.strftime('%Y-%m-%d %H:%M')}\n")
print(f"Dataset: {size / MiB:.0f} MiB in {E['FILES']} files (bench/gen_dataset.py: msgstore.db + media).  ")
print(f"{E['COFFER_VERSION']} vs {E['RESTIC_VERSION']}; {E['MOTO_VERSION']} on loopback (one Python "
      f"process, peak RSS {hwm / 1024 if hwm else 0:.0f} MiB); {E['CORES']} cores ({E['CPU']}), {E['MEM_GIB']} GiB RAM.\n")
print("| step | metric | coffer | restic | coffer vs restic |")
print("|---|---|---:|---:|---:|")
print("\n".join(rows))
drop = ("Page cache dropped before every timed step." if E["DROP_OK"] == "1" else
        "Page cache could NOT be dropped: reads may be served from cache.")
print(f"""
Notes: one run; each step runs coffer first, then restic, against the same moto process and bucket
(prefixes `coffer/` and `restic/`). {drop} Wall time, client CPU and peak RSS from
`/usr/bin/time -v`; moto CPU from `/proc/<pid>/stat` around the step (100% of wall = one core
busy; moto serves requests on threads under Python's GIL, so about one core is its ceiling).
Restore is the snapshot just made, with each tool's cache from the backup (same device), and is
checked after timing. For "coffer vs restic", a ratio above 1 in wall time means coffer is faster;
other ratios are coffer/restic.""")
PY
cat "$BENCH_DIR/results.md"
