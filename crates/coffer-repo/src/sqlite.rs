//! A consistent image of a live SQLite database, through SQLite's online
//! backup API: the app may keep writing while the copy is taken.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::{RepoError, Result};

/// Copies the database at `src` into a new file in `dir` and returns its path.
pub fn snapshot_database(src: &Path, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(format!(
        "db-{}.sqlite",
        hex::encode(coffer_crypto::random_bytes::<8>()?)
    ));
    snapshot_database_to(src, &dest)?;
    Ok(dest)
}

/// Copies the database at `src` into the new file `dest`.
///
/// The copy runs as one backup step under one read transaction, so it is a
/// single consistent point in time even in WAL mode with a writer running;
/// in rollback-journal mode a writer waits (busy timeout 60 s) until it ends.
pub fn snapshot_database_to(src: &Path, dest: &Path) -> Result<()> {
    let err = |detail: String| RepoError::Database {
        path: src.to_path_buf(),
        detail,
    };
    if !src.is_file() {
        return Err(err("no such file".into()));
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RepoError::local(dir, e))?;
    }
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(e.to_string()))?;
    source
        .busy_timeout(Duration::from_secs(60))
        .map_err(|e| err(e.to_string()))?;
    let result = (|| {
        let mut target = Connection::open(dest)?;
        // A staging copy, read once and deleted: no journal, no fsync. It
        // usually never reaches the disk at all.
        target.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")?;
        {
            let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
            // -1: all pages in one step, under one read transaction.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match backup.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    _ if Instant::now() > deadline => {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            Some("the database stayed locked for 60 s".into()),
                        ))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        target.close().map_err(|(_, e)| e)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(dest);
        let detail = if e.to_string().contains("not a database") {
            "not a SQLite database (pass ordinary files as paths, not with --db)".to_string()
        } else {
            e.to_string()
        };
        return Err(err(detail));
    }
    Ok(())
}
