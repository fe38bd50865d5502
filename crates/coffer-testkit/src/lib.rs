//! Test helpers for Coffer: deterministic datasets (files with awkward names,
//! modes, symlinks, empty directories; a chat-style SQLite database), a
//! comparison of two trees down to bytes and metadata, and a driver that runs
//! the real `coffer` binary against a repository on any [`Backend`]: a local
//! directory, S3 (moto) or WebDAV (WsgiDAV).
//!
//! The engine's tests run once per backend: [`backend_tests!`] turns each
//! `fn name(backend: Backend)` into `local::name`, `s3::name` and
//! `webdav::name`. The remote variants need the local servers of
//! `scripts/storage-servers.sh` and fail (never skip) without them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use coffer_storage::{BlobStore, ObjectInfo};

pub mod sim;

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

/// Where a test's repository lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A directory (the `LocalStore`).
    Local,
    /// S3 on the local moto server: `s3://coffer-test/coffer-tests/<unique>`.
    S3,
    /// WebDAV on the local WsgiDAV server: `webdav://127.0.0.1:<port>/coffer-tests/<unique>`.
    WebDav,
}

/// The variable that names each remote backend's base URL.
const S3_VAR: &str = "COFFER_TEST_S3_URL";
const WEBDAV_VAR: &str = "COFFER_TEST_WEBDAV_URL";

/// A variable the storage servers' script exports; a test that needs one
/// fails (never skips) when it is missing, and says how to set it.
pub fn server_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs the local S3 (moto) and WebDAV (WsgiDAV) servers. \
             Start them with `eval \"$(bash scripts/storage-servers.sh start)\"` (or, if they \
             already run, `eval \"$(bash scripts/storage-servers.sh env)\"`) in the shell that \
             runs cargo test; scripts/test.sh does it"
        ),
    }
}

impl Backend {
    /// Every backend, local first.
    pub const ALL: [Backend; 3] = [Backend::Local, Backend::S3, Backend::WebDav];

    /// `local`, `s3` or `webdav`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3 => "s3",
            Backend::WebDav => "webdav",
        }
    }

    /// Whether the repository is behind a server.
    pub fn is_remote(self) -> bool {
        self != Backend::Local
    }

    /// `local` when local, else `remote` (for counts scaled down remotely).
    pub fn pick<T>(self, local: T, remote: T) -> T {
        if self.is_remote() {
            remote
        } else {
            local
        }
    }

    /// A repository location no other test uses: `dir/<name>` locally, a
    /// fresh prefix under the server's base URL remotely (named after the
    /// running test, with a unique suffix).
    pub fn location(self, dir: &Path, name: &str) -> String {
        let base = match self {
            Backend::Local => return dir.join(name).to_str().unwrap().to_string(),
            Backend::S3 => server_env(S3_VAR),
            Backend::WebDav => server_env(WEBDAV_VAR),
        };
        format!("{}/{}", base.trim_end_matches('/'), unique_name(name))
    }
}

/// `<test name>-<name>-<pid>-<nanoseconds>-<counter>`, in URL-safe characters.
fn unique_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let test: String = std::thread::current()
        .name()
        .unwrap_or("test")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{test}-{name}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs each `fn name(backend: Backend)` of the calling test file once per
/// backend, as `local::name`, `s3::name` and `webdav::name`:
///
/// ```text
/// coffer_testkit::backend_tests!(backup_and_restore, incremental);
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod local {
            $( #[test] fn $name() { super::$name($crate::Backend::Local) } )*
        }
        mod s3 {
            $( #[test] fn $name() { super::$name($crate::Backend::S3) } )*
        }
        mod webdav {
            $( #[test] fn $name() { super::$name($crate::Backend::WebDav) } )*
        }
    };
}

/// A scratch area with a repository (on any backend) and a driver for the
/// real binary. Remote repositories are deleted when it is dropped.
pub struct Cli {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    /// The repository location as `--repo` takes it: a path or a URL.
    pub repo: String,
    pub backend: Backend,
    pub key: String,
    store: OnceLock<Arc<dyn BlobStore>>,
}

impl Cli {
    /// Creates a local repository with `coffer init --json` and keeps its key.
    pub fn init(bin: &Path) -> Self {
        Self::init_on(bin, Backend::Local)
    }

    /// Creates a repository on `backend` and keeps its key.
    pub fn init_on(bin: &Path, backend: Backend) -> Self {
        let mut cli = Self::new_on(bin, backend);
        cli.init_repo();
        cli
    }

    /// Creates a repository at `location` (a path or URL of `backend`).
    pub fn init_at(bin: &Path, backend: Backend, location: &str) -> Self {
        let mut cli = Self::new_on(bin, backend);
        cli.repo = location.to_string();
        cli.init_repo();
        cli
    }

    /// A scratch area and a fresh, empty location on `backend`; no key.
    pub fn new_on(bin: &Path, backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = backend.location(dir.path(), "repo");
        Self {
            bin: bin.to_path_buf(),
            dir,
            repo,
            backend,
            key: String::new(),
            store: OnceLock::new(),
        }
    }

    fn init_repo(&mut self) {
        let out = self.run(&["init", "--json"]);
        assert!(
            out.status.success(),
            "init at {} failed: {}",
            self.repo,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        self.key = v["recovery_key"].as_str().unwrap().to_string();
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
            "coffer {args:?} on {} failed ({:?}): {}",
            self.backend.name(),
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

    /// The repository's directory; only for a local repository.
    pub fn local_repo(&self) -> &Path {
        assert_eq!(
            self.backend,
            Backend::Local,
            "local_repo() of a {} repository",
            self.backend.name()
        );
        Path::new(&self.repo)
    }

    /// The repository's store, opened on the same location as the binary
    /// uses (to look at objects and to tamper with them).
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        self.store
            .get_or_init(|| coffer_storage::open(&self.repo).unwrap())
    }

    /// The objects under `prefix`, sorted by name.
    pub fn objects(&self, prefix: &str) -> Vec<ObjectInfo> {
        self.store().list(prefix).unwrap()
    }

    /// The names of the objects under `prefix`, sorted.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        self.objects(prefix).into_iter().map(|o| o.name).collect()
    }

    /// (objects, bytes) under `prefix`.
    pub fn usage(&self, prefix: &str) -> (u64, u64) {
        let o = self.objects(prefix);
        (o.len() as u64, o.iter().map(|o| o.size).sum())
    }

    /// One object's bytes.
    pub fn get(&self, name: &str) -> Vec<u8> {
        self.store()
            .get(name)
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
    }

    /// Writes (or replaces) one object.
    pub fn put(&self, name: &str, data: &[u8]) {
        self.store()
            .put(name, data)
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
    }

    /// Deletes one object.
    pub fn delete(&self, name: &str) {
        self.store()
            .delete(name)
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }

    /// Copies every object of this repository into `other`'s location.
    pub fn copy_objects_to(&self, other: &Cli) {
        for o in self.objects("") {
            other.put(&o.name, &self.get(&o.name));
        }
    }

    /// A copy of the repository (at a fresh location of the same backend)
    /// and of the local cache, driven with the same key.
    pub fn copy(&self) -> Cli {
        let mut other = Cli::new_on(&self.bin, self.backend);
        other.key = self.key.clone();
        self.copy_objects_to(&other);
        let cache = self.path("cache");
        if cache.exists() {
            let st = Command::new("cp")
                .arg("-a")
                .arg(&cache)
                .arg(other.path("cache"))
                .status()
                .unwrap();
            assert!(st.success(), "cp -a cache");
        }
        other
    }
}

impl Drop for Cli {
    /// A remote repository is deleted (moto keeps everything in memory).
    fn drop(&mut self) {
        if !self.backend.is_remote() {
            return;
        }
        // Few retries: a test that failed with its server down must not hang here.
        let Ok(location) = coffer_storage::Location::parse(&self.repo) else {
            return;
        };
        let Ok(cloud) = coffer_storage::CloudStore::open(
            &location,
            coffer_storage::CloudOptions {
                request_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            },
        ) else {
            return;
        };
        let store = coffer_storage::RetryStore::new(
            cloud,
            coffer_storage::RetryPolicy {
                max_attempts: 2,
                ..Default::default()
            },
        );
        if let Ok(objects) = store.list("") {
            for o in objects {
                let _ = store.delete(&o.name);
            }
        }
        let _ = store.remove_stale_temporaries(std::time::Duration::ZERO);
    }
}
