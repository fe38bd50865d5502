//! Packs: many encrypted blobs in one object, with an encrypted trailer.
//!
//! ```text
//! header(Pack) (6) || blob_0 || … || blob_n-1 || trailer || trailer_len (u32 LE)
//! blob_i  = AES-256-GCM(pack_key, nonce = 0^4 || u64be(i),
//!                       aad = header(Blob) || pack_id || blob_id || kind, stored bytes)
//! trailer = AES-256-GCM(pack_key, nonce = ff^4 || 0^8, aad = header(PackTrailer) || pack_id,
//!                       u32le(n) || postcard(Vec<BlobLocation>)[n bytes] || zero padding)
//! ```
//! The padding makes the whole pack `padded_len(unpadded length, target)` bytes long.

use std::borrow::Cow;

use coffer_crypto::{RepoKeys, SealingKey, TAG_LEN};

use super::padding::padme;
use super::types::{decode, encode, BlobKind, BlobLocation, Compression};
use super::{check_header, header, Kind};
use crate::id::Id;
use crate::{RepoError, Result};

/// Largest plaintext a blob may have; larger claims are rejected before any
/// allocation (a tree of ~500k entries fits).
pub const MAX_BLOB: u32 = 64 << 20;
/// Largest trailer accepted when reading.
pub const MAX_TRAILER: u32 = 64 << 20;

const TRAILER_NONCE: [u8; 12] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];

fn blob_nonce(index: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&u64::from(index).to_be_bytes());
    n
}

fn blob_aad(pack: &Id, blob: &Id, kind: BlobKind) -> [u8; 6 + 32 + 32 + 1] {
    let mut a = [0u8; 71];
    a[..6].copy_from_slice(&header(Kind::Blob));
    a[6..38].copy_from_slice(&pack.0);
    a[38..70].copy_from_slice(&blob.0);
    a[70] = kind.byte();
    a
}

fn trailer_aad(pack: &Id) -> Vec<u8> {
    [&header(Kind::PackTrailer)[..], &pack.0[..]].concat()
}

/// The storage name of a pack.
pub fn pack_name(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

/// Granularity of the padding of full packs.
pub const FULL_PACK_GRANULE: u64 = 4 << 10;

/// The padded size of a pack of `len` bytes whose writer aims at `target`.
///
/// A pack closed below its target (the last pack of a backup, or a small
/// backup) has a size that tracks how much data changed: it gets Padmé
/// padding. A full pack's size says only that it is full; it is rounded to
/// 4 KiB (a filesystem block), which keeps the overhead of the bulk of the
/// repository near 0.01% instead of Padmé's 1.5% at 16 MiB. What a full
/// pack's exact size could still tell — roughly how far its last blob went
/// past the target — concerns one blob of unknown identity per pack.
pub fn padded_len(len: u64, target: u64) -> u64 {
    if target > 0 && len >= target {
        len.div_ceil(FULL_PACK_GRANULE) * FULL_PACK_GRANULE
    } else {
        padme(len)
    }
}

/// Builds one pack in memory.
pub struct PackWriter {
    id: Id,
    target: usize,
    key: SealingKey,
    /// The pack is `buf[start..]`: see [`PackBytes`].
    buf: Vec<u8>,
    start: usize,
    blobs: Vec<BlobLocation>,
}

/// Where a pack's bytes start in memory: the boundary a local store needs to
/// write them straight to the disk (`O_DIRECT`) instead of copying them into
/// the page cache first.
pub const PACK_ALIGN: usize = coffer_storage::DIRECT_ALIGN;

/// A finished pack's bytes, `buf[start..]`, starting at a [`PACK_ALIGN`]
/// boundary (unless the buffer had to grow past what was reserved).
pub struct PackBytes {
    buf: Vec<u8>,
    start: usize,
}

impl PackBytes {
    /// The pack.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// The pack in a vector of its own (moves the bytes).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.start.min(self.buf.len()));
        self.buf
    }
}

impl std::ops::Deref for PackBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PackWriter {
    /// A new, empty pack with a fresh random id.
    pub fn new(keys: &RepoKeys, capacity: usize) -> Result<Self> {
        Ok(Self::with_id(keys, Id::random()?, capacity))
    }

    /// A new pack with a given id (known-answer tests; ids must never repeat).
    /// `capacity` is the target size the packer fills it to (see [`padded_len`]).
    pub fn with_id(keys: &RepoKeys, id: Id, capacity: usize) -> Self {
        // Room for the target, the blob that crosses it, the trailer and the
        // alignment, so that the buffer never moves (untouched capacity costs
        // no memory).
        let mut buf = Vec::with_capacity(capacity + MAX_BLOB as usize + (1 << 20) + PACK_ALIGN);
        let start = (PACK_ALIGN - buf.as_ptr() as usize % PACK_ALIGN) % PACK_ALIGN;
        buf.resize(start, 0);
        buf.extend_from_slice(&header(Kind::Pack));
        Self {
            key: keys.pack_key(&id.0),
            id,
            target: capacity,
            buf,
            start,
            blobs: Vec::new(),
        }
    }

    /// The pack's id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Encrypts and appends one blob.
    pub fn add(
        &mut self,
        id: Id,
        kind: BlobKind,
        compression: Compression,
        raw_length: u32,
        mut data: Vec<u8>,
    ) {
        let index = self.blobs.len() as u32;
        self.key
            .seal(blob_nonce(index), &blob_aad(&self.id, &id, kind), &mut data);
        let offset = self.len() as u32;
        self.buf.extend_from_slice(&data);
        self.blobs.push(BlobLocation {
            id,
            kind,
            index,
            offset,
            length: data.len() as u32,
            raw_length,
            compression,
        });
    }

    /// Seals the trailer, pads, and returns (id, bytes, blob locations).
    pub fn finish(mut self) -> (Id, PackBytes, Vec<BlobLocation>) {
        let entries = encode(&self.blobs);
        let unpadded = self.len() + 4 + entries.len() + TAG_LEN + 4;
        let pad = (padded_len(unpadded as u64, self.target as u64) as usize) - unpadded;
        let mut trailer = Vec::with_capacity(4 + entries.len() + pad + TAG_LEN);
        trailer.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&entries);
        trailer.resize(4 + entries.len() + pad, 0);
        self.key
            .seal(TRAILER_NONCE, &trailer_aad(&self.id), &mut trailer);
        self.buf.extend_from_slice(&trailer);
        self.buf
            .extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        let bytes = PackBytes {
            buf: self.buf,
            start: self.start,
        };
        (self.id, bytes, self.blobs)
    }
}

/// Reads a whole pack's trailer: the list of its blobs, authenticated.
pub fn read_trailer(keys: &RepoKeys, id: &Id, pack: &[u8]) -> Result<Vec<BlobLocation>> {
    check_header(pack, Kind::Pack, &pack_name(id))?;
    let tail_len = trailer_span(id, pack.len() as u64, &pack[pack.len().saturating_sub(4)..])?;
    open_trailer(
        keys,
        id,
        pack.len() as u64,
        &pack[pack.len() - tail_len as usize..],
    )
}

/// How many bytes at the end of a pack of `pack_len` bytes hold the trailer
/// and its length field, from the last 4 bytes `last4` (not yet trusted:
/// bounds-checked here, authenticated by [`open_trailer`]).
pub fn trailer_span(id: &Id, pack_len: u64, last4: &[u8]) -> Result<u64> {
    let name = pack_name(id);
    if pack_len < (6 + 4 + TAG_LEN + 4) as u64 || last4.len() != 4 {
        return Err(RepoError::integrity(&name, "truncated pack"));
    }
    let tlen = u32::from_le_bytes([last4[0], last4[1], last4[2], last4[3]]);
    if tlen > MAX_TRAILER || u64::from(tlen) > pack_len - 4 - 6 || (tlen as usize) < TAG_LEN + 4 {
        return Err(RepoError::integrity(
            &name,
            "truncated pack or bad trailer length",
        ));
    }
    Ok(u64::from(tlen) + 4)
}

/// Authenticates and decodes a trailer: `tail` is the last
/// [`trailer_span`] bytes of a pack of `pack_len` bytes.
pub fn open_trailer(
    keys: &RepoKeys,
    id: &Id,
    pack_len: u64,
    tail: &[u8],
) -> Result<Vec<BlobLocation>> {
    let name = pack_name(id);
    if tail.len() < TAG_LEN + 8 {
        return Err(RepoError::integrity(&name, "truncated pack"));
    }
    let start = pack_len - tail.len() as u64;
    let mut buf = tail[..tail.len() - 4].to_vec();
    let plain = keys
        .pack_key(&id.0)
        .open(TRAILER_NONCE, &trailer_aad(id), &mut buf)
        .map_err(|_| RepoError::integrity(&name, "pack trailer failed authentication (altered, truncated, renamed or from another repository)"))?;
    let n = u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    if n > plain.len() - 4 {
        return Err(RepoError::integrity(&name, "bad trailer entry length"));
    }
    let blobs: Vec<BlobLocation> = decode(&plain[4..4 + n], &name)?;
    for (i, b) in blobs.iter().enumerate() {
        let end = u64::from(b.offset) + u64::from(b.length);
        if b.index as usize != i || end > start || b.offset < 6 {
            return Err(RepoError::integrity(
                &name,
                "trailer lists a blob outside the pack",
            ));
        }
    }
    Ok(blobs)
}

/// Decrypts, decompresses and checks one blob whose ciphertext is `data`.
///
/// Returns the plaintext only if it authenticates under this pack, position,
/// id and kind, and its keyed hash equals its id.
pub fn open_blob(
    keys: &RepoKeys,
    pack: &Id,
    loc: &BlobLocation,
    mut data: Vec<u8>,
) -> Result<Vec<u8>> {
    let stored = match open_blob_in_place(keys, pack, loc, &mut data)? {
        Cow::Borrowed(plain) => plain.len(),
        Cow::Owned(plain) => return Ok(plain),
    };
    data.truncate(stored);
    Ok(data)
}

thread_local! {
    /// One zstd decompression context per thread, reused from blob to blob:
    /// creating one per blob was ~4% of a restore's CPU (allocation and
    /// clearing of its tables).
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-decompresses `data`, which must expand to at most `capacity` bytes.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DCTX.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(std::io::Error::other)?;
        let dctx = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        dctx.decompress(data, capacity)
    })
}

/// [`open_blob`] on a ciphertext inside a larger buffer (a ranged read of
/// several blobs), decrypted where it lies: an uncompressed blob's plaintext
/// is returned borrowed from `data`, without a copy.
pub fn open_blob_in_place<'a>(
    keys: &RepoKeys,
    pack: &Id,
    loc: &BlobLocation,
    data: &'a mut [u8],
) -> Result<Cow<'a, [u8]>> {
    let what = || format!("blob {} in pack {}", loc.id.short(), pack.short());
    if loc.raw_length > MAX_BLOB {
        return Err(RepoError::integrity(
            what(),
            "blob claims an impossible size",
        ));
    }
    let data: &'a [u8] = keys
        .pack_key(&pack.0)
        .open(
            blob_nonce(loc.index),
            &blob_aad(pack, &loc.id, loc.kind),
            data,
        )
        .map_err(|_| {
            RepoError::integrity(
                what(),
                "authentication failed: the pack was altered, truncated or swapped",
            )
        })?;
    let plain = match loc.compression {
        Compression::None => Cow::Borrowed(data),
        Compression::Zstd => Cow::Owned(
            decompress(data, loc.raw_length as usize)
                .map_err(|e| RepoError::integrity(what(), format!("decompression failed: {e}")))?,
        ),
    };
    if plain.len() != loc.raw_length as usize {
        return Err(RepoError::integrity(
            what(),
            "length differs from the index",
        ));
    }
    if !coffer_crypto::ct_eq(&keys.chunk_id_key().id(&plain), &loc.id.0) {
        return Err(RepoError::integrity(
            what(),
            "content does not match its id",
        ));
    }
    Ok(plain)
}
