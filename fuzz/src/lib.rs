//! Shared pieces of Coffer's fuzz targets.
//!
//! A fuzzer cannot forge an AES-GCM tag or an HMAC, so each target for an
//! authenticated parser runs every input twice:
//!
//! * **raw**: the bytes as storage would hand them over. The parser must not
//!   panic and must refuse them (an `Ok` would be a forgery).
//! * **sealed**: the harness seals the fuzzer's bytes as plaintext under a fixed
//!   test key, with the nonces and associated data of `docs/format.md`
//!   rebuilt here, so the fuzzer also explores the parsing *behind*
//!   authentication (lengths, bounds, postcard, zstd), as rustls's fuzzers use
//!   a "no security" provider to get past MACs.
//!
//! [`self_check`] makes sure that rebuilt sealing matches the real writer, so a
//! format change cannot silently turn the sealed mode into a second raw mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod vault;

use std::sync::OnceLock;

use coffer_crypto::{BackupKey, RepoKeys};
use coffer_repo::format::pack::{read_trailer, PackWriter};
use coffer_repo::format::types::{decode, encode, BlobKind, BlobLocation, Compression};
use coffer_repo::format::{header, Kind};
use coffer_repo::Id;

/// The fixed repository id of the test key.
pub const REPO_ID: [u8; 16] = [0x42; 16];

/// The fixed test key `K`.
pub fn key() -> BackupKey {
    BackupKey::from_bytes([0x11; 32])
}

/// The working keys of the test repository (derived once), after a one-time
/// [`self_check`].
pub fn keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = RepoKeys::derive(&key(), &REPO_ID);
        self_check(&keys);
        keys
    })
}

/// An id from up to 32 bytes (zero-padded).
pub fn id_from(bytes: &[u8]) -> Id {
    let mut id = [0u8; 32];
    let n = bytes.len().min(32);
    id[..n].copy_from_slice(&bytes[..n]);
    Id(id)
}

/// Splits `data` at `n` (or its end).
pub fn take(data: &[u8], n: usize) -> (&[u8], &[u8]) {
    data.split_at(n.min(data.len()))
}

const TRAILER_NONCE: [u8; 12] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];

/// Seals `plaintext` as the trailer of pack `pack` and appends it, with its
/// length, to `body` (which starts with the pack header).
pub fn seal_trailer(keys: &RepoKeys, pack: &Id, mut body: Vec<u8>, plaintext: &[u8]) -> Vec<u8> {
    let aad = [&header(Kind::PackTrailer)[..], &pack.0[..]].concat();
    let mut buf = plaintext.to_vec();
    keys.pack_key(&pack.0).seal(TRAILER_NONCE, &aad, &mut buf);
    body.extend_from_slice(&buf);
    body.extend_from_slice(&(buf.len() as u32).to_le_bytes());
    body
}

/// Seals `plaintext` as the blob at `loc` in pack `pack`.
pub fn seal_blob(keys: &RepoKeys, pack: &Id, loc: &BlobLocation, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&u64::from(loc.index).to_be_bytes());
    let aad = [
        &header(Kind::Blob)[..],
        &pack.0[..],
        &loc.id.0[..],
        &[loc.kind.byte()][..],
    ]
    .concat();
    let mut buf = plaintext.to_vec();
    keys.pack_key(&pack.0).seal(nonce, &aad, &mut buf);
    buf
}

/// Postcard decoding never panics, and what decodes re-encodes to an equal
/// value.
pub fn decode_round_trip<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = decode::<T>(data, "fuzz") {
        let again: T = decode(&encode(&v), "fuzz").expect("re-encoded value decodes");
        assert_eq!(again, v, "decode(encode(v)) != v");
    }
}

/// Panics if the sealing rebuilt here differs from the real pack writer.
pub fn self_check(keys: &RepoKeys) {
    let mut w = PackWriter::new(keys, 1024).unwrap();
    let plain = b"self-check blob".to_vec();
    let id = Id(keys.chunk_id_key().id(&plain));
    w.add(
        id,
        BlobKind::Data,
        Compression::None,
        plain.len() as u32,
        plain.clone(),
    );
    let (pack, bytes, locs) = w.finish();
    let bytes = bytes.into_vec();
    let l = &locs[0];
    let stored = &bytes[l.offset as usize..(l.offset + l.length) as usize];
    assert_eq!(
        stored,
        seal_blob(keys, &pack, l, &plain),
        "blob sealing drifted from the format"
    );
    // Open the real trailer with the rebuilt nonce and associated data.
    let tlen = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
    let start = bytes.len() - 4 - tlen;
    let aad = [&header(Kind::PackTrailer)[..], &pack.0[..]].concat();
    let mut t = bytes[start..bytes.len() - 4].to_vec();
    let plaintext = keys
        .pack_key(&pack.0)
        .open(TRAILER_NONCE, &aad, &mut t)
        .expect("trailer sealing drifted from the format")
        .to_vec();
    let rebuilt = seal_trailer(keys, &pack, bytes[..start].to_vec(), &plaintext);
    assert_eq!(rebuilt, bytes, "trailer sealing drifted from the format");
    assert_eq!(read_trailer(keys, &pack, &rebuilt).unwrap(), locs);
}
