//! Verify: the structure (every snapshot, tree and referenced blob accounted
//! for, every pack present with its indexed size), and with `read_data` the
//! content of all or a random share of the packs, blob by blob.

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;

use crate::format::pack::{open_trailer, pack_name, trailer_span};
use crate::format::types::NodeKind;
use crate::format::{check_header, Kind};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::{RepoError, Result};

/// What verify did and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifySummary {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Distinct trees read.
    pub trees: u64,
    /// Distinct data blobs referenced.
    pub data_blobs: u64,
    /// Packs in the index.
    pub packs: u64,
    /// Index files read and authenticated.
    pub index_files: u64,
    /// Packs read back and checked blob by blob.
    pub packs_read: u64,
    /// Bytes read back.
    pub bytes_read: u64,
    /// Problems found; empty means the repository is sound.
    pub errors: Vec<String>,
    /// Whether the storage enforces conditional creates, as probed when the
    /// repository was opened (informational: prune does not rely on them).
    pub conditional_writes: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditional_writes_reason: Option<String>,
}

/// Verifies the repository. `read_data_percent`: None = structure only,
/// Some(p) = also read back p% of the packs (chosen at random), 100 = all.
pub fn verify(
    repo: &Repository,
    read_data_percent: Option<f64>,
    progress: &Progress,
) -> Result<VerifySummary> {
    let mut s = VerifySummary::default();
    match repo.conditional_writes() {
        coffer_storage::ConditionalWrites::Enforced => s.conditional_writes = true,
        coffer_storage::ConditionalWrites::NotEnforced { reason } => {
            s.conditional_writes_reason = Some(reason.clone());
        }
    }
    let listed: HashMap<String, u64> = repo
        .store()
        .list("data/")?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let packs = repo.cache().packs()?;
    s.packs = packs.len() as u64;
    for (id, size, _) in &packs {
        match listed.get(&pack_name(id)) {
            None => s.errors.push(format!(
                "pack {} is in the index but missing from storage",
                pack_name(id)
            )),
            Some(actual) if actual != size => s.errors.push(format!(
                "pack {} has {actual} bytes, the index says {size} (truncated or replaced)",
                pack_name(id)
            )),
            _ => {}
        }
    }

    // Every index file is read and authenticated again: the device's cache
    // was filled when each was first seen, and storage may have changed since.
    let known: HashSet<Id> = packs.iter().map(|(id, _, _)| *id).collect();
    for ix in repo.list_ids("index/")? {
        match repo.read_index(&ix) {
            Ok(file) => {
                s.index_files += 1;
                for p in file.packs {
                    if !known.contains(&p.id) {
                        s.errors.push(format!(
                            "index/{} lists pack {} that the local index does not have (the index file was replaced)",
                            ix.to_hex(),
                            p.id.short()
                        ));
                    }
                }
            }
            Err(RepoError::Storage(coffer_storage::StorageError::NotFound { .. })) => {}
            Err(e) => s.errors.push(e.to_string()),
        }
    }

    let seen = repo.cache().scratch_set()?;
    let mut trees = 0u64;
    let mut data = 0u64;
    // A damaged snapshot is a problem; the others are still checked.
    let snapshots = match repo.readable_snapshots() {
        Ok((v, damaged)) => {
            for (id, e) in damaged {
                s.snapshots += 1;
                s.errors.push(format!("snapshot {}: {e}", id.short()));
            }
            v
        }
        Err(e) => {
            s.errors.push(e.to_string());
            Vec::new()
        }
    };
    for (sid, snap) in &snapshots {
        s.snapshots += 1;
        if let Err(e) = repo.check_snapshot_index(sid, snap) {
            s.errors.push(e.to_string());
            continue;
        }
        // Trees with the path they were first reached by (for messages).
        let mut stack = vec![(snap.tree, Vec::new())];
        // One message per file and missing pack, not one per chunk.
        let mut reported: HashSet<(Vec<u8>, Option<Id>)> = HashSet::new();
        while let Some((t, dir)) = stack.pop() {
            if !seen.insert(&t)? {
                continue;
            }
            trees += 1;
            let tree = match repo.read_tree(&t) {
                Ok(tree) => tree,
                Err(e) => {
                    s.errors.push(format!("snapshot {}: {e}", sid.short()));
                    continue;
                }
            };
            for n in tree.nodes {
                let mut path = dir.clone();
                path.push(b'/');
                path.extend_from_slice(&n.name);
                match n.kind {
                    NodeKind::Dir { subtree } => stack.push((subtree, path)),
                    NodeKind::File { chunks, .. } => {
                        for c in chunks {
                            if !seen.insert(&c)? {
                                continue;
                            }
                            data += 1;
                            match repo.cache().locate(&c)? {
                                None if reported.insert((path.clone(), None)) => {
                                    s.errors.push(format!(
                                        "snapshot {}: file {} needs blob {} which is in no index",
                                        sid.short(),
                                        String::from_utf8_lossy(&path),
                                        c.short()
                                    ))
                                }
                                Some(l)
                                    if !listed.contains_key(&pack_name(&l.pack))
                                        && reported.insert((path.clone(), Some(l.pack))) =>
                                {
                                    s.errors.push(format!(
                                        "snapshot {}: file {} needs pack {} which is missing",
                                        sid.short(),
                                        String::from_utf8_lossy(&path),
                                        pack_name(&l.pack)
                                    ))
                                }
                                _ => {}
                            }
                        }
                    }
                    NodeKind::Symlink { .. } => {}
                }
            }
        }
    }
    s.trees = trees;
    s.data_blobs = data;

    if let Some(pct) = read_data_percent {
        // The size as stored (not as indexed): a replaced pack is then read
        // whole and fails authentication by name.
        let mut chosen: Vec<(Id, u64)> = packs
            .iter()
            .filter_map(|(id, _, _)| listed.get(&pack_name(id)).map(|sz| (*id, *sz)))
            .collect();
        let mut rng =
            <rand::rngs::SmallRng as rand::SeedableRng>::from_seed(coffer_crypto::random_bytes()?);
        chosen.shuffle(&mut rng);
        let n = ((chosen.len() as f64) * pct.clamp(0.0, 100.0) / 100.0).ceil() as usize;
        chosen.truncate(n);
        progress.total_bytes.store(
            chosen.iter().map(|(_, sz)| sz).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let errors = std::sync::Mutex::new(Vec::new());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            * if repo.is_remote() {
                // A whole pack per worker in memory (`WHOLE_PACK_READ`).
                1
            } else {
                crate::repo::READS_PER_CORE
            };
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((id, size)) = chosen.get(i) else {
                        break;
                    };
                    if let Err(e) = check_pack(repo, id, *size) {
                        errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(e.to_string());
                    }
                    Progress::add(&progress.bytes, *size);
                    Progress::add(&progress.files, 1);
                });
            }
        });
        s.packs_read = chosen.len() as u64;
        s.bytes_read = chosen.iter().map(|(_, sz)| sz).sum();
        s.errors
            .extend(errors.into_inner().unwrap_or_else(|p| p.into_inner()));
    }
    Ok(s)
}

/// Packs up to this size on a remote store are read back whole, with one
/// request; larger ones, and every pack on a local disk, by ranges (memory:
/// one such pack per worker, which a local disk does not need).
const WHOLE_PACK_READ: u64 = 32 << 20;

/// Reads one pack back and checks every blob against its trailer and the
/// index: on a remote store a pack of up to [`WHOLE_PACK_READ`] bytes with
/// one request (object stores and drives charge per request), otherwise by
/// ranges (header, trailer, then runs of blobs up to
/// [`crate::repo::LOCAL_READ_SPAN`]).
fn check_pack(repo: &Repository, id: &Id, size: u64) -> Result<()> {
    let name = pack_name(id);
    let store = repo.store();
    let mut whole = if repo.is_remote() && size <= WHOLE_PACK_READ {
        Some(store.get(&name)?)
    } else {
        None
    };
    let size = whole.as_ref().map_or(size, |w| w.len() as u64);
    let read = |offset: u64, len: u64| -> Result<Vec<u8>> {
        match &whole {
            Some(w) => offset
                .checked_add(len)
                .and_then(|end| w.get(offset as usize..end as usize))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    RepoError::integrity(
                        &name,
                        format!("shorter than expected: bytes {offset}..+{len} asked for, it has {size}"),
                    )
                }),
            None => Ok(store.get_range(&name, offset, len)?),
        }
    };
    check_header(&read(0, 6.min(size))?, Kind::Pack, &name)?;
    let last4 = read(size.saturating_sub(4), 4.min(size))?;
    let span = trailer_span(id, size, &last4)?;
    let trailer = open_trailer(repo.keys(), id, size, &read(size - span, span)?)?;
    let indexed = repo.cache().blobs_of_pack(id)?;
    let in_trailer: HashSet<(Id, u32)> = trailer.iter().map(|b| (b.id, b.offset)).collect();
    for b in &indexed {
        if !in_trailer.contains(&(b.id, b.offset)) {
            return Err(RepoError::integrity(
                &name,
                format!(
                    "the index lists blob {} that the pack does not hold",
                    b.id.short()
                ),
            ));
        }
    }
    // The first damaged blob fails the pack.
    let mut first_err = None;
    let note = |first: &mut Option<RepoError>, blob: Result<std::borrow::Cow<'_, [u8]>>| {
        if let Err(e) = blob {
            first.get_or_insert(e);
        }
    };
    if let Some(w) = whole.as_mut() {
        crate::repo::open_blobs_in(repo.keys(), id, 0, w, &trailer, |_, b| {
            note(&mut first_err, b)
        });
    } else {
        let spans: Vec<(u64, u64)> = trailer
            .iter()
            .map(|b| (u64::from(b.offset), u64::from(b.length)))
            .collect();
        for run in crate::repo::contiguous_runs_up_to(&spans, crate::repo::LOCAL_READ_SPAN) {
            repo.read_blob_run(id, &trailer[run], |_, b| note(&mut first_err, b))?;
            if first_err.is_some() {
                break;
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(())
}
