//! The plaintext structures inside index files, snapshots and tree blobs,
//! serialized with postcard 1.x (a stable, documented wire format).

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A serialized [`Tree`].
    Tree,
}

impl BlobKind {
    /// The byte used for this kind in associated data and in the cache.
    pub fn byte(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    /// The inverse of [`BlobKind::byte`].
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// How a blob's plaintext was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// As is (compression did not pay).
    None,
    /// zstd frame.
    Zstd,
}

/// Where one blob sits in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLocation {
    /// The blob's id (keyed hash of its plaintext).
    pub id: Id,
    /// What it holds.
    pub kind: BlobKind,
    /// Position in the pack: also the AEAD nonce.
    pub index: u32,
    /// Byte offset of the ciphertext in the pack.
    pub offset: u32,
    /// Ciphertext length, tag included.
    pub length: u32,
    /// Plaintext length after decompression.
    pub raw_length: u32,
    /// How the plaintext was stored.
    pub compression: Compression,
}

/// One pack as listed in an index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack's id.
    pub id: Id,
    /// The pack's total size on storage.
    pub size: u64,
    /// Its blobs.
    pub blobs: Vec<BlobLocation>,
}

/// The plaintext of an index file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune).
    pub supersedes: Vec<Id>,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
}

/// A SQLite database captured by the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseEntry {
    /// The database's absolute path as given to `--db`, raw bytes.
    pub path: Vec<u8>,
    /// How it was captured, e.g. `sqlite-online-backup`.
    pub method: String,
}

/// Counters of one backup run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Files read because they changed (or were new).
    pub files_read: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_new: u64,
    /// Bytes written to storage (packs, index, snapshot).
    pub bytes_added: u64,
    /// Total size of all files in the snapshot.
    pub total_bytes: u64,
    /// Paths that could not be read.
    pub errors: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// The plaintext of a snapshot manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, Unix nanoseconds.
    pub time_ns: i64,
    /// The host that made it.
    pub hostname: String,
    /// The backed-up paths, absolute, raw bytes.
    pub paths: Vec<Vec<u8>>,
    /// The root tree.
    pub tree: Id,
    /// SQLite databases captured consistently (also present in the tree).
    pub databases: Vec<DatabaseEntry>,
    /// The snapshot this one was compared against, if any.
    pub parent: Option<Id>,
    /// Index files written by this backup run; restores and verify check
    /// they are present (or superseded), which catches a rolled-back index.
    pub index_ids: Vec<Id>,
    /// Counters of the run.
    pub summary: BackupSummary,
}

/// A directory: its entries, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes, unique.
    pub nodes: Vec<Node>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name, raw bytes (need not be UTF-8).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: NodeKind,
    /// Unix mode bits (permissions and set-id bits).
    pub mode: u32,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// Status-change time, Unix nanoseconds (change detection only).
    pub ctime_ns: i64,
    /// Inode number (change detection only).
    pub inode: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The kind of a [`Node`] and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file: its size and content chunks in order.
    File {
        /// Size in bytes.
        size: u64,
        /// Data blob ids, in order.
        chunks: Vec<Id>,
    },
    /// A directory and its tree.
    Dir {
        /// The tree blob.
        subtree: Id,
    },
    /// A symbolic link and its target, raw bytes.
    Symlink {
        /// The target.
        target: Vec<u8>,
    },
}

/// The plaintext of a prune's condemnation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condemned {
    /// When it was written, Unix nanoseconds.
    pub time_ns: i64,
    /// Packs no snapshot referenced.
    pub packs: Vec<Id>,
    /// Index files to remove with them.
    pub index_files: Vec<Id>,
    /// Backup sessions that were running when the packs were condemned: the
    /// packs are deleted only once all of these have ended.
    pub live_sessions: Vec<String>,
}

/// Decodes postcard bytes; a failure is an integrity error on `object`.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], object: &str) -> crate::Result<T> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| crate::RepoError::integrity(object, format!("malformed content: {e}")))?;
    if !rest.is_empty() {
        return Err(crate::RepoError::integrity(
            object,
            "trailing bytes after content",
        ));
    }
    Ok(value)
}

/// Encodes to postcard bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data structures to a Vec cannot fail.
    #[allow(clippy::expect_used)]
    postcard::to_stdvec(value).expect("postcard serialization of plain data")
}
