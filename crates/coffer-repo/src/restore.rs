//! Restore: a whole snapshot, one path, or the databases alone.
//!
//! Every byte written has been authenticated and matched to its chunk id
//! first. Each file is written to a temporary name and renamed into place
//! only when all of its chunks checked out; a file with a bad chunk is
//! removed and reported, and the restore as a whole fails.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cache::Located;
use crate::format::types::{Node, NodeKind, Snapshot, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::Repository;
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

enum Op {
    Begin { path: PathBuf, node: Node },
    Chunk { seq: u64 },
    End,
    DirDone { path: PathBuf, node: Node },
}

struct Fetch {
    seq: u64,
    located: Located,
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
    progress
        .total_bytes
        .store(total, std::sync::atomic::Ordering::Relaxed);

    let workers = opts.workers.max(1);
    std::thread::scope(|scope| {
        let (op_tx, op_rx) = bounded::<Op>(16);
        let (job_tx, job_rx) = bounded::<Fetch>(workers * 2);
        let (res_tx, res_rx) = bounded::<(u64, Result<Vec<u8>>)>(workers * 4 + 32);
        for _ in 0..workers {
            let (rx, tx) = (job_rx.clone(), res_tx.clone());
            scope.spawn(move || {
                for f in rx {
                    let r = repo.read_blob(&f.located);
                    if tx.send((f.seq, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((job_rx, res_tx));
        let writer = scope.spawn(move || write_ops(op_rx, res_rx, progress));
        let mut planner = Planner {
            repo,
            ops: op_tx,
            jobs: job_tx,
            seq: 0,
        };
        let mut planned = Ok(());
        for (path, node) in selected {
            let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
            let dest = target.join(rel);
            if let Some(parent) = dest.parent() {
                if let Err(e) = fs::create_dir_all(parent) {
                    planned = Err(RepoError::local(parent, e));
                    break;
                }
            }
            if let Err(e) = planner.node(&dest, node) {
                planned = Err(e);
                break;
            }
        }
        drop(planner);
        let summary = writer
            .join()
            .map_err(|_| RepoError::Internal("the restore writer panicked".into()))?;
        planned?;
        Ok(summary)
    })
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

struct Planner<'a> {
    repo: &'a Repository,
    ops: Sender<Op>,
    jobs: Sender<Fetch>,
    seq: u64,
}

impl Planner<'_> {
    fn send(&self, op: Op) -> Result<()> {
        self.ops
            .send(op)
            .map_err(|_| RepoError::Internal("the restore writer stopped".into()))
    }

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
                self.send(Op::DirDone {
                    path: dest.to_path_buf(),
                    node,
                })
            }
            NodeKind::File { chunks, .. } => {
                let chunks = chunks.clone();
                self.send(Op::Begin {
                    path: dest.to_path_buf(),
                    node,
                })?;
                for c in chunks {
                    let located = self.repo.locate(&c, &dest.display().to_string())?;
                    let seq = self.seq;
                    self.seq += 1;
                    self.send(Op::Chunk { seq })?;
                    self.jobs
                        .send(Fetch { seq, located })
                        .map_err(|_| RepoError::Internal("restore workers stopped".into()))?;
                }
                self.send(Op::End)
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
                self.send(Op::DirDone {
                    path: PathBuf::new(),
                    node: Node {
                        kind: NodeKind::Symlink { target: Vec::new() },
                        ..node
                    },
                })
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

/// The file the writer is filling.
struct OpenFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    node: Node,
    err: Option<String>,
}

fn write_ops(
    ops: Receiver<Op>,
    results: Receiver<(u64, Result<Vec<u8>>)>,
    progress: &Progress,
) -> RestoreSummary {
    let mut summary = RestoreSummary::default();
    let mut ready: BTreeMap<u64, Result<Vec<u8>>> = BTreeMap::new();
    let mut current: Option<OpenFile> = None;
    for op in ops {
        match op {
            Op::Begin { path, node } => {
                let tmp = temp_name(&path);
                let (file, err) = match File::create(&tmp) {
                    Ok(f) => (Some(f), None),
                    Err(e) => (None, Some(format!("cannot create: {e}"))),
                };
                current = Some(OpenFile {
                    path,
                    tmp,
                    file,
                    node,
                    err,
                });
            }
            Op::Chunk { seq } => {
                let data = loop {
                    if let Some(d) = ready.remove(&seq) {
                        break d;
                    }
                    match results.recv() {
                        Ok((s, d)) => {
                            ready.insert(s, d);
                        }
                        Err(_) => break Err(RepoError::Internal("restore workers stopped".into())),
                    }
                };
                if let Some(OpenFile { file, err, .. }) = current.as_mut() {
                    if err.is_none() {
                        match data {
                            Ok(bytes) => {
                                if let Some(f) = file.as_mut() {
                                    if let Err(e) = f.write_all(&bytes) {
                                        *err = Some(format!("write failed: {e}"));
                                    }
                                }
                                summary.bytes += bytes.len() as u64;
                                Progress::add(&progress.bytes, bytes.len() as u64);
                            }
                            Err(e) => *err = Some(e.to_string()),
                        }
                    }
                }
            }
            Op::End => {
                if let Some(OpenFile {
                    path,
                    tmp,
                    file,
                    node,
                    err,
                }) = current.take()
                {
                    // Like cp, tar and restic, a restore leaves writeback to the
                    // kernel instead of fsyncing every file (run `sync` to force it);
                    // write errors, a full disk included, surface from write() above.
                    drop(file);
                    match err {
                        None => {
                            set_meta(&tmp, &node);
                            match fs::rename(&tmp, &path) {
                                Ok(()) => {
                                    summary.files += 1;
                                    Progress::add(&progress.files, 1);
                                }
                                Err(e) => {
                                    let _ = fs::remove_file(&tmp);
                                    summary.failures.push(format!("{}: {e}", path.display()));
                                }
                            }
                        }
                        Some(e) => {
                            let _ = fs::remove_file(&tmp);
                            summary.failures.push(format!("{}: {e}", path.display()));
                        }
                    }
                }
            }
            Op::DirDone { path, node } => match node.kind {
                NodeKind::Symlink { .. } => summary.symlinks += 1,
                _ => {
                    set_meta(&path, &node);
                    summary.dirs += 1;
                }
            },
        }
    }
    // The planner stopped in the middle of a file: that file is not restored.
    if let Some(OpenFile { path, tmp, .. }) = current.take() {
        let _ = fs::remove_file(&tmp);
        summary.failures.push(format!(
            "{}: restore stopped before this file was complete",
            path.display()
        ));
    }
    summary
}
