//! `object`: index files, snapshots, condemnation records and locks
//! (`format::object::open`), then the postcard decode of their plaintext.
//!
//! Input: kind selector (1 byte), object id (32 bytes), the rest.
//! Raw: the rest, as stored bytes, never opens. Sealed: the rest, sealed as
//! plaintext, opens to itself and is decoded as the kind's structure.
//! Condemnation records and sessions are sealed under a fresh random nonce
//! (they are rewritten in place), so their sealed bytes differ between runs;
//! what is decoded does not.
#![no_main]

use coffer_fuzz::{decode_round_trip, id_from, keys, take};
use coffer_repo::format::types::{Condemned, IndexFile, Snapshot};
use coffer_repo::format::{object, Kind};
use coffer_repo::session::SessionInfo;
use libfuzzer_sys::fuzz_target;

const KINDS: [Kind; 4] = [Kind::Index, Kind::Snapshot, Kind::Condemned, Kind::Lock];

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = take(data, 1);
    let kind = KINDS[usize::from(sel.first().copied().unwrap_or(0)) % KINDS.len()];
    let (id, rest) = take(rest, 32);
    let id = id_from(id);
    let keys = keys();
    assert!(
        object::open(keys, kind, &id, rest, "fuzz").is_err(),
        "forged object accepted"
    );
    let sealed = object::seal(keys, kind, &id, rest.to_vec());
    let plain = object::open(keys, kind, &id, &sealed, "fuzz").expect("a sealed object opens");
    assert_eq!(plain, rest);
    match kind {
        Kind::Index => decode_round_trip::<IndexFile>(&plain),
        Kind::Snapshot => decode_round_trip::<Snapshot>(&plain),
        Kind::Condemned => decode_round_trip::<Condemned>(&plain),
        Kind::Lock => decode_round_trip::<SessionInfo>(&plain),
        _ => unreachable!("KINDS holds only the four kinds above"),
    }
});
