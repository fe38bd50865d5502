//! The negative test kit, in the style of age's test vectors: every case takes
//! a real repository made by the real `coffer` binary (init, a backup of a
//! small tree and a SQLite database, then a second backup), breaks it in one
//! stated way, runs one command as a new device would (empty cache unless the
//! case says otherwise), and states the exit code and the words the error must
//! contain.
//!
//! The kit runs on each backend (local directory, S3 on moto, WebDAV on
//! WsgiDAV): the repository is copied and broken object by object through a
//! `BlobStore` opened on the same location as the binary's.
//!
//! Every restore is also checked to have written nothing unauthenticated:
//! each restored file equals, byte for byte, what a clean restore of the
//! intact repository writes, or is absent; no `.coffer-partial` file is left.
//!
//! Exit codes (see `coffer-cli/src/cli.rs`): 0 ok, 1 other, 3 wrong key,
//! 4 integrity failure.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use coffer_crypto::{BackupKey, RecoveryKey, RepoKeys};
use coffer_repo::format::config::{encode_config, peek_config};
use coffer_repo::format::pack::pack_name;
use coffer_repo::format::types::{BlobKind, IndexPack};
use coffer_repo::Id;
use coffer_storage::BlobStore;
use coffer_testkit::{
    backend_tests, db_dump, make_chat_db, snapshot_tree, write_tree, Backend, Cli, Entry,
};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

// Engine bugs the kit found were fixed: a damaged repository id or key-check
// reads as damage (config checksum), version 0 is damage, and verify re-reads
// every index file from storage. Their cases below now hold as specified.

/// An id that no object of the fixture has.
const FAKE_ID: &str = "abababababababababababababababababababababababababababababababab";

/// What one repository holds, learnt through the library with the key.
struct Layout {
    /// The repository's objects.
    store: Arc<dyn BlobStore>,
    /// Snapshots, oldest first.
    snaps: Vec<Id>,
    /// The index file each backup wrote, in backup order.
    index: Vec<Id>,
    /// The data pack each backup wrote, in backup order.
    data: Vec<IndexPack>,
    /// The tree pack each backup wrote, in backup order.
    trees: Vec<IndexPack>,
}

/// One object of a repository, to break.
struct Obj<'a> {
    store: &'a dyn BlobStore,
    name: String,
}

impl Obj<'_> {
    fn get(&self) -> Vec<u8> {
        self.store
            .get(&self.name)
            .unwrap_or_else(|e| panic!("get {}: {e}", self.name))
    }

    fn put(&self, data: &[u8]) {
        self.store
            .put(&self.name, data)
            .unwrap_or_else(|e| panic!("put {}: {e}", self.name));
    }
}

impl Layout {
    fn read(cli: &Cli, scratch: &Path) -> Self {
        let k = RecoveryKey::parse(&cli.key).unwrap();
        let coffer = coffer_client::Coffer::open_with_cache(&cli.repo, &k, scratch).unwrap();
        let r = coffer.repository();
        let mut out = Layout {
            store: cli.store().clone(),
            snaps: Vec::new(),
            index: Vec::new(),
            data: Vec::new(),
            trees: Vec::new(),
        };
        for (id, snap) in r.snapshots().unwrap() {
            out.snaps.push(id);
            assert_eq!(snap.index_ids.len(), 1, "one index file per small backup");
            let ix = snap.index_ids[0];
            out.index.push(ix);
            for p in r.read_index(&ix).unwrap().packs {
                let kind = p.blobs[0].kind;
                assert!(
                    p.blobs.iter().all(|b| b.kind == kind),
                    "packs hold one kind"
                );
                match kind {
                    BlobKind::Data => out.data.push(p),
                    BlobKind::Tree => out.trees.push(p),
                }
            }
        }
        assert_eq!(out.data.len(), out.snaps.len(), "one data pack per backup");
        assert_eq!(out.trees.len(), out.snaps.len(), "one tree pack per backup");
        out
    }

    /// The same objects in another store (a copy of the repository).
    fn in_store(&self, store: Arc<dyn BlobStore>) -> Self {
        Layout {
            store,
            snaps: self.snaps.clone(),
            index: self.index.clone(),
            data: self.data.clone(),
            trees: self.trees.clone(),
        }
    }

    fn path(&self, name: &str) -> Obj<'_> {
        Obj {
            store: self.store.as_ref(),
            name: name.to_string(),
        }
    }
}

/// The intact repository and everything the cases refer to.
struct Fixture {
    cli: Cli,
    main: Layout,
    /// What a clean restore of the latest snapshot writes.
    baseline: BTreeMap<Vec<u8>, Entry>,
    /// A repository created by `coffer init`: its own `K`.
    foreign: Layout,
    _foreign_cli: Cli,
    /// A repository with the *same* `K` but its own repository id (the HKDF
    /// salt): its objects must not open in the main repository either.
    twin: Layout,
    _twin_cli: Cli,
}

fn backup(cli: &Cli, db: &Path, src: &Path) {
    let out = cli.run(&[
        "backup",
        "--db",
        db.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fixture {
    fn build(backend: Backend) -> Self {
        let cli = Cli::init_on(Path::new(BIN), backend);
        let src = cli.path("src");
        let db = cli.path("chat.db");
        write_tree(&src, 7, 24, 48 << 10);
        std::fs::write(
            src.join("big.bin"),
            coffer_testkit::random_bytes(&mut coffer_testkit::rng(9), 1 << 20),
        )
        .unwrap();
        make_chat_db(&db, 1500, 1);
        backup(&cli, &db, &src);
        // Second backup: a new file and new rows, so there is a second index
        // file, a second data pack and a second tree pack.
        std::fs::write(src.join("a/added.txt"), b"written between the two backups").unwrap();
        make_chat_db(&db, 300, 2);
        backup(&cli, &db, &src);
        let main = Layout::read(&cli, &cli.path("layout-cache"));

        // The clean restore every damaged restore is held against.
        let clean = cli.path("baseline");
        let out = cli
            .command(&["restore", "latest", "--target", clean.to_str().unwrap()])
            .env("COFFER_CACHE_DIR", cli.path("baseline-cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let baseline = snapshot_tree(&clean);
        coffer_testkit::assert_same_tree(&src, &Cli::restored(&clean, &src));
        assert_eq!(db_dump(&db), db_dump(&Cli::restored(&clean, &db)));

        let foreign_cli = Cli::init_on(Path::new(BIN), backend);
        let fsrc = foreign_cli.path("src");
        write_tree(&fsrc, 8, 4, 4 << 10);
        let fdb = foreign_cli.path("chat.db");
        make_chat_db(&fdb, 10, 3);
        backup(&foreign_cli, &fdb, &fsrc);
        let foreign = Layout::read(&foreign_cli, &foreign_cli.path("lc"));

        // The twin: a config written with the same K and a fresh repository id.
        let mut twin_cli = Cli::new_on(Path::new(BIN), backend);
        twin_cli.key = cli.key.clone();
        let k = RecoveryKey::parse(&cli.key).unwrap();
        let mut body = peek_config(&cli.get("config")).unwrap();
        body.repo_id = coffer_crypto::random_bytes().unwrap();
        let keys = RepoKeys::derive(&k, &body.repo_id);
        body.key_check = keys.key_check();
        twin_cli.put("config", &encode_config(&keys, &body));
        let tsrc = twin_cli.path("src");
        write_tree(&tsrc, 10, 4, 4 << 10);
        let tdb = twin_cli.path("chat.db");
        make_chat_db(&tdb, 10, 4);
        backup(&twin_cli, &tdb, &tsrc);
        let twin = Layout::read(&twin_cli, &twin_cli.path("lc"));

        Fixture {
            cli,
            main,
            baseline,
            foreign,
            _foreign_cli: foreign_cli,
            twin,
            _twin_cli: twin_cli,
        }
    }

    /// Replaces `{placeholders}` in a command argument or expected text.
    fn subst(&self, s: &str, target: &Path) -> String {
        let m = &self.main;
        let pack = |p: &IndexPack| pack_name(&p.id);
        let short = |p: &IndexPack| format!("pack {}", p.id.short());
        let pairs = [
            ("{target}", target.display().to_string()),
            ("{snap_new}", format!("snapshots/{}", m.snaps[1].to_hex())),
            (
                "{snap_new_short}",
                format!("snapshot {}", m.snaps[1].short()),
            ),
            ("{index_new}", format!("index/{}", m.index[1].to_hex())),
            ("{index_old}", format!("index/{}", m.index[0].to_hex())),
            ("{data1}", pack(&m.data[0])),
            ("{data1_short}", short(&m.data[0])),
            ("{data2}", pack(&m.data[1])),
            ("{tree1}", pack(&m.trees[0])),
            ("{tree2_short}", short(&m.trees[1])),
            (
                "{foreign_snap}",
                format!("snapshots/{}", self.foreign.snaps[0].to_hex()),
            ),
            (
                "{twin_snap}",
                format!("snapshots/{}", self.twin.snaps[0].to_hex()),
            ),
            (
                "{twin_index}",
                format!("index/{}", self.twin.index[0].to_hex()),
            ),
            ("{fake_index}", format!("index/{FAKE_ID}")),
        ];
        let mut out = s.to_string();
        for (k, v) in pairs {
            out = out.replace(k, &v);
        }
        out
    }
}

// ---- mutations (through the store: the same on every backend) -------------

fn flip(o: &Obj, at: i64, mask: u8) {
    let mut b = o.get();
    let i = if at < 0 { b.len() as i64 + at } else { at } as usize;
    b[i] ^= mask;
    o.put(&b);
}

fn truncate(o: &Obj, len: usize) {
    let b = o.get();
    o.put(&b[..len.min(b.len())]);
}

fn swap(a: &Obj, b: &Obj) {
    let (x, y) = (a.get(), b.get());
    a.put(&y);
    b.put(&x);
}

fn copy_into(from: &Obj, to: &Obj) {
    to.put(&from.get());
}

fn remove(o: &Obj) {
    o.store
        .delete(&o.name)
        .unwrap_or_else(|e| panic!("delete {}: {e}", o.name));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Puts `from`'s bytes, zero-padded or cut to `to`'s length, in place of `to`.
fn substitute(from: &Obj, to: &Obj) {
    let mut b = from.get();
    b.resize(to.get().len(), 0);
    to.put(&b);
}

/// The middle byte of the largest blob of a pack (for the first data pack:
/// a chunk of `big.bin`, which the latest snapshot still uses).
fn mid_blob(p: &IndexPack) -> i64 {
    let b = p.blobs.iter().max_by_key(|b| b.length).unwrap();
    i64::from(b.offset) + i64::from(b.length) / 2
}

fn pack_path<'a>(l: &'a Layout, p: &IndexPack) -> Obj<'a> {
    l.path(&pack_name(&p.id))
}

fn index_path(l: &Layout, i: usize) -> Obj<'_> {
    l.path(&format!("index/{}", l.index[i].to_hex()))
}

fn snap_path(l: &Layout, i: usize) -> Obj<'_> {
    l.path(&format!("snapshots/{}", l.snaps[i].to_hex()))
}

// ---- the kit ---------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Key {
    /// The repository's own recovery key.
    Own,
    /// Another well-formed recovery key.
    Other,
    /// Exactly this text.
    Raw(&'static str),
}

#[derive(Clone, Copy, PartialEq)]
enum Cache {
    /// A new device: the index is read from storage.
    Fresh,
    /// The device that made the backups.
    Warm,
}

struct Case {
    name: &'static str,
    /// Applied to a copy of the intact repository (`m` is that copy's layout).
    mutate: fn(&Fixture, &Layout),
    key: Key,
    cache: Cache,
    args: &'static [&'static str],
    exit: i32,
    /// Each must appear in stderr.
    contains: &'static [&'static str],
    /// None may appear in stderr.
    absent: &'static [&'static str],
}

const RESTORE: &[&str] = &["restore", "latest", "--target", "{target}"];
const VERIFY: &[&str] = &["verify"];
const READ_DATA: &[&str] = &["verify", "--read-data"];
const SNAPSHOTS: &[&str] = &["snapshots"];

fn nothing(_: &Fixture, _: &Layout) {}

fn case(name: &'static str, mutate: fn(&Fixture, &Layout), args: &'static [&'static str]) -> Case {
    Case {
        name,
        mutate,
        key: Key::Own,
        cache: Cache::Fresh,
        args,
        exit: 4,
        contains: &[],
        absent: &[],
    }
}

impl Case {
    fn exit(mut self, code: i32, contains: &'static [&'static str]) -> Self {
        self.exit = code;
        self.contains = contains;
        self
    }
    fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }
    fn warm(mut self) -> Self {
        self.cache = Cache::Warm;
        self
    }
    fn absent(mut self, absent: &'static [&'static str]) -> Self {
        self.absent = absent;
        self
    }
}

fn cases() -> Vec<Case> {
    const AUTH: &str = "authentication failed";
    vec![
        // The intact repository restores and verifies: the kit's control.
        case("control: intact repository, restore", nothing, RESTORE).exit(0, &[]),
        case(
            "control: intact repository, verify --read-data",
            nothing,
            READ_DATA,
        )
        .exit(0, &[]),
        // ---- keys ----
        // Another valid key: exit 3, "wrong key", and no word of corruption.
        case("wrong recovery key: snapshots", nothing, SNAPSHOTS)
            .key(Key::Other)
            .exit(3, &["wrong key"])
            .absent(&["integrity", "altered"]),
        // Same, on restore: nothing is written.
        case("wrong recovery key: restore", nothing, RESTORE)
            .key(Key::Other)
            .exit(3, &["wrong key"])
            .absent(&["integrity", "altered"]),
        // A character that is not a hex digit: exit 3, named with its position.
        case("malformed recovery key: bad character", nothing, SNAPSHOTS)
            .key(Key::Raw("this is not a recovery key"))
            .exit(3, &["not a valid recovery key", "found 't' at position 1"]),
        // Too few digits: exit 3, says how many a key has.
        case("malformed recovery key: too short", nothing, RESTORE)
            .key(Key::Raw("0123 4567 89ab cdef"))
            .exit(3, &["not a valid recovery key", "has 64 hex digits"]),
        // ---- config ----
        // Its MAC altered: exit 4, the config was altered (not "wrong key").
        case(
            "config: flipped bit in its MAC",
            |_, m| flip(&m.path("config"), -1, 1),
            SNAPSHOTS,
        )
        .exit(4, &["config", "altered"])
        .absent(&["wrong key"]),
        // A field of the body altered (last byte of key_check): the unkeyed
        // checksum catches the damage first: exit 4, "damaged", not "wrong key".
        case(
            "config: flipped bit in a MACed field",
            |_, m| flip(&m.path("config"), -65, 4),
            SNAPSHOTS,
        )
        .exit(4, &["config", "damaged"])
        .absent(&["wrong key"]),
        // Its magic altered: exit 4, not a Coffer object.
        case(
            "config: flipped bit in the magic",
            |_, m| flip(&m.path("config"), 0, 1),
            SNAPSHOTS,
        )
        .exit(4, &["config", "not a Coffer object"]),
        // Cut short: exit 4, the config is truncated.
        case(
            "config: truncated",
            |_, m| truncate(&m.path("config"), 20),
            SNAPSHOTS,
        )
        .exit(4, &["config", "truncated"]),
        // Gone: exit 1, there is no repository here (and how to make one).
        case(
            "config: deleted",
            |_, m| remove(&m.path("config")),
            SNAPSHOTS,
        )
        .exit(1, &["no Coffer repository", "coffer init"]),
        // The repository id (the HKDF salt) altered: should be exit 4 naming the config.
        case(
            "config: flipped bit in the repository id",
            |_, m| flip(&m.path("config"), 10, 1),
            SNAPSHOTS,
        )
        .exit(4, &["config"]),
        // The config of a repository with another K: that key is wrong for it, exit 3.
        case(
            "config from another repository (other K)",
            |f, m| copy_into(&f.foreign.path("config"), &m.path("config")),
            RESTORE,
        )
        .exit(3, &["wrong key"]),
        // The config of a repository with the same K and another id: the key
        // check passes, then every index file fails authentication: exit 4.
        case(
            "config from another repository (same K)",
            |f, m| copy_into(&f.twin.path("config"), &m.path("config")),
            RESTORE,
        )
        .exit(4, &["index/", AUTH]),
        // ---- data packs ----
        // A bit of a data blob: the file using it is not written, exit 4, names the pack.
        case(
            "data pack: flipped bit in the blob area",
            |_, m| flip(&pack_path(m, &m.data[0]), mid_blob(&m.data[0]), 1),
            RESTORE,
        )
        .exit(4, &["{data1_short}", AUTH, "restore incomplete"]),
        case(
            "data pack: flipped bit in the blob area (verify --read-data)",
            |_, m| flip(&pack_path(m, &m.data[0]), mid_blob(&m.data[0]), 1),
            READ_DATA,
        )
        .exit(4, &["{data1_short}", AUTH]),
        // A bit of the trailer: verify --read-data names the pack's trailer, exit 4.
        case(
            "pack trailer: flipped bit (verify --read-data)",
            |_, m| flip(&pack_path(m, &m.data[0]), -10, 1),
            READ_DATA,
        )
        .exit(4, &["{data1}", "trailer failed authentication"]),
        // Restore does not use the trailer: each blob authenticates on its own,
        // so everything is restored, exactly.
        case(
            "pack trailer: flipped bit (restore needs no trailer)",
            |_, m| flip(&pack_path(m, &m.data[0]), -10, 1),
            RESTORE,
        )
        .exit(0, &[]),
        // The trailer's length field: the trailer no longer opens, exit 4.
        case(
            "pack trailer: flipped bit in its length (verify --read-data)",
            |_, m| flip(&pack_path(m, &m.data[0]), -4, 1),
            READ_DATA,
        )
        .exit(4, &["{data1}"]),
        // Cut short: exit 4, names the object and says it is shorter than expected.
        case(
            "data pack: truncated",
            |_, m| truncate(&pack_path(m, &m.data[0]), 1000),
            RESTORE,
        )
        .exit(4, &["{data1}", "shorter than expected"]),
        case(
            "data pack: truncated (verify)",
            |_, m| truncate(&pack_path(m, &m.data[0]), 1000),
            VERIFY,
        )
        .exit(4, &["{data1}", "truncated or replaced"]),
        // Gone: exit 4, names it, not found.
        case(
            "data pack: deleted",
            |_, m| remove(&pack_path(m, &m.data[0])),
            RESTORE,
        )
        .exit(4, &["{data1}", "not found"]),
        case(
            "data pack: deleted (verify)",
            |_, m| remove(&pack_path(m, &m.data[0])),
            VERIFY,
        )
        .exit(4, &["{data1}", "missing"]),
        // Two data packs' names swapped: their blobs fail authentication, exit 4.
        case(
            "data packs: two names swapped",
            |_, m| swap(&pack_path(m, &m.data[0]), &pack_path(m, &m.data[1])),
            RESTORE,
        )
        .exit(4, &[AUTH]),
        // A data pack and a tree pack swapped: trees fail first, exit 4.
        case(
            "data and tree pack: names swapped",
            |_, m| swap(&pack_path(m, &m.data[0]), &pack_path(m, &m.trees[0])),
            RESTORE,
        )
        .exit(4, &[AUTH]),
        case(
            "data and tree pack: names swapped (verify --read-data)",
            |_, m| swap(&pack_path(m, &m.data[0]), &pack_path(m, &m.trees[0])),
            READ_DATA,
        )
        .exit(
            4,
            &[
                "{data1}",
                "{tree1}",
                "truncated or replaced",
                "trailer failed authentication",
            ],
        ),
        // A pack of the same-K twin, padded to the same size, put in place of
        // one of ours: its blobs fail authentication, exit 4.
        case(
            "data pack from another repository (same K, same size)",
            |f, m| {
                substitute(
                    &pack_path(&f.twin, &f.twin.data[0]),
                    &pack_path(m, &m.data[0]),
                )
            },
            RESTORE,
        )
        .exit(4, &["{data1_short}", AUTH]),
        // ---- tree packs ----
        // A bit of a tree: nothing below it is restored, exit 4, names the pack.
        case(
            "tree pack: flipped bit",
            |_, m| flip(&pack_path(m, &m.trees[1]), mid_blob(&m.trees[1]), 1),
            RESTORE,
        )
        .exit(4, &["{tree2_short}", AUTH]),
        case(
            "tree pack: flipped bit (verify)",
            |_, m| flip(&pack_path(m, &m.trees[1]), mid_blob(&m.trees[1]), 1),
            VERIFY,
        )
        .exit(4, &["{tree2_short}", AUTH]),
        // ---- index files ----
        // A bit of an index file: exit 4, names index/<id>.
        case(
            "index file: flipped bit",
            |_, m| flip(&index_path(m, 1), 40, 1),
            RESTORE,
        )
        .exit(4, &["{index_new}", AUTH]),
        // The version byte: 0 is no version Coffer ever wrote, so it is damage
        // (exit 4), not "upgrade coffer".
        case(
            "index file: flipped bit in the version byte",
            |_, m| flip(&index_path(m, 1), 4, 1),
            RESTORE,
        )
        .exit(4, &["{index_new}"]),
        // Cut short: exit 4, names it.
        case(
            "index file: truncated",
            |_, m| truncate(&index_path(m, 1), 100),
            RESTORE,
        )
        .exit(4, &["{index_new}", AUTH]),
        case(
            "index file: truncated into its header",
            |_, m| truncate(&index_path(m, 1), 3),
            RESTORE,
        )
        .exit(4, &["{index_new}", "not a Coffer object"]),
        // The newest index file deleted (a rolled-back index): the latest
        // snapshot's index_ids catch it by name, exit 4.
        case(
            "index file: deleted (rolled back)",
            |_, m| remove(&index_path(m, 1)),
            RESTORE,
        )
        .exit(4, &["{snap_new_short}", "{index_new}", "rolled back"]),
        case(
            "index file: deleted (rolled back, verify)",
            |_, m| remove(&index_path(m, 1)),
            VERIFY,
        )
        .exit(4, &["{snap_new_short}", "{index_new}", "rolled back"]),
        // An older index file's bytes in place of the newer one: its id is in
        // the associated data, so it fails authentication by name, exit 4.
        case(
            "index file: older one restored in place of the newer",
            |_, m| copy_into(&index_path(m, 0), &index_path(m, 1)),
            RESTORE,
        )
        .exit(4, &["{index_new}", AUTH]),
        // Two index files' names swapped: exit 4.
        case(
            "index files: two names swapped",
            |_, m| swap(&index_path(m, 0), &index_path(m, 1)),
            RESTORE,
        )
        .exit(4, &["index/", AUTH]),
        // An index file of the same-K twin added: exit 4, names it.
        case(
            "index file from another repository (same K)",
            |f, m| {
                copy_into(
                    &index_path(&f.twin, 0),
                    &m.path(&format!("index/{}", f.twin.index[0].to_hex())),
                )
            },
            RESTORE,
        )
        .exit(4, &["{twin_index}", AUTH]),
        // A snapshot's bytes stored as an index file: the kind byte says so, exit 4.
        case(
            "snapshot stored as an index file",
            |_, m| copy_into(&snap_path(m, 0), &m.path(&format!("index/{FAKE_ID}"))),
            RESTORE,
        )
        .exit(4, &["{fake_index}", "object kind 0x30 where 0x20"]),
        // The device that made the backups still has the index in its cache:
        // verify must still re-authenticate the index files in storage.
        case(
            "index file: flipped bit (verify --read-data, warm cache)",
            |_, m| flip(&index_path(m, 1), 40, 1),
            READ_DATA,
        )
        .warm()
        .exit(4, &["{index_new}"]),
        // ---- snapshots ----
        // A bit of the latest snapshot: exit 4, names snapshots/<id>.
        case(
            "snapshot: flipped bit",
            |_, m| flip(&snap_path(m, 1), 30, 1),
            RESTORE,
        )
        .exit(4, &["{snap_new}", AUTH]),
        case(
            "snapshot: flipped bit (snapshots)",
            |_, m| flip(&snap_path(m, 1), 30, 1),
            SNAPSHOTS,
        )
        .exit(4, &["{snap_new}", AUTH]),
        case(
            "snapshot: truncated",
            |_, m| truncate(&snap_path(m, 1), 40),
            SNAPSHOTS,
        )
        .exit(4, &["{snap_new}", AUTH]),
        // Two snapshots' names swapped: exit 4.
        case(
            "snapshots: two names swapped",
            |_, m| swap(&snap_path(m, 0), &snap_path(m, 1)),
            SNAPSHOTS,
        )
        .exit(4, &["snapshots/", AUTH]),
        // A manifest from another repository (its own K): exit 4, names it.
        case(
            "snapshot from another repository (other K)",
            |f, m| {
                copy_into(
                    &snap_path(&f.foreign, 0),
                    &m.path(&format!("snapshots/{}", f.foreign.snaps[0].to_hex())),
                )
            },
            RESTORE,
        )
        .exit(4, &["{foreign_snap}", AUTH]),
        // A manifest from another repository with the same K: the repository
        // id salts every key, so it fails too: exit 4, names it.
        case(
            "snapshot from another repository (same K)",
            |f, m| {
                copy_into(
                    &snap_path(&f.twin, 0),
                    &m.path(&format!("snapshots/{}", f.twin.snaps[0].to_hex())),
                )
            },
            RESTORE,
        )
        .exit(4, &["{twin_snap}", AUTH]),
    ]
}

/// What the run showed, for the table printed at the end.
struct Observed {
    name: &'static str,
    code: Option<i32>,
    first_error: String,
    verdict: String,
}

/// Restored entries must each equal the clean restore, or be absent.
fn check_restore(fx: &Fixture, target: &Path) -> Result<(usize, usize), String> {
    let want_files = fx
        .baseline
        .values()
        .filter(|e| matches!(e, Entry::File { .. }))
        .count();
    if !target.exists() {
        return Ok((0, want_files));
    }
    let got = snapshot_tree(target);
    let mut files = 0;
    for (rel, e) in &got {
        let name = String::from_utf8_lossy(rel);
        if name.contains(".coffer-partial") {
            return Err(format!("{name}: a temporary file was left behind"));
        }
        let ok = match (e, fx.baseline.get(rel)) {
            (
                Entry::File { hash, size, .. },
                Some(Entry::File {
                    hash: h, size: s, ..
                }),
            ) => {
                files += 1;
                hash == h && size == s
            }
            (Entry::Dir { .. }, Some(Entry::Dir { .. })) => true,
            (Entry::Symlink { target: t }, Some(Entry::Symlink { target: u })) => t == u,
            _ => false,
        };
        if !ok {
            return Err(format!("{name}: written but not what was backed up"));
        }
    }
    Ok((files, want_files - files))
}

fn run_case(fx: &Fixture, c: &Case) -> (Observed, Option<String>) {
    // A copy of the intact repository, on the same backend.
    let mut cli = Cli::new_on(Path::new(BIN), fx.cli.backend);
    fx.cli.copy_objects_to(&cli);
    if c.cache == Cache::Warm {
        copy_dir(&fx.cli.path("cache"), &cli.path("cache"));
    }
    let layout = fx.main.in_store(cli.store().clone());
    (c.mutate)(fx, &layout);
    cli.key = match c.key {
        Key::Own => fx.cli.key.clone(),
        Key::Other => RecoveryKey::from_backup_key(&BackupKey::from_bytes([0x5a; 32]))
            .expose_secret()
            .to_string(),
        Key::Raw(s) => s.to_string(),
    };
    let target = cli.path("restore");
    let args: Vec<String> = c.args.iter().map(|a| fx.subst(a, &target)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli.run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code();

    let mut problems = Vec::new();
    if code != Some(c.exit) {
        problems.push(format!("exit {code:?}, expected {}", c.exit));
    }
    for s in c.contains {
        let s = fx.subst(s, &target);
        if !stderr.contains(&s) {
            problems.push(format!("stderr lacks {s:?}"));
        }
    }
    for s in c.absent {
        if stderr.contains(s) {
            problems.push(format!("stderr has {s:?}"));
        }
    }
    let mut restored = String::new();
    // The guarantee holds for every case, known bug or not.
    let mut safety = None;
    if c.args[0] == "restore" {
        match check_restore(fx, &target) {
            Ok((files, absent)) => {
                restored = format!(" [restored {files} files exactly, {absent} absent]");
                if c.exit == 0 && absent != 0 {
                    problems.push(format!("{absent} files missing from a successful restore"));
                }
            }
            Err(e) => safety = Some(format!("{}: UNAUTHENTICATED DATA WRITTEN: {e}", c.name)),
        }
    }
    let first_error = stderr
        .lines()
        .find(|l| l.starts_with("error:") || l.starts_with("problem:") || l.starts_with("failed:"))
        .unwrap_or("")
        .to_string();
    let (verdict, failure) = if problems.is_empty() {
        (format!("ok{restored}"), None)
    } else {
        (
            "FAIL".to_string(),
            Some(format!(
                "{}: {}\n  stderr: {stderr}",
                c.name,
                problems.join("; ")
            )),
        )
    };
    (
        Observed {
            name: c.name,
            code,
            first_error,
            verdict,
        },
        safety.or(failure),
    )
}

backend_tests!(negative_kit);

fn negative_kit(backend: Backend) {
    let fx = Fixture::build(backend);
    let mut table = String::new();
    let mut failures = Vec::new();
    let cases = cases();
    for c in &cases {
        let (o, failure) = run_case(&fx, c);
        let _ = writeln!(
            table,
            "{:<62} exit {:>4}  {}\n{:>70}{}",
            o.name,
            o.code.map_or("sig".into(), |c| c.to_string()),
            o.verdict,
            "",
            o.first_error.chars().take(160).collect::<String>()
        );
        failures.extend(failure);
    }
    eprintln!("{} cases on {}\n{table}", cases.len(), backend.name());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
