//! `recovery_key`: `RecoveryKey::parse` of typed (or pasted) text.
//!
//! Never panics; accepts only 64 hex digits once whitespace and dashes are
//! dropped; what it accepts, formatted again, parses to the same key.
#![no_main]

use coffer_crypto::RecoveryKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    match RecoveryKey::parse(&text) {
        Ok(k) => {
            assert_eq!(digits.len(), 64);
            assert!(digits.chars().all(|c| c.is_ascii_hexdigit()));
            let shown = RecoveryKey::from_backup_key(&k);
            let again = RecoveryKey::parse(shown.expose_secret()).expect("formatted key parses");
            assert_eq!(again.expose_secret(), k.expose_secret());
        }
        Err(_) => assert!(digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit())),
    }
});
