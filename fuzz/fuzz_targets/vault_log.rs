//! `vault_log`: the replicated realm's log formats (ADR 0011, with ADR 0012's
//! epochs), through `coffer_vault_core::log`: entries, acks, certificates,
//! group slots and NVRAM v2 as read from untrusted stores, peers and NVRAM
//! files.
//!
//! Never panics; whatever decodes re-encodes to exactly the input bytes (the
//! encodings are canonical, so a changed byte is refused or changes what a
//! MAC covers). Raw bytes never carry a valid MAC the fuzzer could not forge:
//! a decoded entry does not verify against the input's last 32 bytes, and a
//! decoded ack does not verify. Decoded values keep the epoch rules: an
//! entry's epoch names its leader (genesis: 0), an ack's entry epoch is at
//! most its promise, a slot's last epoch at most its promise.
#![no_main]

use std::sync::OnceLock;

use coffer_vault_core::log::{
    epoch_node, Ack, AckKey, Certificate, Entry, EntryKind, GroupSlot, LogKey, Mac, NvramV2,
    MAX_GROUPS, NVRAM_MAX_LEN,
};
use libfuzzer_sys::fuzz_target;

const REALM: [u8; 16] = [0x99; 16];

fn keys() -> &'static (LogKey, AckKey) {
    static K: OnceLock<(LogKey, AckKey)> = OnceLock::new();
    K.get_or_init(|| {
        (
            LogKey::from_bytes(&[0x77; 32]),
            AckKey::from_bytes(&[0x78; 32]),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (log_key, ack_key) = keys();

    if let Ok(e) = Entry::decode(data) {
        assert_eq!(e.encode(), data, "entry re-encoding differs");
        assert_eq!(e.validate(), Ok(()));
        match e.kind {
            EntryKind::Genesis { .. } => assert_eq!(e.epoch, 0),
            _ => assert!(e.epoch >> 8 >= 1 && epoch_node(e.epoch) == e.leader),
        }
        let mut tail = [0u8; 32];
        tail.copy_from_slice(&data[data.len() - 32..]);
        assert!(
            !e.verify_mac(log_key, &REALM, &Mac(tail)),
            "a forged entry MAC verified"
        );
        let m = e.mac(log_key, &REALM);
        assert!(e.verify_mac(log_key, &REALM, &m));
    }

    if let Ok(a) = Ack::decode(data) {
        assert_eq!(&a.encode()[..], data, "ack re-encoding differs");
        assert!(!a.verify(ack_key, &REALM), "a forged ack verified");
        assert!(a.entry_epoch <= a.epoch && a.index >= 1);
    }

    if let Ok(c) = Certificate::decode(data) {
        assert_eq!(c.encode(), data, "certificate re-encoding differs");
    }

    if let Ok(s) = GroupSlot::decode(data) {
        assert_eq!(&s.encode()[..], data, "slot re-encoding differs");
        assert!(s.last_epoch <= s.promised);
    }

    if let Ok(nv) = NvramV2::decode(data) {
        assert!(data.len() <= NVRAM_MAX_LEN);
        assert!(!nv.slots.is_empty() && nv.slots.len() <= MAX_GROUPS);
        assert_eq!(nv.encode(), data, "NVRAM re-encoding differs");
        assert!(nv.slots.iter().all(|s| s.last_epoch <= s.promised));
    }
});
