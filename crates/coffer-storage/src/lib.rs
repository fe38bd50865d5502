//! Where a repository's objects live. The store knows names and bytes, never
//! the format: everything it holds is already encrypted and authenticated.
//!
//! ```
//! use coffer_storage::{BlobStore, MemStore, PutOutcome};
//! let store = MemStore::default();
//! assert_eq!(store.put_if_absent("config", b"v1").unwrap(), PutOutcome::Created);
//! assert_eq!(store.put_if_absent("config", b"v2").unwrap(), PutOutcome::AlreadyExists);
//! assert_eq!(store.get("config").unwrap(), b"v1");
//! ```
#![deny(missing_docs)]

mod local;
mod memory;

use std::path::PathBuf;
use std::sync::Arc;

pub use local::LocalStore;
pub use memory::MemStore;

/// What went wrong talking to storage, grouped by what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {name} not found in the repository storage")]
    NotFound {
        /// The object's name.
        name: String,
    },
    /// A ranged read asked for bytes past the object's end (a truncated object).
    #[error(
        "object {name} is shorter than expected: asked for bytes {offset}..{end}, it has {size}"
    )]
    ShortRead {
        /// The object's name.
        name: String,
        /// First byte asked for.
        offset: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The object's size.
        size: u64,
    },
    /// The disk or the quota is full; nothing half-written was left behind.
    #[error("no space left on the storage while writing {name}: free some space and run the command again (nothing was lost)")]
    NoSpace {
        /// The object being written.
        name: String,
    },
    /// Any other I/O failure, with the object concerned.
    #[error("storage I/O error on {name}: {error}")]
    Io {
        /// The object's name (or the store's location).
        name: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The location cannot be used as a store.
    #[error("cannot use {location} as a repository: {reason}")]
    Unsupported {
        /// The URL or path given.
        location: String,
        /// Why not.
        reason: String,
    },
}

impl StorageError {
    /// A failed read: a missing object is [`StorageError::NotFound`].
    pub(crate) fn io(name: &str, error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::NotFound {
            return Self::NotFound {
                name: name.to_string(),
            };
        }
        Self::write_io(name, error)
    }

    /// A failed write: "not found" here means a missing directory, not a
    /// missing object, and a full disk is [`StorageError::NoSpace`].
    pub(crate) fn write_io(name: &str, error: std::io::Error) -> Self {
        if error.raw_os_error() == Some(28) || error.kind() == std::io::ErrorKind::StorageFull {
            return Self::NoSpace {
                name: name.to_string(),
            };
        }
        Self::Io {
            name: name.to_string(),
            error,
        }
    }
}

/// Result of a conditional create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now holds the given bytes.
    Created,
    /// An object of that name already existed and was left untouched.
    AlreadyExists,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full name, e.g. `index/3fa1…`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// The whole of what Coffer needs from storage.
///
/// Names are `/`-separated ASCII. Writes are atomic: a reader sees the whole
/// object or none of it, even if the writer is killed. `put` of the same bytes
/// twice is harmless (retries are idempotent).
pub trait BlobStore: Send + Sync {
    /// Writes an object, replacing any object of that name.
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError>;
    /// Writes an object only if none of that name exists.
    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError>;
    /// Reads a whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError>;
    /// Reads `len` bytes at `offset`; fails with [`StorageError::ShortRead`]
    /// if the object is shorter.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError>;
    /// Lists every object whose name starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// A human-readable location, for messages.
    fn location(&self) -> String;
    /// Removes leftovers of interrupted writes older than `age` (temporary
    /// files of a killed process). Stores without such leftovers do nothing.
    fn remove_stale_temporaries(&self, age: std::time::Duration) -> Result<u64, StorageError> {
        let _ = age;
        Ok(0)
    }
}

/// Opens the store a repository URL or path names.
///
/// Today: a local path (or `file://` URL). Cloud URLs are recognised and
/// refused with a clear message until their backends land.
pub fn open(location: &str) -> Result<Arc<dyn BlobStore>, StorageError> {
    if let Some((scheme, _)) = location.split_once("://") {
        return match scheme {
            "file" => Ok(Arc::new(LocalStore::new(PathBuf::from(&location[7..])))),
            _ => Err(StorageError::Unsupported {
                location: location.to_string(),
                reason: format!(
                    "the {scheme}:// backend is not available in this build; use a local path"
                ),
            }),
        };
    }
    Ok(Arc::new(LocalStore::new(PathBuf::from(location))))
}

/// The end of `len` bytes at `offset` in an object of `size` bytes, or the
/// [`StorageError::ShortRead`] a truncated object gives.
pub(crate) fn check_range(
    name: &str,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<u64, StorageError> {
    let end = offset.saturating_add(len);
    if end > size {
        return Err(StorageError::ShortRead {
            name: name.to_string(),
            offset,
            end,
            size,
        });
    }
    Ok(end)
}

pub(crate) fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // Only names a temporary file; on the (never seen) failure fall back to the pid.
    if getrandom::fill(&mut b).is_err() {
        return format!("pid{}", std::process::id());
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests;
