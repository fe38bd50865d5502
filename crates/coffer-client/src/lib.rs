//! The Coffer SDK: what an app embeds to back up its database and media,
//! end-to-end encrypted, and to restore them on a new device.
//!
//! ```
//! use coffer_client::{Coffer, BackupSources};
//! # let dir = tempfile::tempdir().unwrap();
//! # let repo_path = dir.path().join("repo");
//! # std::fs::create_dir(dir.path().join("media")).unwrap();
//! # std::fs::write(dir.path().join("media/photo.jpg"), b"jpeg bytes").unwrap();
//! # std::env::set_var("COFFER_CACHE_DIR", dir.path().join("cache"));
//! // Create a repository; show the recovery key to the user once.
//! let (recovery_key, _) = Coffer::init_with_recovery_key(repo_path.to_str().unwrap()).unwrap();
//!
//! // Later, or on another device: open it with the key and back up.
//! let key = coffer_crypto::RecoveryKey::parse(recovery_key.expose_secret()).unwrap();
//! let mut coffer = Coffer::open(repo_path.to_str().unwrap(), &key).unwrap();
//! let sources = BackupSources { paths: vec![dir.path().join("media")], databases: vec![] };
//! let outcome = coffer.backup(&sources, false, &Default::default()).unwrap();
//! assert_eq!(outcome.snapshot.summary.files, 1);
//! ```
//!
//! In password mode `K` is escrowed in a key vault behind a password with a
//! guess limit ([`vault`]), and cached on the device ([`keycache`]) so daily
//! backups need neither:
//!
//! ```no_run
//! use coffer_client::{keycache, Coffer, Password, RealmDescriptor, VaultClient};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let realm = RealmDescriptor::from_json(&std::fs::read_to_string("realm.json")?)?;
//! let vault = VaultClient::new(realm, std::env::var("COFFER_VAULT_TOKEN")?)?;
//! let cache = keycache::default_cache()?;
//! let password = Password::from("correct horse battery staple");
//! Coffer::init_with_vault("/backups/phone", &vault, &password, 10, cache.as_ref())?;
//! // On this device: the cached key, no network.
//! let coffer = Coffer::open_cached("/backups/phone", cache.as_ref())?;
//! // On a new device: the vault, with the password (one attempt spent, all
//! // given back when it is right).
//! let coffer = Coffer::open_with_vault("/backups/phone", &vault, &password, cache.as_ref())?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod keycache;
pub mod vault;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use coffer_crypto::{BackupKey, RecoveryKey};
pub use coffer_repo::backup::{BackupOptions, BackupOutcome, BackupSources};
pub use coffer_repo::format::config::KeyMode;
use coffer_repo::format::config::{open_config, peek_config, CONFIG_NAME};
use coffer_repo::format::types::Snapshot;
pub use coffer_repo::progress::Progress;
pub use coffer_repo::prune::{KeepPolicy, PruneSummary};
pub use coffer_repo::restore::{RestoreOptions, RestoreSummary};
pub use coffer_repo::verify::VerifySummary;
pub use coffer_repo::{Id, RepoError, Repository};
use coffer_storage::{BlobStore, StorageError};
pub use coffer_vault_proto::{RealmDescriptor, RealmError};
pub use keycache::{KeyCache, KeyCacheError};
pub use vault::{Password, VaultClient, VaultError};

/// An open repository with the device's defaults.
pub struct Coffer {
    repo: Repository,
    cache_root: PathBuf,
}

/// The host name recorded in snapshots.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl Coffer {
    /// Creates a repository in recovery-key mode at `location`; returns the
    /// recovery key (to show once) and the repository id.
    pub fn init_with_recovery_key(location: &str) -> Result<(RecoveryKey, [u8; 16]), RepoError> {
        let store = coffer_storage::open(location)?;
        let k = BackupKey::generate()?;
        let id = coffer_repo::init(store.as_ref(), &k, &coffer_repo::InitOptions::default())?;
        Ok((RecoveryKey::from_backup_key(&k), id))
    }

    /// Opens the repository at `location` with `K`.
    pub fn open(location: &str, k: &BackupKey) -> Result<Self, RepoError> {
        Self::open_with_cache(location, k, &coffer_repo::repo::default_cache_root())
    }

    /// Opens with an explicit cache directory.
    pub fn open_with_cache(
        location: &str,
        k: &BackupKey,
        cache_root: &Path,
    ) -> Result<Self, RepoError> {
        let store = coffer_storage::open(location)?;
        let repo = Repository::open(store, k, cache_root)?;
        Ok(Self {
            repo,
            cache_root: cache_root.to_path_buf(),
        })
    }

    /// The engine underneath.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Backs up `sources`; `force_full` re-reads unchanged files.
    pub fn backup(
        &mut self,
        sources: &BackupSources,
        force_full: bool,
        progress: &Progress,
    ) -> Result<BackupOutcome, RepoError> {
        let staging = self.cache_root.join("staging");
        let opts = BackupOptions {
            force_full,
            hostname: hostname(),
            workers: workers(),
            staging_dir: staging,
        };
        coffer_repo::backup::backup(&mut self.repo, sources, &opts, progress)
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        self.repo.snapshots()
    }

    /// Restores snapshot `spec` (`latest` or an id prefix) under `target`.
    pub fn restore(
        &self,
        spec: &str,
        target: &Path,
        opts: RestoreOptions,
        progress: &Progress,
    ) -> Result<(Id, RestoreSummary), RepoError> {
        let (id, snap) = self.repo.find_snapshot(spec)?;
        let opts = RestoreOptions {
            workers: workers(),
            ..opts
        };
        let s = coffer_repo::restore::restore(&self.repo, &id, &snap, target, &opts, progress)?;
        Ok((id, s))
    }

    /// Verifies structure, and with `read_data_percent` the data too.
    pub fn verify(
        &self,
        read_data_percent: Option<f64>,
        progress: &Progress,
    ) -> Result<VerifySummary, RepoError> {
        coffer_repo::verify::verify(&self.repo, read_data_percent, progress)
    }

    /// Applies a retention policy; returns (kept, forgotten).
    pub fn forget(
        &self,
        policy: &KeepPolicy,
        dry_run: bool,
    ) -> Result<(Vec<Id>, Vec<Id>), RepoError> {
        coffer_repo::prune::forget(&self.repo, policy, dry_run)
    }

    /// Deletes data no snapshot needs (never what a running backup needs).
    pub fn prune(&mut self) -> Result<PruneSummary, RepoError> {
        coffer_repo::prune::prune(&mut self.repo, &hostname())
    }
}

/// What a repository's config tells without the key.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    /// The repository id (names its key-cache entry).
    pub repo_id: [u8; 16],
    /// How `K` is held. Read before `K` is known, so unauthenticated: the
    /// config's MAC is checked as soon as a key is at hand.
    pub key_mode: KeyMode,
}

impl RepoInfo {
    /// Whether `K` is escrowed in a vault behind a password.
    pub fn is_password_mode(&self) -> bool {
        matches!(self.key_mode, KeyMode::Vault { .. })
    }

    /// The realm of a password-mode repository, as its config names it.
    pub fn realm(&self) -> Result<Option<RealmDescriptor>, RealmError> {
        match &self.key_mode {
            KeyMode::Vault { realm } => RealmDescriptor::from_json(realm).map(Some),
            KeyMode::RecoveryKey => Ok(None),
        }
    }
}

/// Why a repository could not be created, opened or switched in password mode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The repository or its storage failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The vault refused or could not be reached.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The device's key cache is unusable.
    #[error(transparent)]
    KeyCache(#[from] KeyCacheError),
    /// The repository's realm descriptor is unusable, or the vault client is
    /// for another realm.
    #[error(transparent)]
    Realm(#[from] RealmError),
    /// The repository is in recovery-key mode.
    #[error("the repository at {location} is in recovery-key mode, not password mode: open it with its recovery key")]
    NotPasswordMode {
        /// The repository.
        location: String,
    },
    /// The vault released a key that does not open this repository (the
    /// user's vault record belongs to another repository). Nothing was changed.
    #[error("the key in the vault for this user does not open the repository at {location} (the vault record belongs to another repository); nothing was changed")]
    KeyMismatch {
        /// The repository.
        location: String,
    },
    /// The key cached on this device does not open the repository.
    #[error("the key cached on this device ({cache}) does not open the repository at {location}; drop it (`coffer key forget`) and open the repository with the password")]
    StaleCachedKey {
        /// The repository.
        location: String,
        /// Where the cached key is.
        cache: String,
    },
}

/// The outcome of switching a repository from password to recovery-key mode.
#[derive(Debug)]
pub struct RecoveryKeySwitch {
    /// `K` as a recovery key: the only way to open the repository from now on.
    pub recovery_key: RecoveryKey,
    /// Whether the vault's copy was erased. The repository is in recovery-key
    /// mode either way; on an error the vault still holds `K` behind the
    /// password, and running the switch again (with the realm) erases it.
    pub vault_erase: Result<(), VaultError>,
}

fn read_config(location: &str) -> Result<(Arc<dyn BlobStore>, Vec<u8>), RepoError> {
    let store = coffer_storage::open(location)?;
    match store.get(CONFIG_NAME) {
        Ok(bytes) => Ok((store, bytes)),
        Err(StorageError::NotFound { .. }) => Err(RepoError::NotARepository {
            location: store.location(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The realm a password-mode config names, checked against the vault client's.
fn check_realm(
    location: &str,
    info: &RepoInfo,
    vault: &VaultClient,
) -> Result<RealmDescriptor, AccessError> {
    let Some(realm) = info.realm()? else {
        return Err(AccessError::NotPasswordMode {
            location: location.to_string(),
        });
    };
    realm.check_same_realm(vault.realm())?;
    Ok(realm)
}

/// Checks that `k` opens the config `bytes` (key check and MAC).
fn verify_key(bytes: &[u8], k: &BackupKey, location: &str) -> Result<(), AccessError> {
    match open_config(bytes, k, location) {
        Ok(_) => Ok(()),
        Err(RepoError::WrongKey { .. }) => Err(AccessError::KeyMismatch {
            location: location.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

fn copy_key(k: &BackupKey) -> BackupKey {
    BackupKey::from_bytes(*k.expose_secret())
}

/// Caches `k`; a failure is reported and otherwise ignored: the key stays
/// in the vault, so the next run asks for the password again.
fn cache_key(cache: &dyn KeyCache, repo_id: &[u8; 16], k: &BackupKey) {
    if let Err(e) = cache.store(repo_id, k) {
        tracing::warn!("the key could not be cached on this device ({e}); the next run will ask for the password again");
    }
}

/// Password mode (DESIGN.md §3, §6).
impl Coffer {
    /// Reads the repository's config without the key: its id and key mode.
    pub fn inspect(location: &str) -> Result<RepoInfo, RepoError> {
        let (_, bytes) = read_config(location)?;
        let body = peek_config(&bytes)?;
        Ok(RepoInfo {
            repo_id: body.repo_id,
            key_mode: body.key_mode,
        })
    }

    /// Reads the repository's config and authenticates it with the key
    /// cached on this device (key check and MAC): `Some` when a key is cached
    /// and opens the config, so that everything in it, the realm descriptor
    /// included, is as the key's holder wrote it; `None` when no key is cached
    /// (what [`Coffer::inspect`] returns is then unauthenticated).
    pub fn inspect_authenticated(
        location: &str,
        cache: &dyn KeyCache,
    ) -> Result<Option<RepoInfo>, AccessError> {
        let (_, bytes) = read_config(location)?;
        let body = peek_config(&bytes)?;
        let Some(k) = cache.load(&body.repo_id)? else {
            return Ok(None);
        };
        match open_config(&bytes, &k, location) {
            Ok((body, _)) => Ok(Some(RepoInfo {
                repo_id: body.repo_id,
                key_mode: body.key_mode,
            })),
            Err(RepoError::WrongKey { .. }) => Err(AccessError::StaleCachedKey {
                location: location.to_string(),
                cache: cache.describe(&body.repo_id),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a repository in password mode: generates `K`, registers it in
    /// the vault under `password` with a guess limit of `max_attempts` (first,
    /// so no repository exists whose key is nowhere), creates the repository
    /// naming the vault's realm, and caches `K` on this device. Returns the
    /// repository id.
    pub fn init_with_vault(
        location: &str,
        vault: &VaultClient,
        password: &Password,
        max_attempts: u8,
        cache: &dyn KeyCache,
    ) -> Result<[u8; 16], AccessError> {
        let store = coffer_storage::open(location).map_err(RepoError::from)?;
        // Refuse before the vault is touched when a repository is already there.
        match store.get(CONFIG_NAME) {
            Ok(_) => {
                return Err(RepoError::AlreadyExists {
                    location: store.location(),
                }
                .into())
            }
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(RepoError::from(e).into()),
        }
        let k = BackupKey::generate().map_err(RepoError::from)?;
        vault.register(password, &k, max_attempts)?;
        let realm =
            serde_json::to_string(vault.realm()).map_err(|e| RealmError::Invalid(e.to_string()))?;
        let opts = coffer_repo::InitOptions {
            key_mode: KeyMode::Vault { realm },
            ..Default::default()
        };
        let repo_id = match coffer_repo::init(store.as_ref(), &k, &opts) {
            Ok(id) => id,
            Err(e) => {
                // Take the registration back, so that a retry can register again.
                if let Err(undo) = vault.delete(password) {
                    tracing::warn!(
                        "the key registered in the vault could not be taken back: {undo}"
                    );
                }
                return Err(e.into());
            }
        };
        cache_key(cache, &repo_id, &k);
        Ok(repo_id)
    }

    /// Opens a password-mode repository with the key cached on this device,
    /// without the network; `None` if none is cached.
    pub fn open_cached(location: &str, cache: &dyn KeyCache) -> Result<Option<Self>, AccessError> {
        let info = Self::inspect(location)?;
        if !info.is_password_mode() {
            return Err(AccessError::NotPasswordMode {
                location: location.to_string(),
            });
        }
        let Some(k) = cache.load(&info.repo_id)? else {
            return Ok(None);
        };
        match Self::open(location, &k) {
            Ok(c) => Ok(Some(c)),
            Err(RepoError::WrongKey { .. }) => Err(AccessError::StaleCachedKey {
                location: location.to_string(),
                cache: cache.describe(&info.repo_id),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a password-mode repository: the cached key first, else the
    /// vault with `password` (one attempt spent; all given back when it is
    /// right), then cached.
    pub fn open_with_vault(
        location: &str,
        vault: &VaultClient,
        password: &Password,
        cache: &dyn KeyCache,
    ) -> Result<Self, AccessError> {
        if let Some(c) = Self::open_cached(location, cache)? {
            return Ok(c);
        }
        let k = Self::fetch_key(location, vault, password, cache)?;
        Ok(Self::open(location, &k)?)
    }

    /// Fetches `K` from the vault (whatever the cache holds), checks that it
    /// opens the repository, and caches it.
    pub fn fetch_key(
        location: &str,
        vault: &VaultClient,
        password: &Password,
        cache: &dyn KeyCache,
    ) -> Result<BackupKey, AccessError> {
        let (_, bytes) = read_config(location)?;
        let body = peek_config(&bytes)?;
        let info = RepoInfo {
            repo_id: body.repo_id,
            key_mode: body.key_mode,
        };
        check_realm(location, &info, vault)?;
        let k = vault.fetch_key(password)?;
        verify_key(&bytes, &k, location)?;
        cache_key(cache, &info.repo_id, &k);
        Ok(k)
    }

    /// Changes the password: proves `old`, registers the same `K` under
    /// `new` in the same vault session. Nothing in the repository changes.
    pub fn change_password(
        location: &str,
        vault: &VaultClient,
        old: &Password,
        new: &Password,
    ) -> Result<(), AccessError> {
        let (_, bytes) = read_config(location)?;
        let body = peek_config(&bytes)?;
        let info = RepoInfo {
            repo_id: body.repo_id,
            key_mode: body.key_mode,
        };
        check_realm(location, &info, vault)?;
        let session = vault.login(old)?;
        // Never re-register a key that is not this repository's.
        verify_key(&bytes, session.key(), location)?;
        session.change_password(new)?;
        Ok(())
    }

    /// Leaves password mode for recovery-key mode: fetches `K` from the
    /// vault, checks it opens the repository, rewrites the config in
    /// recovery-key mode (same `K`, same repository id: nothing re-uploaded),
    /// then erases the vault's copy in the same session and drops the
    /// device's cached key. Run on a repository already switched (when the
    /// erase failed the first time), it only erases the vault's copy.
    pub fn switch_to_recovery_key(
        location: &str,
        vault: &VaultClient,
        password: &Password,
        cache: &dyn KeyCache,
    ) -> Result<RecoveryKeySwitch, AccessError> {
        let (store, bytes) = read_config(location)?;
        let body = peek_config(&bytes)?;
        let already = matches!(body.key_mode, KeyMode::RecoveryKey);
        let info = RepoInfo {
            repo_id: body.repo_id,
            key_mode: body.key_mode,
        };
        if !already {
            check_realm(location, &info, vault)?;
        }
        let session = vault.login(password)?;
        let k = copy_key(session.key());
        verify_key(&bytes, &k, location)?;
        if !already {
            // The config changes before the vault forgets K: at every moment
            // some copy of K opens the repository.
            coffer_repo::set_key_mode(store.as_ref(), &k, KeyMode::RecoveryKey)?;
        }
        let vault_erase = session.delete().map(|_| ());
        if let Err(e) = cache.forget(&info.repo_id) {
            tracing::warn!("the key cached on this device could not be deleted: {e}");
        }
        Ok(RecoveryKeySwitch {
            recovery_key: RecoveryKey::from_backup_key(&k),
            vault_erase,
        })
    }

    /// Erases `K` from the vault and from this device's cache: the repository
    /// becomes unreadable for good (unless a copy of `K` exists elsewhere).
    /// Refused when the vault's key does not open this repository.
    pub fn erase_vault_key(
        location: &str,
        vault: &VaultClient,
        password: &Password,
        cache: &dyn KeyCache,
    ) -> Result<(), AccessError> {
        let (_, bytes) = read_config(location)?;
        let body = peek_config(&bytes)?;
        let info = RepoInfo {
            repo_id: body.repo_id,
            key_mode: body.key_mode,
        };
        check_realm(location, &info, vault)?;
        let session = vault.login(password)?;
        verify_key(&bytes, session.key(), location)?;
        session.delete()?;
        cache.forget(&info.repo_id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_and_switch_key_mode_without_touching_data() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("repo");
        let loc = loc.to_str().unwrap();
        let cache_root = dir.path().join("cache");
        let (rk, id) = Coffer::init_with_recovery_key(loc).unwrap();
        let k = RecoveryKey::parse(rk.expose_secret()).unwrap();
        let info = Coffer::inspect(loc).unwrap();
        assert_eq!(info.repo_id, id);
        assert!(!info.is_password_mode());
        assert!(info.realm().unwrap().is_none());

        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"data").unwrap();
        let mut c = Coffer::open_with_cache(loc, &k, &cache_root).unwrap();
        let sources = BackupSources {
            paths: vec![src],
            databases: vec![],
        };
        c.backup(&sources, false, &Progress::default()).unwrap();
        let listing = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
            let mut v = Vec::new();
            let mut stack = vec![p.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path());
                    } else if e.file_name() != CONFIG_NAME {
                        v.push((e.path(), std::fs::read(e.path()).unwrap()));
                    }
                }
            }
            v.sort();
            v
        };
        let before = listing(Path::new(loc));

        let store = coffer_storage::open(loc).unwrap();
        let body =
            coffer_repo::set_key_mode(store.as_ref(), &k, KeyMode::Vault { realm: "{}".into() })
                .unwrap();
        assert_eq!(body.repo_id, id);
        let info = Coffer::inspect(loc).unwrap();
        assert!(info.is_password_mode());
        assert!(info.realm().is_err(), "an invalid descriptor is reported");
        // Same K opens it, every other object is untouched.
        Coffer::open_with_cache(loc, &k, &cache_root).unwrap();
        assert_eq!(listing(Path::new(loc)), before);
        // A wrong key cannot rewrite it.
        let wrong = BackupKey::from_bytes([9; 32]);
        assert!(matches!(
            coffer_repo::set_key_mode(store.as_ref(), &wrong, KeyMode::RecoveryKey),
            Err(RepoError::WrongKey { .. })
        ));
        coffer_repo::set_key_mode(store.as_ref(), &k, KeyMode::RecoveryKey).unwrap();
        assert!(!Coffer::inspect(loc).unwrap().is_password_mode());
    }

    #[test]
    fn cached_key_opens_and_a_stale_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("repo");
        let loc = loc.to_str().unwrap();
        let (rk, id) = Coffer::init_with_recovery_key(loc).unwrap();
        let k = RecoveryKey::parse(rk.expose_secret()).unwrap();
        let cache = keycache::FileKeyCache::new(dir.path().join("keys"));
        // Recovery-key mode: the cache is not for it.
        assert!(matches!(
            Coffer::open_cached(loc, &cache),
            Err(AccessError::NotPasswordMode { .. })
        ));
        let store = coffer_storage::open(loc).unwrap();
        let mode = KeyMode::Vault { realm: "{}".into() };
        coffer_repo::set_key_mode(store.as_ref(), &k, mode).unwrap();
        std::env::set_var("COFFER_CACHE_DIR", dir.path().join("cache"));
        assert!(Coffer::open_cached(loc, &cache).unwrap().is_none());
        cache.store(&id, &k).unwrap();
        let c = Coffer::open_cached(loc, &cache).unwrap().unwrap();
        assert_eq!(c.repository().repo_id(), id);
        cache.store(&id, &BackupKey::from_bytes([9; 32])).unwrap();
        let e = Coffer::open_cached(loc, &cache).err().unwrap();
        assert!(matches!(e, AccessError::StaleCachedKey { .. }), "{e}");
    }
}
