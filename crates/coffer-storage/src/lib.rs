//! Where a repository's objects live. The store knows names and bytes, never
//! the format: everything it holds is already encrypted and authenticated.
//!
//! ```
//! use coffer_storage::{BlobStore, MemStore, PutOutcome};
//! let store = MemStore::default();
//! assert_eq!(store.put_if_absent("config", b"v1").unwrap(), PutOutcome::Created);
//! assert_eq!(store.put_if_absent("config", b"v2").unwrap(), PutOutcome::AlreadyExists);
//! assert_eq!(store.get("config").unwrap(), b"v1");
//! // Whether put_if_absent really excludes a concurrent writer: probed, not assumed.
//! assert!(coffer_storage::probe_conditional_writes(&store).unwrap().enforced());
//! ```
//!
//! Backends: [`LocalStore`] (a directory), [`CloudStore`] (S3, GCS, Azure Blob,
//! WebDAV, Google Drive, OneDrive, Dropbox through Apache OpenDAL), wrapped
//! by [`RetryStore`] for retries; [`open`] picks one from a path or URL.
//! [`MemStore`] and [`FaultStore`] are for tests.
#![deny(missing_docs)]

#[cfg(feature = "cloud")]
mod classify;
#[cfg(feature = "cloud")]
pub mod cloud;
mod error;
pub mod fault;
mod local;
mod location;
mod memory;
mod probe;
pub mod retry;
mod temporaries;

use std::sync::Arc;

#[cfg(feature = "cloud")]
pub use cloud::{CloudOptions, CloudStore};
pub use error::StorageError;
pub use fault::{FaultConfig, FaultStats, FaultStore};
pub use local::LocalStore;
pub use location::{Location, Password};
pub use memory::MemStore;
pub use probe::{probe_conditional_writes, ConditionalWrites, PROBE_PREFIX};
pub use retry::{RetryPolicy, RetryStore};

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
/// twice is harmless (retries are idempotent). Every method may be called from
/// several threads at once.
pub trait BlobStore: Send + Sync {
    /// Writes an object, replacing any object of that name.
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError>;
    /// Writes an object only if none of that name exists. Whether a
    /// concurrent writer is really excluded depends on the backend: see
    /// [`BlobStore::create_mode`] and [`probe_conditional_writes`].
    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError>;
    /// Reads a whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError>;
    /// Reads `len` bytes at `offset`; fails with [`StorageError::ShortRead`]
    /// if the object is shorter.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError>;
    /// [`BlobStore::get_range`], with the bytes possibly at an offset into
    /// their buffer: a read that bypasses the page cache needs an aligned
    /// buffer, and moving the bytes to its start would cost the copy it saves.
    fn get_range_buf(&self, name: &str, offset: u64, len: u64) -> Result<RangeBuf, StorageError> {
        self.get_range(name, offset, len).map(RangeBuf::from)
    }
    /// Lists every object whose name starts with `prefix`, sorted by name.
    /// (A consumer drive may list a name twice; [`RetryStore`] removes the
    /// repeats.)
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// A human-readable location, for messages (never with credentials).
    fn location(&self) -> String;
    /// How `put_if_absent` is implemented. A claim, used only to rule
    /// conditional writes *out*: [`probe_conditional_writes`] decides.
    fn create_mode(&self) -> CreateMode {
        CreateMode::CheckThenWrite
    }
    /// The largest object one `put` may carry on this backend.
    fn max_object_size(&self) -> u64 {
        u64::MAX
    }
    /// Removes leftovers of interrupted writes older than `age` (temporary
    /// files of a killed process). Stores without such leftovers do nothing.
    fn remove_stale_temporaries(&self, age: std::time::Duration) -> Result<u64, StorageError> {
        let _ = age;
        Ok(0)
    }
}

/// How a store implements [`BlobStore::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// One atomic operation of the backend (`link(2)`, a map under a lock,
    /// S3 / GCS / Azure conditional requests): of two concurrent writers,
    /// exactly one gets `Created` — if the server honours the condition,
    /// which [`probe_conditional_writes`] checks.
    Atomic,
    /// A check, then a write (WebDAV, Google Drive, OneDrive, Dropbox): two
    /// concurrent writers can both get `Created`, the later write winning.
    CheckThenWrite,
}

/// Opens the store a repository path or URL names (see [`Location`]).
///
/// A local path (or `file://`) is a [`LocalStore`], used directly. Any
/// other scheme is a [`CloudStore`] behind a [`RetryStore`] with the default
/// [`RetryPolicy`]; credentials come from the environment (see [`cloud`]).
/// Nothing is sent over the network here: a wrong bucket or credential shows
/// on the first request.
pub fn open(location: &str) -> Result<Arc<dyn BlobStore>, StorageError> {
    match Location::parse(location)? {
        Location::Local(path) => Ok(Arc::new(LocalStore::new(path))),
        #[cfg(feature = "cloud")]
        remote => Ok(Arc::new(RetryStore::new(
            CloudStore::open(&remote, CloudOptions::default())?,
            RetryPolicy::default(),
        ))),
        #[cfg(not(feature = "cloud"))]
        _ => Err(StorageError::Unsupported {
            location: location.to_string(),
            reason: "this build has no cloud backends (coffer-storage feature `cloud`)".into(),
        }),
    }
}

/// The alignment a local store's direct (`O_DIRECT`) I/O needs: file
/// offset, length and memory address. 4 KiB covers every logical block size
/// in use (512 B and 4 KiB). A write is direct only if its bytes start at
/// such a boundary in memory, which is why packs are built there.
pub const DIRECT_ALIGN: usize = 4096;

/// The bytes of a ranged read: `len` bytes at `start` in `buf`.
#[derive(Debug)]
pub struct RangeBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl RangeBuf {
    /// `len` bytes at `start` in `buf`.
    pub(crate) fn at(buf: Vec<u8>, start: usize, len: usize) -> Self {
        Self { buf, start, len }
    }

    /// The bytes read.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let end = self.start.saturating_add(self.len).min(self.buf.len());
        let start = self.start.min(end);
        &mut self.buf[start..end]
    }

    /// How many bytes were read.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl From<Vec<u8>> for RangeBuf {
    fn from(buf: Vec<u8>) -> Self {
        let len = buf.len();
        Self { buf, start: 0, len }
    }
}

/// The end of `len` bytes at `offset` in an object of `size` bytes, or the
/// [`StorageError::ShortRead`] a truncated object gives.
pub(crate) fn check_range(
    name: &str,
    location: &str,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<u64, StorageError> {
    let end = offset.saturating_add(len);
    if end > size {
        return Err(StorageError::ShortRead {
            name: name.to_string(),
            location: location.to_string(),
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
