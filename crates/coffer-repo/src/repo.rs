//! An open repository: storage, keys, config and the local cache.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_crypto::{BackupKey, RepoKeys, TAG_LEN};
use coffer_storage::{
    probe_conditional_writes, BlobStore, ConditionalWrites, CreateMode, PutOutcome, StorageError,
};

use crate::cache::{Cache, Located};
use crate::chunker::{Chunker, DB_PARAMS, FILE_PARAMS};
use crate::format::config::{encode_config, open_config, ConfigBody, KeyMode, CONFIG_NAME};
use crate::format::pack::{
    open_blob, open_blob_in_place, pack_name, FULL_PACK_GRANULE, MAX_TRAILER,
};
use crate::format::types::{
    decode, encode, BlobKind, BlobLocation, Condemned, IndexFile, Snapshot, Tree,
};
use crate::format::{object, Kind};
use crate::id::Id;
use crate::{RepoError, Result};

/// Default target pack size: 16 MiB (restic's default; far below Dropbox's
/// 150 MB single-upload cap, few objects for consumer drives).
pub const DEFAULT_PACK_SIZE: u32 = 16 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// How long `init` waits, on a store whose create-if-absent is a check then
/// a write (WebDAV, the consumer drives), before reading the config back: a
/// concurrent `init` that checked before ours landed has written by then.
pub const CHECK_THEN_WRITE_SETTLE: Duration = Duration::from_secs(1);

/// The listing grace of stores whose listings may lag behind writes (the
/// consumer drives: Google Drive, OneDrive, Dropbox). See
/// [`Repository::listing_grace`] and ADR 0004.
pub const LAGGING_LISTING_GRACE: Duration = Duration::from_secs(10 * 60);

/// The listing grace [`Repository::open`] gives a store: [`LAGGING_LISTING_GRACE`]
/// for the consumer drives, whose listings are eventually consistent; zero
/// for local disks, S3, GCS, Azure and WebDAV, whose listings show every
/// completed write.
pub fn default_listing_grace(store: &dyn BlobStore) -> Duration {
    let location = store.location();
    if ["gdrive://", "onedrive://", "dropbox://"]
        .iter()
        .any(|s| location.starts_with(s))
    {
        LAGGING_LISTING_GRACE
    } else {
        Duration::ZERO
    }
}

/// The largest pack, in bytes, the engine can write with a target pack size
/// of `pack_size`, whatever the data: the packer closes a pack once it
/// reaches the target, so a pack holds less than the target, plus one last
/// blob (at most one 8 MiB file chunk — stored compressed only when smaller —
/// and its AEAD tag), plus the trailer (a bounded list of blob entries: every
/// stored blob takes at least its 16-byte tag and one byte), plus the
/// full-pack padding (under 4 KiB). Tree blobs are assumed no larger than a
/// file chunk (a directory of some 100,000 entries would be larger).
pub fn max_pack_bytes(pack_size: u32) -> u64 {
    /// An upper bound of one postcard-encoded trailer entry (id, kind, four
    /// varints, compression).
    const ENTRY_MAX: u64 = 32 + 1 + 4 * 5 + 1;
    let body = u64::from(pack_size) + u64::from(FILE_PARAMS.max) + TAG_LEN as u64;
    let blobs = body / (TAG_LEN as u64 + 1) + 1;
    let trailer = (4 + blobs * ENTRY_MAX + TAG_LEN as u64 + 4).min(u64::from(MAX_TRAILER));
    body + trailer + FULL_PACK_GRANULE
}

/// The longest span of a pack that restore and verify read with one request
/// (a single longer blob is read alone): a typical pack is one or two
/// requests. Fewer requests matter on object stores and drives (latency and
/// per-request cost), and a bounded span bounds memory per worker.
pub const MAX_READ_SPAN: u64 = 16 << 20;

/// The longest span restore and verify read with one request from a local
/// disk, where they keep two reads per core in flight: a disk (here a
/// virtio one) is only filled by several queued requests — 2 GB of packs
/// read cold in 2.1 s by one reader, in 1.2 s by four — and four 8 MiB spans
/// hold what two 16 MiB ones did.
pub const LOCAL_READ_SPAN: u64 = 8 << 20;

/// Reads in flight per core (restore and verify workers): a worker waiting
/// for its read leaves the core to another that is decrypting.
pub const READS_PER_CORE: usize = 2;

/// The largest gap between two blobs that one request reads through (the
/// bytes in between are read and dropped: cheaper than another request).
pub const MAX_READ_GAP: u64 = 1 << 20;

/// Splits blobs of one pack, given as `(offset, length)` sorted by offset,
/// into runs read with one request each: a blob starts at most
/// [`MAX_READ_GAP`] after the end of those before it (the same blob twice is
/// fine), never before the one before it, and a run spans at most
/// [`MAX_READ_SPAN`] (a longer blob is a run of its own).
pub fn contiguous_runs(blobs: &[(u64, u64)]) -> Vec<std::ops::Range<usize>> {
    contiguous_runs_up_to(blobs, MAX_READ_SPAN)
}

/// The longest span restore reads with one request from a remote store: a
/// whole pack of the default size (the 16 MiB target plus at most one 8 MiB
/// chunk and the trailer) in one request. Object stores and drives charge
/// per request, and a server may read a whole object to serve any range of
/// it (moto does), so two requests for one pack can cost twice.
pub const REMOTE_READ_SPAN: u64 = 32 << 20;

/// [`contiguous_runs`] with `max_span` in place of [`MAX_READ_SPAN`].
pub fn contiguous_runs_up_to(blobs: &[(u64, u64)], max_span: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, &(off, len)) in blobs.iter().enumerate() {
        if i > start {
            let first = blobs[start].0;
            let split = off < blobs[i - 1].0
                || off > end + MAX_READ_GAP
                || (off + len).max(end) - first > max_span;
            if split {
                runs.push(start..i);
                start = i;
                end = 0;
            }
        }
        end = end.max(off + len);
    }
    if start < blobs.len() {
        runs.push(start..blobs.len());
    }
    runs
}

/// Authenticates, decompresses and checks blobs of `pack` that lie in
/// `data` (the pack's bytes from offset `start` on), each decrypted where it
/// lies (no copy of an uncompressed blob), and hands each to `each` with its
/// index in `locs`. `locs` are in increasing offsets; decrypting in place
/// overwrites the ciphertext, so a blob that overlaps the next one (the same
/// chunk wanted twice) is opened from a copy.
pub(crate) fn open_blobs_in(
    keys: &RepoKeys,
    pack: &Id,
    start: u64,
    data: &mut [u8],
    locs: &[BlobLocation],
    mut each: impl FnMut(usize, Result<Cow<'_, [u8]>>),
) {
    for (i, l) in locs.iter().enumerate() {
        let span = u64::from(l.offset)
            .checked_sub(start)
            .map(|f| f as usize)
            .map(|f| f..f + l.length as usize);
        let overlaps_next = locs
            .get(i + 1)
            .is_some_and(|n| u64::from(n.offset) < u64::from(l.offset) + u64::from(l.length));
        let blob = match span.and_then(|r| data.get_mut(r)) {
            Some(b) if overlaps_next => open_blob(keys, pack, l, b.to_vec()).map(Cow::Owned),
            Some(b) => open_blob_in_place(keys, pack, l, b),
            None => Err(RepoError::integrity(
                pack_name(pack),
                format!(
                    "blob {} lies outside the bytes read ({} from offset {start})",
                    l.id.short(),
                    data.len()
                ),
            )),
        };
        each(i, blob);
    }
}

/// Refuses a pack size whose largest pack `store` could not take in one upload.
pub(crate) fn check_pack_size(store: &dyn BlobStore, pack_size: u32) -> Result<()> {
    let worst = max_pack_bytes(pack_size);
    let max = store.max_object_size();
    if pack_size == 0 || worst > max {
        return Err(RepoError::PackSize {
            location: store.location(),
            pack_size,
            worst,
            max,
        });
    }
    Ok(())
}

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
///
/// Refuses a pack size whose largest pack ([`max_pack_bytes`]) exceeds what
/// the store takes in one upload. On a store whose create-if-absent is a
/// check then a write ([`CreateMode::CheckThenWrite`]), two concurrent
/// `init`s can both be told `Created`: the config is read back after
/// [`CHECK_THEN_WRITE_SETTLE`], and the `init` whose bytes are not there
/// fails with [`RepoError::AlreadyExists`] (the other one won). Two `init`s
/// further apart than the settle time are told apart by the check itself.
pub fn init(store: &dyn BlobStore, k: &BackupKey, opts: &InitOptions) -> Result<[u8; 16]> {
    check_pack_size(store, opts.pack_size)?;
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
    let config = encode_config(&keys, &body);
    let already = || RepoError::AlreadyExists {
        location: store.location(),
    };
    match store.put_if_absent(CONFIG_NAME, &config)? {
        PutOutcome::Created => {}
        PutOutcome::AlreadyExists => return Err(already()),
    }
    if store.create_mode() == CreateMode::CheckThenWrite {
        std::thread::sleep(CHECK_THEN_WRITE_SETTLE);
        if store.get(CONFIG_NAME)? != config {
            tracing::warn!(
                "another `init` created a repository at {} at the same time; its config won",
                store.location()
            );
            return Err(already());
        }
    }
    Ok(repo_id)
}

/// Probes conditional writes for [`Repository::open`]. Write access is not
/// needed to open a repository (restoring with read-only credentials, from a
/// read-only or full disk, from a server that rejects conditional headers),
/// so a probe that cannot write means "not enforced"; only a storage outage
/// (a transient error, already retried) fails the open.
fn probe(store: &dyn BlobStore) -> Result<ConditionalWrites> {
    match probe_conditional_writes(store) {
        Ok(c) => Ok(c),
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) => Ok(ConditionalWrites::NotEnforced {
            reason: match e {
                StorageError::PermissionDenied { .. } => {
                    format!("the probe may not write (read-only credentials?): {e}")
                }
                e => format!("the probe could not write: {e}"),
            },
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
    conditional_writes: ConditionalWrites,
    listing_grace: Duration,
}

impl Repository {
    /// Opens the repository with `K`, probes whether the store enforces
    /// conditional writes (see [`Repository::conditional_writes`]), and
    /// brings the local cache up to date.
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
        // After the config: nothing is written where there is no repository.
        let conditional_writes = probe(store.as_ref())?;
        if let ConditionalWrites::NotEnforced { reason } = &conditional_writes {
            tracing::info!(
                "conditional writes not enforced ({reason}); prune uses its two-phase scheme"
            );
        }
        let cache = Cache::open(&cache_root.join(hex::encode(config.repo_id)))?;
        let listing_grace = default_listing_grace(store.as_ref());
        let mut repo = Self {
            store,
            keys,
            config,
            cache,
            condemned: HashSet::new(),
            conditional_writes,
            listing_grace,
        };
        repo.refresh()?;
        tracing::info!(
            repo = %hex::encode(repo.config.repo_id),
            location = %repo.store.location(),
            "repository opened"
        );
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

    /// Whether the repository is behind a URL (an object store, WebDAV or a
    /// drive) rather than a local path: requests there cost latency and
    /// money, so restore and verify read larger spans with fewer requests.
    pub fn is_remote(&self) -> bool {
        self.store.location().contains("://")
    }

    /// Whether the store enforces conditional creates, as probed when the
    /// repository was opened (a random `probe/` object written twice; a
    /// store's own claim is never trusted). Nothing depends on it being
    /// enforced: prune is two-phase (ADR 0004), and `init` reads its config
    /// back where creates are check-then-write.
    pub fn conditional_writes(&self) -> &ConditionalWrites {
        &self.conditional_writes
    }

    /// How far behind writes the store's listings may be, as prune assumes
    /// (ADR 0004, "Listings that lag"): zero where a listing shows every
    /// completed write. Where it is not zero, a condemnation record is
    /// acted on only once it is this old, every session then live holds it
    /// (not only those it names), and a backup's session stays visible for
    /// this long after the backup ends.
    pub fn listing_grace(&self) -> Duration {
        self.listing_grace
    }

    /// Overrides [`Repository::listing_grace`] (set from the store's kind by
    /// [`Repository::open`]; see [`default_listing_grace`]).
    pub fn set_listing_grace(&mut self, grace: Duration) {
        self.listing_grace = grace;
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
        let bytes = object::try_seal(&self.keys, kind, id, plaintext)?;
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

    /// Every snapshot that can be read, oldest first, and those that cannot
    /// (damaged: failed authentication, truncated, or of a newer format),
    /// each with why; each of those is also logged as a warning. For
    /// listing, choosing a backup's parent, finding `latest` and checking,
    /// which go on with the others — never for deciding which data is
    /// unused: prune must see every snapshot ([`Repository::snapshots`]).
    /// The storage failing is still an error.
    #[allow(clippy::type_complexity)]
    pub fn readable_snapshots(&self) -> Result<(Vec<(Id, Snapshot)>, Vec<(Id, RepoError)>)> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for id in self.list_ids("snapshots/")? {
            match self.read_snapshot(&id) {
                Ok(s) => out.push((id, s)),
                Err(RepoError::Storage(StorageError::NotFound { .. })) => continue,
                Err(e @ (RepoError::Integrity { .. } | RepoError::UnsupportedVersion { .. })) => {
                    tracing::warn!(
                        "snapshot {} cannot be read, skipped ({e}); `coffer forget {}` removes it",
                        id.short(),
                        id.short()
                    );
                    damaged.push((id, e));
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        damaged.sort_by_key(|(id, _)| *id);
        Ok((out, damaged))
    }

    /// The id of the one snapshot whose id starts with `prefix` (hex),
    /// without reading it: it may be damaged.
    pub fn snapshot_id(&self, prefix: &str) -> Result<Id> {
        let p = prefix.to_ascii_lowercase();
        if p.is_empty() {
            return Err(RepoError::SnapshotNotFound(prefix.to_string()));
        }
        let ids: Vec<Id> = self
            .list_ids("snapshots/")?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&p))
            .collect();
        match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err(RepoError::SnapshotNotFound(prefix.to_string())),
            _ => Err(RepoError::AmbiguousSnapshot {
                spec: prefix.to_string(),
                matches: ids.len(),
            }),
        }
    }

    /// Deletes one snapshot object (readable or not). The data it alone
    /// referenced stays until a prune.
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.store
            .delete(&format!("snapshots/{}", id.to_hex()))
            .map_err(RepoError::from)
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
            // Which one is the newest is unknown while one cannot be read:
            // an error (the damaged ones are logged with how to remove
            // them; a readable one can still be restored by its id).
            let (mut readable, mut damaged) = self.readable_snapshots()?;
            if !damaged.is_empty() {
                return Err(damaged.swap_remove(0).1);
            }
            return readable
                .pop()
                .ok_or_else(|| RepoError::SnapshotNotFound(spec.to_string()));
        }
        let id = self.snapshot_id(spec)?;
        Ok((id, self.read_snapshot(&id)?))
    }

    /// Checks that the index files a snapshot's backup wrote are present or
    /// superseded: a storage provider that rolled the index back is caught
    /// here, by name, before anything is restored.
    pub fn check_snapshot_index(&self, id: &Id, snap: &Snapshot) -> Result<()> {
        let present = self.cache.index_ids()?;
        for ix in &snap.index_ids {
            if present.contains(ix) || self.cache.is_superseded(ix)? {
                continue;
            }
            // Not listed: perhaps only not listed *yet* (a consumer drive's
            // listing lags behind its writes). A read by name is consistent.
            match self.read_index(ix) {
                Ok(index) => {
                    tracing::info!("index/{} was not listed yet; read by name", ix.to_hex());
                    self.cache.add_index(ix, &index)?;
                    continue;
                }
                Err(RepoError::Storage(StorageError::NotFound { .. })) => {}
                Err(e) => return Err(e),
            }
            return Err(RepoError::integrity(
                format!("snapshot {}", id.short()),
                format!(
                    "its index file index/{} is missing and no index supersedes it: the index was rolled back or deleted",
                    ix.to_hex()
                ),
            ));
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

    /// Reads blobs of one pack, in increasing offsets and close together,
    /// with a single ranged request, then authenticates, decompresses and
    /// checks each (as [`Repository::read_blob`] does one by one) and hands
    /// it to `each` with its index in `locs`, one at a time (memory: the
    /// range and one blob). Each is decrypted where it lies in the range (no
    /// copy of an uncompressed blob). The error returned is the request's;
    /// each blob has its own result, so one damaged blob fails only itself.
    /// Callers form the runs with [`contiguous_runs`].
    pub fn read_blob_run(
        &self,
        pack: &Id,
        locs: &[BlobLocation],
        each: impl FnMut(usize, Result<Cow<'_, [u8]>>),
    ) -> Result<()> {
        let Some(first) = locs.first() else {
            return Ok(());
        };
        let start = u64::from(first.offset);
        let end = locs
            .iter()
            .map(|l| u64::from(l.offset) + u64::from(l.length))
            .max()
            .unwrap_or(start);
        let mut data =
            self.store
                .get_range_buf(&pack_name(pack), start, end.saturating_sub(start))?;
        open_blobs_in(&self.keys, pack, start, data.as_mut_slice(), locs, each);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_close_together_and_bounded() {
        let mib = 1 << 20;
        // Back to back, a small gap, a repeat, then backwards, then a big gap.
        let blobs = [
            (6, 100),
            (106, 50),
            (156, 10),
            (1000, 5),
            (1000, 5),
            (1005, 5),
            (6, 100),
            (106 + MAX_READ_GAP + 1, 1),
        ];
        assert_eq!(contiguous_runs(&blobs), vec![0..6, 6..7, 7..8]);
        // The span is bounded; a blob larger than the bound is alone.
        let big = [
            (0, 6 * mib),
            (6 * mib, 6 * mib),
            (12 * mib, 6 * mib),
            (18 * mib, 17 * mib),
            (35 * mib, 1),
        ];
        assert_eq!(contiguous_runs(&big), vec![0..2, 2..3, 3..4, 4..5]);
        assert!(contiguous_runs(&[]).is_empty());
    }

    #[test]
    fn the_default_pack_size_fits_every_backend() {
        // Dropbox's 150 MB single-upload limit is the smallest.
        assert!(max_pack_bytes(DEFAULT_PACK_SIZE) < 100_000_000);
        assert!(max_pack_bytes(DEFAULT_PACK_SIZE) > u64::from(DEFAULT_PACK_SIZE) + (8 << 20));
    }
}
