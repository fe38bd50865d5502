//! The repository format, as specified in `docs/format.md`.
//!
//! Every stored object starts with a 6-byte header — magic `COFR`, format
//! version, object kind — and that header, the object's name and (for blobs)
//! the blob's id and position are bound into the AEAD's associated data, so
//! a changed header, a renamed object or two swapped objects all fail
//! authentication.
//!
//! The version byte is per kind ([`Kind::version`]): 1 for every kind but the
//! two rewritten in place (condemnation records, backup sessions), which are
//! at 2 since they carry their own random nonce (see [`object`]).

pub mod config;
pub mod object;
pub mod pack;
pub mod padding;
pub mod types;

#[cfg(test)]
mod vectors;

/// Magic at the start of every object.
pub const MAGIC: &[u8; 4] = b"COFR";
/// The format version this build writes and reads for every kind of object
/// but those [rewritten in place](Kind::rewritten_in_place).
pub const FORMAT_VERSION: u8 = 1;
/// The version of the objects [rewritten in place](Kind::rewritten_in_place):
/// they store a fresh random nonce after the header. This build still reads
/// their version 1 (fixed nonce), which it never writes.
pub const RANDOM_NONCE_VERSION: u8 = 2;

/// What an object is; the byte after the version in every header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The repository config (`config`).
    Config = 0x01,
    /// A pack of blobs (`data/xx/<id>`).
    Pack = 0x10,
    /// One blob inside a pack (appears only in associated data).
    Blob = 0x11,
    /// A pack's trailer (appears only in associated data).
    PackTrailer = 0x12,
    /// An index file (`index/<id>`).
    Index = 0x20,
    /// A snapshot manifest (`snapshots/<id>`).
    Snapshot = 0x30,
    /// A prune's list of packs condemned for deletion (`condemned/<id>`).
    Condemned = 0x40,
    /// A running backup's session (`locks/<id>`).
    Lock = 0x50,
}

impl Kind {
    /// Whether objects of this kind are rewritten under the same name (and so
    /// the same key): a backup session at every refresh, a condemnation record
    /// when prune adds sessions to it. They cannot use a fixed nonce.
    pub const fn rewritten_in_place(self) -> bool {
        matches!(self, Kind::Condemned | Kind::Lock)
    }

    /// The version this build writes in the header of an object of this
    /// kind, and the newest it reads.
    pub const fn version(self) -> u8 {
        if self.rewritten_in_place() {
            RANDOM_NONCE_VERSION
        } else {
            FORMAT_VERSION
        }
    }
}

/// The 6-byte header of an object of `kind`, as this build writes it.
pub fn header(kind: Kind) -> [u8; 6] {
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        kind.version(),
        kind as u8,
    ]
}

/// Checks an object's header — magic, version 0, kind, then a version newer
/// than this build reads for that kind; `name` is used in the error.
pub fn check_header(bytes: &[u8], kind: Kind, name: &str) -> crate::Result<()> {
    if bytes.len() < 6 || &bytes[..4] != MAGIC {
        return Err(crate::RepoError::integrity(
            name,
            "not a Coffer object (bad magic or truncated)",
        ));
    }
    if bytes[4] == 0 {
        // Version 0 never existed: this is damage, not a newer format.
        return Err(crate::RepoError::integrity(
            name,
            "format version 0 does not exist (damaged header)",
        ));
    }
    if bytes[5] != kind as u8 {
        return Err(crate::RepoError::integrity(
            name,
            format!(
                "object kind {:#04x} where {:#04x} ({kind:?}) was expected",
                bytes[5], kind as u8
            ),
        ));
    }
    // After the kind: which versions exist depends on it, and an object of
    // another kind in this place is damage, not a newer format.
    if bytes[4] > kind.version() {
        return Err(crate::RepoError::UnsupportedVersion {
            object: name.to_string(),
            found: bytes[4],
            supported: kind.version(),
        });
    }
    Ok(())
}
