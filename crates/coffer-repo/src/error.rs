//! Errors, grouped by what the caller should do.

use std::path::PathBuf;

use coffer_storage::StorageError;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The key does not open this repository. Nothing in the repository is wrong.
    #[error("wrong key: this recovery key does not open the repository at {location}")]
    WrongKey {
        /// The repository's location.
        location: String,
    },
    /// Stored bytes failed authentication or do not fit together. Never
    /// retried silently; nothing derived from them was written.
    #[error("integrity error in {object}: {detail}")]
    Integrity {
        /// The object concerned (e.g. `index/3fa1…`, `snapshot 1a2b3c4d`).
        object: String,
        /// What is wrong with it.
        detail: String,
    },
    /// There is no repository at the location.
    #[error(
        "no Coffer repository at {location} (run `coffer init --repo {location}` to create one)"
    )]
    NotARepository {
        /// The location given.
        location: String,
    },
    /// A repository already exists where one was to be created.
    #[error("a repository already exists at {location}")]
    AlreadyExists {
        /// The location given.
        location: String,
    },
    /// The pack size would make packs larger than the store accepts in one upload.
    #[error("pack size {pack_size} is too large for {location}: a pack can reach {worst} bytes, and it takes at most {max} bytes in one upload")]
    PackSize {
        /// The store's location.
        location: String,
        /// The target pack size.
        pack_size: u32,
        /// The largest pack that target allows.
        worst: u64,
        /// The store's limit.
        max: u64,
    },
    /// The repository was written by a newer format this build cannot read.
    #[error("{object} uses format version {found}; this build reads version {supported} (upgrade coffer)")]
    UnsupportedVersion {
        /// The object concerned.
        object: String,
        /// The version found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// No snapshot matches what was asked for.
    #[error("no snapshot matches {0:?} (see `coffer snapshots`)")]
    SnapshotNotFound(String),
    /// A snapshot id prefix matches more than one snapshot.
    #[error("{spec:?} is ambiguous: {matches} snapshots match (see `coffer snapshots`)")]
    AmbiguousSnapshot {
        /// The prefix given.
        spec: String,
        /// How many snapshots it matches.
        matches: usize,
    },
    /// None of the paths given could be read: no snapshot was written.
    #[error("nothing could be backed up: {0}")]
    NothingReadable(String),
    /// A path asked for is not in the snapshot.
    #[error("{0:?} is not in the snapshot")]
    PathNotInSnapshot(String),
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A local file or directory could not be read or written.
    #[error("{}: {error}", path.display())]
    Local {
        /// The local path.
        path: PathBuf,
        /// The underlying error (part of the message, so not repeated as a source).
        error: std::io::Error,
    },
    /// The local cache (a derived copy of the index) failed.
    #[error("local cache error: {0} (the cache can be deleted safely; it is rebuilt from the repository)")]
    Cache(String),
    /// The SQLite database to back up could not be snapshotted.
    #[error("cannot snapshot the SQLite database {}: {detail}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The OS random number generator failed.
    #[error(transparent)]
    Random(#[from] coffer_crypto::RandomError),
    /// A worker thread stopped unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RepoError {
    pub(crate) fn integrity(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Integrity {
            object: object.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn local(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Local {
            path: path.into(),
            error,
        }
    }
}

impl From<rusqlite::Error> for RepoError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Cache(e.to_string())
    }
}

/// Shorthand.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;
