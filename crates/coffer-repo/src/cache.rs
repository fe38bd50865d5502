//! The local cache: a SQLite copy of the repository index, so that memory
//! stays bounded however large the repository grows.
//!
//! It holds only what can be rebuilt from the repository (index entries,
//! copies of tree packs). It is trusted as the device is: every blob read
//! through it is still authenticated against its id. When the repository's
//! index files no longer match what the cache has seen (a prune elsewhere),
//! the cache is rebuilt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use crate::format::types::{BlobKind, BlobLocation, Compression, IndexFile};
use crate::id::Id;
use crate::{RepoError, Result};

/// SQLite page cache limit, in KiB (part of the stated memory bound).
pub const SQLITE_CACHE_KIB: i64 = 16 * 1024;

/// Where one blob lives.
#[derive(Debug, Clone)]
pub struct Located {
    /// The pack holding it.
    pub pack: Id,
    /// Its place in the pack.
    pub loc: BlobLocation,
}

/// One row of the `blobs` table: `id, kind, idx, off, len, raw, zstd`.
struct BlobRow(Vec<u8>, u8, u32, u32, u32, u32, bool);

impl BlobRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self(
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    }

    fn location(self) -> Result<BlobLocation> {
        let BlobRow(id, kind, index, offset, length, raw_length, z) = self;
        Ok(BlobLocation {
            id: id_of(id)?,
            kind: BlobKind::from_byte(kind)
                .ok_or_else(|| RepoError::Cache("bad blob kind".into()))?,
            index,
            offset,
            length,
            raw_length,
            compression: if z {
                Compression::Zstd
            } else {
                Compression::None
            },
        })
    }
}

/// The cache of one repository.
pub struct Cache {
    conn: Mutex<Connection>,
    dir: PathBuf,
}

fn id_of(v: Vec<u8>) -> Result<Id> {
    let arr: [u8; 32] = v
        .try_into()
        .map_err(|_| RepoError::Cache("bad id length in cache".into()))?;
    Ok(Id(arr))
}

impl Cache {
    /// Opens (or creates) the cache under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("packs")).map_err(|e| RepoError::local(dir, e))?;
        let conn = Connection::open(dir.join("index.sqlite"))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-{SQLITE_CACHE_KIB};
             PRAGMA temp_store=FILE;
             CREATE TABLE IF NOT EXISTS index_files(id BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS superseded(id BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS packs(id BLOB PRIMARY KEY, size INTEGER NOT NULL, index_id BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS blobs(id BLOB PRIMARY KEY, kind INTEGER NOT NULL, pack BLOB NOT NULL,
                 idx INTEGER NOT NULL, off INTEGER NOT NULL, len INTEGER NOT NULL, raw INTEGER NOT NULL,
                 zstd INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS condemned(id BLOB PRIMARY KEY) WITHOUT ROWID;"
        ))?;
        Ok(Self {
            conn: Mutex::new(conn),
            dir: dir.to_path_buf(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory holding cached tree packs.
    pub fn pack_dir(&self) -> PathBuf {
        self.dir.join("packs")
    }

    /// Index files already loaded.
    pub fn index_ids(&self) -> Result<HashSet<Id>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id FROM index_files")?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = HashSet::new();
        for r in rows {
            out.insert(id_of(r?)?);
        }
        Ok(out)
    }

    /// Forgets everything (before a rebuild).
    pub fn clear(&self) -> Result<()> {
        self.conn().execute_batch(
            "DELETE FROM index_files; DELETE FROM superseded; DELETE FROM packs; DELETE FROM blobs; DELETE FROM condemned;",
        )?;
        Ok(())
    }

    /// Adds one index file's entries, in one transaction.
    pub fn add_index(&self, id: &Id, index: &IndexFile) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        {
            let mut ins_pack = tx.prepare_cached(
                "INSERT OR REPLACE INTO packs(id, size, index_id) VALUES (?1, ?2, ?3)",
            )?;
            let mut ins_blob = tx.prepare_cached(
                "INSERT OR IGNORE INTO blobs(id, kind, pack, idx, off, len, raw, zstd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for p in &index.packs {
                ins_pack.execute(params![&p.id.0[..], p.size as i64, &id.0[..]])?;
                for b in &p.blobs {
                    ins_blob.execute(params![
                        &b.id.0[..],
                        b.kind.byte(),
                        &p.id.0[..],
                        b.index,
                        b.offset,
                        b.length,
                        b.raw_length,
                        matches!(b.compression, Compression::Zstd)
                    ])?;
                }
            }
            let mut ins_sup =
                tx.prepare_cached("INSERT OR IGNORE INTO superseded(id) VALUES (?1)")?;
            for s in &index.supersedes {
                ins_sup.execute(params![&s.0[..]])?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO index_files(id) VALUES (?1)",
                params![&id.0[..]],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks packs condemned by a prune: their blobs no longer count for dedup.
    pub fn set_condemned(&self, packs: &HashSet<Id>) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM condemned", [])?;
        {
            let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO condemned(id) VALUES (?1)")?;
            for p in packs {
                ins.execute(params![&p.0[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether an index file id was superseded by a present index file.
    pub fn is_superseded(&self, id: &Id) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM superseded WHERE id = ?1",
                params![&id.0[..]],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Where a blob lives, if the index knows it (condemned packs included).
    pub fn locate(&self, id: &Id) -> Result<Option<Located>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT id, kind, idx, off, len, raw, zstd, pack FROM blobs WHERE id = ?1",
        )?;
        let row = st
            .query_row(params![&id.0[..]], |r| {
                Ok((BlobRow::read(r)?, r.get::<_, Vec<u8>>(7)?))
            })
            .optional()?;
        let Some((row, pack)) = row else {
            return Ok(None);
        };
        Ok(Some(Located {
            pack: id_of(pack)?,
            loc: row.location()?,
        }))
    }

    /// Whether a blob is stored in a pack that is not condemned: the test
    /// a backup uses to skip uploading it.
    pub fn has_live_blob(&self, id: &Id) -> Result<bool> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT 1 FROM blobs b WHERE b.id = ?1 AND NOT EXISTS (SELECT 1 FROM condemned c WHERE c.id = b.pack)",
        )?;
        Ok(st
            .query_row(params![&id.0[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Every pack the index knows: (id, size, index file).
    pub fn packs(&self) -> Result<Vec<(Id, u64, Id)>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id, size, index_id FROM packs ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (p, s, i) = r?;
            out.push((id_of(p)?, s as u64, id_of(i)?));
        }
        Ok(out)
    }

    /// Every blob of one pack, in pack order.
    pub fn blobs_of_pack(&self, pack: &Id) -> Result<Vec<BlobLocation>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT id, kind, idx, off, len, raw, zstd FROM blobs WHERE pack = ?1 ORDER BY idx",
        )?;
        let rows = st.query_map(params![&pack.0[..]], BlobRow::read)?;
        rows.map(|r| r?.location()).collect()
    }

    /// Number of blobs known.
    pub fn blob_count(&self) -> Result<u64> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// A fresh, empty scratch set of ids in SQLite (prune's "referenced"
    /// set, verify's "seen" set): on disk, not in memory.
    pub fn scratch_set(&self) -> Result<ScratchSet<'_>> {
        self.conn().execute_batch("CREATE TEMP TABLE IF NOT EXISTS scratch(id BLOB PRIMARY KEY) WITHOUT ROWID; DELETE FROM scratch;")?;
        Ok(ScratchSet { cache: self })
    }
}

/// A set of ids kept on disk, not in memory.
pub struct ScratchSet<'a> {
    cache: &'a Cache,
}

impl ScratchSet<'_> {
    /// Adds an id; returns whether it was new.
    pub fn insert(&self, id: &Id) -> Result<bool> {
        let c = self.cache.conn();
        let mut st = c.prepare_cached("INSERT OR IGNORE INTO scratch(id) VALUES (?1)")?;
        Ok(st.execute(params![&id.0[..]])? == 1)
    }

    /// Whether the set holds an id.
    pub fn contains(&self, id: &Id) -> Result<bool> {
        let c = self.cache.conn();
        let mut st = c.prepare_cached("SELECT 1 FROM scratch WHERE id = ?1")?;
        Ok(st
            .query_row(params![&id.0[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }
}
