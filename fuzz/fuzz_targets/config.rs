//! `config`: the only object read before the key is known.
//!
//! Raw: `peek_config` never panics; `open_config` never accepts bytes not MACed
//! under the key. Sealed: whatever body `peek_config` accepts, re-encoded with
//! the right key-check and MAC, opens to the same body.
#![no_main]

use coffer_crypto::RepoKeys;
use coffer_fuzz::key;
use coffer_repo::format::config::{encode_config, open_config, peek_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let k = key();
    let peeked = peek_config(data);
    assert!(
        open_config(data, &k, "fuzz").is_err(),
        "forged config accepted"
    );
    if let Ok(mut body) = peeked {
        let keys = RepoKeys::derive(&k, &body.repo_id);
        body.key_check = keys.key_check();
        let sealed = encode_config(&keys, &body);
        let (opened, _) = open_config(&sealed, &k, "fuzz").expect("a sealed config opens");
        assert_eq!(opened, body);
    }
});
