//! An open repository: storage, keys, config and the local cache.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_crypto::{BackupKey, RepoKeys};
use coffer_storage::{BlobStore, PutOutcome, StorageError};

use crate::cache::{Cache, Located};
use crate::chunker::{Chunker, DB_PARAMS, FILE_PARAMS};
use crate::format::config::{encode_config, open_config, ConfigBody, KeyMode, CONFIG_NAME};
use crate::format::pack::{open_blob, pack_name};
use crate::format::types::{decode, encode, BlobKind, Condemned, IndexFile, Snapshot, Tree};
use crate::format::{object, Kind};
use crate::id::Id;
use crate::{RepoError, Result};

/// Default target pack size: 16 MiB (restic's default; far below Dropbox's
/// 150 MB single-upload cap, few objects for consumer drives).
pub const DEFAULT_PACK_SIZE: u32 = 16 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Options of `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// How `K` is held.
    pub key_mode: KeyMode,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            key_mode: KeyMode::RecoveryKey,
            pack_size: DEFAULT_PACK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// The local cache root: `$COFFER_CACHE_DIR`, else `$XDG_CACHE_HOME/coffer`,
/// else `~/.cache/coffer`.
pub fn default_cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("COFFER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("coffer");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/coffer");
    }
    std::env::temp_dir().join("coffer-cache")
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Creates a repository; fails if one exists.
pub fn init(store: &dyn BlobStore, k: &BackupKey, opts: &InitOptions) -> Result<[u8; 16]> {
    let repo_id: [u8; 16] = coffer_crypto::random_bytes()?;
    let keys = RepoKeys::derive(k, &repo_id);
    let body = ConfigBody {
        repo_id,
        created_ns: now_ns(),
        key_mode: opts.key_mode.clone(),
        file_chunker: FILE_PARAMS,
        db_chunker: DB_PARAMS,
        pack_size: opts.pack_size,
        zstd_level: opts.zstd_level,
        key_check: keys.key_check(),
    };
    match store.put_if_absent(CONFIG_NAME, &encode_config(&keys, &body))? {
        PutOutcome::Created => Ok(repo_id),
        PutOutcome::AlreadyExists => Err(RepoError::AlreadyExists {
            location: store.location(),
        }),
    }
}

/// Rewrites the config with another key mode: the same `K`, repository id
/// and parameters, so nothing else in the repository changes (switching
/// between password and recovery-key mode re-uploads nothing). Checks `K`
/// and the config's MAC first; the new config replaces the old atomically.
pub fn set_key_mode(store: &dyn BlobStore, k: &BackupKey, key_mode: KeyMode) -> Result<ConfigBody> {
    let bytes = match store.get(CONFIG_NAME) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => {
            return Err(RepoError::NotARepository {
                location: store.location(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let (mut body, keys) = open_config(&bytes, k, &store.location())?;
    body.key_mode = key_mode;
    store.put(CONFIG_NAME, &encode_config(&keys, &body))?;
    Ok(body)
}

/// An open repository.
pub struct Repository {
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) keys: RepoKeys,
    pub(crate) config: ConfigBody,
    pub(crate) cache: Cache,
    pub(crate) condemned: HashSet<Id>,
}

impl Repository {
    /// Opens the repository with `K`, and brings the local cache up to date.
    pub fn open(store: Arc<dyn BlobStore>, k: &BackupKey, cache_root: &Path) -> Result<Self> {
        let bytes = match store.get(CONFIG_NAME) {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => {
                return Err(RepoError::NotARepository {
                    location: store.location(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let (config, keys) = open_config(&bytes, k, &store.location())?;
        let cache = Cache::open(&cache_root.join(hex::encode(config.repo_id)))?;
        let mut repo = Self {
            store,
            keys,
            config,
            cache,
            condemned: HashSet::new(),
        };
        repo.refresh()?;
        Ok(repo)
    }

    /// The repository's id.
    pub fn repo_id(&self) -> [u8; 16] {
        self.config.repo_id
    }

    /// The config.
    pub fn config(&self) -> &ConfigBody {
        &self.config
    }

    /// The storage.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// The local cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The chunker for ordinary files.
    pub fn file_chunker(&self) -> Chunker {
        Chunker::new(self.config.file_chunker, self.keys.chunker_seed())
    }

    /// The chunker for database images.
    pub fn db_chunker(&self) -> Chunker {
        Chunker::new(self.config.db_chunker, self.keys.chunker_seed())
    }

    /// Re-reads the list of index files and condemnation records; loads new
    /// index files into the cache (rebuilding it if some disappeared).
    pub fn refresh(&mut self) -> Result<()> {
        let present: HashSet<Id> = self.list_ids("index/")?.into_iter().collect();
        let cached = self.cache.index_ids()?;
        if !cached.is_subset(&present) {
            tracing::info!("index files were removed (a prune ran); rebuilding the local cache");
            self.cache.clear()?;
        }
        let cached = self.cache.index_ids()?;
        let mut todo: Vec<Id> = present.difference(&cached).copied().collect();
        todo.sort();
        for id in todo {
            match self.read_index(&id) {
                Ok(index) => self.cache.add_index(&id, &index)?,
                // Deleted between list and read by a concurrent prune.
                Err(RepoError::Storage(StorageError::NotFound { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        let mut condemned = HashSet::new();
        for (_, c) in self.condemned_records()? {
            condemned.extend(c.packs);
        }
        self.cache.set_condemned(&condemned)?;
        self.condemned = condemned;
        Ok(())
    }

    pub(crate) fn list_ids(&self, prefix: &str) -> Result<Vec<Id>> {
        let mut out = Vec::new();
        for o in self.store.list(prefix)? {
            let base = o.name.rsplit('/').next().unwrap_or("");
            // Foreign names are ignored (not ours); verify reports them.
            if let Some(id) = Id::from_hex(base) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn read_object(&self, kind: Kind, prefix: &str, id: &Id) -> Result<Vec<u8>> {
        let name = format!("{prefix}{}", id.to_hex());
        let bytes = self.store.get(&name)?;
        object::open(&self.keys, kind, id, &bytes, &name)
    }

    pub(crate) fn write_object(
        &self,
        kind: Kind,
        prefix: &str,
        id: &Id,
        plaintext: Vec<u8>,
    ) -> Result<u64> {
        let bytes = object::seal(&self.keys, kind, id, plaintext);
        self.store
            .put(&format!("{prefix}{}", id.to_hex()), &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Reads and authenticates one index file.
    pub fn read_index(&self, id: &Id) -> Result<IndexFile> {
        let plain = self.read_object(Kind::Index, "index/", id)?;
        decode(&plain, &format!("index/{}", id.to_hex()))
    }

    /// Writes one index file; returns its size.
    pub fn write_index(&self, id: &Id, index: &IndexFile) -> Result<u64> {
        self.write_object(Kind::Index, "index/", id, encode(index))
    }

    /// Every snapshot, oldest first. An unreadable snapshot is an error.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut out = Vec::new();
        for id in self.list_ids("snapshots/")? {
            match self.read_snapshot(&id) {
                Ok(s) => out.push((id, s)),
                Err(RepoError::Storage(StorageError::NotFound { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok(out)
    }

    /// Reads one snapshot.
    pub fn read_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let plain = self.read_object(Kind::Snapshot, "snapshots/", id)?;
        decode(&plain, &format!("snapshot {}", id.short()))
    }

    /// Finds a snapshot by `latest` or by a unique hex prefix of its id.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let spec_l = spec.to_ascii_lowercase();
        if spec_l == "latest" {
            return self
                .snapshots()?
                .pop()
                .ok_or_else(|| RepoError::SnapshotNotFound(spec.to_string()));
        }
        let ids: Vec<Id> = self
            .list_ids("snapshots/")?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec_l))
            .collect();
        match ids.as_slice() {
            [id] => Ok((*id, self.read_snapshot(id)?)),
            [] => Err(RepoError::SnapshotNotFound(spec.to_string())),
            _ => Err(RepoError::SnapshotNotFound(format!(
                "{spec} (ambiguous: {} snapshots match)",
                ids.len()
            ))),
        }
    }

    /// Checks that the index files a snapshot's backup wrote are present or
    /// superseded: a storage provider that rolled the index back is caught
    /// here, by name, before anything is restored.
    pub fn check_snapshot_index(&self, id: &Id, snap: &Snapshot) -> Result<()> {
        let present = self.cache.index_ids()?;
        for ix in &snap.index_ids {
            if !present.contains(ix) && !self.cache.is_superseded(ix)? {
                return Err(RepoError::integrity(
                    format!("snapshot {}", id.short()),
                    format!(
                        "its index file index/{} is missing and no index supersedes it: the index was rolled back or deleted",
                        ix.to_hex()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where a blob is, or an integrity error naming it.
    pub fn locate(&self, id: &Id, context: &str) -> Result<Located> {
        self.cache.locate(id)?.ok_or_else(|| {
            RepoError::integrity(
                context,
                format!(
                    "blob {} is not in the index (missing data or a rolled-back index)",
                    id.short()
                ),
            )
        })
    }

    /// Reads one blob: ranged read from storage, authenticated, decompressed,
    /// checked against its id.
    pub fn read_blob(&self, located: &Located) -> Result<Vec<u8>> {
        let name = pack_name(&located.pack);
        let l = &located.loc;
        let data = if l.kind == BlobKind::Tree {
            self.read_tree_pack_range(&located.pack, u64::from(l.offset), u64::from(l.length))?
        } else {
            self.store
                .get_range(&name, u64::from(l.offset), u64::from(l.length))?
        };
        open_blob(&self.keys, &located.pack, l, data)
    }

    /// Tree packs are cached whole on the device: listing and incremental
    /// backups never fetch metadata twice.
    fn read_tree_pack_range(&self, pack: &Id, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.cache.pack_dir().join(pack.to_hex());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                let b = self.store.get(&pack_name(pack))?;
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, &b).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                b
            }
        };
        let end = offset + len;
        if end > bytes.len() as u64 {
            let _ = std::fs::remove_file(&path);
            return Err(RepoError::integrity(
                pack_name(pack),
                "pack is shorter than the index says (truncated)",
            ));
        }
        Ok(bytes[offset as usize..end as usize].to_vec())
    }

    /// Saves a copy of a tree pack just written.
    pub(crate) fn cache_tree_pack(&self, pack: &Id, bytes: &[u8]) {
        let path = self.cache.pack_dir().join(pack.to_hex());
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// Reads and decodes one tree.
    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        let what = format!("tree {}", id.short());
        let located = self.locate(id, &what)?;
        if located.loc.kind != BlobKind::Tree {
            return Err(RepoError::integrity(
                &what,
                "index lists it as data, not a tree",
            ));
        }
        decode(&self.read_blob(&located)?, &what)
    }

    /// Condemnation records of earlier prunes.
    pub fn condemned_records(&self) -> Result<Vec<(Id, Condemned)>> {
        let mut out = Vec::new();
        for id in self.list_ids("condemned/")? {
            match self.read_object(Kind::Condemned, "condemned/", &id) {
                Ok(plain) => out.push((id, decode(&plain, &format!("condemned/{}", id.to_hex()))?)),
                Err(RepoError::Storage(StorageError::NotFound { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub(crate) fn keys(&self) -> &RepoKeys {
        &self.keys
    }
}
