//! Sealed metadata objects: index files, snapshots, condemnation records and
//! backup sessions (`docs/format.md` §7).
//!
//! Each object has its own key, `object_key(kind, id)`, derived from its kind
//! and its random id, and `aad = header || id`. The nonce depends on whether
//! the kind is [rewritten in place](Kind::rewritten_in_place):
//!
//! * **Written once** (index files, snapshots; header version 1): a fresh id
//!   is drawn for every object and never sealed twice, so the fixed nonce
//!   `0^12` meets its key once:
//!   `bytes = header(kind) || AES-256-GCM(object_key(kind, id), 0^12, aad, plaintext)`.
//! * **Rewritten in place** (condemnation records, backup sessions; header
//!   version 2): a session is rewritten at every refresh and at its end, a
//!   condemnation record when prune finds more sessions, each time under the
//!   same id and key. Each write draws a fresh 96-bit nonce from the OS CSPRNG
//!   and stores it after the header:
//!   `bytes = header(kind) || nonce || AES-256-GCM(object_key(kind, id), nonce, aad, plaintext)`.
//!   The nonce is authenticated as GCM's nonce (another nonce gives another
//!   keystream and tag). Two writes of one id share a nonce with probability
//!   2^-96 per pair: a session refreshed every minute for a century makes
//!   about 2^26 writes, far below GCM's 2^32 budget for random nonces.
//!
//! Opening still accepts version 1 of the rewritten kinds (fixed nonce, as
//! earlier builds wrote them), so sessions and records left by an older build
//! keep working during an upgrade; nothing writes that layout any more.

use coffer_crypto::{RepoKeys, NONCE_LEN, TAG_LEN};

use super::{check_header, header, Kind, RANDOM_NONCE_VERSION};
use crate::id::Id;
use crate::{RepoError, Result};

/// Length of the header every object starts with.
const HEADER_LEN: usize = 6;
/// The nonce of objects written once (and of version 1 of the others).
const FIXED_NONCE: [u8; NONCE_LEN] = [0; NONCE_LEN];

fn aad(header: &[u8], id: &Id) -> Vec<u8> {
    [header, &id.0[..]].concat()
}

/// Seals `plaintext` as object `id` of `kind`. Fails only if the OS random
/// number generator does (objects rewritten in place need a fresh nonce).
pub fn try_seal(keys: &RepoKeys, kind: Kind, id: &Id, plaintext: Vec<u8>) -> Result<Vec<u8>> {
    let nonce = if kind.rewritten_in_place() {
        Some(coffer_crypto::random_bytes::<NONCE_LEN>()?)
    } else {
        None
    };
    Ok(seal_with(keys, kind, id, nonce, plaintext))
}

/// Seals `plaintext` as object `id` of `kind`, like [`try_seal`].
///
/// # Panics
///
/// For a kind [rewritten in place](Kind::rewritten_in_place), if the OS
/// random number generator fails; writers of those kinds use [`try_seal`].
pub fn seal(keys: &RepoKeys, kind: Kind, id: &Id, plaintext: Vec<u8>) -> Vec<u8> {
    // Reached only for sessions and condemnation records, and only when the
    // kernel cannot give 12 random bytes: nothing could be sealed anyway.
    #[allow(clippy::expect_used)]
    try_seal(keys, kind, id, plaintext).expect("the OS random number generator failed")
}

/// Seals with the stored `nonce` of a kind rewritten in place, or with the
/// fixed nonce (nothing stored) for the others.
fn seal_with(
    keys: &RepoKeys,
    kind: Kind,
    id: &Id,
    nonce: Option<[u8; NONCE_LEN]>,
    plaintext: Vec<u8>,
) -> Vec<u8> {
    debug_assert_eq!(nonce.is_some(), kind.rewritten_in_place());
    let header = header(kind);
    let mut buf = plaintext;
    keys.object_key(kind as u8, &id.0).seal(
        nonce.unwrap_or(FIXED_NONCE),
        &aad(&header, id),
        &mut buf,
    );
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + buf.len());
    out.extend_from_slice(&header);
    if let Some(n) = nonce {
        out.extend_from_slice(&n);
    }
    out.extend_from_slice(&buf);
    out
}

/// Opens object `id` of `kind`; `name` is used in errors.
pub fn open(keys: &RepoKeys, kind: Kind, id: &Id, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    check_header(bytes, kind, name)?;
    let (header, rest) = bytes.split_at(HEADER_LEN);
    // `check_header` let through only versions that exist for `kind`.
    let stored_nonce = kind.rewritten_in_place() && header[4] >= RANDOM_NONCE_VERSION;
    let min = HEADER_LEN + if stored_nonce { NONCE_LEN } else { 0 } + TAG_LEN;
    if bytes.len() < min {
        return Err(RepoError::integrity(
            name,
            format!(
                "truncated: {} bytes, shorter than the {min} of an empty sealed object",
                bytes.len()
            ),
        ));
    }
    let (nonce, sealed) = if stored_nonce {
        match rest.split_first_chunk::<NONCE_LEN>() {
            Some((n, sealed)) => (*n, sealed),
            None => return Err(RepoError::integrity(name, "truncated before its nonce")),
        }
    } else {
        (FIXED_NONCE, rest)
    };
    let mut buf = sealed.to_vec();
    let n = keys
        .object_key(kind as u8, &id.0)
        .open(nonce, &aad(header, id), &mut buf)
        .map_err(|_| {
            RepoError::integrity(name, "authentication failed: the object was altered, truncated, renamed or comes from another repository")
        })?
        .len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FORMAT_VERSION;
    use coffer_crypto::BackupKey;

    const REWRITTEN: [Kind; 2] = [Kind::Condemned, Kind::Lock];

    fn keys() -> RepoKeys {
        RepoKeys::derive(&BackupKey::from_bytes([0x42; 32]), &[0x07; 16])
    }

    fn is_integrity(r: &Result<Vec<u8>>) -> bool {
        matches!(r, Err(RepoError::Integrity { .. }))
    }

    /// Does `needle` occur anywhere in `hay`?
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
        a.iter().zip(b).map(|(x, y)| x ^ y).collect()
    }

    /// The defect this layout fixes: two writes of one id under one nonce
    /// would let storage read the XOR of the plaintexts off the ciphertexts
    /// (and recover GHASH's key to forge). Each write has its own nonce now.
    #[test]
    fn rewriting_an_id_never_reuses_a_nonce() {
        let keys = keys();
        let id = Id([0x33; 32]);
        for kind in REWRITTEN {
            let p1 = b"hostname: alpha, pid 1234, refreshed at 1700000000".to_vec();
            let p2 = b"hostname: alpha, pid 1234, refreshed at 1700000060".to_vec();
            let a = try_seal(&keys, kind, &id, p1.clone()).unwrap();
            let b = try_seal(&keys, kind, &id, p2.clone()).unwrap();
            assert_ne!(a[6..18], b[6..18], "{kind:?}: same nonce twice");
            // Wherever the ciphertexts sit, their XOR is not the plaintexts'.
            assert!(
                !contains(&xor(&a, &b), &xor(&p1, &p2)),
                "{kind:?}: ciphertext XOR reveals plaintext XOR"
            );
            // Even the same plaintext is sealed differently each time.
            let c = try_seal(&keys, kind, &id, p1.clone()).unwrap();
            assert_ne!(a, c, "{kind:?}: a rewrite repeated its bytes");
            assert_eq!(open(&keys, kind, &id, &a, "t").unwrap(), p1);
            assert_eq!(open(&keys, kind, &id, &b, "t").unwrap(), p2);
            assert_eq!(open(&keys, kind, &id, &c, "t").unwrap(), p1);
        }
    }

    /// What is written, byte for byte: header (version 2) || nonce ||
    /// AES-256-GCM(object_key, nonce, header || id, plaintext).
    #[test]
    fn rewritten_kinds_layout() {
        let keys = keys();
        let id = Id([0x44; 32]);
        for kind in REWRITTEN {
            let plain = b"layout".to_vec();
            let bytes = seal(&keys, kind, &id, plain.clone());
            assert_eq!(bytes[..6], [b'C', b'O', b'F', b'R', 2, kind as u8]);
            assert_eq!(bytes.len(), 6 + NONCE_LEN + plain.len() + TAG_LEN);
            let nonce: [u8; NONCE_LEN] = bytes[6..18].try_into().unwrap();
            let mut ct = bytes[18..].to_vec();
            let aad = [&bytes[..6], &id.0[..]].concat();
            let got = keys
                .object_key(kind as u8, &id.0)
                .open(nonce, &aad, &mut ct)
                .unwrap();
            assert_eq!(got, &plain[..]);
        }
    }

    /// Objects written once keep the version 1 layout (and the vectors).
    #[test]
    fn written_once_kinds_unchanged() {
        let keys = keys();
        let id = Id([0x55; 32]);
        for kind in [Kind::Index, Kind::Snapshot] {
            let a = seal(&keys, kind, &id, b"once".to_vec());
            assert_eq!(a[4], FORMAT_VERSION);
            assert_eq!(a.len(), 6 + 4 + TAG_LEN);
            assert_eq!(a, seal(&keys, kind, &id, b"once".to_vec()));
            assert_eq!(open(&keys, kind, &id, &a, "t").unwrap(), b"once");
        }
    }

    #[test]
    fn round_trip_every_size() {
        let keys = keys();
        let id = Id([0x66; 32]);
        for kind in REWRITTEN {
            for len in [0, 1, 15, 16, 17, 300] {
                let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let bytes = try_seal(&keys, kind, &id, plain.clone()).unwrap();
                assert_eq!(open(&keys, kind, &id, &bytes, "t").unwrap(), plain);
            }
        }
    }

    /// Every truncation is an integrity error (never a panic, never `Ok`).
    #[test]
    fn truncated_rewritten_objects_refused() {
        let keys = keys();
        let id = Id([0x77; 32]);
        for kind in REWRITTEN {
            for plain in [Vec::new(), b"some session".to_vec()] {
                let bytes = try_seal(&keys, kind, &id, plain).unwrap();
                for cut in 0..bytes.len() {
                    let r = open(&keys, kind, &id, &bytes[..cut], "locks/x");
                    assert!(is_integrity(&r), "{kind:?} cut at {cut}: {r:?}");
                }
            }
        }
        let short = open(
            &keys,
            Kind::Lock,
            &id,
            &[b'C', b'O', b'F', b'R', 2, 0x50, 1],
            "x",
        );
        let msg = short.unwrap_err().to_string();
        assert!(msg.contains("truncated") && msg.contains("34"), "{msg}");
    }

    /// Every single bit flip is refused: an integrity error, except in the
    /// version byte, where a higher version reads as a newer format.
    #[test]
    fn bit_flipped_rewritten_objects_refused() {
        let keys = keys();
        let id = Id([0x88; 32]);
        for kind in REWRITTEN {
            let bytes = try_seal(&keys, kind, &id, b"condemned packs".to_vec()).unwrap();
            for bit in 0..bytes.len() * 8 {
                let mut f = bytes.clone();
                f[bit / 8] ^= 1 << (bit % 8);
                let r = open(&keys, kind, &id, &f, "t");
                if bit / 8 == 4 {
                    assert!(r.is_err(), "{kind:?} bit {bit}");
                } else {
                    assert!(is_integrity(&r), "{kind:?} bit {bit}: {r:?}");
                }
            }
        }
    }

    /// A new object relabelled as version 1 (its nonce read as ciphertext)
    /// fails, as does an object of the other rewritten kind or id.
    #[test]
    fn relabelled_or_moved_objects_refused() {
        let keys = keys();
        let id = Id([0x99; 32]);
        for kind in REWRITTEN {
            let bytes = try_seal(&keys, kind, &id, b"x".to_vec()).unwrap();
            let mut v1 = bytes.clone();
            v1[4] = 1;
            assert!(is_integrity(&open(&keys, kind, &id, &v1, "t")));
            assert!(is_integrity(&open(
                &keys,
                kind,
                &Id([0x98; 32]),
                &bytes,
                "t"
            )));
            let other = if kind == Kind::Lock {
                Kind::Condemned
            } else {
                Kind::Lock
            };
            let mut moved = bytes.clone();
            moved[5] = other as u8;
            assert!(is_integrity(&open(&keys, other, &id, &moved, "t")));
            assert!(is_integrity(&open(&keys, Kind::Index, &id, &bytes, "t")));
        }
    }

    /// Version 1 sessions and records (fixed nonce, as earlier builds wrote
    /// them) still open; a version above 2 is a newer format.
    #[test]
    fn version_1_of_rewritten_kinds_still_opens() {
        let keys = keys();
        let id = Id([0xaa; 32]);
        for kind in REWRITTEN {
            let header = [b'C', b'O', b'F', b'R', 1, kind as u8];
            let mut buf = b"old session".to_vec();
            keys.object_key(kind as u8, &id.0)
                .seal([0; 12], &aad(&header, &id), &mut buf);
            let old = [&header[..], &buf[..]].concat();
            assert_eq!(open(&keys, kind, &id, &old, "t").unwrap(), b"old session");
            let mut newer = try_seal(&keys, kind, &id, Vec::new()).unwrap();
            newer[4] = 3;
            assert!(matches!(
                open(&keys, kind, &id, &newer, "t"),
                Err(RepoError::UnsupportedVersion {
                    found: 3,
                    supported: 2,
                    ..
                })
            ));
        }
    }
}
