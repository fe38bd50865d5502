//! Every parser of stored bytes, fed arbitrary bytes and mutations of valid
//! objects: it never panics, and the authenticated ones never return `Ok` for
//! bytes the sealer did not produce under that key, name and kind.
//!
//! Parsers covered: `config::peek_config` / `open_config`, `object::open`,
//! `pack::read_trailer`, `pack::open_blob`, `types::decode` of `IndexFile`,
//! `Snapshot`, `Tree`, `Condemned` (and the trailer's `Vec<BlobLocation>`),
//! and `RecoveryKey::parse`. The cargo-fuzz targets in `fuzz/` cover the same
//! parsers with coverage guidance.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_crypto::{BackupKey, RecoveryKey, RepoKeys};
use coffer_repo::format::config::{encode_config, open_config, peek_config, ConfigBody, KeyMode};
use coffer_repo::format::pack::{open_blob, read_trailer, PackWriter};
use coffer_repo::format::types::{
    decode, encode, BackupSummary, BlobKind, BlobLocation, Compression, Condemned, DatabaseEntry,
    IndexFile, IndexPack, Node, NodeKind, Snapshot, Tree,
};
use coffer_repo::format::{header, object, Kind};
use coffer_repo::{Id, RepoError};
use proptest::collection::vec;
use proptest::prelude::*;

const REPO_ID: [u8; 16] = [0x42; 16];

fn k() -> BackupKey {
    BackupKey::from_bytes([0x11; 32])
}

fn keys() -> RepoKeys {
    RepoKeys::derive(&k(), &REPO_ID)
}

const KINDS: [Kind; 8] = [
    Kind::Config,
    Kind::Pack,
    Kind::Blob,
    Kind::PackTrailer,
    Kind::Index,
    Kind::Snapshot,
    Kind::Condemned,
    Kind::Lock,
];

fn kind() -> impl Strategy<Value = Kind> {
    (0..KINDS.len()).prop_map(|i| KINDS[i])
}

fn id() -> impl Strategy<Value = Id> {
    any::<[u8; 32]>().prop_map(Id)
}

/// Arbitrary bytes, half of them behind a valid header of `kind` so the
/// parser gets past the header check.
fn stored(kind: Kind, max: usize) -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), vec(any::<u8>(), 0..max)).prop_map(move |(hdr, body)| {
        if hdr {
            [&header(kind)[..], &body[..]].concat()
        } else {
            body
        }
    })
}

fn flip(bytes: &mut [u8], bit: usize) {
    let i = bit % (bytes.len() * 8);
    bytes[i / 8] ^= 1 << (i % 8);
}

fn config_body(repo_id: [u8; 16], key_check: [u8; 32]) -> ConfigBody {
    ConfigBody {
        repo_id,
        created_ns: 1_700_000_000_000_000_000,
        key_mode: KeyMode::RecoveryKey,
        file_chunker: coffer_repo::chunker::FILE_PARAMS,
        db_chunker: coffer_repo::chunker::DB_PARAMS,
        pack_size: 16 << 20,
        zstd_level: 3,
        key_check,
    }
}

fn valid_config() -> Vec<u8> {
    let keys = keys();
    encode_config(&keys, &config_body(REPO_ID, keys.key_check()))
}

// ---- strategies for the plaintext structures --------------------------------

fn blob_kind() -> impl Strategy<Value = BlobKind> {
    prop_oneof![Just(BlobKind::Data), Just(BlobKind::Tree)]
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Zstd)]
}

fn blob_location() -> impl Strategy<Value = BlobLocation> {
    (
        id(),
        blob_kind(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        compression(),
    )
        .prop_map(
            |(id, kind, index, offset, length, raw_length, compression)| BlobLocation {
                id,
                kind,
                index,
                offset,
                length,
                raw_length,
                compression,
            },
        )
}

fn index_file() -> impl Strategy<Value = IndexFile> {
    (
        vec(id(), 0..3),
        vec((id(), any::<u64>(), vec(blob_location(), 0..4)), 0..3),
    )
        .prop_map(|(supersedes, packs)| IndexFile {
            supersedes,
            packs: packs
                .into_iter()
                .map(|(id, size, blobs)| IndexPack { id, size, blobs })
                .collect(),
        })
}

fn node() -> impl Strategy<Value = Node> {
    let kind = prop_oneof![
        (any::<u64>(), vec(id(), 0..4)).prop_map(|(size, chunks)| NodeKind::File { size, chunks }),
        id().prop_map(|subtree| NodeKind::Dir { subtree }),
        vec(any::<u8>(), 0..16).prop_map(|target| NodeKind::Symlink { target }),
    ];
    (
        vec(any::<u8>(), 0..16),
        kind,
        any::<u32>(),
        any::<i64>(),
        any::<i64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(name, kind, mode, mtime_ns, ctime_ns, inode, uid, gid)| Node {
                name,
                kind,
                mode,
                mtime_ns,
                ctime_ns,
                inode,
                uid,
                gid,
            },
        )
}

fn tree() -> impl Strategy<Value = Tree> {
    vec(node(), 0..5).prop_map(|nodes| Tree { nodes })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<i64>(),
        ".{0,12}",
        vec(vec(any::<u8>(), 0..12), 0..3),
        id(),
        vec((vec(any::<u8>(), 0..12), ".{0,8}"), 0..2),
        proptest::option::of(id()),
        vec(id(), 0..3),
        any::<[u64; 9]>(),
    )
        .prop_map(
            |(time_ns, hostname, paths, tree, dbs, parent, index_ids, s)| Snapshot {
                time_ns,
                hostname,
                paths,
                tree,
                databases: dbs
                    .into_iter()
                    .map(|(path, method)| DatabaseEntry { path, method })
                    .collect(),
                parent,
                index_ids,
                summary: BackupSummary {
                    files: s[0],
                    dirs: s[1],
                    files_read: s[2],
                    bytes_read: s[3],
                    bytes_new: s[4],
                    bytes_added: s[5],
                    total_bytes: s[6],
                    errors: s[7],
                    duration_ms: s[8],
                },
            },
        )
}

fn condemned() -> impl Strategy<Value = Condemned> {
    (
        any::<i64>(),
        vec(id(), 0..3),
        vec(id(), 0..3),
        vec(".{0,8}", 0..3),
    )
        .prop_map(|(time_ns, packs, index_files, live_sessions)| Condemned {
            time_ns,
            packs,
            index_files,
            live_sessions,
        })
}

/// Decoding never panics; whatever decodes re-encodes to an equal value.
fn decode_is_total<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = decode::<T>(bytes, "fuzzed") {
        prop_assert_eq!(decode::<T>(&encode(&v), "again").unwrap(), v);
    }
    Ok(())
}

/// A valid value survives encoding, and its mutations never panic the decoder.
fn round_trip_and_mutate<T>(v: &T, bit: usize, cut: usize) -> Result<(), TestCaseError>
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let mut bytes = encode(v);
    prop_assert_eq!(&decode::<T>(&bytes, "valid").unwrap(), v);
    decode_is_total::<T>(&bytes[..cut % (bytes.len() + 1)])?;
    flip(&mut bytes, bit);
    decode_is_total::<T>(&bytes)?;
    Ok(())
}

// ---- packs ------------------------------------------------------------------

/// A pack built by the real writer: returns (id, bytes, locations).
fn build_pack(blobs: &[(Vec<u8>, BlobKind, bool)]) -> (Id, Vec<u8>, Vec<BlobLocation>) {
    let keys = keys();
    let mut w = PackWriter::new(&keys, 1 << 16).unwrap();
    for (plain, kind, zstd) in blobs {
        let id = Id(keys.chunk_id_key().id(plain));
        let (comp, stored) = if *zstd {
            (Compression::Zstd, zstd::bulk::compress(plain, 3).unwrap())
        } else {
            (Compression::None, plain.clone())
        };
        w.add(id, *kind, comp, plain.len() as u32, stored);
    }
    let (id, bytes, blobs) = w.finish();
    (id, bytes.into_vec(), blobs)
}

fn pack_blobs() -> impl Strategy<Value = Vec<(Vec<u8>, BlobKind, bool)>> {
    vec((vec(any::<u8>(), 0..300), blob_kind(), any::<bool>()), 1..5)
}

/// Whether the pack, read as restore and verify read it, yields only what was
/// written: the trailer authenticates and every blob opens to its plaintext.
fn pack_reads_back(id: &Id, bytes: &[u8], want: &[(Vec<u8>, BlobKind, bool)]) -> bool {
    let keys = keys();
    let Ok(locs) = read_trailer(&keys, id, bytes) else {
        return false;
    };
    locs.len() == want.len()
        && locs.iter().zip(want).all(|(l, (plain, _, _))| {
            let data = bytes[l.offset as usize..(l.offset + l.length) as usize].to_vec();
            open_blob(&keys, id, l, data).is_ok_and(|p| &p == plain)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    // ---- config ----

    /// Arbitrary bytes: peek never panics, open never succeeds.
    #[test]
    fn config_arbitrary_bytes_never_open(bytes in stored(Kind::Config, 256)) {
        let _ = peek_config(&bytes);
        prop_assert!(open_config(&bytes, &k(), "test").is_err());
    }

    /// A well-formed body with a key-check made under another key (and its
    /// checksum recomputed, as a forger would): wrong key. With the right
    /// key-check but a forged MAC: integrity error. Without a matching
    /// checksum: integrity error (damage, not a wrong key).
    #[test]
    fn config_forgeries_fail(repo_id in any::<[u8; 16]>(), check in any::<[u8; 32]>(), mac in any::<[u8; 32]>(), sum in any::<[u8; 32]>()) {
        let signed = |check| [&header(Kind::Config)[..], &encode(&config_body(repo_id, check))].concat();
        let with_sum = |signed: &[u8], mac: &[u8]| {
            [signed, ring::digest::digest(&ring::digest::SHA256, signed).as_ref(), mac].concat()
        };
        let forged = with_sum(&signed(check), &mac);
        let is_wrong_key = matches!(open_config(&forged, &k(), "t"), Err(RepoError::WrongKey { .. }));
        prop_assert!(is_wrong_key);
        let damaged = [&signed(check)[..], &sum, &mac].concat();
        let is_integrity = matches!(open_config(&damaged, &k(), "t"), Err(RepoError::Integrity { .. }));
        prop_assert!(is_integrity);
        let right = RepoKeys::derive(&k(), &repo_id).key_check();
        let forged = with_sum(&signed(right), &mac);
        let is_integrity = matches!(open_config(&forged, &k(), "t"), Err(RepoError::Integrity { .. }));
        prop_assert!(is_integrity);
    }

    /// Any bit flipped, any truncation, any extension of a valid config: refused.
    #[test]
    fn config_mutations_refused(bit in any::<usize>(), cut in any::<usize>(), extra in vec(any::<u8>(), 1..8)) {
        let good = valid_config();
        prop_assert!(open_config(&good, &k(), "t").is_ok());
        let mut flipped = good.clone();
        flip(&mut flipped, bit);
        let _ = peek_config(&flipped);
        prop_assert!(open_config(&flipped, &k(), "t").is_err());
        let cut = cut % good.len();
        prop_assert!(open_config(&good[..cut], &k(), "t").is_err());
        prop_assert!(open_config(&[&good[..], &extra].concat(), &k(), "t").is_err());
        // Another key never opens it, and says so.
        let is_wrong_key = matches!(
            open_config(&good, &BackupKey::from_bytes([0x22; 32]), "t"),
            Err(RepoError::WrongKey { .. })
        );
        prop_assert!(is_wrong_key);
    }

    // ---- sealed objects (index files, snapshots, condemnation records) ----

    /// Arbitrary bytes never open as any kind of object under any id.
    #[test]
    fn object_arbitrary_bytes_never_open(kind in kind(), id in id(), bytes in stored(Kind::Index, 256)) {
        prop_assert!(object::open(&keys(), kind, &id, &bytes, "t").is_err());
        let mut as_kind = bytes.clone();
        if as_kind.len() >= 6 {
            as_kind[5] = kind as u8;
        }
        prop_assert!(object::open(&keys(), kind, &id, &as_kind, "t").is_err());
    }

    /// A sealed object opens only as itself: any flip, truncation, extension,
    /// other id, other kind or other repository (same K) is refused.
    #[test]
    fn object_mutations_refused(
        kind in kind(), id in id(), other in id(), plain in vec(any::<u8>(), 0..200),
        bit in any::<usize>(), cut in any::<usize>(), extra in vec(any::<u8>(), 1..8),
    ) {
        let keys = keys();
        let sealed = object::seal(&keys, kind, &id, plain.clone());
        prop_assert_eq!(object::open(&keys, kind, &id, &sealed, "t").unwrap(), plain);
        let mut flipped = sealed.clone();
        flip(&mut flipped, bit);
        prop_assert!(object::open(&keys, kind, &id, &flipped, "t").is_err());
        prop_assert!(object::open(&keys, kind, &id, &sealed[..cut % sealed.len()], "t").is_err());
        prop_assert!(object::open(&keys, kind, &id, &[&sealed[..], &extra].concat(), "t").is_err());
        if other != id {
            prop_assert!(object::open(&keys, kind, &other, &sealed, "t").is_err());
        }
        for k2 in KINDS.iter().filter(|k2| **k2 != kind) {
            prop_assert!(object::open(&keys, *k2, &id, &sealed, "t").is_err());
            let mut relabelled = sealed.clone();
            relabelled[5] = *k2 as u8;
            prop_assert!(object::open(&keys, *k2, &id, &relabelled, "t").is_err());
        }
        let twin = RepoKeys::derive(&k(), &[0x43; 16]);
        prop_assert!(object::open(&twin, kind, &id, &sealed, "t").is_err());
    }

    // ---- packs ----

    /// Arbitrary bytes never yield a trailer, even with a plausible length field.
    #[test]
    fn trailer_arbitrary_bytes_never_open(id in id(), mut bytes in stored(Kind::Pack, 512), tlen in 20u32..600) {
        prop_assert!(read_trailer(&keys(), &id, &bytes).is_err());
        if bytes.len() >= 4 {
            let n = bytes.len();
            bytes[n - 4..].copy_from_slice(&tlen.to_le_bytes());
            prop_assert!(read_trailer(&keys(), &id, &bytes).is_err());
        }
    }

    /// Arbitrary ciphertext at an arbitrary location never opens as a blob.
    #[test]
    fn blob_arbitrary_bytes_never_open(pack in id(), loc in blob_location(), data in vec(any::<u8>(), 0..512)) {
        prop_assert!(open_blob(&keys(), &pack, &loc, data).is_err());
    }

    /// A pack made by the writer reads back; any bit flipped anywhere in it
    /// (header, blobs, trailer, length) or any truncation is caught by the
    /// trailer or by a blob, never returned as data.
    #[test]
    fn pack_mutations_refused(blobs in pack_blobs(), bit in any::<usize>(), cut in any::<usize>(), other in id()) {
        let (id, bytes, _) = build_pack(&blobs);
        prop_assert!(pack_reads_back(&id, &bytes, &blobs));
        let mut flipped = bytes.clone();
        flip(&mut flipped, bit);
        prop_assert!(!pack_reads_back(&id, &flipped, &blobs));
        // The trailer alone must never return wrong locations.
        if let Ok(locs) = read_trailer(&keys(), &id, &flipped) {
            prop_assert_eq!(locs, read_trailer(&keys(), &id, &bytes).unwrap());
        }
        prop_assert!(read_trailer(&keys(), &id, &bytes[..cut % bytes.len()]).is_err());
        // The same bytes under another pack name (a swapped pack) open nothing.
        if other != id {
            prop_assert!(read_trailer(&keys(), &other, &bytes).is_err());
            let locs = read_trailer(&keys(), &id, &bytes).unwrap();
            for l in &locs {
                let data = bytes[l.offset as usize..(l.offset + l.length) as usize].to_vec();
                prop_assert!(open_blob(&keys(), &other, l, data).is_err());
            }
        }
    }

    /// A blob moved to another position, relabelled as another kind, or
    /// claimed with another id or length, is refused.
    #[test]
    fn blob_context_binding(blobs in pack_blobs(), which in any::<usize>(), raw in any::<u32>()) {
        let (id, bytes, locs) = build_pack(&blobs);
        let l = &locs[which % locs.len()];
        let data = || bytes[l.offset as usize..(l.offset + l.length) as usize].to_vec();
        let mut moved = l.clone();
        moved.index += 1;
        prop_assert!(open_blob(&keys(), &id, &moved, data()).is_err());
        let mut relabelled = l.clone();
        relabelled.kind = match l.kind { BlobKind::Data => BlobKind::Tree, BlobKind::Tree => BlobKind::Data };
        prop_assert!(open_blob(&keys(), &id, &relabelled, data()).is_err());
        let mut renamed = l.clone();
        renamed.id.0[0] ^= 1;
        prop_assert!(open_blob(&keys(), &id, &renamed, data()).is_err());
        if raw != l.raw_length {
            let mut resized = l.clone();
            resized.raw_length = raw;
            prop_assert!(open_blob(&keys(), &id, &resized, data()).is_err());
        }
    }

    // ---- plaintext structures (behind authentication, still never panic) ----

    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        decode_is_total::<IndexFile>(&bytes)?;
        decode_is_total::<Snapshot>(&bytes)?;
        decode_is_total::<Tree>(&bytes)?;
        decode_is_total::<Condemned>(&bytes)?;
        decode_is_total::<Vec<BlobLocation>>(&bytes)?;
        decode_is_total::<ConfigBody>(&bytes)?;
    }

    #[test]
    fn index_file_round_trip_and_mutations(v in index_file(), bit in any::<usize>(), cut in any::<usize>()) {
        round_trip_and_mutate(&v, bit, cut)?;
    }

    #[test]
    fn snapshot_round_trip_and_mutations(v in snapshot(), bit in any::<usize>(), cut in any::<usize>()) {
        round_trip_and_mutate(&v, bit, cut)?;
    }

    #[test]
    fn tree_round_trip_and_mutations(v in tree(), bit in any::<usize>(), cut in any::<usize>()) {
        round_trip_and_mutate(&v, bit, cut)?;
    }

    #[test]
    fn condemned_round_trip_and_mutations(v in condemned(), bit in any::<usize>(), cut in any::<usize>()) {
        round_trip_and_mutate(&v, bit, cut)?;
    }

    // ---- recovery key ----

    /// Any text: never panics; accepted only if it is 64 hex digits once
    /// whitespace and dashes are dropped, and then it is exactly those digits.
    #[test]
    fn recovery_key_parse_is_total(s in prop_oneof![".{0,100}", "[0-9a-fA-F \\-]{0,90}"]) {
        let digits: String = s.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
        match RecoveryKey::parse(&s) {
            Ok(k) => {
                prop_assert_eq!(digits.len(), 64);
                prop_assert_eq!(hex_lower(k.expose_secret()), digits.to_ascii_lowercase());
            }
            Err(_) => prop_assert!(digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit())),
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
