#!/usr/bin/env python3
"""Median table over several bench/run.sh runs (RUNS=N bench/run.sh calls this).

Each argument is one run's results.tsv (tool, step, key, value per line). Prints, per step, the
median wall time of each tool, each run's speed-up (restic wall / coffer wall) and their median,
and the median peak RSS and repository size. A run where either tool failed a step counts as
missing for that step, and the table says how many runs were used.
"""
import statistics
import sys

STEPS = [("a-backup", "first backup"), ("b-incremental", "incremental backup"),
         ("c-restore", "full restore"), ("d-verify", "verify --read-data")]
MiB = 1 << 20


def load(path):
    res = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            tool, step, key, val = line.rstrip("\n").split("\t", 3)
            res[(tool, step, key)] = val
    return res


def num(res, tool, step, key):
    try:
        return float(res[(tool, step, key)])
    except (KeyError, ValueError):
        return None


def ok(res, tool, step):
    return res.get((tool, step, "rc")) == "0"


def main(paths):
    runs = [load(p) for p in paths]
    print(f"### Coffer vs restic, median of {len(runs)} runs\n")
    print("| step | runs | coffer wall, s | restic wall, s | speed-up per run | median speed-up "
          "| peak RSS coffer vs restic, MiB | repo coffer vs restic, MiB |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for step, title in STEPS:
        used = [r for r in runs if ok(r, "coffer", step) and ok(r, "restic", step)]
        if not used:
            print(f"| {title} | 0 | n/a | n/a | | | | |")
            continue
        cw = [num(r, "coffer", step, "wall_s") for r in used]
        rw = [num(r, "restic", step, "wall_s") for r in used]
        ups = [b / a for a, b in zip(cw, rw) if a]
        crss = statistics.median(num(r, "coffer", step, "rss_kb") / 1024 for r in used)
        rrss = statistics.median(num(r, "restic", step, "rss_kb") / 1024 for r in used)
        repo = ""
        if num(used[0], "coffer", step, "repo_bytes") is not None:
            c = statistics.median(num(r, "coffer", step, "repo_bytes") / MiB for r in used)
            s = statistics.median(num(r, "restic", step, "repo_bytes") / MiB for r in used)
            repo = f"{c:.1f} vs {s:.1f}"
        print(f"| {title} | {len(used)} | {statistics.median(cw):.2f} | {statistics.median(rw):.2f} "
              f"| {', '.join(f'{u:.2f}×' for u in ups)} | **{statistics.median(ups):.2f}×** "
              f"| {crss:.0f} vs {rrss:.0f} | {repo} |")
    checks = [r.get(("coffer", "c-restore", "check"), "n/a") for r in runs]
    print(f"\ncoffer's restored tree vs source, per run: {'; '.join(checks)}.")
    print("Speed-up = restic's wall time / coffer's, per run; each run starts from a fresh working "
          "copy and fresh repositories, with the page cache dropped before every timed step.")


if __name__ == "__main__":
    main(sys.argv[1:])
