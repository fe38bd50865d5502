//! `vault_realm`: `RealmDescriptor::from_json`, the parser of `realm.json`
//! (fetched from the vault or handed to a client; what it accepts is pinned).
//!
//! Never panics; whatever it accepts has a known format tag, a non-zero
//! guess limit, at least the minimum Argon2id memory and 1 to 16 nodes, and
//! survives `to_json` → `from_json` unchanged.
#![no_main]

use coffer_vault_proto::realm::{MAX_NODES, MIN_KSF_MEMORY_KIB, REALM_FORMAT, REALM_FORMAT_V2};
use coffer_vault_proto::RealmDescriptor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = RealmDescriptor::from_json(text) {
        assert!(d.format == REALM_FORMAT || d.format == REALM_FORMAT_V2);
        assert!((1..=MAX_NODES).contains(&d.nodes().len()));
        assert!(d.max_attempts_limit > 0);
        assert!(d.ksf.memory_kib >= MIN_KSF_MEMORY_KIB);
        let again = RealmDescriptor::from_json(&d.to_json()).expect("to_json output parses");
        assert_eq!(again, d);
        assert_eq!(d.check_same_realm(&again), Ok(()));
    }
});
