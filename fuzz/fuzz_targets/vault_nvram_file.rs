//! `vault_nvram_file`: the daemon's NVRAM file (`FilePlatform::nvram_read`:
//! two fixed slots, the valid one with the higher sequence wins), through
//! `coffer_vault::fuzzing`. The file sits on the host's disk: untrusted.
//!
//! - Raw: any bytes as the file never panic; what is read fits its slot,
//!   and a 2,048-byte slot only comes from a file of exactly two of them.
//! - Written: two slots as `nvram_write` writes them, from the fuzzer's
//!   sequences and contents, read back as the newer one (the second on a
//!   tie); one byte of the winning slot damaged (position and mask from the
//!   input), the other slot is read instead.
#![no_main]

use coffer_vault::fuzzing::{nvram_make_slot, nvram_newest_slot, NVRAM_BIG_SLOT, NVRAM_SLOT};
use libfuzzer_sys::fuzz_target;

/// Bytes of a slot that are not contents: magic, sequence, length, SHA-256.
const OVERHEAD: usize = 4 + 8 + 2 + 32;

fuzz_target!(|data: &[u8]| {
    // Raw.
    if let Some((_, contents, size)) = nvram_newest_slot(data) {
        assert!(
            size == NVRAM_SLOT || size == NVRAM_BIG_SLOT,
            "slot size {size}"
        );
        assert!(data.len() >= size);
        assert!(contents.len() <= size - OVERHEAD);
        if size == NVRAM_BIG_SLOT {
            assert_eq!(data.len(), 2 * NVRAM_BIG_SLOT);
        }
    }

    // Written.
    let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7, flags, mask, p0, p1, payload @ ..] =
        data
    else {
        return;
    };
    let seq_a = u64::from_be_bytes([*a0, *a1, *a2, *a3, *a4, *a5, *a6, *a7]);
    let seq_b = u64::from_be_bytes([*b0, *b1, *b2, *b3, *b4, *b5, *b6, *b7]);
    let size = if flags & 1 == 1 {
        NVRAM_BIG_SLOT
    } else {
        NVRAM_SLOT
    };
    let max = size - OVERHEAD;
    let half = payload.len() / 2;
    let a = &payload[..half.min(max)];
    let b = &payload[half..][..(payload.len() - half).min(max)];
    let mut file = nvram_make_slot(seq_a, a, size);
    assert_eq!(file.len(), size);
    file.extend(nvram_make_slot(seq_b, b, size));
    let (newer, older, newer_at) = if seq_b >= seq_a {
        ((seq_b, b), (seq_a, a), size)
    } else {
        ((seq_a, a), (seq_b, b), 0)
    };
    assert_eq!(
        nvram_newest_slot(&file),
        Some((newer.0, newer.1.to_vec(), size)),
        "the newer slot is not the one read"
    );
    if *mask != 0 {
        // Every byte of a slot is covered by its checksum (or is it).
        let pos = usize::from(u16::from_be_bytes([*p0, *p1])) % size;
        file[newer_at + pos] ^= mask;
        assert_eq!(
            nvram_newest_slot(&file),
            Some((older.0, older.1.to_vec(), size)),
            "a damaged slot was read"
        );
    }
});
