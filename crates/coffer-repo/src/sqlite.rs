//! A consistent image of a live SQLite database: the app may keep writing
//! while it is taken (ADR 0005).
//!
//! Two ways, chosen per database when the backup starts:
//!
//! * **Pages of a WAL snapshot** (the fast path). A read-only connection
//!   opens one read transaction and streams the pages that transaction sees,
//!   in page order, through the `sqlite_dbpage` virtual table (compiled in by
//!   `SQLITE_ENABLE_DBPAGE_VTAB`, see `.cargo/config.toml`). The bytes are
//!   exactly the file a full checkpoint at that moment would leave: nothing is
//!   written to disk, and memory holds [`BLOCKS_IN_FLIGHT`] queued blocks of
//!   [`BLOCK_BYTES`], plus the one being filled and the one being read.
//! * **A staging copy** through SQLite's online backup API, chunked as a file
//!   and deleted afterwards (the fallback): for rollback-journal databases,
//!   where a read transaction blocks the app's writers for as long as it
//!   lasts, and when `sqlite_dbpage` is not available.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::{Connection, OpenFlags};

use crate::{RepoError, Result};

/// Bytes per block handed from the capture thread to the chunker.
pub const BLOCK_BYTES: usize = 1 << 20;
/// Blocks queued between the capture thread and the chunker: what bounds the
/// memory the fast path uses, whatever the database's size.
pub const BLOCKS_IN_FLIGHT: usize = 2;
/// How long to wait for a lock the app holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// [`DbImage::method`] of the fast path, recorded in the snapshot.
pub const METHOD_WAL_PAGES: &str = "sqlite-wal-pages";
/// [`DbImage::method`] of the staging copy, recorded in the snapshot.
pub const METHOD_ONLINE_BACKUP: &str = "sqlite-online-backup";

/// A consistent image of a database, ready to be read once.
#[derive(Debug)]
pub enum DbImage {
    /// The pages of one WAL snapshot, streamed by the capture thread.
    Pages(PageStream),
    /// A staging copy made with the online backup API; the caller reads it,
    /// then deletes it.
    Staged(PathBuf),
}

impl DbImage {
    /// How the image was taken: [`METHOD_WAL_PAGES`] or
    /// [`METHOD_ONLINE_BACKUP`].
    pub fn method(&self) -> &'static str {
        match self {
            DbImage::Pages(_) => METHOD_WAL_PAGES,
            DbImage::Staged(_) => METHOD_ONLINE_BACKUP,
        }
    }
}

/// What the capture thread sends down the page channel.
#[derive(Debug)]
enum Block {
    Data(Vec<u8>),
    /// Every page was sent. Without it a closed channel is an error, never
    /// the end: a capture thread that died must not pass for a short image.
    End,
    Failed(String),
}

/// The pages of a WAL snapshot as a byte stream ([`Read`]). The read
/// transaction stays open in the capture thread until the last page is read
/// or this stream is dropped.
#[derive(Debug)]
pub struct PageStream {
    rx: Receiver<Block>,
    block: Vec<u8>,
    pos: usize,
    ended: bool,
    len: u64,
}

impl PageStream {
    /// The image's size in bytes: page count × page size of the snapshot.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image has no pages (never for a real database).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for PageStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.block.len() {
                let n = out.len().min(self.block.len() - self.pos);
                out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Block::Data(b)) => {
                    self.block = b;
                    self.pos = 0;
                }
                Ok(Block::End) => self.ended = true,
                Ok(Block::Failed(detail)) => return Err(std::io::Error::other(detail)),
                Err(_) => {
                    return Err(std::io::Error::other(
                        "the database capture thread stopped before the last page",
                    ))
                }
            }
        }
    }
}

/// Starts taking an image of the database at `src` on a new thread.
///
/// The receiver yields the image once it can be read: at once for the fast
/// path (the read transaction is open, pages follow as they are read), after
/// the copy into `staging` for the fallback. Join the thread after the image
/// was read or dropped; then delete `staging` (it may not exist).
pub fn start_capture(src: &Path, staging: &Path) -> (Receiver<Result<DbImage>>, JoinHandle<()>) {
    let (tx, rx) = bounded(1);
    let (src, staging) = (src.to_path_buf(), staging.to_path_buf());
    let handle = std::thread::spawn(move || capture(&src, &staging, tx));
    (rx, handle)
}

fn capture(src: &Path, staging: &Path, ready: Sender<Result<DbImage>>) {
    let snapshot = match WalSnapshot::open(src) {
        Ok(s) => s,
        Err(why) => {
            tracing::debug!(
                path = %src.display(),
                "database image: staging copy through the online backup API ({why})"
            );
            let image =
                snapshot_database_to(src, staging).map(|()| DbImage::Staged(staging.to_path_buf()));
            let _ = ready.send(image);
            return;
        }
    };
    tracing::debug!(
        path = %src.display(),
        pages = snapshot.page_count,
        page_size = snapshot.page_size,
        "database image: pages of a WAL snapshot through sqlite_dbpage, no staging copy"
    );
    let (tx, rx) = bounded(BLOCKS_IN_FLIGHT);
    let stream = PageStream {
        rx,
        block: Vec::new(),
        pos: 0,
        ended: false,
        len: snapshot.page_count * snapshot.page_size,
    };
    let sent = ready.send(Ok(DbImage::Pages(stream))).is_ok();
    // Dropped before streaming: if the backup stops without reading the
    // image, the channel then drops the stream, whose receiver ends this
    // thread's next send instead of leaving it blocked.
    drop(ready);
    if sent {
        snapshot.stream(&tx);
    }
}

/// A read transaction open on a WAL database, with `sqlite_dbpage` usable.
struct WalSnapshot {
    conn: Connection,
    page_count: u64,
    page_size: u64,
}

/// The fast path cannot be used; a staging copy is taken instead.
type Unavailable = String;

const PAGES_SQL: &str = "SELECT data FROM sqlite_dbpage ORDER BY pgno";

impl WalSnapshot {
    fn open(src: &Path) -> std::result::Result<Self, Unavailable> {
        let e = |e: rusqlite::Error| e.to_string();
        let conn = Connection::open_with_flags(
            src,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(e)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(e)?;
        // The first read after BEGIN starts the read transaction: from here on
        // every page read (page_count, then sqlite_dbpage) sees one WAL
        // snapshot, however many transactions the app commits meanwhile, and
        // no checkpoint can overwrite a page of it in the database file.
        conn.execute_batch("BEGIN").map_err(e)?;
        let page_count: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(e)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(e)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // In rollback-journal mode the read transaction is a SHARED lock:
            // held while the pages go through compression and upload, it would
            // block the app's writers (past their busy timeout on a slow
            // store). The staging copy holds it only while copying locally.
            return Err(format!("journal_mode={mode}: not a WAL database"));
        }
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(e)?;
        // Prepared once to see whether the table exists (compile-time option).
        conn.prepare(PAGES_SQL)
            .map_err(|err| format!("sqlite_dbpage unavailable: {err}"))?;
        let count = |n: i64| u64::try_from(n).map_err(|_| format!("bad page count/size {n}"));
        Ok(Self {
            conn,
            page_count: count(page_count)?,
            page_size: count(page_size)?,
        })
    }

    /// Sends every page, in page order, in blocks of [`BLOCK_BYTES`]; then
    /// [`Block::End`], or [`Block::Failed`]. Returns early if the reader is
    /// gone. The read transaction ends when `self` is dropped.
    fn stream(self, tx: &Sender<Block>) {
        let result = self.send_pages(tx);
        match result {
            Ok(true) => {
                let _ = tx.send(Block::End);
            }
            Ok(false) => {}
            Err(detail) => {
                let _ = tx.send(Block::Failed(detail));
            }
        }
    }

    /// Ok(false): the reader went away.
    fn send_pages(&self, tx: &Sender<Block>) -> std::result::Result<bool, String> {
        let e = |e: rusqlite::Error| e.to_string();
        let mut st = self.conn.prepare(PAGES_SQL).map_err(e)?;
        let mut rows = st.query([]).map_err(e)?;
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        let mut pages = 0u64;
        while let Some(row) = rows.next().map_err(e)? {
            // The pending-byte page (at 1 GiB) comes as zeros, as in the file.
            let data = row
                .get_ref(0)
                .map_err(e)?
                .as_blob()
                .map_err(|err| err.to_string())?;
            if data.len() as u64 != self.page_size {
                return Err(format!(
                    "page {} has {} bytes, not the page size {}",
                    pages + 1,
                    data.len(),
                    self.page_size
                ));
            }
            block.extend_from_slice(data);
            pages += 1;
            if block.len() >= BLOCK_BYTES {
                let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK_BYTES));
                if tx.send(Block::Data(full)).is_err() {
                    return Ok(false);
                }
            }
        }
        if pages != self.page_count {
            return Err(format!(
                "read {pages} pages, the snapshot has {}",
                self.page_count
            ));
        }
        if !block.is_empty() && tx.send(Block::Data(block)).is_err() {
            return Ok(false);
        }
        Ok(true)
    }
}

/// Copies the database at `src` into a new file in `dir` and returns its path.
pub fn snapshot_database(src: &Path, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(format!(
        "db-{}.sqlite",
        hex::encode(coffer_crypto::random_bytes::<8>()?)
    ));
    snapshot_database_to(src, &dest)?;
    Ok(dest)
}

/// Copies the database at `src` into the new file `dest` with the online
/// backup API (the fallback of [`start_capture`]).
///
/// The copy runs as one backup step under one read transaction, so it is a
/// single consistent point in time even in WAL mode with a writer running;
/// in rollback-journal mode a writer waits (busy timeout 60 s) until it ends.
pub fn snapshot_database_to(src: &Path, dest: &Path) -> Result<()> {
    let err = |detail: String| RepoError::Database {
        path: src.to_path_buf(),
        detail,
    };
    if src.is_dir() {
        return Err(err(
            "it is a directory, not a SQLite database file (directories are backed up as paths)"
                .into(),
        ));
    }
    if !src.is_file() {
        return Err(err(match std::fs::metadata(src) {
            Err(e) => e.to_string(),
            Ok(_) => "not a regular file, so not a SQLite database".into(),
        }));
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
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| err(e.to_string()))?;
    let result = (|| {
        let mut target = Connection::open(dest)?;
        // A staging copy, read once and deleted: no journal, no fsync. It
        // usually never reaches the disk at all.
        target.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")?;
        {
            let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
            // -1: all pages in one step, under one read transaction.
            let deadline = Instant::now() + BUSY_TIMEOUT;
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
