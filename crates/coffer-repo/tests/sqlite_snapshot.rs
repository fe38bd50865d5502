//! Database images (ADR 0005): the pages of a WAL snapshot, streamed without
//! a staging copy, are exactly the file a full checkpoint leaves at that
//! moment, stay one point in time while the app keeps writing and
//! checkpointing, and differ from the online backup API's image only in the
//! header counters that API rewrites. Rollback-journal databases still go
//! through the staging copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use coffer_repo::sqlite::{self, DbImage, METHOD_ONLINE_BACKUP, METHOD_WAL_PAGES};
use rusqlite::Connection;

/// A WAL database whose changes stay in the WAL (no automatic checkpoint)
/// while `conn` is open: rows 0..n of 300-byte text, with an index.
fn wal_db(path: &Path, rows: i64) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(batch INTEGER, part INTEGER, pad TEXT);
         CREATE INDEX t_b ON t(batch);",
    )
    .unwrap();
    insert(&c, 0, rows);
    c
}

/// Batches `from..to` of 10 rows each, one transaction per batch.
fn insert(c: &Connection, from: i64, to: i64) {
    for batch in from..to {
        let tx = c.unchecked_transaction().unwrap();
        for part in 0..10 {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![batch, part, format!("{batch:08}").repeat(40)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

fn capture(db: &Path, staging: &Path) -> (DbImage, std::thread::JoinHandle<()>) {
    let (ready, thread) = sqlite::start_capture(db, staging);
    (ready.recv().unwrap().unwrap(), thread)
}

/// The whole image in memory (small test databases only).
fn read_all(image: DbImage) -> Vec<u8> {
    match image {
        DbImage::Pages(mut pages) => {
            let mut out = Vec::new();
            pages.read_to_end(&mut out).unwrap();
            assert_eq!(out.len() as u64, pages.len());
            out
        }
        DbImage::Staged(path) => std::fs::read(path).unwrap(),
    }
}

fn open_image(dir: &Path, bytes: &[u8]) -> Connection {
    let path = dir.join(format!("image-{}.db", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    let c = Connection::open(path).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    c
}

fn count(c: &Connection) -> i64 {
    c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn torn_batches(c: &Connection) -> i64 {
    c.query_row(
        "SELECT COUNT(*) FROM (SELECT batch FROM t GROUP BY batch HAVING COUNT(*) <> 10)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn wal_pages_are_the_file_a_checkpoint_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let writer = wal_db(&db, 500);
    // Most of the database is only in the WAL: the main file is stale.
    assert!(
        std::fs::metadata(dir.path().join("live.db-wal"))
            .unwrap()
            .len()
            > 1 << 20
    );
    let staging = dir.path().join("staging.db");

    let (image, thread) = capture(&db, &staging);
    assert_eq!(image.method(), METHOD_WAL_PAGES);
    let bytes = read_all(image);
    thread.join().unwrap();
    assert!(!staging.exists(), "the fast path writes no staging copy");

    writer
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("live.db-wal"))
            .unwrap()
            .len(),
        0
    );
    assert!(
        bytes == std::fs::read(&db).unwrap(),
        "image != checkpointed file"
    );
    assert_eq!(count(&open_image(dir.path(), &bytes)), 5000);
}

/// The online backup API writes the same pages; on page 1 it rewrites the
/// file change counter (24..28), the schema cookie (40..44) and the
/// version-valid-for number (92..96). Nothing else may differ.
#[test]
fn wal_pages_match_the_online_backup_image_but_for_its_header_counters() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let _writer = wal_db(&db, 300);
    let (image, thread) = capture(&db, &dir.path().join("unused.db"));
    let pages = read_all(image);
    thread.join().unwrap();
    let staged = dir.path().join("staged.db");
    sqlite::snapshot_database_to(&db, &staged).unwrap();
    let backup = std::fs::read(&staged).unwrap();

    assert_eq!(pages.len(), backup.len());
    let differ: Vec<usize> = (0..pages.len())
        .filter(|&i| pages[i] != backup[i])
        .collect();
    let counters = |i: &usize| (24..28).contains(i) || (40..44).contains(i) || (92..96).contains(i);
    assert!(differ.iter().all(counters), "bytes differ at {differ:?}");
}

/// The read transaction is taken when the capture starts: whatever the app
/// commits and checkpoints while the pages are read is not in the image.
#[test]
fn wal_pages_stay_one_point_in_time_while_the_app_writes_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let writer = wal_db(&db, 400);
    let (image, thread) = capture(&db, &dir.path().join("unused.db"));
    let DbImage::Pages(mut pages) = image else {
        panic!("not streamed")
    };
    let mut bytes = vec![0u8; 4096];
    pages.read_exact(&mut bytes).unwrap();

    // The app grows the database, changes old rows and checkpoints: a
    // PASSIVE checkpoint copies only what the open snapshot does not need.
    insert(&writer, 400, 900);
    writer
        .execute("UPDATE t SET pad = 'changed' WHERE batch < 100", [])
        .unwrap();
    writer
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))
        .unwrap();
    insert(&writer, 900, 950);

    pages.read_to_end(&mut bytes).unwrap();
    thread.join().unwrap();
    let c = open_image(dir.path(), &bytes);
    assert_eq!(count(&c), 4000);
    let changed: i64 = c
        .query_row("SELECT COUNT(*) FROM t WHERE pad = 'changed'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(changed, 0);

    // Once the image is read the snapshot is released: a full checkpoint
    // now completes.
    let busy: i64 = writer
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
}

/// A writer thread commits batches of 10 rows as fast as it can while images
/// are taken: every image holds whole batches only.
#[test]
fn wal_pages_under_a_concurrent_writer_hold_whole_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    drop(wal_db(&db, 200));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            // Default automatic checkpoints, as an app would have.
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut batch = 200;
            while !stop.load(Ordering::Relaxed) {
                insert(&c, batch, batch + 1);
                batch += 1;
            }
            batch
        })
    };
    let mut seen = Vec::new();
    for i in 0..5 {
        let (image, thread) = capture(&db, &dir.path().join("unused.db"));
        assert_eq!(image.method(), METHOD_WAL_PAGES);
        let DbImage::Pages(mut pages) = image else {
            unreachable!()
        };
        // Read slowly, so that commits and checkpoints interleave.
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = pages.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        thread.join().unwrap();
        let sub = dir.path().join(format!("image-{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let c = open_image(&sub, &bytes);
        assert_eq!(torn_batches(&c), 0, "a batch was captured half-written");
        seen.push(count(&c));
    }
    stop.store(true, Ordering::Relaxed);
    let batches = writer.join().unwrap();
    assert!(batches > 200);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

/// A backup that stops before reading the whole image ends the capture and
/// releases the snapshot.
#[test]
fn dropping_the_stream_ends_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let writer = wal_db(&db, 2000); // ≈ 7 MiB: more than the blocks in flight
    let (image, thread) = capture(&db, &dir.path().join("unused.db"));
    let DbImage::Pages(mut pages) = image else {
        panic!("not streamed")
    };
    assert!(pages.len() > (sqlite::BLOCK_BYTES * (sqlite::BLOCKS_IN_FLIGHT + 2)) as u64);
    let mut first = vec![0u8; 100];
    pages.read_exact(&mut first).unwrap();
    assert_eq!(&first[..16], b"SQLite format 3\0");
    drop(pages);
    thread.join().unwrap();
    let busy: i64 = writer
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);

    // Not even received: the thread ends too.
    let (ready, thread) = sqlite::start_capture(&db, &dir.path().join("unused.db"));
    drop(ready);
    thread.join().unwrap();
}

/// In rollback-journal mode the read transaction would block the app's
/// writers for the whole backup: the staging copy is used instead.
#[test]
fn rollback_journal_databases_are_staged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let c = wal_db(&db, 100);
    c.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
    drop(c);
    let staging = dir.path().join("staging.db");
    let (image, thread) = capture(&db, &staging);
    assert_eq!(image.method(), METHOD_ONLINE_BACKUP);
    assert!(matches!(&image, DbImage::Staged(p) if p == &staging));
    let bytes = read_all(image);
    thread.join().unwrap();
    assert_eq!(count(&open_image(dir.path(), &bytes)), 1000);
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_db = dir.path().join("notes.txt");
    std::fs::write(&not_db, vec![b'x'; 10_000]).unwrap();
    let (ready, thread) = sqlite::start_capture(&not_db, &dir.path().join("staging.db"));
    let err = ready.recv().unwrap().unwrap_err().to_string();
    thread.join().unwrap();
    assert!(err.contains("not a SQLite database"), "{err}");
    assert!(!dir.path().join("staging.db").exists());

    let (ready, thread) =
        sqlite::start_capture(&dir.path().join("missing.db"), &dir.path().join("s.db"));
    let err = ready.recv().unwrap().unwrap_err().to_string();
    thread.join().unwrap();
    assert!(err.contains("No such file or directory"), "{err}");

    let (ready, thread) = sqlite::start_capture(dir.path(), &dir.path().join("s.db"));
    let err = ready.recv().unwrap().unwrap_err().to_string();
    thread.join().unwrap();
    assert!(
        err.contains("it is a directory, not a SQLite database"),
        "{err}"
    );
}
