//! `vault_request`: `Request::decode`, the core's parser of every request
//! plaintext a client sends through the channel.
//!
//! Never panics; accepts only 448-byte messages; the encoding is canonical:
//! what decodes re-encodes (with the decoded clock) to the same bytes, and
//! decodes again to the same request.
#![no_main]

use coffer_vault_proto::messages::MESSAGE_LEN;
use coffer_vault_proto::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((req, time)) = Request::decode(data) {
        assert_eq!(data.len(), MESSAGE_LEN);
        let again = req.encode(time);
        assert_eq!(again.len(), MESSAGE_LEN);
        assert_eq!(
            Request::decode(&again),
            Ok((req.clone(), time)),
            "decode(encode(x)) != x"
        );
        assert!(
            again == data,
            "{req:?}: encode(decode(b)) != b (non-canonical encoding)"
        );
    }
});
