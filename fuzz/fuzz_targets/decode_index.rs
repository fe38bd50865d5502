//! `decode_index`: the postcard decode of a `IndexFile` (the plaintext behind
//! authentication) never panics, and what decodes round-trips.
#![no_main]

use coffer_fuzz::decode_round_trip;
use coffer_repo::format::types::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| decode_round_trip::<IndexFile>(data));
