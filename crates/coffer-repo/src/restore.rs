//! Restore: a whole snapshot, one path, or the databases alone.
//!
//! Every byte written has been authenticated and matched to its chunk id
//! first. Each file is written to a temporary name and renamed into place
//! only when all of its chunks checked out; a file with a bad chunk is
//! removed and reported, and the restore as a whole fails.
//!
//! Threads: the calling thread walks the trees, creates directories and
//! symlinks and queues chunks; `workers` threads each take any queued chunk,
//! read and authenticate it, and write it at its offset (`pwrite`), so both
//! cores share the kernel's page-cache copies. The worker that finishes a
//! file's last chunk renames it into place. A file's chunks that lie close
//! together in one pack are one job, read with one ranged request (up to
//! [`crate::repo::MAX_READ_SPAN`]): object stores and drives charge latency
//! (and money) per request, not per byte.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Sender};

use crate::cache::Located;
use crate::format::types::{BlobKind, BlobLocation, Node, NodeKind, Snapshot, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::{contiguous_runs, Repository};
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
}

/// A file being restored: its chunks may complete in any order.
struct FileJob {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    node: Node,
    remaining: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Chunks to fetch, authenticate and write at their offsets of `file`:
/// one chunk, or a run of data chunks that lie back to back in one pack
/// (read with one request).
struct ChunkJob {
    file: Arc<FileJob>,
    /// (offset in the file, where the chunk is); same pack.
    parts: Vec<(u64, Located)>,
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
                        let _ = fs::remove_file(&job.tmp);
                        self.summary()
                            .failures
                            .push(format!("{}: {e}", job.path.display()));
                    }
                }
            }
            Some(e) => {
                let _ = fs::remove_file(&job.tmp);
                self.summary()
                    .failures
                    .push(format!("{}: {e}", job.path.display()));
            }
        }
    }
}

fn chunk_worker(repo: &Repository, job: ChunkJob, shared: &Shared, progress: &Progress) {
    let failed = job
        .file
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some();
    if !failed {
        let blobs = match job.parts.as_slice() {
            [(_, one)] => repo.read_blob(one).map(|b| vec![b]),
            parts => {
                let locs: Vec<BlobLocation> = parts.iter().map(|(_, l)| l.loc.clone()).collect();
                repo.read_blob_run(&parts[0].1.pack, &locs)
            }
        };
        let result = blobs.and_then(|blobs| {
            let mut n = 0;
            for ((offset, _), data) in job.parts.iter().zip(blobs) {
                job.file
                    .file
                    .write_all_at(&data, *offset)
                    .map_err(|e| RepoError::local(&job.file.tmp, e))?;
                n += data.len() as u64;
            }
            Ok(n)
        });
        match result {
            Ok(n) => {
                shared.summary().bytes += n;
                Progress::add(&progress.bytes, n);
            }
            Err(e) => {
                job.file
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e.to_string());
            }
        }
    }
    if job.file.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.finish(&job.file, progress);
    }
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

    let workers = opts.workers.max(1);
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
            shared: &shared,
            progress,
            dirs: &mut dirs,
        };
        for (path, node) in selected {
            let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
            let dest = target.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(|e| RepoError::local(parent, e))?;
            }
            planner.node(&dest, node)?;
        }
        Ok::<(), RepoError>(())
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
                // A file's data chunks that lie close together in one pack
                // (as a backup writes them, give or take the order the
                // compressors finish in) are read with one request.
                located.sort_by_key(|(_, l)| (l.pack, l.loc.offset));
                let mut runs: Vec<Vec<(u64, Located)>> = Vec::new();
                let spans: Vec<(u64, u64)> = located
                    .iter()
                    .map(|(_, l)| (u64::from(l.loc.offset), u64::from(l.loc.length)))
                    .collect();
                let mut located = located.into_iter();
                for run in contiguous_runs(&spans) {
                    let mut current: Vec<(u64, Located)> = Vec::new();
                    for part in located.by_ref().take(run.len()) {
                        let joins = current.last().is_some_and(|(_, prev)| {
                            prev.pack == part.1.pack
                                && prev.loc.kind == BlobKind::Data
                                && part.1.loc.kind == BlobKind::Data
                        });
                        if !joins && !current.is_empty() {
                            runs.push(std::mem::take(&mut current));
                        }
                        current.push(part);
                    }
                    if !current.is_empty() {
                        runs.push(current);
                    }
                }
                let tmp = temp_name(dest);
                let file = File::create(&tmp).map_err(|e| RepoError::local(&tmp, e))?;
                let job = Arc::new(FileJob {
                    path: dest.to_path_buf(),
                    tmp,
                    file,
                    node: node.clone(),
                    remaining: AtomicU64::new(runs.len() as u64),
                    error: Mutex::new(None),
                });
                if runs.is_empty() {
                    self.shared.finish(&job, self.progress);
                    return Ok(());
                }
                for parts in runs {
                    self.jobs
                        .send(ChunkJob {
                            file: job.clone(),
                            parts,
                        })
                        .map_err(|_| RepoError::Internal("the restore workers stopped".into()))?;
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
