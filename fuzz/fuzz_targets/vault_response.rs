//! `vault_response`: `Response::decode`, the client's parser of every reply
//! plaintext the vault sends.
//!
//! Never panics; accepts only 448-byte messages; the encoding is canonical:
//! what decodes re-encodes to the same bytes and decodes to the same response.
#![no_main]

use coffer_vault_proto::messages::MESSAGE_LEN;
use coffer_vault_proto::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(data.len(), MESSAGE_LEN);
        let again = resp.encode();
        assert_eq!(again.len(), MESSAGE_LEN);
        assert_eq!(
            Response::decode(&again),
            Ok(resp.clone()),
            "decode(encode(x)) != x"
        );
        assert!(
            again == data,
            "{resp:?}: encode(decode(b)) != b (non-canonical encoding)"
        );
    }
});
