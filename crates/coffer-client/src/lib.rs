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
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

pub use coffer_crypto::{BackupKey, RecoveryKey};
pub use coffer_repo::backup::{BackupOptions, BackupOutcome, BackupSources};
use coffer_repo::format::types::Snapshot;
pub use coffer_repo::progress::Progress;
pub use coffer_repo::prune::{KeepPolicy, PruneSummary};
pub use coffer_repo::restore::{RestoreOptions, RestoreSummary};
pub use coffer_repo::verify::VerifySummary;
pub use coffer_repo::{Id, RepoError, Repository};

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
