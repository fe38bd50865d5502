//! `vault_core`: the trusted core (`Core::prepare`/`commit` through
//! `MemRealm::batch`) fed frames as the untrusted host relays them.
//!
//! One realm per process (`coffer_fuzz::vault::VaultWorld`): alice (3
//! attempts; an open login session, KE1 answered, is part of the pristine
//! state, so 2 left), bob (10 attempts, same Merkle bucket as alice), carol
//! and dave (never registered). The world is restored after every input that
//! changed it, so every input runs against the same state.
//!
//! Input: up to 8 frames, each `ctl u8 | len u16 (BE) | payload[len]`,
//! relayed in batches of up to 4 (a batch also ends before a data frame on a
//! channel whose open frame still waits for its reply).
//!
//! ```text
//! ctl bits 0-1  how:  0 raw      payload is the frame
//!                     1 tamper   payload = pos u16 | xor bytes, applied to a valid
//!                                captured frame (open: KE1; data: a KE3 of the
//!                                pristine session)
//!                     2 sealed   payload = pos u16 | xor bytes, applied to a valid
//!                                request plaintext (template, bits 5-7), then sealed
//!                     3 sealed   payload, zero-padded or cut to 448 bytes, is the
//!                                request plaintext, then sealed
//!     bit  2        open (0) or data (1) frame
//!     bits 3-4      open: the user (alice, bob, carol, dave);
//!                   data: the channel (0 = the pristine session, then the channels
//!                   opened by this input, modulo their number)
//!     bits 5-7      template (mod 5): RegisterStart, RegisterFinish, LoginStart,
//!                   LoginFinish (wrong KE3), Delete
//! ```
//!
//! Must hold: no panic; a frame the fuzzer wrote never authenticates; a
//! well-sealed open frame is always answered; every reply the harness can
//! open decodes; a batch of refused frames changes nothing (anchor, counters,
//! sessions, store); the anchor generation grows by at most one per batch;
//! never a `LoginOk` (the fuzzer cannot make a valid KE3) nor a `Deleted`;
//! every KE1 spends exactly one attempt and only a registration restores
//! them; a pending login finds its record; no integrity failure against the
//! honest in-memory store; the core never starts refusing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut world = coffer_fuzz::vault::world().lock().expect("world");
    world.run(data);
});
