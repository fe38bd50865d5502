//! The record store: one redb file with the sealed records, the leaf hashes
//! of the core's Merkle tree, the roll-forward marker and the sealed OPAQUE
//! server setup. Untrusted: the core checks everything it reads.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use coffer_vault_core::peer::LogItem;
use coffer_vault_core::{Bucket, StoreWrites};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const LEAVES: TableDefinition<u16, &[u8]> = TableDefinition::new("leaves");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// A replicated member's log: index -> entry_len u16 | entry | mac | body.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[error("record store {path}: {what}")]
pub struct StoreError {
    path: String,
    what: String,
}

/// The store.
pub struct Store {
    db: Database,
    path: String,
}

impl Store {
    fn err(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }

    /// Creates a new store holding the sealed server setup.
    pub fn create(path: &Path, sealed_setup: &[u8]) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError {
                path: path.display().to_string(),
                what: "already exists".into(),
            });
        }
        let db = Database::create(path).map_err(|e| StoreError {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
        let s = Self {
            db,
            path: path.display().to_string(),
        };
        let txn = s.db.begin_write().map_err(|e| s.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| s.err(e))?;
            meta.insert("setup", sealed_setup).map_err(|e| s.err(e))?;
            txn.open_table(RECORDS).map_err(|e| s.err(e))?;
            txn.open_table(LEAVES).map_err(|e| s.err(e))?;
            txn.open_table(LOG).map_err(|e| s.err(e))?;
        }
        txn.commit().map_err(|e| s.err(e))?;
        Ok(s)
    }

    /// Opens an existing store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError {
                path: path.display().to_string(),
                what: "missing (run `coffer-vault init` first)".into(),
            });
        }
        let db = Database::create(path).map_err(|e| StoreError {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
        Ok(Self {
            db,
            path: path.display().to_string(),
        })
    }

    /// The sealed server setup.
    pub fn setup(&self) -> Result<Vec<u8>, StoreError> {
        self.meta("setup")?
            .ok_or_else(|| self.err("no server setup (not a Coffer vault store?)"))
    }

    /// The roll-forward marker, if any.
    pub fn marker(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta("marker")
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(META).map_err(|e| self.err(e))?;
        Ok(t.get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Every leaf hash.
    pub fn leaves(&self) -> Result<Vec<(u16, [u8; 32])>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(LEAVES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            // A malformed leaf is simply not the core's tree: it refuses.
            let mut h = [0u8; 32];
            if v.value().len() == 32 {
                h.copy_from_slice(v.value());
            }
            out.push((k.value(), h));
        }
        Ok(out)
    }

    /// The records of the given buckets, in one read transaction.
    pub fn buckets(&self, indices: &[u16]) -> Result<Vec<Bucket>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(indices.len());
        for &b in indices {
            let lo = b.to_be_bytes();
            let mut records = Vec::new();
            let iter = match b.checked_add(1) {
                Some(n) => {
                    let hi = n.to_be_bytes();
                    t.range::<&[u8]>(&lo[..]..&hi[..])
                }
                None => t.range::<&[u8]>(&lo[..]..),
            }
            .map_err(|e| self.err(e))?;
            for row in iter {
                let (k, v) = row.map_err(|e| self.err(e))?;
                if let Ok(id) = <[u8; 32]>::try_from(k.value()) {
                    records.push((id, v.value().to_vec()));
                }
            }
            out.push(Bucket { index: b, records });
        }
        Ok(out)
    }

    /// Commits a batch's writes durably, in one transaction.
    pub fn commit(&self, w: &StoreWrites) -> Result<(), StoreError> {
        self.write(w, None)
    }

    /// Records, leaves, and the marker (single node) or the applied index
    /// (replicated member), in one durable transaction.
    fn write(&self, w: &StoreWrites, applied: Option<u64>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            for (id, sealed) in &w.records {
                records
                    .insert(&id[..], sealed.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut leaves = txn.open_table(LEAVES).map_err(|e| self.err(e))?;
            for (b, h) in &w.leaves {
                leaves.insert(*b, &h[..]).map_err(|e| self.err(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            if let Some(m) = &w.marker {
                meta.insert("marker", m.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            if let Some(a) = applied {
                meta.insert("applied", &a.to_be_bytes()[..])
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Creates a replicated member's store: the sealed setup and the log
    /// holding the genesis entry, applied.
    pub fn create_member(
        path: &Path,
        sealed_setup: &[u8],
        genesis: &LogItem,
    ) -> Result<Self, StoreError> {
        let s = Self::create(path, sealed_setup)?;
        let txn = s.db.begin_write().map_err(|e| s.err(e))?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| s.err(e))?;
            log.insert(genesis.entry.index, genesis.encode().as_slice())
                .map_err(|e| s.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| s.err(e))?;
            meta.insert("applied", &genesis.entry.index.to_be_bytes()[..])
                .map_err(|e| s.err(e))?;
        }
        txn.commit().map_err(|e| s.err(e))?;
        Ok(s)
    }

    /// Whether this store belongs to a replicated member (has a log).
    pub fn is_member(&self) -> Result<bool, StoreError> {
        Ok(self.meta("applied")?.is_some())
    }

    /// The applied index of a member's store.
    pub fn applied(&self) -> Result<u64, StoreError> {
        let v = self
            .meta("applied")?
            .ok_or_else(|| self.err("no applied index (not a replicated member's store)"))?;
        let b: [u8; 8] = v
            .as_slice()
            .try_into()
            .map_err(|_| self.err("malformed applied index"))?;
        Ok(u64::from_be_bytes(b))
    }

    /// Log items `from..=to` that the store holds, in order, stopping at
    /// the first missing or unreadable one.
    pub fn log_range(&self, from: u64, to: u64) -> Result<Vec<LogItem>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(LOG).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for (want, row) in (from..).zip(t.range(from..=to).map_err(|e| self.err(e))?) {
            let (k, v) = row.map_err(|e| self.err(e))?;
            if k.value() != want {
                break;
            }
            match LogItem::decode(v.value()) {
                Some(item) if item.entry.index == want => out.push(item),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The last index in the log (0 if empty).
    pub fn log_last(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(LOG).map_err(|e| self.err(e))?;
        let last = t
            .last()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value())
            .unwrap_or(0);
        Ok(last)
    }

    /// Keeps the log up to `keep`, then appends `tail` (one transaction).
    pub fn write_log(&self, keep: u64, tail: &[LogItem]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| self.err(e))?;
            let stale: Vec<u64> = log
                .range(keep.saturating_add(1)..)
                .map_err(|e| self.err(e))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                .collect();
            for k in stale {
                log.remove(k).map_err(|e| self.err(e))?;
            }
            for item in tail {
                log.insert(item.entry.index, item.encode().as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Writes an applied entry's records and leaves and the applied index
    /// (one transaction).
    pub fn apply(&self, w: &StoreWrites, applied: u64) -> Result<(), StoreError> {
        self.write(w, Some(applied))
    }

    /// Number of records (erased ones included: they stay as same-size tombstones).
    pub fn record_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }
}
