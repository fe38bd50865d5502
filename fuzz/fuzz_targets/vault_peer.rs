//! `vault_peer`: the replicated realm's host-to-host messages and replies
//! (`coffer_vault_core::peer`, ADR 0013) and a stored log item, as a node
//! reads them from an untrusted peer or store.
//!
//! Never panics; whatever decodes re-encodes to bytes that decode to the
//! same value (the encoding is stable), within the documented limits.
#![no_main]

use coffer_vault_core::peer::{LogItem, PeerMsg, PeerReply, MAX_ITEMS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((group, m)) = PeerMsg::decode(data) {
        if let PeerMsg::Append { items, .. } = &m {
            assert!(items.len() <= MAX_ITEMS);
            assert!(items
                .windows(2)
                .all(|w| w[0].entry.index + 1 == w[1].entry.index));
        }
        let again = m.encode(group);
        let (g2, m2) = PeerMsg::decode(&again).expect("a re-encoded message decodes");
        assert_eq!(g2, group);
        assert_eq!(m2.encode(g2), again, "peer message encoding not stable");
    }
    if let Ok(r) = PeerReply::decode(data) {
        assert_eq!(r.encode(), data, "peer reply re-encoding differs");
    }
    if let Some(item) = LogItem::decode(data) {
        assert_eq!(item.encode(), data, "log item re-encoding differs");
    }
});
