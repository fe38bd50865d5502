//! `vault_realm`: `RealmDescriptor::from_json`, the parser of `realm.json`
//! (fetched from the vault or handed to a client; what it accepts is pinned).
//!
//! Never panics; whatever it accepts has the right format tag, a non-zero
//! guess limit and at least the minimum Argon2id memory, and survives
//! `to_json` → `from_json` unchanged.
#![no_main]

use coffer_vault_proto::realm::{MIN_KSF_MEMORY_KIB, REALM_FORMAT};
use coffer_vault_proto::RealmDescriptor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = RealmDescriptor::from_json(text) {
        assert_eq!(d.format, REALM_FORMAT);
        assert!(d.max_attempts_limit > 0);
        assert!(d.ksf.memory_kib >= MIN_KSF_MEMORY_KIB);
        let again = RealmDescriptor::from_json(&d.to_json()).expect("to_json output parses");
        assert_eq!(again, d);
        assert_eq!(d.check_same_realm(&again), Ok(()));
    }
});
