//! Forget (retention policy) and prune (garbage collection).
//!
//! Prune never deletes a pack a backup may still need. It works in two
//! phases, without locks that block backups:
//!
//! 1. Packs no snapshot references are *condemned*: a sealed record under
//!    `condemned/` names them and the backup sessions live at that moment.
//!    A backup that starts later reads the record and does not dedup against
//!    them (it registers its session before reading, and prune writes the
//!    record before listing sessions, so one of the two always sees the other).
//! 2. A condemned pack is deleted once every session named in its record has
//!    ended and it is still unreferenced. With no backup running, both phases
//!    happen in the same run. Index files are rewritten first, then packs
//!    deleted: a crash at any point leaves a repository that verifies.
//!
//! Where listings may lag behind writes ([`Repository::listing_grace`] not
//! zero: the consumer drives), a record is acted on only once it is older
//! than the grace, and then every session live at that moment holds it, not
//! only those it names (one registered just before the record was written
//! may not have been listed); phase 2 never happens in the run of phase 1.
//! No conditional write is needed either way (ADR 0004).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::format::pack::pack_name;
use crate::format::types::{encode, Condemned, IndexFile, IndexPack, NodeKind, Snapshot};
use crate::format::Kind;
use crate::id::Id;
use crate::repo::{now_ns, Repository};
use crate::session::live_sessions;
use crate::{RepoError, Result};

/// Retention: how many snapshots to keep, per group (host and paths).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepPolicy {
    /// The N newest.
    pub last: usize,
    /// The newest of each of the N newest days (UTC).
    pub daily: usize,
    /// The newest of each of the N newest weeks (Monday-based, UTC).
    pub weekly: usize,
    /// The newest of each of the N newest months (UTC).
    pub monthly: usize,
}

impl KeepPolicy {
    /// Whether the policy keeps nothing (refused: it would forget everything).
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// Days since 1970-01-01 → (year, month).
fn year_month(days: i64) -> (i64, u32) {
    let (y, m, _) = crate::civil_from_days(days);
    (y, m)
}

/// Splits snapshots into (keep, forget) by `policy`.
pub fn apply_policy(snaps: &[(Id, Snapshot)], policy: &KeepPolicy) -> (Vec<Id>, Vec<Id>) {
    // Snapshots are grouped by host and set of paths, as restic does.
    type GroupKey = (String, Vec<Vec<u8>>);
    let mut groups: BTreeMap<GroupKey, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in snaps {
        let mut p = s.1.paths.clone();
        p.sort();
        groups.entry((s.1.hostname.clone(), p)).or_default().push(s);
    }
    let (mut keep, mut forget) = (Vec::new(), Vec::new());
    for (_, mut list) in groups {
        list.sort_by_key(|(id, s)| std::cmp::Reverse((s.time_ns, *id)));
        let mut kept = vec![false; list.len()];
        for k in kept.iter_mut().take(policy.last) {
            *k = true;
        }
        let bucket = |f: &dyn Fn(i64) -> i64, n: usize, kept: &mut Vec<bool>| {
            let mut seen = HashSet::new();
            for (i, (_, s)) in list.iter().enumerate() {
                if seen.len() >= n {
                    break;
                }
                let days = s.time_ns.div_euclid(86_400_000_000_000);
                if seen.insert(f(days)) {
                    kept[i] = true;
                }
            }
        };
        bucket(&|d| d, policy.daily, &mut kept);
        bucket(&|d| (d + 3).div_euclid(7), policy.weekly, &mut kept);
        bucket(
            &|d| {
                let (y, m) = year_month(d);
                y * 12 + i64::from(m)
            },
            policy.monthly,
            &mut kept,
        );
        for (i, (id, _)) in list.iter().enumerate() {
            if kept[i] {
                keep.push(*id);
            } else {
                forget.push(*id);
            }
        }
    }
    (keep, forget)
}

/// Deletes the snapshots `policy` does not keep; returns (kept, forgotten).
pub fn forget(repo: &Repository, policy: &KeepPolicy, dry_run: bool) -> Result<(Vec<Id>, Vec<Id>)> {
    if policy.is_empty() {
        return Err(RepoError::Internal(
            "refusing to forget every snapshot: give at least one --keep-* option".into(),
        ));
    }
    let snaps = repo.snapshots()?;
    let (keep, gone) = apply_policy(&snaps, policy);
    if !dry_run {
        for id in &gone {
            repo.store().delete(&format!("snapshots/{}", id.to_hex()))?;
        }
    }
    Ok((keep, gone))
}

/// What a prune did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneSummary {
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Packs condemned but kept until running backups end.
    pub packs_waiting: u64,
    /// Index files rewritten.
    pub index_files_rewritten: u64,
    /// Packs still in use.
    pub packs_kept: u64,
}

/// Collects every blob id referenced by every snapshot into the cache's
/// scratch set. Any unreadable snapshot or tree aborts: prune never deletes
/// on incomplete knowledge.
fn mark<'a>(
    repo: &'a Repository,
    snaps: &[(Id, Snapshot)],
) -> Result<crate::cache::ScratchSet<'a>> {
    let seen = repo.cache().scratch_set()?;
    for (_, s) in snaps {
        let mut stack = vec![s.tree];
        while let Some(t) = stack.pop() {
            if !seen.insert(&t)? {
                continue;
            }
            for n in repo.read_tree(&t)?.nodes {
                match n.kind {
                    NodeKind::Dir { subtree } => stack.push(subtree),
                    NodeKind::File { chunks, .. } => {
                        for c in chunks {
                            seen.insert(&c)?;
                        }
                    }
                    NodeKind::Symlink { .. } => {}
                }
            }
        }
    }
    Ok(seen)
}

/// Whether `pack` holds a blob of `set`.
fn holds_any(repo: &Repository, pack: &Id, set: &crate::cache::ScratchSet<'_>) -> Result<bool> {
    for b in repo.cache().blobs_of_pack(pack)? {
        if set.contains(&b.id)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Garbage-collects packs no snapshot references.
pub fn prune(repo: &mut Repository, hostname: &str) -> Result<PruneSummary> {
    repo.refresh()?;
    let mut snaps = repo.snapshots()?;
    let mut summary = PruneSummary::default();

    // Which packs are unused: indexed packs without a referenced blob, and
    // packs on storage no index knows (left by interrupted backups).
    let indexed = repo.cache().packs()?;
    let mut unused: HashMap<Id, u64> = HashMap::new();
    let referenced = mark(repo, &snaps)?;
    let mut indexed_ids = HashSet::new();
    for (pack, size, _) in &indexed {
        indexed_ids.insert(*pack);
        if holds_any(repo, pack, &referenced)? {
            summary.packs_kept += 1;
        } else {
            unused.insert(*pack, *size);
        }
    }
    for o in repo.store().list("data/")? {
        if let Some(id) = o.name.rsplit('/').next().and_then(Id::from_hex) {
            if !indexed_ids.contains(&id) {
                unused.insert(id, o.size);
            }
        }
    }

    // Phase 2 for earlier records: ripe when all their sessions have ended.
    let live: HashSet<String> = live_sessions(repo, hostname)?.into_iter().collect();
    let mut ripe: HashSet<Id> = HashSet::new();
    let mut already: HashSet<Id> = HashSet::new();
    let records = repo.condemned_records()?;
    let grace = repo.listing_grace();
    let started_ns = now_ns();
    let settled = |r: &Condemned| {
        if grace.is_zero() {
            r.live_sessions.iter().all(|s| !live.contains(s))
        } else {
            started_ns.saturating_sub(r.time_ns) >= grace.as_nanos() as i64 && live.is_empty()
        }
    };
    for (_, r) in &records {
        already.extend(r.packs.iter().copied());
        let still_unused = r.packs.iter().copied().filter(|p| unused.contains_key(p));
        if settled(r) {
            ripe.extend(still_unused);
        } else {
            summary.packs_waiting += still_unused.count() as u64;
        }
    }

    // Phase 1 for newly unused packs: condemn, then look for sessions.
    let fresh: Vec<Id> = unused
        .keys()
        .filter(|p| !already.contains(p))
        .copied()
        .collect();
    let mut new_record = None;
    if !fresh.is_empty() {
        let rid = Id::random()?;
        let before: Vec<String> = live.iter().cloned().collect();
        let mut rec = Condemned {
            time_ns: now_ns(),
            packs: fresh.clone(),
            index_files: Vec::new(),
            live_sessions: before,
        };
        repo.write_object(Kind::Condemned, "condemned/", &rid, encode(&rec))?;
        let after = live_sessions(repo, hostname)?;
        let extra: Vec<String> = after
            .into_iter()
            .filter(|s| !rec.live_sessions.contains(s))
            .collect();
        if !extra.is_empty() {
            rec.live_sessions.extend(extra);
            // The same id again: `put_record` seals it under a new nonce.
            repo.write_object(Kind::Condemned, "condemned/", &rid, encode(&rec))?;
        }
        if rec.live_sessions.is_empty() && grace.is_zero() {
            ripe.extend(fresh.iter().copied());
        } else {
            summary.packs_waiting += fresh.len() as u64;
        }
        new_record = Some((rid, rec));
    }

    // A backup that wrote its snapshot after `snaps` was listed and ended
    // before the session checks above is in no session list: re-read the
    // index and the snapshots now, and keep every pack they reference.
    if !ripe.is_empty() {
        repo.refresh()?;
        let known: HashSet<Id> = snaps.iter().map(|(id, _)| *id).collect();
        let newer: Vec<(Id, Snapshot)> = repo
            .snapshots()?
            .into_iter()
            .filter(|(id, _)| !known.contains(id))
            .collect();
        if !newer.is_empty() {
            let referenced = mark(repo, &newer)?;
            let mut needed = Vec::new();
            for p in &ripe {
                if holds_any(repo, p, &referenced)? {
                    needed.push(*p);
                }
            }
            for p in needed {
                ripe.remove(&p);
            }
            snaps.extend(newer);
        }
    }
    if !ripe.is_empty() {
        delete_packs(repo, &snaps, &ripe, &unused, &mut summary)?;
    }
    // Records whose packs are all gone or back in use are done.
    for (rid, r) in records.iter().chain(new_record.iter()) {
        let pending = r
            .packs
            .iter()
            .any(|p| unused.contains_key(p) && !ripe.contains(p));
        if !pending {
            repo.store()
                .delete(&format!("condemned/{}", rid.to_hex()))?;
        }
    }
    // Leftovers of killed backups: their session objects, and temporary
    // files (those of dead processes of this host at once, any after an hour).
    crate::session::remove_dead_sessions(repo, hostname)?;
    repo.store()
        .remove_stale_temporaries(std::time::Duration::from_secs(3600))?;
    repo.refresh()?;
    Ok(summary)
}

fn delete_packs(
    repo: &Repository,
    snaps: &[(Id, Snapshot)],
    ripe: &HashSet<Id>,
    unused: &HashMap<Id, u64>,
    summary: &mut PruneSummary,
) -> Result<()> {
    // 1. Rewrite every index file that lists a ripe pack, without it.
    let referenced_index_ids: HashSet<Id> = snaps
        .iter()
        .flat_map(|(_, s)| s.index_ids.iter().copied())
        .collect();
    let mut affected: Vec<Id> = Vec::new();
    let mut keep_packs: Vec<IndexPack> = Vec::new();
    let mut supersedes: HashSet<Id> = HashSet::new();
    // Every index file, not the cache's one-index-per-pack view: a prune
    // killed after writing new index files leaves packs listed twice.
    let mut kept_ids: HashSet<Id> = HashSet::new();
    for ix in repo.list_ids("index/")? {
        let file = match repo.read_index(&ix) {
            Ok(f) => f,
            Err(RepoError::Storage(coffer_storage::StorageError::NotFound { .. })) => continue,
            Err(e) => return Err(e),
        };
        if !file.packs.iter().any(|p| ripe.contains(&p.id)) {
            continue;
        }
        affected.push(ix);
        supersedes.insert(ix);
        supersedes.extend(file.supersedes.iter().copied());
        keep_packs.extend(
            file.packs
                .into_iter()
                .filter(|p| !ripe.contains(&p.id) && kept_ids.insert(p.id)),
        );
    }
    // Keep only superseded ids a remaining snapshot still names.
    let mut supersedes: Vec<Id> = supersedes
        .into_iter()
        .filter(|i| referenced_index_ids.contains(i))
        .collect();
    supersedes.sort();
    if !affected.is_empty() {
        let mut first = true;
        let chunks: Vec<Vec<IndexPack>> = if keep_packs.is_empty() {
            vec![Vec::new()]
        } else {
            keep_packs.chunks(256).map(|c| c.to_vec()).collect()
        };
        for packs in chunks {
            // Every new file carries the full supersedes list: any one of them
            // vouches for the ids it replaces.
            let file = IndexFile {
                supersedes: supersedes.clone(),
                packs,
            };
            if file.packs.is_empty() && file.supersedes.is_empty() && !first {
                continue;
            }
            first = false;
            let id = Id::random()?;
            repo.write_index(&id, &file)?;
            summary.index_files_rewritten += 1;
        }
        for ix in &affected {
            repo.store().delete(&format!("index/{}", ix.to_hex()))?;
        }
    }
    // 2. Then delete the packs.
    for p in ripe {
        repo.store().delete(&pack_name(p))?;
        let _ = std::fs::remove_file(repo.cache().pack_dir().join(p.to_hex()));
        summary.packs_deleted += 1;
        summary.bytes_freed += unused.get(p).copied().unwrap_or(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::types::BackupSummary;

    const DAY: i64 = 86_400_000_000_000;

    fn snap(day: i64, hour: i64, host: &str) -> (Id, Snapshot) {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(day * 24 + hour).to_be_bytes());
        id[8..8 + host.len()].copy_from_slice(host.as_bytes());
        (
            Id(id),
            Snapshot {
                time_ns: day * DAY + hour * 3_600_000_000_000,
                hostname: host.into(),
                paths: vec![b"/data".to_vec()],
                tree: Id([0; 32]),
                databases: vec![],
                parent: None,
                index_ids: vec![],
                summary: BackupSummary::default(),
            },
        )
    }

    fn kept(snaps: &[(Id, Snapshot)], p: KeepPolicy) -> Vec<(i64, i64)> {
        let (keep, _) = apply_policy(snaps, &p);
        let mut v: Vec<(i64, i64)> = snaps
            .iter()
            .filter(|(id, _)| keep.contains(id))
            .map(|(_, s)| {
                (
                    s.time_ns.div_euclid(DAY),
                    s.time_ns.rem_euclid(DAY) / 3_600_000_000_000,
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Two snapshots a day (06:00 and 18:00) for 120 days from 2024-01-01
    /// (a Monday; day 19723 since the epoch).
    fn history() -> Vec<(Id, Snapshot)> {
        (0..120)
            .flat_map(|d| [snap(19_723 + d, 6, "phone"), snap(19_723 + d, 18, "phone")])
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let k = kept(
            &history(),
            KeepPolicy {
                last: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![(19_723 + 118, 18), (19_723 + 119, 6), (19_723 + 119, 18)]
        );
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day() {
        let k = kept(
            &history(),
            KeepPolicy {
                daily: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![(19_723 + 117, 18), (19_723 + 118, 18), (19_723 + 119, 18)]
        );
    }

    #[test]
    fn keep_weekly_keeps_the_newest_of_each_monday_based_week() {
        // Day 119 is Monday 2024-04-29, the start of a week; the weeks before
        // end on Sundays 2024-04-28 (day 118) and 2024-04-21 (day 111).
        let k = kept(
            &history(),
            KeepPolicy {
                weekly: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![(19_723 + 111, 18), (19_723 + 118, 18), (19_723 + 119, 18)]
        );
    }

    #[test]
    fn keep_monthly_uses_calendar_months() {
        // The newest of April (day 119 = 2024-04-29), then the last of March
        // (day 90 = 2024-03-31) and of February (day 59 = 2024-02-29, a leap year).
        let k = kept(
            &history(),
            KeepPolicy {
                monthly: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![(19_723 + 59, 18), (19_723 + 90, 18), (19_723 + 119, 18)]
        );
    }

    #[test]
    fn policies_combine_and_groups_are_separate() {
        let mut s = history();
        s.push(snap(19_723, 1, "laptop"));
        let p = KeepPolicy {
            last: 1,
            daily: 2,
            weekly: 2,
            monthly: 2,
        };
        let (keep, forget) = apply_policy(&s, &p);
        assert_eq!(keep.len() + forget.len(), s.len());
        // The laptop's only snapshot is the newest of its own group.
        assert!(keep.contains(&s.last().unwrap().0));
        // last 1 and daily 2 and weekly 2 overlap on days 118-119; monthly 2
        // adds the end of March.
        let k = kept(&history(), p);
        assert_eq!(
            k,
            vec![(19_723 + 90, 18), (19_723 + 118, 18), (19_723 + 119, 18)]
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(19_723), (2024, 1));
        assert_eq!(year_month(19_723 + 59), (2024, 2));
        assert_eq!(year_month(19_723 + 60), (2024, 3));
        assert_eq!(year_month(-1), (1969, 12));
    }

    /// Prune rewrites a record when sessions show up after writing it: the
    /// two writes of one id must not share a nonce.
    #[test]
    fn a_rewritten_record_gets_a_new_nonce() {
        use std::sync::Arc;

        use coffer_crypto::BackupKey;
        use coffer_storage::{BlobStore, MemStore};

        use crate::repo::{init, InitOptions};

        let store: Arc<dyn BlobStore> = Arc::new(MemStore::default());
        let k = BackupKey::from_bytes([0x0a; 32]);
        init(&*store, &k, &InitOptions::default()).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let repo = Repository::open(store.clone(), &k, cache.path()).unwrap();

        let rid = Id([0x5a; 32]);
        let name = format!("condemned/{}", rid.to_hex());
        let mut rec = Condemned {
            time_ns: 1,
            packs: vec![Id([0x01; 32])],
            index_files: Vec::new(),
            live_sessions: vec!["locks/aa".into()],
        };
        repo.write_object(Kind::Condemned, "condemned/", &rid, encode(&rec))
            .unwrap();
        let first = store.get(&name).unwrap();
        rec.live_sessions.push("locks/bb".into());
        repo.write_object(Kind::Condemned, "condemned/", &rid, encode(&rec))
            .unwrap();
        let second = store.get(&name).unwrap();
        assert_ne!(first[6..18], second[6..18]);
        let records = repo.condemned_records().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, rid);
        assert_eq!(records[0].1.live_sessions, rec.live_sessions);
    }
}
