#!/usr/bin/env python3
"""Check that a restore tree holds the benchmark dataset unchanged.

    compare_restore.py SRC_DATA_DIR RESTORE_DIR

Tools lay restored files out differently (restic keeps the absolute source path under the target,
others may not), so each source file is looked up in RESTORE_DIR by its path relative to
SRC_DATA_DIR, matched as a path suffix. Files are compared by SHA-256. A SQLite file whose bytes
differ is then compared logically (schema + every row of every table), since a tool that snapshots
the DB through SQLite's backup API may legitimately write different header/page bytes.

Prints one short verdict line; exit 0 when everything matches (bytes, or logically for DBs).
"""

import hashlib
import os
import sqlite3
import sys


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def db_digest(path):
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    h = hashlib.sha256()
    names = [r[0] for r in con.execute(
        "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for (sql,) in con.execute("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY type, name"):
        h.update(sql.encode())
    for n in names:
        h.update(n.encode())
        for row in con.execute(f'SELECT * FROM "{n}" ORDER BY 1'):
            h.update(repr(row).encode())
    con.close()
    return h.hexdigest()


def walk(root):
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(d, f), root))
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    restored = walk(dst)
    by_name = {}
    for r in restored:
        by_name.setdefault(os.path.basename(r), []).append(r)
    ok = logical = 0
    problems = []
    used = set()
    # SQLite's -wal/-shm side files appear next to the DB once anything opens it
    # (coffer's --db snapshot included); neither tool backs them up as files.
    src_files = [f for f in walk(src) if not f.endswith(("-wal", "-shm"))]
    for rel in sorted(src_files):
        cands = [c for c in by_name.get(os.path.basename(rel), []) if c == rel or c.endswith(os.sep + rel)]
        if not cands:
            # a DB restored by itself may sit anywhere under its own name
            cands = by_name.get(os.path.basename(rel), []) if rel.endswith(".db") else []
        if len(cands) != 1:
            problems.append(f"{rel}: {'missing' if not cands else 'ambiguous'}")
            continue
        got = os.path.join(dst, cands[0])
        used.add(cands[0])
        if sha256(os.path.join(src, rel)) == sha256(got):
            ok += 1
        elif rel.endswith(".db") and db_digest(os.path.join(src, rel)) == db_digest(got):
            logical += 1
        else:
            problems.append(f"{rel}: content differs")
    extra = [r for r in restored if r not in used and not r.endswith(("-wal", "-shm"))]
    if problems:
        print(f"MISMATCH: {len(problems)} of {len(src_files)} files ({'; '.join(problems[:2])})")
        return 1
    verdict = f"identical ({ok} files byte-identical"
    if logical:
        verdict += f", {logical} DB logically identical, bytes differ"
    if extra:
        verdict += f", {len(extra)} extra files"
    print(verdict + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
