//! `vault_body`: a batch entry's body (ADR 0011, `coffer_vault_core::transition::Body`)
//! as a follower reads it from an untrusted host or peer.
//!
//! Never panics; what decodes is at most `MAX_BODY_LEN` bytes, has its
//! record ids strictly increasing, and re-encodes to exactly the input (one
//! encoding per body, so one `body_hash`); the buckets it touches are
//! ascending and distinct.
#![no_main]

use coffer_vault_core::transition::{Body, BODY_RECORD_LEN, MAX_BODY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = Body::decode(data) {
        assert!(data.len() <= MAX_BODY_LEN);
        assert_eq!(data.len(), 4 + body.len() * BODY_RECORD_LEN);
        assert_eq!(body.encode(), data, "body re-encoding differs");
        assert!(
            body.records().windows(2).all(|w| w[0].0 < w[1].0),
            "record ids not strictly increasing"
        );
        assert!(body.buckets().windows(2).all(|w| w[0] < w[1]));
        let rebuilt = Body::new(body.records().to_vec());
        assert_eq!(rebuilt.as_ref(), Ok(&body), "Body::new disagrees with decode");
    }
});
