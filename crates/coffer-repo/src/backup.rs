//! Backup: walk the sources, chunk, deduplicate, compress, encrypt, pack,
//! upload; then index, then snapshot — in that order, so a crash at any
//! moment leaves a repository that verifies and a next run that reuses every
//! pack already indexed.
//!
//! Threads: the calling thread walks, reads, chunks and hashes; `workers`
//! threads compress; one packer thread encrypts into packs; [`UPLOADERS`]
//! threads ([`LOCAL_UPLOADERS`] on a local disk) write packs and index
//! checkpoints. All channels are bounded.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::chunker::Chunker;
use crate::format::pack::{pack_name, PackWriter};
use crate::format::types::{
    encode, BackupSummary, BlobKind, Compression, DatabaseEntry, IndexFile, IndexPack, Node,
    NodeKind, Snapshot, Tree,
};
use crate::format::Kind;
use crate::id::Id;
use crate::prefetch::Hints;
use crate::progress::Progress;
use crate::repo::{now_ns, Repository};
use crate::session::Session;
use crate::{RepoError, Result};

/// Packs per index checkpoint: a killed backup loses at most this many packs'
/// worth of upload (the next run reuses everything indexed before).
pub const CHECKPOINT_PACKS: usize = 16;

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupSources {
    /// Files and directories.
    pub paths: Vec<PathBuf>,
    /// SQLite databases, captured consistently.
    pub databases: Vec<PathBuf>,
}

/// How to back up.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Re-read every file even if unchanged since the parent snapshot.
    pub force_full: bool,
    /// Host name recorded in the snapshot.
    pub hostname: String,
    /// Compression threads.
    pub workers: usize,
    /// Where SQLite images are staged when they cannot be streamed
    /// (rollback-journal databases; see [`crate::sqlite`]).
    pub staging_dir: PathBuf,
}

/// The result of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Paths that could not be read, with why.
    pub warnings: Vec<String>,
}

struct Job {
    id: Id,
    kind: BlobKind,
    data: Vec<u8>,
}

struct Compressed {
    id: Id,
    kind: BlobKind,
    compression: Compression,
    raw_len: u32,
    data: Vec<u8>,
}

struct FinishedPack {
    id: Id,
    kind: BlobKind,
    bytes: crate::format::pack::PackBytes,
    blobs: Vec<crate::format::types::BlobLocation>,
}

enum Source {
    Path(PathBuf),
    /// A database whose image is being taken by another thread; `ready`
    /// yields it when (and whether) it can be read.
    Database {
        original: PathBuf,
        ready: Receiver<Result<crate::sqlite::DbImage>>,
    },
}

#[derive(Default)]
struct VDir {
    children: BTreeMap<Vec<u8>, VEntry>,
}

enum VEntry {
    Dir(VDir),
    Source(Source),
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| RepoError::local(p, e))
}

fn insert_source(root: &mut VDir, abs: &Path, src: Source) {
    let comps: Vec<Vec<u8>> = abs
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        })
        .collect();
    let mut dir = root;
    for (i, c) in comps.iter().enumerate() {
        if i + 1 == comps.len() {
            dir.children.insert(c.clone(), VEntry::Source(src));
            return;
        }
        let entry = dir
            .children
            .entry(c.clone())
            .or_insert_with(|| VEntry::Dir(VDir::default()));
        match entry {
            VEntry::Dir(d) => dir = d,
            // An enclosing path is already a source: it covers this one.
            VEntry::Source(_) => return,
        }
    }
}

fn times(meta: &fs::Metadata) -> (i64, i64) {
    (
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    )
}

fn node_from(name: Vec<u8>, meta: &fs::Metadata, kind: NodeKind) -> Node {
    let (mtime_ns, ctime_ns) = times(meta);
    Node {
        name,
        kind,
        mode: meta.mode() & 0o7777,
        mtime_ns,
        ctime_ns,
        inode: meta.ino(),
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

struct Walker<'a> {
    repo: &'a Repository,
    opts: &'a BackupOptions,
    progress: &'a Progress,
    file_chunker: &'a Chunker,
    db_chunker: &'a Chunker,
    jobs: Sender<Job>,
    claimed: HashSet<Id>,
    skip: HashSet<PathBuf>,
    /// Databases inside a directory given as a path: captured (through
    /// their image) when the walk of that directory reaches them.
    nested_dbs: BTreeMap<PathBuf, Receiver<Result<crate::sqlite::DbImage>>>,
    /// Sources (paths and databases given) that made it into the snapshot.
    sources_read: usize,
    summary: BackupSummary,
    warnings: Vec<String>,
    /// The read buffer, reused from file to file.
    read_buf: Vec<u8>,
    /// How each database was captured (its path, [`DbImage::method`]).
    ///
    /// [`DbImage::method`]: crate::sqlite::DbImage::method
    db_methods: Vec<(PathBuf, &'static str)>,
    /// Read-ahead of the files about to be read ([`crate::prefetch`]).
    hints: Hints,
}

/// The chunks of a file whose size, times and inode match its node in the
/// parent snapshot (not yet checked to be stored).
fn unchanged<'n>(parent: Option<&'n Node>, meta: &fs::Metadata) -> Option<&'n Vec<Id>> {
    let p = parent?;
    let NodeKind::File { size, chunks } = &p.kind else {
        return None;
    };
    let (mtime, ctime) = times(meta);
    (*size == meta.len() && p.mtime_ns == mtime && p.ctime_ns == ctime && p.inode == meta.ino())
        .then_some(chunks)
}

/// A child's node in its parent snapshot's tree (sorted by name on save).
fn child_node<'t>(tree: Option<&'t Tree>, name: &[u8]) -> Option<&'t Node> {
    let nodes = &tree?.nodes;
    nodes
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
        .and_then(|i| nodes.get(i))
}

impl Walker<'_> {
    fn is_stored(&mut self, id: &Id) -> Result<bool> {
        Ok(self.claimed.contains(id) || self.repo.cache.has_live_blob(id)?)
    }

    fn submit(&mut self, id: Id, kind: BlobKind, data: &[u8]) -> Result<()> {
        if self.is_stored(&id)? {
            return Ok(());
        }
        self.claimed.insert(id);
        self.summary.bytes_new += data.len() as u64;
        self.jobs
            .send(Job {
                id,
                kind,
                data: data.to_vec(),
            })
            .map_err(|_| RepoError::Internal("the compression workers stopped".into()))
    }

    fn warn(&mut self, path: &Path, what: impl std::fmt::Display) {
        let msg = format!("{}: {what}", path.display());
        tracing::debug!("{msg}");
        self.warnings.push(msg);
        self.summary.errors += 1;
    }

    fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes = encode(&tree);
        let id = Id(self.repo.keys().chunk_id_key().id(&bytes));
        self.submit(id, BlobKind::Tree, &bytes)?;
        Ok(id)
    }

    fn parent_tree(&self, parent: Option<&Node>) -> Option<Tree> {
        match parent.map(|n| &n.kind) {
            Some(NodeKind::Dir { subtree }) => self.repo.read_tree(subtree).ok(),
            _ => None,
        }
    }

    fn walk_vdir(&mut self, path: &Path, dir: VDir, parent: Option<Tree>) -> Result<Tree> {
        let mut tree = Tree::default();
        for (name, entry) in dir.children {
            let child_path = path.join(std::ffi::OsString::from_vec(name.clone()));
            let parent_node = parent
                .as_ref()
                .and_then(|t| t.nodes.iter().find(|n| n.name == name));
            let node = match entry {
                VEntry::Dir(sub) => {
                    let meta = match fs::metadata(&child_path) {
                        Ok(m) => m,
                        Err(e) => {
                            self.warn(&child_path, e);
                            continue;
                        }
                    };
                    let sub_parent = self.parent_tree(parent_node);
                    let subtree = self.walk_vdir(&child_path, sub, sub_parent)?;
                    self.summary.dirs += 1;
                    node_from(
                        name,
                        &meta,
                        NodeKind::Dir {
                            subtree: self.save_tree(subtree)?,
                        },
                    )
                }
                VEntry::Source(Source::Path(p)) => match self.entry(&p, name, parent_node)? {
                    Some(n) => {
                        self.sources_read += 1;
                        n
                    }
                    None => continue,
                },
                VEntry::Source(Source::Database { original, ready }) => {
                    match self.database(&original, &ready, name)? {
                        Some(n) => {
                            self.sources_read += 1;
                            n
                        }
                        None => continue,
                    }
                }
            };
            tree.nodes.push(node);
        }
        Ok(tree)
    }

    fn entry(&mut self, path: &Path, name: Vec<u8>, parent: Option<&Node>) -> Result<Option<Node>> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.warn(path, e);
                return Ok(None);
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let sub_parent = self.parent_tree(parent);
            let mut entries = match fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().into_vec())
                    .collect::<Vec<_>>(),
                Err(e) => {
                    self.warn(path, e);
                    return Ok(None);
                }
            };
            entries.sort();
            let children: Vec<(Vec<u8>, PathBuf)> = entries
                .into_iter()
                .map(|c| {
                    let p = path.join(std::ffi::OsStr::from_bytes(&c));
                    (c, p)
                })
                .filter(|(_, p)| !self.skip.contains(p) || self.nested_dbs.contains_key(p))
                .collect();
            // The regular files of this directory that will be read, hinted
            // in the order they will be read (0: not hinted).
            let hinted: Vec<u64> = children
                .iter()
                .map(|(child, child_path)| {
                    if self.nested_dbs.contains_key(child_path) {
                        // Read through its image, which hints itself.
                        return 0;
                    }
                    let Ok(m) = fs::symlink_metadata(child_path) else {
                        return 0;
                    };
                    let pn = child_node(sub_parent.as_ref(), child);
                    let read = m.file_type().is_file()
                        && (self.opts.force_full || unchanged(pn, &m).is_none());
                    if !read {
                        return 0;
                    }
                    self.hints.hint(child_path.clone(), m.len());
                    m.len()
                })
                .collect();
            let mut tree = Tree::default();
            for ((child, child_path), hinted) in children.into_iter().zip(hinted) {
                if let Some(ready) = self.nested_dbs.remove(&child_path) {
                    if let Some(n) = self.database(&child_path, &ready, child)? {
                        self.sources_read += 1;
                        tree.nodes.push(n);
                    }
                    continue;
                }
                let pn = child_node(sub_parent.as_ref(), &child);
                let node = self.entry(&child_path, child, pn);
                if hinted > 0 {
                    self.hints.done(hinted);
                }
                if let Some(n) = node? {
                    tree.nodes.push(n);
                }
            }
            self.summary.dirs += 1;
            let subtree = self.save_tree(tree)?;
            Ok(Some(node_from(name, &meta, NodeKind::Dir { subtree })))
        } else if ft.is_file() {
            self.summary.files += 1;
            self.summary.total_bytes += meta.len();
            if !self.opts.force_full {
                if let Some(chunks) = unchanged(parent, &meta) {
                    let chunks = chunks.clone();
                    let mut all = true;
                    for c in &chunks {
                        if !self.is_stored(c)? {
                            all = false;
                            break;
                        }
                    }
                    if all {
                        Progress::add(&self.progress.files, 1);
                        return Ok(Some(node_from(
                            name,
                            &meta,
                            NodeKind::File {
                                size: meta.len(),
                                chunks,
                            },
                        )));
                    }
                }
            }
            match self.read_file(path, false)? {
                Some((size, chunks)) => {
                    if size != meta.len() {
                        self.warn(path, "changed while it was read; saved as read");
                    }
                    Ok(Some(node_from(
                        name,
                        &meta,
                        NodeKind::File { size, chunks },
                    )))
                }
                None => Ok(None),
            }
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(t) => Ok(Some(node_from(
                    name,
                    &meta,
                    NodeKind::Symlink {
                        target: t.into_os_string().into_vec(),
                    },
                ))),
                Err(e) => {
                    self.warn(path, e);
                    Ok(None)
                }
            }
        } else {
            self.warn(path, "not a regular file, directory or symlink: skipped");
            Ok(None)
        }
    }

    /// The databases inside a directory given that its walk did not reach
    /// (the directory could not be read, or leads there through a symlink):
    /// an image that failed fails the backup as it does elsewhere; the others
    /// are warned about and returned, to drop from the snapshot's list.
    fn unreached_databases(&mut self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for (path, ready) in std::mem::take(&mut self.nested_dbs) {
            if let Ok(Err(e)) = ready.recv() {
                return Err(e);
            }
            self.warn(
                &path,
                "not reached by the walk of the directory that contains it: not backed up",
            );
            out.push(path);
        }
        Ok(out)
    }

    fn database(
        &mut self,
        original: &Path,
        ready: &Receiver<Result<crate::sqlite::DbImage>>,
        name: Vec<u8>,
    ) -> Result<Option<Node>> {
        let image = ready
            .recv()
            .map_err(|_| RepoError::Internal("the database snapshot thread stopped".into()))??;
        let meta = match fs::metadata(original) {
            Ok(m) => m,
            Err(e) => {
                self.warn(original, e);
                return Ok(None);
            }
        };
        self.summary.files += 1;
        self.db_methods
            .push((original.to_path_buf(), image.method()));
        let read = match image {
            crate::sqlite::DbImage::Staged(path) => self.read_file(&path, true)?,
            crate::sqlite::DbImage::Pages(pages) => {
                // The pages are read in file order: read the file ahead.
                self.hints.hint(original.to_path_buf(), meta.len());
                let read = self.chunk_reader(original, pages, true);
                self.hints.done(meta.len());
                match read {
                    Ok(r) => Some(r),
                    // SQLite failed mid-way (I/O error, corruption): the image
                    // is incomplete, so the backup fails, as it does when the
                    // staging copy fails.
                    Err(ReadError::Io(e)) => {
                        return Err(RepoError::Database {
                            path: original.to_path_buf(),
                            detail: e.to_string(),
                        })
                    }
                    Err(ReadError::Repo(e)) => return Err(e),
                }
            }
        };
        let Some((size, chunks)) = read else {
            return Ok(None);
        };
        self.summary.total_bytes += size;
        Ok(Some(node_from(
            name,
            &meta,
            NodeKind::File { size, chunks },
        )))
    }

    fn read_file(&mut self, path: &Path, is_db: bool) -> Result<Option<(u64, Vec<Id>)>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn(path, e);
                return Ok(None);
            }
        };
        match self.chunk_reader(path, file, is_db) {
            Ok(r) => Ok(Some(r)),
            // The file could not be read (vanished, permissions, I/O error):
            // a warning, and the snapshot goes on without it.
            Err(ReadError::Io(e)) => {
                self.warn(path, e);
                Ok(None)
            }
            Err(ReadError::Repo(e)) => Err(e),
        }
    }

    /// Chunks `reader` (the content of `path`) to the end and submits its
    /// new chunks: its size and chunk ids.
    fn chunk_reader(
        &mut self,
        path: &Path,
        reader: impl std::io::Read,
        is_db: bool,
    ) -> Result<(u64, Vec<Id>), ReadError> {
        self.progress.set_current(path.display().to_string());
        // A shared reference copied out of `self`, so the closure below may
        // mutate the walker while the chunker reads.
        let chunker: &Chunker = if is_db {
            self.db_chunker
        } else {
            self.file_chunker
        };
        let key = self.repo.keys().chunk_id_key();
        let mut chunks = Vec::new();
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut in_file = 0u64;
        let res = chunker.chunk_stream_with::<_, ReadError>(&mut buf, reader, |data| {
            let id = Id(key.id(data));
            chunks.push(id);
            in_file += data.len() as u64;
            self.hints.reading(in_file);
            self.summary.bytes_read += data.len() as u64;
            Progress::add(&self.progress.bytes, data.len() as u64);
            self.submit(id, BlobKind::Data, data)
                .map_err(ReadError::Repo)
        });
        self.read_buf = buf;
        let size = res?;
        self.summary.files_read += 1;
        Progress::add(&self.progress.files, 1);
        Ok((size, chunks))
    }
}

/// Why reading one file stopped: the file itself, or the engine.
enum ReadError {
    Io(std::io::Error),
    Repo(RepoError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Size of the sample tried before compressing a large blob.
const SAMPLE: usize = 64 << 10;

/// Blobs below this size (database chunks) are compressed at
/// [`SMALL_BLOB_LEVEL`] at most.
const SMALL_BLOB: usize = 512 << 10;
/// zstd level 2 on 64–256 KiB chunks of the benchmark's SQLite database came
/// out both smaller (598 vs 600 MB) and 21% faster than level 3 (zstd adapts
/// its parameters to small inputs); level 3 stays better on 1 MiB chunks.
const SMALL_BLOB_LEVEL: i32 = 2;

fn compress_worker(level: i32, rx: Receiver<Job>, tx: Sender<Compressed>) -> Result<()> {
    let zstd_err = |e: std::io::Error| RepoError::Internal(format!("zstd: {e}"));
    let mut large = zstd::bulk::Compressor::new(level).map_err(zstd_err)?;
    let mut small = zstd::bulk::Compressor::new(level.min(SMALL_BLOB_LEVEL)).map_err(zstd_err)?;
    for job in rx {
        let z = if job.data.len() < SMALL_BLOB {
            &mut small
        } else {
            &mut large
        };
        let raw_len = job.data.len() as u32;
        // Keep the compressed form only if it saves at least 1/32. Large blobs
        // are tried on a sample first: photos and videos are already
        // compressed, and zstd would spend most of its time finding that out.
        let worth_trying = job.data.len() < 2 * SAMPLE
            || matches!(z.compress(&job.data[..SAMPLE]), Ok(c) if c.len() + SAMPLE / 32 < SAMPLE);
        let (compression, data) = match worth_trying.then(|| z.compress(&job.data)) {
            Some(Ok(c)) if c.len() + job.data.len() / 32 < job.data.len() => (Compression::Zstd, c),
            _ => (Compression::None, job.data),
        };
        if tx
            .send(Compressed {
                id: job.id,
                kind: job.kind,
                compression,
                raw_len,
                data,
            })
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

fn packer(repo: &Repository, rx: Receiver<Compressed>, tx: Sender<FinishedPack>) -> Result<()> {
    let target = repo.config.pack_size as usize;
    let mut data_pack: Option<PackWriter> = None;
    let mut tree_pack: Option<PackWriter> = None;
    let finish = |p: PackWriter, kind: BlobKind| -> Result<()> {
        let (id, bytes, blobs) = p.finish();
        tx.send(FinishedPack {
            id,
            kind,
            bytes,
            blobs,
        })
        .map_err(|_| RepoError::Internal("the uploader stopped".into()))
    };
    for c in rx {
        let slot = if c.kind == BlobKind::Tree {
            &mut tree_pack
        } else {
            &mut data_pack
        };
        if slot.is_none() {
            *slot = Some(PackWriter::new(repo.keys(), target)?);
        }
        if let Some(p) = slot.as_mut() {
            p.add(c.id, c.kind, c.compression, c.raw_len, c.data);
            if p.len() >= target {
                if let Some(p) = slot.take() {
                    finish(p, c.kind)?;
                }
            }
        }
    }
    if let Some(p) = data_pack.take() {
        finish(p, BlobKind::Data)?;
    }
    if let Some(p) = tree_pack.take() {
        finish(p, BlobKind::Tree)?;
    }
    Ok(())
}

struct UploadResult {
    index_ids: Vec<Id>,
    bytes: u64,
}

fn write_checkpoint(
    repo: &Repository,
    pending: &mut Vec<IndexPack>,
    out: &mut UploadResult,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let index = IndexFile {
        supersedes: Vec::new(),
        packs: std::mem::take(pending),
    };
    let id = Id::random()?;
    out.bytes += repo.write_index(&id, &index)?;
    repo.cache.add_index(&id, &index)?;
    out.index_ids.push(id);
    Ok(())
}

/// Packs uploaded but not yet in an index file, and what was written so far.
struct UploadState {
    pending: Vec<IndexPack>,
    out: UploadResult,
}

/// One of [`UPLOADERS`] threads: writes packs, and every [`CHECKPOINT_PACKS`]
/// an index file listing packs that are already completely stored.
fn uploader(
    repo: &Repository,
    rx: Receiver<FinishedPack>,
    progress: &Progress,
    state: &std::sync::Mutex<UploadState>,
) -> Result<()> {
    for p in rx {
        repo.store.put(&pack_name(&p.id), &p.bytes)?;
        if p.kind == BlobKind::Tree {
            repo.cache_tree_pack(&p.id, &p.bytes);
        }
        Progress::add(&progress.uploaded, p.bytes.len() as u64);
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.out.bytes += p.bytes.len() as u64;
        st.pending.push(IndexPack {
            id: p.id,
            size: p.bytes.len() as u64,
            blobs: p.blobs,
        });
        if st.pending.len() >= CHECKPOINT_PACKS {
            let UploadState { pending, out } = &mut *st;
            write_checkpoint(repo, pending, out)?;
        }
    }
    Ok(())
}

/// Parallel pack uploads to a remote store: round trips overlap each other
/// and the CPU stages.
pub const UPLOADERS: usize = 3;

/// Parallel pack writes to a local disk: two overlap one pack's fsync with
/// the next pack's write, and each holds a whole pack (16–24 MiB) in memory.
pub const LOCAL_UPLOADERS: usize = 2;

/// Deletes database images left by backups that were killed (their process
/// is gone): a killed run must not leave a copy of the database behind.
fn remove_stale_images(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("db-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if crate::session::process_start(pid).is_none() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Picks the parent snapshot: the latest from this host with the same paths.
fn find_parent(repo: &Repository, host: &str, paths: &[Vec<u8>]) -> Result<Option<(Id, Snapshot)>> {
    let mut want: Vec<Vec<u8>> = paths.to_vec();
    want.sort();
    // A damaged snapshot (logged) cannot be a parent; the backup goes on.
    Ok(repo
        .readable_snapshots()?
        .0
        .into_iter()
        .rev()
        .find(|(_, s)| {
            let mut p = s.paths.clone();
            p.sort();
            s.hostname == host && p == want
        }))
}

fn join_thread<T>(r: std::thread::Result<Result<T>>) -> Result<T> {
    r.map_err(|_| RepoError::Internal("a backup thread panicked".into()))?
}

/// Runs one backup and writes its snapshot.
pub fn backup(
    repo: &mut Repository,
    sources: &BackupSources,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let time_ns = now_ns();
    // A repository made elsewhere may have packs too large for this store.
    crate::repo::check_pack_size(repo.store.as_ref(), repo.config.pack_size)?;
    // Register first, then read the index: a concurrent prune either sees
    // this session or this session sees its condemnation record.
    let session = Session::start(repo, &opts.hostname)?;
    let result = run(repo, sources, opts, progress, started, time_ns, &session);
    match &result {
        // The storage just failed after all its retries: removing the session
        // would retry as long again. Left behind, it is dead as soon as this
        // process exits, and a later prune removes it.
        Err(RepoError::Storage(e)) if e.is_transient() => {}
        _ => session.end(repo),
    }
    result
}

fn run(
    repo: &mut Repository,
    sources: &BackupSources,
    opts: &BackupOptions,
    progress: &Progress,
    started: Instant,
    time_ns: i64,
    session: &Session,
) -> Result<BackupOutcome> {
    repo.refresh()?;
    let mut root = VDir::default();
    let mut paths = Vec::new();
    let mut skip = HashSet::new();
    let mut images = Vec::new();
    let mut databases = Vec::new();
    let mut nested_dbs = BTreeMap::new();
    let path_sources = sources
        .paths
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<Vec<_>>>()?;
    for db in &sources.databases {
        let abs = absolute(db)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut s = abs.clone().into_os_string();
            s.push(suffix);
            skip.insert(PathBuf::from(s));
        }
    }
    let cleanup = |images: &[PathBuf]| {
        for i in images {
            let _ = fs::remove_file(i);
        }
    };
    remove_stale_images(&opts.staging_dir);
    // Database images are taken in the background while the walk starts; the
    // walker waits for each one when it reaches it.
    let mut db_threads = Vec::new();
    for db in &sources.databases {
        let abs = absolute(db)?;
        let image = opts.staging_dir.join(format!(
            "db-{}-{}.sqlite",
            std::process::id(),
            hex::encode(coffer_crypto::random_bytes::<8>()?)
        ));
        let (ready, thread) = crate::sqlite::start_capture(&abs, &image);
        db_threads.push(thread);
        images.push(image);
        paths.push(abs.as_os_str().as_bytes().to_vec());
        databases.push(DatabaseEntry {
            path: abs.as_os_str().as_bytes().to_vec(),
            // Replaced by what the capture used once the walk has read it.
            method: crate::sqlite::METHOD_ONLINE_BACKUP.into(),
        });
        // Inside a directory given as a path: the walk of that directory
        // reads the database through its image, in its place, and the rest
        // of the directory as files.
        if path_sources.iter().any(|p| abs.starts_with(p) && abs != *p) {
            nested_dbs.insert(abs, ready);
            continue;
        }
        insert_source(
            &mut root,
            &abs,
            Source::Database {
                original: abs.clone(),
                ready,
            },
        );
    }
    for abs in path_sources {
        paths.push(abs.as_os_str().as_bytes().to_vec());
        if !skip.contains(&abs) {
            insert_source(&mut root, &abs, Source::Path(abs.clone()));
        }
    }
    let parent = if opts.force_full {
        None
    } else {
        find_parent(repo, &opts.hostname, &paths)?
    };
    let parent_tree = match &parent {
        Some((_, s)) => repo.read_tree(&s.tree).ok(),
        None => None,
    };
    match &parent {
        Some((id, _)) if parent_tree.is_some() => tracing::info!(
            parent = %id.to_hex(),
            "files unchanged since the parent snapshot are not read again"
        ),
        _ => tracing::info!("no usable parent snapshot: every file is read"),
    }

    let workers = opts.workers.max(1);
    let repo_ref: &Repository = repo;
    let upload_state = std::sync::Mutex::new(UploadState {
        pending: Vec::new(),
        out: UploadResult {
            index_ids: Vec::new(),
            bytes: 0,
        },
    });
    let upload_state = &upload_state;
    let (file_chunker, db_chunker) = (repo_ref.file_chunker(), repo_ref.db_chunker());
    let result = std::thread::scope(
        |scope| -> Result<(Tree, Id, BackupSummary, Vec<String>, UploadResult, usize)> {
            let (job_tx, job_rx) = bounded::<Job>(workers);
            let (comp_tx, comp_rx) = bounded::<Compressed>(workers);
            // A finished pack is handed straight to a free uploader: each
            // pack in memory is 16-24 MiB, the largest item of the pipeline.
            let (pack_tx, pack_rx) = bounded::<FinishedPack>(0);
            let level = repo_ref.config.zstd_level;
            let mut worker_handles = Vec::new();
            for _ in 0..workers {
                let (rx, tx) = (job_rx.clone(), comp_tx.clone());
                worker_handles.push(scope.spawn(move || compress_worker(level, rx, tx)));
            }
            drop((job_rx, comp_tx));
            let packer_h = scope.spawn(move || packer(repo_ref, comp_rx, pack_tx));
            let uploaders = if repo_ref.is_remote() {
                UPLOADERS
            } else {
                LOCAL_UPLOADERS
            };
            let uploader_hs: Vec<_> = (0..uploaders)
                .map(|_| {
                    let rx = pack_rx.clone();
                    scope.spawn(move || uploader(repo_ref, rx, progress, upload_state))
                })
                .collect();
            drop(pack_rx);
            // Refreshes the session until the walk is done (the sender is dropped).
            let (stop_tx, stop_rx) = bounded::<()>(0);
            let heartbeat = scope.spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(crate::session::REFRESH)
                {
                    session.refresh(repo_ref);
                }
            });

            let (hints, prefetcher) = Hints::new();
            scope.spawn(move || prefetcher.run());
            let mut walker = Walker {
                repo: repo_ref,
                opts,
                progress,
                file_chunker: &file_chunker,
                db_chunker: &db_chunker,
                jobs: job_tx,
                claimed: HashSet::new(),
                skip,
                nested_dbs,
                sources_read: 0,
                summary: BackupSummary::default(),
                warnings: Vec::new(),
                read_buf: Vec::new(),
                db_methods: Vec::new(),
                hints,
            };
            let mut unreached = Vec::new();
            let walked = walker
                .walk_vdir(Path::new("/"), root, parent_tree)
                .and_then(|t| {
                    unreached = walker.unreached_databases()?;
                    let id = walker.save_tree(t.clone())?;
                    Ok((t, id))
                });
            let Walker {
                summary,
                warnings,
                jobs,
                db_methods,
                sources_read,
                ..
            } = walker;
            databases.retain(|d| {
                !unreached
                    .iter()
                    .any(|u| u.as_os_str().as_bytes() == d.path.as_slice())
            });
            for (path, method) in db_methods {
                let path = path.as_os_str().as_bytes();
                if let Some(d) = databases.iter_mut().find(|d| d.path == path) {
                    d.method = method.into();
                }
            }
            drop(jobs);
            let mut first_err = walked.as_ref().err().map(|e| e.to_string());
            for h in worker_handles {
                if let Err(e) = join_thread(h.join()) {
                    first_err.get_or_insert(e.to_string());
                }
            }
            let packed = join_thread(packer_h.join());
            let mut uploaded = Ok(());
            for h in uploader_hs {
                if let Err(e) = join_thread(h.join()) {
                    uploaded = Err(e);
                }
            }
            let uploaded = uploaded.and_then(|()| {
                let mut st = upload_state.lock().unwrap_or_else(|e| e.into_inner());
                let UploadState { pending, out } = &mut *st;
                write_checkpoint(repo_ref, pending, out)?;
                Ok(std::mem::replace(
                    out,
                    UploadResult {
                        index_ids: Vec::new(),
                        bytes: 0,
                    },
                ))
            });
            drop(stop_tx);
            let _ = heartbeat.join();
            // Downstream first: a failed upload (storage down) stops the
            // packer, which stops the compressors, which stops the walk; the
            // storage error, not "the uploader stopped", is what to report.
            let uploaded = uploaded?;
            packed?;
            let (tree, id) = walked?;
            if let Some(e) = first_err {
                return Err(RepoError::Internal(e));
            }
            Ok((tree, id, summary, warnings, uploaded, sources_read))
        },
    );
    for t in db_threads {
        let _ = t.join();
    }
    cleanup(&images);
    let (_, tree_id, mut summary, warnings, uploaded, sources_read) = result?;

    // Only the directories leading to the paths given (which exist even
    // when the paths do not) would be in it.
    if sources_read == 0 && !warnings.is_empty() {
        return Err(RepoError::NothingReadable(warnings.join("; ")));
    }
    summary.bytes_added = uploaded.bytes;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    let snapshot = Snapshot {
        time_ns,
        hostname: opts.hostname.clone(),
        paths,
        tree: tree_id,
        databases,
        parent: parent.map(|(id, _)| id),
        index_ids: uploaded.index_ids,
        summary,
    };
    let id = Id::random()?;
    let n = repo.write_object(Kind::Snapshot, "snapshots/", &id, encode(&snapshot))?;
    tracing::info!(snapshot = %id.to_hex(), "snapshot saved");
    let mut snapshot = snapshot;
    snapshot.summary.bytes_added += n;
    Ok(BackupOutcome {
        id,
        snapshot,
        warnings,
    })
}
