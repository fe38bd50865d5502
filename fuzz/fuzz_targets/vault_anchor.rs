//! `vault_anchor`: the core's own stored formats, through the fuzzing hooks
//! of `coffer_vault_core::anchor::fuzzing` (feature `testing`).
//!
//! - NVRAM anchor (`Anchor::decode`): never panics; accepts exactly 45 bytes
//!   starting `CVNV` 01; re-encodes to the same bytes.
//! - Roll-forward marker (`check_marker`): raw bytes never verify (an HMAC
//!   the fuzzer cannot forge). Sealed: the first 80 bytes, MACed as the core
//!   does, verify to the two anchors they encode; flipping any bit of them
//!   (position and mask from the next two bytes) does not.
//! - Record plaintext (`Record::decode`, behind the record AEAD): never
//!   panics; what decodes re-encodes to a 293-byte record that decodes to
//!   itself.
#![no_main]

use std::sync::OnceLock;

use coffer_vault_core::anchor::fuzzing::{
    check_marker, decode_anchor, encode_anchor, fuzz_reencode_record, make_marker, RECORD_LEN,
};
use coffer_vault_core::anchor::{MARKER_LEN, NVRAM_LEN};
use coffer_vault_core::{Anchor, RealmSecrets};
use libfuzzer_sys::fuzz_target;

fn secrets() -> &'static RealmSecrets {
    static S: OnceLock<RealmSecrets> = OnceLock::new();
    S.get_or_init(|| RealmSecrets::derive(&[0x77; 32], &[0x99; 16]))
}

fn anchor(b: &[u8]) -> Anchor {
    let mut g = [0u8; 8];
    g.copy_from_slice(&b[..8]);
    let mut root = [0u8; 32];
    root.copy_from_slice(&b[8..40]);
    Anchor {
        generation: u64::from_be_bytes(g),
        root,
    }
}

fuzz_target!(|data: &[u8]| {
    // NVRAM.
    let well_formed = data.len() == NVRAM_LEN && data.starts_with(b"CVNV\x01");
    match decode_anchor(data) {
        Ok(a) => {
            assert!(well_formed);
            assert_eq!(encode_anchor(&a), data);
        }
        Err(_) => assert!(!well_formed),
    }

    // Marker.
    let s = secrets();
    assert!(check_marker(s, data).is_none(), "a forged marker verified");
    if data.len() >= 80 {
        let (old, new) = (anchor(&data[..40]), anchor(&data[40..80]));
        let mut m = make_marker(s, &old, &new);
        assert_eq!(m.len(), MARKER_LEN);
        assert_eq!(check_marker(s, &m), Some((old, new)));
        if let [pos, mask, ..] = data[80..] {
            if mask != 0 {
                m[usize::from(pos) % MARKER_LEN] ^= mask;
                assert!(check_marker(s, &m).is_none(), "a tampered marker verified");
            }
        }
    }

    // Record plaintext.
    if let Ok(r) = fuzz_reencode_record(data) {
        assert_eq!(data.len(), RECORD_LEN);
        assert_eq!(r.len(), RECORD_LEN);
        assert_eq!(
            fuzz_reencode_record(&r).ok().as_ref(),
            Some(&r),
            "record re-encoding is not stable"
        );
    }
});
