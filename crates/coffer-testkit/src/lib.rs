//! Test helpers for Coffer: deterministic datasets (files with awkward names,
//! modes, symlinks, empty directories; a chat-style SQLite database), a
//! comparison of two trees down to bytes and metadata, and a driver that runs
//! the real `coffer` binary.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};

/// A seeded RNG: the same seed gives the same dataset.
pub fn rng(seed: u64) -> rand::rngs::SmallRng {
    rand::rngs::SmallRng::seed_from_u64(seed)
}

/// Bytes that compress well (chat-like text).
pub fn text_bytes(r: &mut impl Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "hey", "ok", "see", "you", "tomorrow", "lol", "the", "meeting", "is", "at", "pm", "thanks",
        "love", "this", "photo", "where", "are", "we", "going", "tonight", "dinner", "call", "me",
        "later", "yes", "no", "maybe",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[r.random_range(0..WORDS.len())].as_bytes());
        out.push(if r.random_ratio(1, 12) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Incompressible bytes.
pub fn random_bytes(r: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    r.fill_bytes(&mut v);
    v
}

/// Writes a small but awkward tree under `root`: nested dirs, an empty dir,
/// a symlink, a non-UTF-8 name, odd modes, compressible and random files.
pub fn write_tree(root: &Path, seed: u64, files: usize, max_size: usize) {
    let mut r = rng(seed);
    std::fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    for i in 0..files {
        let dir = match i % 4 {
            0 => root.to_path_buf(),
            1 => root.join("a"),
            2 => root.join("a/b"),
            _ => root.join("a/b/c"),
        };
        let size = if i % 7 == 0 {
            0
        } else {
            r.random_range(1..=max_size)
        };
        let data = if i % 2 == 0 {
            text_bytes(&mut r, size)
        } else {
            random_bytes(&mut r, size)
        };
        let name = format!("file-{i:04}.{}", if i % 2 == 0 { "txt" } else { "bin" });
        std::fs::write(dir.join(name), data).unwrap();
    }
    let odd = root.join(OsStr::from_bytes(b"caf\xe9-latin1-\xff.txt"));
    std::fs::write(&odd, b"not utf-8 name").unwrap();
    std::fs::write(root.join("spaces and \u{1F600} emoji.txt"), b"emoji").unwrap();
    let ro = root.join("read-only.txt");
    std::fs::write(&ro, b"ro").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let ex = root.join("script.sh");
    std::fs::write(&ex, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&ex, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("link-to-b")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", root.join("dangling")).unwrap();
}

/// Creates (or extends) a chat-style SQLite database in WAL mode.
pub fn make_chat_db(path: &Path, messages: usize, seed: u64) {
    let mut r = rng(seed);
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS chats(id INTEGER PRIMARY KEY, title TEXT);
         CREATE TABLE IF NOT EXISTS messages(id INTEGER PRIMARY KEY, chat_id INTEGER, sender INTEGER,
             ts INTEGER, body TEXT, key TEXT);
         CREATE INDEX IF NOT EXISTS m_chat_ts ON messages(chat_id, ts);
         CREATE UNIQUE INDEX IF NOT EXISTS m_key ON messages(key);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO messages(chat_id, sender, ts, body, key) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .unwrap();
        for _ in 0..messages {
            let len = r.random_range(5..200);
            let body = String::from_utf8(text_bytes(&mut r, len)).unwrap();
            let key = format!("{:032x}", r.random::<u128>());
            st.execute(rusqlite::params![
                r.random_range(0..50),
                r.random_range(0..500),
                r.random::<u32>(),
                body,
                key
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// A canonical dump of a SQLite database's content (schema and rows), for
/// logical comparison.
pub fn db_dump(path: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut out = String::new();
    let mut st = c
        .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
        .unwrap();
    let tables: Vec<(String, Option<String>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for (name, sql) in &tables {
        out.push_str(&format!("{name}: {sql:?}\n"));
    }
    for (name, sql) in tables {
        if !sql.unwrap_or_default().starts_with("CREATE TABLE") {
            continue;
        }
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        let mut h = blake3::Hasher::new();
        let mut count = 0;
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                h.update(format!("{:?}|", row.get_ref(i).unwrap()).as_bytes());
            }
            count += 1;
        }
        out.push_str(&format!("{name}: {count} rows {}\n", h.finalize().to_hex()));
    }
    out
}

/// What a path holds, for comparing two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        mode: u32,
        mtime: i64,
        hash: String,
        size: u64,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// Every entry under `root`, by relative path (raw bytes, not necessarily UTF-8).
pub fn snapshot_tree(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let entry = if m.file_type().is_symlink() {
                Entry::Symlink {
                    target: std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                }
            } else if m.is_dir() {
                stack.push(p.clone());
                Entry::Dir {
                    mode: m.mode() & 0o7777,
                }
            } else {
                let data = std::fs::read(&p).unwrap();
                Entry::File {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                    hash: blake3::hash(&data).to_hex().to_string(),
                    size: m.len(),
                }
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Asserts two trees are identical: names, bytes, modes, mtimes, link targets.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = snapshot_tree(expected);
    let b = snapshot_tree(actual);
    for (k, v) in &a {
        match b.get(k) {
            None => panic!("{} missing from the restore", String::from_utf8_lossy(k)),
            Some(w) if w != v => panic!(
                "{} differs: expected {v:?}, got {w:?}",
                String::from_utf8_lossy(k)
            ),
            _ => {}
        }
    }
    for k in b.keys() {
        assert!(
            a.contains_key(k),
            "{} appeared in the restore but was not backed up",
            String::from_utf8_lossy(k)
        );
    }
}

/// A scratch area with a repository and a driver for the real binary.
pub struct Cli {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub key: String,
}

impl Cli {
    /// Creates a repository with `coffer init --json` and keeps its key.
    pub fn init(bin: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let mut cli = Self {
            bin: bin.to_path_buf(),
            dir,
            repo,
            key: String::new(),
        };
        let out = cli.run(&["init", "--json"]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        cli.key = v["recovery_key"].as_str().unwrap().to_string();
        cli
    }

    /// The command with repository, key and an isolated cache set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("COFFER_REPO", &self.repo)
            .env("COFFER_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("COFFER_LOG");
        if !self.key.is_empty() {
            c.env("COFFER_RECOVERY_KEY", &self.key);
        }
        c
    }

    /// Runs and waits.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs, asserts success, returns stdout parsed as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        assert!(
            out.status.success(),
            "coffer {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A path in the scratch area.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Where the restore of absolute path `original` lands under `target`.
    pub fn restored(target: &Path, original: &Path) -> PathBuf {
        target.join(original.strip_prefix("/").unwrap())
    }
}
