#!/usr/bin/env bash
# Coffer vs restic, side by side, on one reproducible chat-app dataset. See bench/README.md.
#
#   bench/run.sh                 # full scale: 1 GiB SQLite DB + 2 GiB media
#   SCALE=0.01 bench/run.sh      # quick run
#
# Knobs (environment): SCALE (1.0), BENCH_DIR (bench/work), COFFER_BUILD (1: cargo build --release
# -p coffer-cli first; 0: use whatever binary is there), COFFER_BIN (target/release/coffer),
# TOOLS ("coffer restic"), KEEP_RESTORES (0: delete restore trees after checking them).
set -uo pipefail # no -e: a failing tool step is recorded in the table, not fatal

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SCALE="${SCALE:-1.0}"
BENCH_DIR="${BENCH_DIR:-$HERE/work}"
COFFER_BUILD="${COFFER_BUILD:-1}"
COFFER_BIN="${COFFER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/coffer}"
TOOLS="${TOOLS:-coffer restic}"
KEEP_RESTORES="${KEEP_RESTORES:-0}"
export RESTIC_PASSWORD="coffer-bench-password"
export RESTIC_CACHE_DIR="$BENCH_DIR/restic-cache"
export DEBIAN_FRONTEND=noninteractive

say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- several runs
# RUNS=N (N > 1): the whole sequence N times, each from a fresh working copy and fresh
# repositories, then one table of medians (with each run's ratio) so that a target is judged on
# more than one run of a noisy machine. Each run's table stays in $BENCH_DIR/runs/.
RUNS="${RUNS:-1}"
if [ "$RUNS" -gt 1 ] && [ -z "${BENCH_RUN_OF:-}" ]; then
  mkdir -p "$BENCH_DIR/runs"
  rm -f "$BENCH_DIR"/runs/run*.tsv "$BENCH_DIR"/runs/run*.md
  for i in $(seq 1 "$RUNS"); do
    say "run $i of $RUNS"
    BENCH_RUN_OF="$i/$RUNS" COFFER_BUILD=$([ "$i" = 1 ] && echo "$COFFER_BUILD" || echo 0) \
      bash "${BASH_SOURCE[0]}" >/dev/null || die "run $i failed"
    cp "$BENCH_DIR/logs/results.tsv" "$BENCH_DIR/runs/run$i.tsv"
    cp "$BENCH_DIR/results.md" "$BENCH_DIR/runs/run$i.md"
  done
  python3 "$HERE/median.py" "$BENCH_DIR"/runs/run*.tsv >"$BENCH_DIR/results-median.md" || die "median report failed"
  cat "$BENCH_DIR/results-median.md"
  exit 0
fi

# ---------------------------------------------------------------------------- tools
APT_UPDATED=0
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to apt-get install $* (or install it yourself)"
  apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  if [ "$APT_UPDATED" = 0 ]; then
    APT_UPDATED=1
    apt-get update -q >/dev/null 2>&1
  fi
  apt-get install -y -q "$@" >/dev/null || die "apt-get install $* failed"
}
command -v python3 >/dev/null || apt_install python3
[ -x /usr/bin/time ] || apt_install time
case " $TOOLS " in *" restic "*) command -v restic >/dev/null || { say "installing restic"; apt_install restic; } ;; esac

COFFER_NA="" # non-empty: why coffer's cells are n/a
case " $TOOLS " in
  *" coffer "*)
    if [ "$COFFER_BUILD" = 1 ]; then
      if command -v cargo >/dev/null; then
        say "building coffer (cargo build --release -p coffer-cli)"
        (cd "$ROOT" && cargo build --release -p coffer-cli) || COFFER_NA="n/a (build failed)"
      else
        say "cargo not found; not building coffer"
      fi
    fi
    if [ -z "$COFFER_NA" ] && [ ! -x "$COFFER_BIN" ]; then COFFER_NA="n/a (binary missing)"; fi
    ;;
  *) COFFER_NA="n/a (not run)" ;;
esac
case " $TOOLS " in *" restic "*) RESTIC_NA="" ;; *) RESTIC_NA="n/a (not run)" ;; esac

# ---------------------------------------------------------------------------- dataset
mkdir -p "$BENCH_DIR"
BENCH_DIR="$(cd "$BENCH_DIR" && pwd)"
SCALE_TAG="$(python3 -c 'import sys; print(f"{float(sys.argv[1]):g}")' "$SCALE")" || die "bad SCALE=$SCALE"
DATASET="$BENCH_DIR/dataset-scale$SCALE_TAG" # pristine, never mutated; reused across runs
DATA="$BENCH_DIR/data"                         # working copy that gets backed up and mutated
LOGS="$BENCH_DIR/logs"
if [ ! -s "$DATASET.json" ]; then
  say "generating dataset (scale $SCALE_TAG) into $DATASET"
  rm -rf "$DATASET"
  python3 "$HERE/gen_dataset.py" "$DATASET" --scale "$SCALE" >"$DATASET.json.tmp" || die "dataset generation failed"
  mv "$DATASET.json.tmp" "$DATASET.json"
fi
say "fresh working copy: $DATA"
rm -rf "$DATA" "$LOGS" "$BENCH_DIR"/repo-* "$BENCH_DIR"/restore-* "$RESTIC_CACHE_DIR"
cp -a "$DATASET" "$DATA" || die "copy failed"
mkdir -p "$LOGS"
RESULTS="$LOGS/results.tsv"
: >"$RESULTS"

data_bytes() { find "$DATA" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }
data_files() { find "$DATA" -type f | wc -l; }
put() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; } # tool step key value

DROP_OK=1
drop_caches() {
  sync
  if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then DROP_OK=0; fi
}

# run_step TOOL STEP CMD...: drop caches, run under /usr/bin/time -v, record rc, wall s, peak RSS.
run_step() {
  local tool=$1 step=$2
  shift 2
  local base="$LOGS/$tool-$step"
  drop_caches
  say "$tool: $step"
  /usr/bin/time -v -o "$base.time" "$@" >"$base.out" 2>"$base.err"
  local rc=$?
  put "$tool" "$step" rc "$rc"
  put "$tool" "$step" wall_s "$(awk -F': ' '/Elapsed \(wall clock\)/ {
      n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$base.time")"
  put "$tool" "$step" rss_kb "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$base.time")"
  [ "$rc" = 0 ] || say "$tool $step failed (rc=$rc), see $base.err"
  return "$rc"
}

# Real executables (not shell functions), so /usr/bin/time measures the tool itself.
C=("$COFFER_BIN")
R=(restic -r "$BENCH_DIR/repo-restic")

# ---------------------------------------------------------------------------- init (untimed)
active() { # tool is still benchmarkable
  case $1 in coffer) [ -z "$COFFER_NA" ] ;; restic) [ -z "$RESTIC_NA" ] ;; esac
}
if active coffer; then
  if "${C[@]}" init --repo "$BENCH_DIR/repo-coffer" --json >"$LOGS/coffer-init.out" 2>"$LOGS/coffer-init.err"; then
    COFFER_RECOVERY_KEY="$(python3 -c '
import json, sys
for line in reversed(sys.stdin.read().strip().splitlines() or [""]):
    try:
        print(json.loads(line)["recovery_key"]); break
    except Exception:
        pass' <"$LOGS/coffer-init.out")"
    if [ -n "$COFFER_RECOVERY_KEY" ]; then export COFFER_RECOVERY_KEY; else COFFER_NA="n/a (init printed no recovery_key)"; fi
  else
    COFFER_NA="n/a (init failed)"
  fi
fi
if active restic; then
  "${R[@]}" init >"$LOGS/restic-init.out" 2>"$LOGS/restic-init.err" || RESTIC_NA="n/a (init failed)"
fi

BYTES_A=$(data_bytes)
FILES_A=$(data_files)
DB_BYTES_A=$(stat -c %s "$DATA/msgstore.db")

# a. first backup
active coffer && run_step coffer a-backup "${C[@]}" backup --repo "$BENCH_DIR/repo-coffer" --db "$DATA/msgstore.db" "$DATA/media"
active coffer && put coffer a-backup repo_bytes "$(du -sb "$BENCH_DIR/repo-coffer" | cut -f1)"
active restic && run_step restic a-backup "${R[@]}" backup "$DATA/msgstore.db" "$DATA/media"
active restic && put restic a-backup repo_bytes "$(du -sb "$BENCH_DIR/repo-restic" | cut -f1)"

# b. incremental change, then backup
say "mutating dataset"
python3 "$HERE/gen_dataset.py" "$DATA" --mutate >"$LOGS/mutate.json" || die "mutate failed"
BYTES_B=$(data_bytes)
FILES_B=$(data_files)
active coffer && run_step coffer b-incremental "${C[@]}" backup --repo "$BENCH_DIR/repo-coffer" --db "$DATA/msgstore.db" "$DATA/media"
active coffer && put coffer b-incremental repo_bytes "$(du -sb "$BENCH_DIR/repo-coffer" | cut -f1)"
active restic && run_step restic b-incremental "${R[@]}" backup "$DATA/msgstore.db" "$DATA/media"
active restic && put restic b-incremental repo_bytes "$(du -sb "$BENCH_DIR/repo-restic" | cut -f1)"

# c. full restore of the latest snapshot into an empty dir; the check is not timed
for tool in coffer restic; do
  active "$tool" || continue
  target="$BENCH_DIR/restore-$tool"
  rm -rf "$target" && mkdir -p "$target"
  if [ "$tool" = coffer ]; then
    run_step coffer c-restore "${C[@]}" restore --repo "$BENCH_DIR/repo-coffer" latest --target "$target"
  else
    run_step restic c-restore "${R[@]}" restore latest --target "$target"
  fi
  if [ "$(awk -F'\t' -v t="$tool" '$1 == t && $2 == "c-restore" && $3 == "rc" {print $4}' "$RESULTS")" = 0 ]; then
    say "$tool: checking restored tree"
    put "$tool" c-restore check "$(python3 "$HERE/compare_restore.py" "$DATA" "$target" 2>&1 | tail -1)"
  fi
  [ "$KEEP_RESTORES" = 1 ] || rm -rf "$target"
done

# d. verify with full data read
active coffer && run_step coffer d-verify "${C[@]}" verify --repo "$BENCH_DIR/repo-coffer" --read-data
active restic && run_step restic d-verify "${R[@]}" check --read-data

# ---------------------------------------------------------------------------- report
COFFER_VERSION="$( (active coffer && "$COFFER_BIN" --version 2>/dev/null | head -1) || true)"
COFFER_VERSION="${COFFER_VERSION:-coffer} (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
RESTIC_VERSION="$(restic version 2>/dev/null | awk '{print $1, $2}')"
CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
export SCALE_TAG BYTES_A FILES_A DB_BYTES_A BYTES_B FILES_B DROP_OK COFFER_NA RESTIC_NA COFFER_VERSION RESTIC_VERSION CPU
export RESULTS DATASET_JSON="$DATASET.json" MUTATE_JSON="$LOGS/mutate.json"
export CORES="$(nproc)" MEM_GIB="$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
python3 - >"$BENCH_DIR/results.md" <<'PY' || die "report failed"
import json, os, time
E = os.environ
MiB = 1 << 20
res = {}
for line in open(E["RESULTS"], encoding="utf-8"):
    tool, step, key, val = line.rstrip("\n").split("\t", 3)
    res[(tool, step, key)] = val
na = {"coffer": E["COFFER_NA"], "restic": E["RESTIC_NA"]}
ds = json.load(open(E["DATASET_JSON"]))
mut = json.load(open(E["MUTATE_JSON"]))
bytes_a, bytes_b = int(E["BYTES_A"]), int(E["BYTES_B"])


def num(tool, step, key):
    v = res.get((tool, step, key))
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cell(tool, step, metric):
    """(text, number or None) for one tool."""
    if na[tool]:
        return na[tool], None
    rc = res.get((tool, step, "rc"))
    if rc is None:
        return "n/a", None
    if metric == "check":
        return res.get((tool, step, "check"), "n/a"), None
    if rc != "0" and metric != "rss":
        return f"FAILED (rc={rc})", None
    dsize = bytes_a if step == "a-backup" else bytes_b
    wall = num(tool, step, "wall_s")
    if metric == "wall":
        return f"{wall:.2f}", wall
    if metric == "rss":
        v = num(tool, step, "rss_kb") / 1024
        return f"{v:.0f}", v
    if metric == "tput":
        v = dsize / MiB / max(wall, 0.01)
        return f"{v:.1f}", v
    if metric == "repo":
        v = num(tool, step, "repo_bytes") / MiB
        return f"{v:.1f}", v


rows = []
steps = [("a-backup", "a. first backup"), ("b-incremental", "b. incremental backup"),
         ("c-restore", "c. full restore"), ("d-verify", "d. verify, full data read")]
metrics = {"wall": "wall time, s", "rss": "peak RSS, MiB", "tput": "throughput, dataset MiB/s",
           "repo": "repository size after, MiB", "check": "restored tree vs source"}
for step, title in steps:
    ms = ["wall", "rss", "tput"] + (["repo"] if "backup" in step or "incremental" in step else []) + (["check"] if step == "c-restore" else [])
    for i, m in enumerate(ms):
        (ct, cv), (rt, rv) = cell("coffer", step, m), cell("restic", step, m)
        ratio = f"{cv / rv:.2f}" if cv is not None and rv else "–"
        rows.append(f"| {title if i == 0 else ''} | {metrics[m]} | {ct} | {rt} | {ratio if m != 'check' else ''} |")

t = time.strftime("%Y-%m-%d %H:%M")
media = ds.get("media_by_kind", {})
print(f"### Coffer vs restic — SCALE={E['SCALE_TAG']}, {t}\n")
print(f"Dataset: msgstore.db {int(E['DB_BYTES_A']) / MiB:.0f} MiB ({ds.get('messages', 0):,} messages) + "
      f"media {ds.get('media_bytes', 0) / MiB:.0f} MiB in {ds.get('media_files', 0)} files "
      f"(half random JPEG/MP4, half text documents and PCM voice notes) = {bytes_a / MiB:.0f} MiB; "
      f"the incremental change adds {mut['new_messages']:,} messages and {mut['new_media_files']} files "
      f"({mut['new_media_bytes'] / MiB:.1f} MiB), giving {bytes_b / MiB:.0f} MiB.  ")
print(f"{E['COFFER_VERSION']} vs {E['RESTIC_VERSION']}; {E['CORES']} cores ({E['CPU']}), {E['MEM_GIB']} GiB RAM, local disk.\n")
print("| step | metric | coffer | restic | coffer/restic |")
print("|---|---|---:|---:|---:|")
print("\n".join(rows))
drop = ("Page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every timed step, so each "
        "tool starts cold." if E["DROP_OK"] == "1" else
        "Page cache could NOT be dropped (not root, or /proc/sys read-only): reads may be served "
        "from cache, which favours the second tool in each step (restic).")
print(f"""
Notes: one run, each step runs coffer first, then restic. {drop} Wall time and peak RSS from
`/usr/bin/time -v`; throughput = all dataset bytes at that point / wall time (also for restore and
verify). Repository size = `du -sb` of the local repository directory. coffer snapshots the DB
through SQLite (`--db`: a WAL snapshot's pages streamed, or the online backup API in rollback-journal mode) while restic reads the file as it is (the DB is idle
during the run, so both see the same content). restic uses its defaults: compression auto, cache
under BENCH_DIR. Restore is checked (SHA-256 per file; DB logically if its bytes differ) after
timing. Ratios < 1 mean coffer is faster/smaller.""")
PY
cat "$BENCH_DIR/results.md"
