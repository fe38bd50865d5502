//! `pack_trailer`: `format::pack::read_trailer`, the list of a pack's blobs.
//!
//! Input: pack id (32 bytes), blob-area length (1 byte), blob area, trailer
//! plaintext. Raw: the whole input as a pack never yields a trailer. Sealed:
//! header || blob area || sealed trailer plaintext || length is parsed without
//! panicking, and every location it returns lies inside the pack.
#![no_main]

use coffer_fuzz::{id_from, keys, seal_trailer, take};
use coffer_repo::format::pack::read_trailer;
use coffer_repo::format::{header, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let (id, rest) = take(data, 32);
    let id = id_from(id);
    assert!(
        read_trailer(keys, &id, data).is_err(),
        "forged trailer accepted"
    );
    assert!(
        read_trailer(keys, &id, rest).is_err(),
        "forged trailer accepted"
    );
    let (n, rest) = take(rest, 1);
    let (area, plaintext) = take(rest, usize::from(n.first().copied().unwrap_or(0)));
    let body = [&header(Kind::Pack)[..], area].concat();
    let pack = seal_trailer(keys, &id, body, plaintext);
    if let Ok(locs) = read_trailer(keys, &id, &pack) {
        for (i, l) in locs.iter().enumerate() {
            assert_eq!(l.index as usize, i);
            assert!(l.offset >= 6);
            assert!(u64::from(l.offset) + u64::from(l.length) <= 6 + area.len() as u64);
        }
    }
});
