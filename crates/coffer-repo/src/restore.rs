//! Restore: a whole snapshot, one path, or the databases alone.
//!
//! Every byte written has been authenticated and matched to its chunk id
//! first. Each file is written to a temporary name and renamed into place
//! only when all of its chunks checked out; a file with a bad chunk is
//! removed and reported, and the restore as a whole fails.
//!
//! Threads: the calling thread walks the trees, creates directories,
//! symlinks and each file's temporary, and plans the chunks; two threads per
//! `workers` (a read in flight while the other decrypts) each take a job, read and authenticate its chunks, and write each
//! at its offset (`pwrite`), so both cores share the kernel's page-cache
//! copies. The worker that writes a file's last chunk renames it into place.
//!
//! A job is a run of chunks close together in one pack, of any files: the
//! planned chunks (up to [`PLAN_BATCH`] at a time) are sorted by pack and
//! offset and cut with [`contiguous_runs`], so a pack is read with one or two
//! ranged requests instead of one per chunk — object stores and drives charge
//! latency (and money) per request, not per byte.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Sender};

use crate::cache::Located;
use crate::format::types::{BlobLocation, Node, NodeKind, Snapshot, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::{
    contiguous_runs_up_to, Repository, LOCAL_READ_SPAN, READS_PER_CORE, REMOTE_READ_SPAN,
};
use crate::{RepoError, Result};

/// What to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Only this path of the snapshot (absolute as backed up).
    pub path: Option<PathBuf>,
    /// Only the SQLite databases.
    pub databases_only: bool,
    /// Decryption threads.
    pub workers: usize,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Files restored.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files that failed, with why (none were left in place).
    pub failures: Vec<String>,
    /// How many of `failures` were integrity failures (stored data that
    /// failed authentication or is missing); the others failed on the
    /// local disk or the storage.
    pub integrity_failures: u64,
}

/// Chunks planned before they are grouped into jobs and sent: bounds the
/// planner's memory on huge snapshots.
pub const PLAN_BATCH: usize = 1 << 16;

/// A file being restored: its chunks may complete in any order.
struct FileJob {
    path: PathBuf,
    tmp: PathBuf,
    node: Node,
    remaining: AtomicU64,
    /// Why it failed, and whether that was an integrity failure.
    error: Mutex<Option<(String, bool)>>,
}

impl FileJob {
    fn fail(&self, e: &RepoError) {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert((e.to_string(), is_integrity(e)));
    }

    fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// Whether `e` says that stored data failed authentication or is missing,
/// rather than that the local disk or the storage failed.
fn is_integrity(e: &RepoError) -> bool {
    match e {
        RepoError::Local { .. } => false,
        // A missing or truncated object is damage; the storage failing
        // (unreachable, refusing, out of space) is not.
        RepoError::Storage(s) => matches!(
            s,
            coffer_storage::StorageError::NotFound { .. }
                | coffer_storage::StorageError::ShortRead { .. }
        ),
        _ => true,
    }
}

/// One chunk of one file.
struct Part {
    file: Arc<FileJob>,
    /// Where it goes in the file.
    offset: u64,
    located: Located,
}

/// Chunks close together in one pack, read with one request.
struct ChunkJob {
    parts: Vec<Part>,
}

#[derive(Default)]
struct Shared {
    summary: Mutex<RestoreSummary>,
}

impl Shared {
    fn summary(&self) -> std::sync::MutexGuard<'_, RestoreSummary> {
        self.summary.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called once per file, when its last chunk is done (or it failed).
    fn finish(&self, job: &FileJob, progress: &Progress) {
        let error = job.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match error {
            None => {
                set_meta(&job.tmp, &job.node);
                match fs::rename(&job.tmp, &job.path) {
                    Ok(()) => {
                        self.summary().files += 1;
                        Progress::add(&progress.files, 1);
                    }
                    Err(e) => {
                        // A local failure (a directory where the file goes).
                        let _ = fs::remove_file(&job.tmp);
                        self.summary()
                            .failures
                            .push(format!("{}: {e}", job.path.display()));
                    }
                }
            }
            Some((e, integrity)) => {
                let _ = fs::remove_file(&job.tmp);
                let mut summary = self.summary();
                summary
                    .failures
                    .push(format!("{}: {e}", job.path.display()));
                if integrity {
                    summary.integrity_failures += 1;
                }
            }
        }
    }
}

fn chunk_worker(repo: &Repository, job: ChunkJob, shared: &Shared, progress: &Progress) {
    let parts = job.parts;
    if parts.iter().any(|p| !p.file.failed()) {
        let pack = &parts[0].located.pack;
        let locs: Vec<BlobLocation> = parts.iter().map(|p| p.located.loc.clone()).collect();
        // One open file at a time: consecutive parts are often of one file.
        let mut open: Option<(Arc<FileJob>, File)> = None;
        let mut write = |part: &Part, blob: Result<Cow<'_, [u8]>>| {
            if part.file.failed() {
                return;
            }
            let written = blob.and_then(|data| {
                if open
                    .as_ref()
                    .is_none_or(|(f, _)| !Arc::ptr_eq(f, &part.file))
                {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&part.file.tmp)
                        .map_err(|e| RepoError::local(&part.file.tmp, e))?;
                    open = Some((part.file.clone(), f));
                }
                let Some((_, f)) = open.as_ref() else {
                    return Err(RepoError::Internal("no open file".into()));
                };
                f.write_all_at(&data, part.offset)
                    .map_err(|e| RepoError::local(&part.file.tmp, e))?;
                Ok(data.len() as u64)
            });
            match written {
                Ok(n) => {
                    shared.summary().bytes += n;
                    Progress::add(&progress.bytes, n);
                }
                Err(e) => part.file.fail(&e),
            }
        };
        let mut done = vec![false; parts.len()];
        let whole = repo.read_blob_run(pack, &locs, |i, blob| {
            done[i] = true;
            write(&parts[i], blob);
        });
        if let Err(e) = whole {
            // The range failed as a whole (a truncated pack, say): chunk by
            // chunk, so that files whose chunks are intact are still restored.
            for (i, part) in parts.iter().enumerate().filter(|(i, _)| !done[*i]) {
                let one = std::slice::from_ref(&locs[i]);
                if parts.len() == 1 {
                    part.file.fail(&e);
                } else if let Err(e) = repo.read_blob_run(pack, one, |_, blob| write(part, blob)) {
                    part.file.fail(&e);
                }
            }
        }
    }
    for part in &parts {
        if part.file.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.finish(&part.file, progress);
        }
    }
}

/// Groups planned chunks into jobs (runs close together in one pack) and
/// queues them.
fn send_jobs(mut parts: Vec<Part>, jobs: &Sender<ChunkJob>, max_span: u64) -> Result<()> {
    parts.sort_by_key(|p| (p.located.pack, p.located.loc.offset));
    let mut parts = parts.into_iter().peekable();
    while let Some(first) = parts.next() {
        let pack = first.located.pack;
        let mut same = vec![first];
        while let Some(p) = parts.next_if(|p| p.located.pack == pack) {
            same.push(p);
        }
        let spans: Vec<(u64, u64)> = same
            .iter()
            .map(|p| {
                (
                    u64::from(p.located.loc.offset),
                    u64::from(p.located.loc.length),
                )
            })
            .collect();
        let mut same = same.into_iter();
        for run in contiguous_runs_up_to(&spans, max_span) {
            let parts: Vec<Part> = same.by_ref().take(run.len()).collect();
            jobs.send(ChunkJob { parts })
                .map_err(|_| RepoError::Internal("the restore workers stopped".into()))?;
        }
    }
    Ok(())
}

/// Restores a snapshot (or part of it) under `target`.
pub fn restore(
    repo: &Repository,
    snap_id: &Id,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreSummary> {
    repo.check_snapshot_index(snap_id, snap)?;
    tracing::info!(
        snapshot = %snap_id.to_hex(),
        target = %target.display(),
        "restoring"
    );
    fs::create_dir_all(target).map_err(|e| RepoError::local(target, e))?;
    let root = repo.read_tree(&snap.tree)?;

    // Select what to restore: (path in snapshot, node) pairs.
    let mut selected: Vec<(PathBuf, Node)> = Vec::new();
    if opts.databases_only {
        if snap.databases.is_empty() {
            return Err(RepoError::PathNotInSnapshot(
                "(no database in this snapshot)".into(),
            ));
        }
        for db in &snap.databases {
            let p = PathBuf::from(OsStr::from_bytes(&db.path));
            selected.push((p.clone(), find_node(repo, &root, &p)?));
        }
    } else if let Some(p) = &opts.path {
        let p = if p.is_absolute() {
            p.clone()
        } else {
            Path::new("/").join(p)
        };
        selected.push((p.clone(), find_node(repo, &root, &p)?));
    } else {
        for n in root.nodes {
            selected.push((PathBuf::from("/").join(OsStr::from_bytes(&n.name)), n));
        }
    }
    let total: u64 = selected.iter().map(|(_, n)| size_of(repo, n)).sum();
    progress.total_bytes.store(total, Ordering::Relaxed);

    // A worker spends much of its time waiting for its read (a server's
    // answer, or a cold disk): twice as many as cores keep the cores busy and
    // the disk's queue full.
    let remote = repo.is_remote();
    let workers = opts.workers.max(1) * READS_PER_CORE;
    let shared = Shared::default();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let planned = std::thread::scope(|scope| {
        let (tx, rx) = bounded::<ChunkJob>(workers * 4);
        for _ in 0..workers {
            let rx = rx.clone();
            let shared = &shared;
            scope.spawn(move || {
                for job in rx {
                    chunk_worker(repo, job, shared, progress);
                }
            });
        }
        drop(rx);
        let mut planner = Planner {
            repo,
            jobs: tx,
            planned: Vec::new(),
            max_span: if remote {
                REMOTE_READ_SPAN
            } else {
                LOCAL_READ_SPAN
            },
            shared: &shared,
            progress,
            dirs: &mut dirs,
        };
        let walked = selected.into_iter().try_for_each(|(path, node)| {
            let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
            let dest = target.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(|e| RepoError::local(parent, e))?;
            }
            planner.node(&dest, node)
        });
        // Even after an error (an unreadable tree), the files already planned
        // are finished: restored, or removed and reported.
        let sent = send_jobs(
            std::mem::take(&mut planner.planned),
            &planner.jobs,
            planner.max_span,
        );
        walked.and(sent)
        // The sender is dropped with the planner; the scope joins the workers.
    });
    // Directory times last, deepest first, once everything inside is written.
    for (path, node) in dirs.iter().rev() {
        set_meta(path, node);
    }
    let mut summary = shared
        .summary
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    summary.dirs = dirs.len() as u64;
    planned?;
    Ok(summary)
}

fn size_of(repo: &Repository, node: &Node) -> u64 {
    match &node.kind {
        NodeKind::File { size, .. } => *size,
        NodeKind::Dir { subtree } => repo
            .read_tree(subtree)
            .map(|t| t.nodes.iter().map(|n| size_of(repo, n)).sum())
            .unwrap_or(0),
        NodeKind::Symlink { .. } => 0,
    }
}

/// Finds the node at absolute path `p` in the snapshot.
pub fn find_node(repo: &Repository, root: &Tree, p: &Path) -> Result<Node> {
    let not_found = || RepoError::PathNotInSnapshot(p.display().to_string());
    let comps: Vec<&OsStr> = p
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    let mut tree = root.clone();
    for (i, c) in comps.iter().enumerate() {
        let node = tree
            .nodes
            .iter()
            .find(|n| n.name == c.as_bytes())
            .cloned()
            .ok_or_else(not_found)?;
        if i + 1 == comps.len() {
            return Ok(node);
        }
        match &node.kind {
            NodeKind::Dir { subtree } => tree = repo.read_tree(subtree)?,
            _ => return Err(not_found()),
        }
    }
    Err(not_found())
}

struct Planner<'a, 'd> {
    repo: &'a Repository,
    jobs: Sender<ChunkJob>,
    /// Chunks not yet sent (see [`PLAN_BATCH`]).
    planned: Vec<Part>,
    /// The longest span read with one request.
    max_span: u64,
    shared: &'a Shared,
    progress: &'a Progress,
    dirs: &'d mut Vec<(PathBuf, Node)>,
}

impl Planner<'_, '_> {
    fn node(&mut self, dest: &Path, node: Node) -> Result<()> {
        match &node.kind {
            NodeKind::Dir { subtree } => {
                match fs::create_dir(dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                    Err(e) => return Err(RepoError::local(dest, e)),
                }
                let tree = self.repo.read_tree(subtree)?;
                for child in tree.nodes {
                    if child.name.is_empty()
                        || child.name == b"."
                        || child.name == b".."
                        || child.name.contains(&b'/')
                    {
                        return Err(RepoError::integrity(
                            format!("tree {}", subtree.short()),
                            "an entry has an unsafe name",
                        ));
                    }
                    let p = dest.join(OsStr::from_bytes(&child.name));
                    self.node(&p, child)?;
                }
                self.dirs.push((dest.to_path_buf(), node));
                Ok(())
            }
            NodeKind::File { chunks, size } => {
                // Locate every chunk first: a missing one fails the file before
                // anything is written, and the offsets must add up to the size.
                let what = dest.display().to_string();
                let mut located = Vec::with_capacity(chunks.len());
                let mut offset = 0u64;
                for c in chunks {
                    let l = self.repo.locate(c, &what)?;
                    let len = u64::from(l.loc.raw_length);
                    located.push((offset, l));
                    offset += len;
                }
                if offset != *size {
                    return Err(RepoError::integrity(
                        &what,
                        format!("its chunks hold {offset} bytes, the tree says {size}"),
                    ));
                }
                let tmp = temp_name(dest);
                File::create(&tmp).map_err(|e| RepoError::local(&tmp, e))?;
                let job = Arc::new(FileJob {
                    path: dest.to_path_buf(),
                    tmp,
                    node: node.clone(),
                    remaining: AtomicU64::new(located.len() as u64),
                    error: Mutex::new(None),
                });
                if located.is_empty() {
                    self.shared.finish(&job, self.progress);
                    return Ok(());
                }
                for (offset, located) in located {
                    self.planned.push(Part {
                        file: job.clone(),
                        offset,
                        located,
                    });
                }
                if self.planned.len() >= PLAN_BATCH {
                    send_jobs(std::mem::take(&mut self.planned), &self.jobs, self.max_span)?;
                }
                Ok(())
            }
            NodeKind::Symlink { target } => {
                let _ = fs::remove_file(dest);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), dest)
                    .map_err(|e| RepoError::local(dest, e))?;
                let t = filetime::FileTime::from_unix_time(
                    node.mtime_ns.div_euclid(1_000_000_000),
                    node.mtime_ns.rem_euclid(1_000_000_000) as u32,
                );
                let _ = filetime::set_symlink_file_times(dest, t, t);
                self.shared.summary().symlinks += 1;
                Ok(())
            }
        }
    }
}

fn temp_name(dest: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(".coffer-partial");
    dest.with_file_name(name)
}

fn set_meta(path: &Path, node: &Node) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(node.mode & 0o7777));
    let t = filetime::FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    let _ = filetime::set_file_times(path, t, t);
}
