//! `blob`: `format::pack::open_blob`: authenticate, decompress, check the id.
//!
//! Input: pack id (32), blob id (32), index (4), raw length (4), kind and
//! compression (1), the rest. Raw: the rest as ciphertext never opens.
//! Sealed: the rest sealed at that location is decompressed and checked
//! without panicking; stored uncompressed under its true id, it opens to itself.
#![no_main]

use coffer_fuzz::{id_from, keys, seal_blob, take};
use coffer_repo::format::pack::open_blob;
use coffer_repo::format::types::{BlobKind, BlobLocation, Compression};
use libfuzzer_sys::fuzz_target;

fn u32_of(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    u32::from_le_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let (pack, rest) = take(data, 32);
    let (blob, rest) = take(rest, 32);
    let (index, rest) = take(rest, 4);
    let (raw, rest) = take(rest, 4);
    let (flags, rest) = take(rest, 1);
    let flags = flags.first().copied().unwrap_or(0);
    let pack = id_from(pack);
    let mut loc = BlobLocation {
        id: id_from(blob),
        kind: if flags & 1 == 0 {
            BlobKind::Data
        } else {
            BlobKind::Tree
        },
        index: u32_of(index),
        offset: 6,
        length: rest.len() as u32,
        raw_length: u32_of(raw),
        compression: if flags & 2 == 0 {
            Compression::None
        } else {
            Compression::Zstd
        },
    };
    assert!(
        open_blob(keys, &pack, &loc, rest.to_vec()).is_err(),
        "forged blob accepted"
    );
    let sealed = seal_blob(keys, &pack, &loc, rest);
    let _ = open_blob(keys, &pack, &loc, sealed);
    if flags & 4 != 0 {
        loc.id.0 = keys.chunk_id_key().id(rest);
        loc.raw_length = rest.len() as u32;
        loc.compression = Compression::None;
        let sealed = seal_blob(keys, &pack, &loc, rest);
        let plain = open_blob(keys, &pack, &loc, sealed).expect("a true blob opens");
        assert_eq!(plain, rest);
    }
});
