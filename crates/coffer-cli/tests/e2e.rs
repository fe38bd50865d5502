//! End-to-end: the real `coffer` binary on real files and a real SQLite
//! database, with the repository on each backend: a local directory, S3
//! (moto) and WebDAV (WsgiDAV) — see `coffer_testkit::backend_tests!`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use coffer_testkit::{
    assert_same_tree, backend_tests, db_dump, make_chat_db, write_tree, Backend, Cli,
};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

backend_tests!(
    backup_and_restore_on_another_device_byte_identical,
    incremental_reads_only_what_changed,
    restore_one_path_or_the_database_alone,
    database_snapshot_is_consistent_under_concurrent_writes,
    recovery_key_forms_and_sources,
    forget_keeps_policy_and_prune_frees_space,
    unreadable_paths_are_warnings_and_the_snapshot_is_saved,
);

fn restore(cli: &Cli, target: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli.json(&args)
}

fn backup_and_restore_on_another_device_byte_identical(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    let src = cli.path("data/media");
    write_tree(&src, 1, 40, 300_000);
    // The same content under several names (one chunk read once, written
    // to three files; restore decrypts ranges in place, so a chunk wanted
    // twice must still come out twice), small and large.
    let mut big = vec![0u8; 5 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::create_dir_all(src.join("copies")).unwrap();
    for name in ["big-a.bin", "big-b.bin"] {
        std::fs::write(src.join("copies").join(name), &big).unwrap();
    }
    let small = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file() && p.file_name().unwrap() != "big.bin")
        .unwrap();
    for name in ["small-a", "small-b"] {
        std::fs::copy(&small, src.join("copies").join(name)).unwrap();
    }
    let db = cli.path("data/msgstore.db");
    make_chat_db(&db, 5_000, 2);
    let out = cli.json(&[
        "backup",
        "--db",
        db.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(out["snapshot_id"].as_str().unwrap().len() == 64);
    assert!(out["bytes_added"].as_u64().unwrap() > 0);

    // "Another device": a fresh cache directory, only the repository and the key.
    let target = cli.path("restore");
    let mut cmd = cli.command(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--json",
    ]);
    cmd.env("COFFER_CACHE_DIR", cli.path("other-device-cache"));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_same_tree(&src, &Cli::restored(&target, &src));
    // The WAL and SHM files are not backed up as separate files (checked
    // before anything opens the restored database and creates them).
    assert!(!Cli::restored(&target, &cli.path("data/msgstore.db-wal")).exists());
    let restored_db = Cli::restored(&target, &db);
    assert_eq!(db_dump(&db), db_dump(&restored_db));
    let c = rusqlite::Connection::open(&restored_db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");

    let v = cli.json(&["verify", "--read-data"]);
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["packs_read"].as_u64().unwrap() >= 1);
    // Probed when the repository was opened: the local disk and moto honour
    // create-if-absent; WebDAV has only a check-then-write.
    let enforced = backend != Backend::WebDav;
    assert_eq!(v["conditional_writes"], enforced, "{v}");
    assert_eq!(v["conditional_writes_reason"].is_string(), !enforced, "{v}");
    let text = cli.run(&["verify"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let want = if enforced {
        "conditional writes enforced"
    } else {
        "conditional writes not enforced"
    };
    assert!(text.contains(want), "{text}");
    // The probe leaves nothing behind.
    assert!(cli.names("probe/").is_empty());
}

fn incremental_reads_only_what_changed(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    let src = cli.path("media");
    write_tree(&src, 3, 30, 200_000);
    let first = cli.json(&["backup", src.to_str().unwrap()]);
    let files = first["files"].as_u64().unwrap();
    assert_eq!(first["files_read"].as_u64().unwrap(), files);

    // Nothing changed: nothing read. At most a directory listing is new: the
    // ancestors of the source (the temp dir) may change under other processes.
    let second = cli.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["files_read"].as_u64().unwrap(), 0);
    assert_eq!(second["bytes_read"].as_u64().unwrap(), 0);
    assert!(second["bytes_new"].as_u64().unwrap() < 4096, "{second}");

    // One file changed, one added: exactly two read.
    std::fs::write(src.join("a/file-0001.bin"), b"changed content").unwrap();
    std::fs::write(src.join("new.txt"), vec![b'x'; 10_000]).unwrap();
    let third = cli.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(third["files_read"].as_u64().unwrap(), 2);
    assert_eq!(third["bytes_read"].as_u64().unwrap(), 15 + 10_000);

    // --force re-reads everything but stores nothing new.
    let forced = cli.json(&["backup", "--force", src.to_str().unwrap()]);
    assert_eq!(
        forced["files_read"].as_u64().unwrap(),
        forced["files"].as_u64().unwrap()
    );
    assert!(forced["bytes_new"].as_u64().unwrap() < 4096, "{forced}");

    let target = cli.path("out");
    restore(&cli, &target, &[]);
    assert_same_tree(&src, &Cli::restored(&target, &src));
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 4);
}

fn restore_one_path_or_the_database_alone(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    let src = cli.path("media");
    write_tree(&src, 5, 12, 50_000);
    let db = cli.path("app.db");
    make_chat_db(&db, 1_000, 6);
    cli.json(&[
        "backup",
        "--db",
        db.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);

    let only_b = cli.path("only-b");
    restore(
        &cli,
        &only_b,
        &["--path", src.join("a/b").to_str().unwrap()],
    );
    assert_same_tree(&src.join("a/b"), &Cli::restored(&only_b, &src.join("a/b")));
    assert!(!Cli::restored(&only_b, &db).exists());
    assert!(!Cli::restored(&only_b, &src.join("script.sh")).exists());

    let only_db = cli.path("only-db");
    let r = restore(&cli, &only_db, &["--db-only"]);
    assert_eq!(r["files"].as_u64().unwrap(), 1);
    assert_eq!(db_dump(&db), db_dump(&Cli::restored(&only_db, &db)));
    assert!(!Cli::restored(&only_db, &src).exists());

    let o = cli.run(&[
        "restore",
        "latest",
        "--target",
        cli.path("x").to_str().unwrap(),
        "--path",
        "/no/such/path",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not in the snapshot"));
}

/// A writer keeps committing while the backup runs: the restored database is
/// one consistent point in time (every batch whole), never a torn copy.
fn database_snapshot_is_consistent_under_concurrent_writes(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    let db = cli.path("live.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(batch INTEGER, part INTEGER, pad TEXT);
             CREATE INDEX t_b ON t(batch);",
        )
        .unwrap();
    }
    make_chat_db(&db, 20_000, 9);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut batch = 0i64;
            while !stop.load(Ordering::Relaxed) {
                // Each batch: 10 rows in one transaction. A torn snapshot would
                // show a batch with fewer than 10 rows.
                let tx = c.unchecked_transaction().unwrap();
                for part in 0..10 {
                    tx.execute(
                        "INSERT INTO t VALUES (?1, ?2, ?3)",
                        rusqlite::params![batch, part, "x".repeat(500)],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
                batch += 1;
            }
            batch
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut snapshots = 0;
    for _ in 0..3 {
        cli.json(&["backup", "--db", db.to_str().unwrap()]);
        snapshots += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let batches = writer.join().unwrap();
    assert!(batches > 0);
    assert_eq!(
        cli.json(&["snapshots"]).as_array().unwrap().len(),
        snapshots
    );

    let target = cli.path("out");
    restore(&cli, &target, &["--db-only"]);
    let c = rusqlite::Connection::open(Cli::restored(&target, &db)).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let torn: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM (SELECT batch FROM t GROUP BY batch HAVING COUNT(*) <> 10)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(torn, 0, "a batch was captured half-written");
    let rows: i64 = c
        .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(rows > 0 && rows <= batches * 10);
}

fn recovery_key_forms_and_sources(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    assert_eq!(cli.key.len(), 79);
    assert_eq!(cli.key.split(' ').count(), 16);
    assert!(cli
        .key
        .chars()
        .all(|c| c == ' ' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));

    // Uppercase, dashes, newline, from a file.
    let f = cli.path("key.txt");
    std::fs::write(
        &f,
        format!("{}\n", cli.key.to_uppercase().replace(' ', "-")),
    )
    .unwrap();
    let mut c = cli.command(&["snapshots", "--recovery-key-file", f.to_str().unwrap()]);
    c.env_remove("COFFER_RECOVERY_KEY");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // No key and no terminal: a usage error that says what to do.
    let mut c = cli.command(&["snapshots"]);
    c.env_remove("COFFER_RECOVERY_KEY")
        .stdin(std::process::Stdio::null());
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("COFFER_RECOVERY_KEY"));

    // No repository: usage error.
    let mut c = cli.command(&["snapshots"]);
    c.env_remove("COFFER_REPO");
    assert_eq!(c.output().unwrap().status.code(), Some(2));

    // init twice: refused, the key of the first stays valid.
    let o = cli.run(&["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert!(cli.run(&["snapshots"]).status.success());

    // A location that is not a repository.
    let mut c = cli.command(&["snapshots"]);
    c.env(
        "COFFER_REPO",
        backend.location(cli.dir.path(), "nothing-here"),
    );
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no Coffer repository"));
}

fn forget_keeps_policy_and_prune_frees_space(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    let src = cli.path("media");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        // Each round replaces the content: old snapshots' data becomes garbage
        // once they are forgotten.
        std::fs::write(
            src.join("blob.bin"),
            coffer_testkit::random_bytes(&mut coffer_testkit::rng(i), 3_000_000),
        )
        .unwrap();
        cli.json(&["backup", src.to_str().unwrap()]);
    }
    let size_before = cli.usage("").1;
    let dry = cli.json(&["forget", "--keep-last", "2", "--dry-run"]);
    assert_eq!(dry["forgotten"].as_array().unwrap().len(), 2);
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 4);

    let r = cli.json(&["forget", "--keep-last", "2", "--prune"]);
    assert_eq!(r["forgotten"].as_array().unwrap().len(), 2);
    assert!(r["prune"]["packs_deleted"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 2);
    let size_after = cli.usage("").1;
    assert!(
        size_after + 5_000_000 < size_before,
        "{size_before} -> {size_after}"
    );

    let v = cli.json(&["verify", "--read-data"]);
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    let target = cli.path("out");
    restore(&cli, &target, &[]);
    assert_same_tree(&src, &Cli::restored(&target, &src));

    // No policy: refused as a usage error.
    assert_eq!(cli.run(&["forget"]).status.code(), Some(2));
}

/// A path that cannot be backed up (a FIFO) is a warning: the snapshot is
/// saved without it, the exit code says so (1), and the rest restores.
fn unreadable_paths_are_warnings_and_the_snapshot_is_saved(backend: Backend) {
    let cli = Cli::init_on(Path::new(BIN), backend);
    let src = cli.path("media");
    write_tree(&src, 21, 6, 10_000);
    let fifo = src.join("a-fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let o = cli.run(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    assert!(warnings[0].as_str().unwrap().contains("a-fifo"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning"));
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 1);

    std::fs::remove_file(&fifo).unwrap();
    let target = cli.path("out");
    restore(&cli, &target, &[]);
    assert_same_tree(&src, &Cli::restored(&target, &src));
}
