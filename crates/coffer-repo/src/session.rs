//! Backup sessions: a small sealed object under `locks/` for as long as a
//! backup runs, so a concurrent prune knows not to delete what it may use.
//!
//! Not an exclusive lock: backups never wait for each other or for a prune.
//! A session is stale when its process is gone (same host) or when it has not
//! been refreshed for [`STALE_AFTER`].
//!
//! On a store whose listings may lag ([`Repository::listing_grace`] not
//! zero), a backup's end does not delete its session: it rewrites it as
//! *ended* (pid 0, refreshed at the end), and an ended session counts as live
//! for the grace period — long enough for the backup's snapshot to show in
//! listings before prune stops honouring the session (ADR 0004).
//!
//! A session object is rewritten under the same id (start, every refresh,
//! end), so each write seals it with a fresh random nonce
//! ([`crate::format::object`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::format::object;
use crate::format::types::{decode, encode};
use crate::format::Kind;
use crate::id::Id;
use crate::repo::{now_ns, Repository};
use crate::Result;

/// How often a running backup refreshes its session.
pub const REFRESH: Duration = Duration::from_secs(60);
/// After how long without refresh a session is presumed dead.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// What a session object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Host name.
    pub hostname: String,
    /// Process id on that host.
    pub pid: u32,
    /// Process start time (Linux clock ticks since boot), to defeat pid reuse.
    pub pid_start: u64,
    /// Last refresh, Unix nanoseconds.
    pub refreshed_ns: i64,
}

/// A running backup's registration.
pub struct Session {
    id: Id,
    info: SessionInfo,
}

/// Start time of a process from `/proc/<pid>/stat` (field 22), if visible.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Session {
    /// Registers a session.
    pub fn start(repo: &Repository, hostname: &str) -> Result<Self> {
        let pid = std::process::id();
        let info = SessionInfo {
            hostname: hostname.to_string(),
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            refreshed_ns: now_ns(),
        };
        let s = Self {
            id: Id::random()?,
            info,
        };
        repo.write_object(Kind::Lock, "locks/", &s.id, encode(&s.info))?;
        Ok(s)
    }

    /// Rewrites the session with a fresh time (best effort).
    pub fn refresh(&self, repo: &Repository) {
        let mut info = self.info.clone();
        info.refreshed_ns = now_ns();
        if let Err(e) = repo.write_object(Kind::Lock, "locks/", &self.id, encode(&info)) {
            tracing::warn!("could not refresh the backup session: {e}");
        }
    }

    /// Removes the session (best effort: a leftover one goes stale). Where
    /// listings may lag, leaves it marked as ended instead (see the module docs).
    pub fn end(self, repo: &Repository) {
        let name = format!("locks/{}", self.id.to_hex());
        if !repo.listing_grace().is_zero() {
            let ended = SessionInfo {
                pid: ENDED_PID,
                pid_start: 0,
                refreshed_ns: now_ns(),
                ..self.info
            };
            match repo.write_object(Kind::Lock, "locks/", &self.id, encode(&ended)) {
                Ok(_) => return,
                Err(e) => tracing::warn!("could not mark the backup session as ended: {e}"),
            }
        }
        let _ = repo.store.delete(&name);
    }
}

/// The pid of a session marked as ended (no process has pid 0).
const ENDED_PID: u32 = 0;

/// Sessions that are still running, by object name.
pub fn live_sessions(repo: &Repository, hostname: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for id in repo.list_ids("locks/")? {
        let name = format!("locks/{}", id.to_hex());
        let info: SessionInfo = match repo.store.get(&name) {
            Ok(bytes) => {
                match object::open(repo.keys(), Kind::Lock, &id, &bytes, &name)
                    .and_then(|p| decode(&p, &name))
                {
                    Ok(i) => i,
                    // An unreadable session cannot be trusted to be dead: keep it live
                    // until it goes stale by age (storage mtime is not available).
                    Err(_) => {
                        out.push(name);
                        continue;
                    }
                }
            }
            Err(_) => continue,
        };
        if is_live(&info, hostname, repo.listing_grace()) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Deletes the session objects of backups that are gone (killed, or not
/// refreshed for [`STALE_AFTER`]); returns how many.
pub fn remove_dead_sessions(repo: &Repository, hostname: &str) -> Result<u64> {
    let mut removed = 0;
    for id in repo.list_ids("locks/")? {
        let name = format!("locks/{}", id.to_hex());
        // Only a session that reads back and is dead goes; anything unclear stays.
        let Ok(bytes) = repo.store.get(&name) else {
            continue;
        };
        let info = object::open(repo.keys(), Kind::Lock, &id, &bytes, &name)
            .and_then(|p| decode::<SessionInfo>(&p, &name));
        if matches!(info, Ok(ref i) if !is_live(i, hostname, repo.listing_grace())) {
            repo.store.delete(&name)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn is_live(info: &SessionInfo, hostname: &str, grace: Duration) -> bool {
    let age = now_ns().saturating_sub(info.refreshed_ns);
    if info.pid == ENDED_PID {
        // Ended: honoured while its snapshot may not be listed yet.
        return age < grace.as_nanos() as i64;
    }
    if age > STALE_AFTER.as_nanos() as i64 {
        return false;
    }
    if info.hostname == hostname {
        // Same host: the process must exist and be the same process.
        return process_start(info.pid).is_some_and(|s| info.pid_start == 0 || s == info.pid_start);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use coffer_crypto::BackupKey;
    use coffer_storage::{BlobStore, MemStore};

    use super::*;
    use crate::repo::{init, InitOptions};

    /// Start, refresh and end rewrite `locks/<id>`: every write must seal it
    /// under its own nonce (a fixed one let storage XOR the plaintexts).
    #[test]
    fn every_session_write_has_its_own_nonce() {
        let store: Arc<dyn BlobStore> = Arc::new(MemStore::default());
        let k = BackupKey::from_bytes([0x09; 32]);
        init(&*store, &k, &InitOptions::default()).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let repo = Repository::open(store.clone(), &k, cache.path()).unwrap();

        let s = Session::start(&repo, "host").unwrap();
        let id = s.id;
        let name = format!("locks/{}", id.to_hex());
        let first = store.get(&name).unwrap();
        s.refresh(&repo);
        let second = store.get(&name).unwrap();
        s.refresh(&repo);
        let third = store.get(&name).unwrap();
        let nonces = [&first[6..18], &second[6..18], &third[6..18]];
        assert!(nonces[0] != nonces[1] && nonces[1] != nonces[2] && nonces[0] != nonces[2]);
        for bytes in [&first, &second, &third] {
            let plain = object::open(repo.keys(), Kind::Lock, &id, bytes, &name).unwrap();
            let info: SessionInfo = decode(&plain, &name).unwrap();
            assert_eq!(info.hostname, "host");
            assert_eq!(info.pid, std::process::id());
        }
        assert_eq!(live_sessions(&repo, "host").unwrap(), vec![name.clone()]);

        s.end(&repo);
        // Where listings lag, the end is one more rewrite; else a delete.
        if let Ok(ended) = store.get(&name) {
            assert!(nonces.iter().all(|n| *n != &ended[6..18]));
            let plain = object::open(repo.keys(), Kind::Lock, &id, &ended, &name).unwrap();
            assert_eq!(decode::<SessionInfo>(&plain, &name).unwrap().pid, ENDED_PID);
        }
    }
}
