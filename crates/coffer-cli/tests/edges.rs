//! The CLI's behaviour at its edges: a `--db` inside a
//! directory given as a path, paths that do not exist, local failures
//! during a restore, incomplete restores, one JSON document per
//! invocation, ambiguous snapshot ids, a closed stdout, and messages.
//! Local repositories only: none of this depends on the backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use coffer_testkit::{assert_same_tree, db_dump, make_chat_db, write_tree, Cli};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Stdout holds exactly one JSON document; returns it.
fn one_json(o: &Output) -> serde_json::Value {
    let mut docs = serde_json::Deserializer::from_slice(&o.stdout).into_iter::<serde_json::Value>();
    let first = docs
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout: {:?}", text(o)))
        .unwrap();
    assert!(
        docs.next().is_none(),
        "more than one JSON document: {:?}",
        text(o)
    );
    first
}

/// The data packs of a local repository (the tree packs are those the
/// backup cached on this device).
fn data_packs(cli: &Cli) -> Vec<PathBuf> {
    let mut cached = std::collections::HashSet::new();
    for repo in std::fs::read_dir(cli.path("cache")).unwrap() {
        let packs = repo.unwrap().path().join("packs");
        if let Ok(rd) = std::fs::read_dir(packs) {
            for p in rd {
                cached.insert(p.unwrap().file_name());
            }
        }
    }
    let mut out = Vec::new();
    for d in std::fs::read_dir(cli.local_repo().join("data")).unwrap() {
        for p in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = p.unwrap().path();
            if !cached.contains(p.file_name().unwrap()) {
                out.push(p);
            }
        }
    }
    out
}

fn regular_files(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            n += regular_files(&e.path());
        } else if t.is_file() {
            n += 1;
        }
    }
    n
}

fn flip_middle(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(p, b).unwrap();
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `--db app/msgstore.db app`: the database is captured once, through its
/// consistent snapshot, in its place in the directory; its -wal and -shm
/// are not backed up as files; the rest of the directory is.
fn db_inside_directory(wal: bool) {
    let cli = Cli::init(Path::new(BIN));
    let app = cli.path("x/app");
    write_tree(&app.join("media"), 7, 12, 50_000);
    let db = app.join("msgstore.db");
    make_chat_db(&db, 3_000, 5);
    // Kept open so that the -wal and -shm files exist during the backup.
    let conn = rusqlite::Connection::open(&db).unwrap();
    if !wal {
        conn.execute_batch("PRAGMA journal_mode=DELETE;").unwrap();
    } else {
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; INSERT INTO chats(title) VALUES ('x');")
            .unwrap();
        assert!(cli.path("x/app/msgstore.db-wal").exists());
    }
    let v = cli.json(&["backup", "--db", s(&db), s(&app)]);
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    // The media files and the database, once.
    assert_eq!(v["files"], regular_files(&app.join("media")) + 1, "{v}");
    let snaps = cli.json(&["snapshots"]);
    assert_eq!(snaps[0]["databases"][0], s(&db), "{snaps}");

    let only = cli.path("db-only");
    let o = cli.json(&["restore", "latest", "--target", s(&only), "--db-only"]);
    assert_eq!(o["files"], 1, "{o}");
    let restored_db = Cli::restored(&only, &db);
    assert_eq!(db_dump(&db), db_dump(&restored_db));

    let whole = cli.path("whole");
    cli.json(&["restore", "latest", "--target", s(&whole)]);
    let restored_app = Cli::restored(&whole, &app);
    assert_same_tree(&app.join("media"), &restored_app.join("media"));
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = restored_app.join(format!("msgstore.db{suffix}"));
        assert!(!p.exists(), "{} was backed up as a file", p.display());
    }
    assert_eq!(db_dump(&db), db_dump(&restored_app.join("msgstore.db")));
    drop(conn);
}

#[test]
fn db_inside_a_directory_is_captured_once_wal() {
    db_inside_directory(true);
}

#[test]
fn db_inside_a_directory_is_captured_once_rollback_journal() {
    db_inside_directory(false);
}

#[test]
fn a_missing_path_whose_parent_exists_writes_no_snapshot() {
    let cli = Cli::init(Path::new(BIN));
    std::fs::create_dir_all(cli.path("x/app")).unwrap();
    let o = cli.run(&["backup", s(&cli.path("x/app/nothere"))]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("nothing could be backed up"), "{err}");
    assert!(!out.contains("saved"), "{out}");
    assert!(cli.json(&["snapshots"]).as_array().unwrap().is_empty());
}

#[test]
fn local_failures_during_restore_exit_1_and_damage_exits_4() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    std::fs::create_dir_all(&src).unwrap();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        std::fs::write(src.join(name), noise(300_000, i as u64 + 1)).unwrap();
    }
    cli.json(&["backup", s(&src)]);

    // A directory where a file must go: a local failure, exit 1.
    let target = cli.path("t1");
    std::fs::create_dir_all(Cli::restored(&target, &src.join("b.bin"))).unwrap();
    let o = cli.run(&["restore", "latest", "--target", s(&target)]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("INCOMPLETE") && out.contains("1 file(s) FAILED"),
        "{out}"
    );
    assert!(err.contains("restore incomplete"), "{err}");
    let o = cli.run(&["restore", "latest", "--target", s(&target), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = one_json(&o);
    assert_eq!(v["error"], "error", "{v}");
    assert_eq!(v["exit_code"], 1, "{v}");
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(v["files"], 2, "{v}");
    assert_eq!(v["failures"].as_array().unwrap().len(), 1, "{v}");

    // Damaged data: exit 4, and stdout says the restore is incomplete.
    for p in data_packs(&cli) {
        flip_middle(&p);
    }
    let target = cli.path("t2");
    let o = cli.run(&["restore", "latest", "--target", s(&target)]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}{err}");
    assert!(out.contains("INCOMPLETE"), "{out}");
    assert!(!out.starts_with("restored snapshot"), "{out}");
    let o = cli.run(&[
        "restore",
        "latest",
        "--target",
        s(&cli.path("t3")),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(4));
    let v = one_json(&o);
    assert_eq!(v["error"], "integrity", "{v}");
    assert_eq!(v["exit_code"], 4, "{v}");
    assert_eq!(v["complete"], false, "{v}");
    assert!(!v["failures"].as_array().unwrap().is_empty(), "{v}");

    let o = cli.run(&["verify", "--read-data", "--json"]);
    assert_eq!(o.status.code(), Some(4));
    let v = one_json(&o);
    assert_eq!(v["error"], "integrity", "{v}");
    assert!(!v["errors"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn backup_json_with_unreadable_paths_is_one_document() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    write_tree(&src, 3, 4, 10_000);
    let o = cli.run(&["backup", "--json", s(&src), s(&cli.path("missing"))]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let v = one_json(&o);
    assert_eq!(v["error"], "error", "{v}");
    assert_eq!(v["exit_code"], 1, "{v}");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["snapshot_id"].is_string(), "{v}");
}

#[test]
fn ambiguous_and_empty_snapshot_ids() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    write_tree(&src, 3, 2, 1_000);
    // 17 snapshots are sure to share a first hex digit; usually far fewer do.
    let mut firsts: Vec<char> = Vec::new();
    let shared = loop {
        let v = cli.json(&["backup", s(&src)]);
        let c = v["snapshot_id"].as_str().unwrap().chars().next().unwrap();
        if firsts.contains(&c) {
            break c;
        }
        firsts.push(c);
    };
    let prefix = shared.to_string();
    let target = cli.path("t");
    let o = cli.run(&["restore", &prefix, "--target", s(&target)]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("\"{prefix}\" is ambiguous: 2 snapshots match")),
        "{err}"
    );
    let o = cli.run(&["restore", "", "--target", s(&target)]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    write_tree(&src, 3, 2, 1_000);
    for args in [
        vec!["backup", s(&src)],
        vec!["snapshots"],
        vec!["snapshots", "--json"],
    ] {
        let mut child = cli
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away at once, as `| head -0` would.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn key_forget_in_recovery_key_mode_is_a_usage_error() {
    let cli = Cli::init(Path::new(BIN));
    let mut cmd = cli.command(&["key", "forget"]);
    cmd.env("XDG_DATA_HOME", cli.path("data-home"));
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("recovery-key mode"), "{:?}", text(&o));
}

#[test]
fn messages_for_a_directory_as_db_and_a_relative_path() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    write_tree(&src, 3, 2, 1_000);
    let o = cli.run(&["backup", "--db", s(&src)]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is a directory, not a SQLite database"),
        "{err}"
    );

    cli.json(&["backup", s(&src)]);
    let o = cli.run(&[
        "restore",
        "latest",
        "--target",
        s(&cli.path("t")),
        "--path",
        "media",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("absolute"), "{err}");

    let o = cli.run(&["--help"]);
    assert!(text(&o).0.contains("s3://"), "{:?}", text(&o));
}

#[test]
fn one_damaged_snapshot_does_not_stop_the_others() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    write_tree(&src, 3, 4, 10_000);
    let good = cli.json(&["backup", s(&src)])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(src.join("new.txt"), b"new").unwrap();
    let bad = cli.json(&["backup", s(&src)])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(cli.local_repo().join("snapshots").join(&bad), b"").unwrap();

    // Listed without it, reported, exit 4; --json: one document.
    let o = cli.run(&["snapshots"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}{err}");
    assert!(out.contains(&good[..8]), "{out}");
    assert!(err.contains(&bad[..8]), "{err}");
    let o = cli.run(&["snapshots", "--json"]);
    assert_eq!(o.status.code(), Some(4));
    let v = one_json(&o);
    assert_eq!(v["error"], "integrity", "{v}");
    assert_eq!(v["snapshots"][0]["id"], good.as_str(), "{v}");
    assert_eq!(v["damaged"][0]["id"], bad.as_str(), "{v}");

    // Backups still work (with a warning); verify checks the others, exit 4.
    let o = cli.run(&["backup", s(&src)]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.contains(&bad[..8]), "{err}");
    let o = cli.run(&["verify", "--json"]);
    assert_eq!(o.status.code(), Some(4));
    let v = one_json(&o);
    assert_eq!(v["snapshots"], 3, "{v}");
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains(&bad[..8]), "{v}");

    // A readable one restores by id.
    let target = cli.path("t");
    cli.json(&["restore", &good[..8], "--target", s(&target)]);

    // Forget by policy says how to remove it; forget by id removes it.
    let o = cli.run(&["forget", "--keep-last", "1"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("coffer forget {}", &bad[..8])),
        "{err}"
    );
    let v = cli.json(&["forget", &bad[..8], "--prune"]);
    assert_eq!(v["forgotten"][0], bad.as_str(), "{v}");
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 2);
    cli.json(&["verify", "--read-data"]);
    cli.json(&["forget", "--keep-last", "1", "--prune"]);
}

#[test]
fn verify_names_a_file_once_per_missing_pack_by_its_full_path() {
    let cli = Cli::init(Path::new(BIN));
    let src = cli.path("media");
    std::fs::create_dir_all(&src).unwrap();
    // Several chunks (1 MiB average), all in the one data pack.
    std::fs::write(src.join("big.bin"), noise(6 << 20, 9)).unwrap();
    cli.json(&["backup", s(&src)]);
    let packs = data_packs(&cli);
    assert_eq!(packs.len(), 1, "{packs:?}");
    std::fs::remove_file(&packs[0]).unwrap();

    let o = cli.run(&["verify", "--json"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    let v = one_json(&o);
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let per_file: Vec<&&str> = errors.iter().filter(|e| e.contains("needs pack")).collect();
    assert_eq!(per_file.len(), 1, "{errors:#?}");
    let full = src.join("big.bin");
    assert!(per_file[0].contains(s(&full)), "{errors:#?}");
    assert!(v["duration_ms"].as_u64().is_some(), "{v}");
}
