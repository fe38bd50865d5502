//! AES-256-GCM (ring) with explicit, caller-chosen nonces.
//!
//! Packs and objects written once never draw nonces at random: their key is
//! used for exactly one pack or one object (see
//! [`crate::RepoKeys::pack_key`]), and within a pack the nonce is the blob's
//! position, so uniqueness holds by construction. The two kinds of metadata
//! object rewritten in place under one id (backup sessions, condemnation
//! records) draw a fresh random nonce per write and store it
//! (`coffer-repo`'s `format::object`, `docs/format.md` §7).

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Nonce length of AES-256-GCM.
pub const NONCE_LEN: usize = 12;
/// Tag length of AES-256-GCM.
pub const TAG_LEN: usize = 16;

/// Authentication failed: wrong key, or the bytes or their context were changed.
/// Deliberately carries no detail, so it cannot become an oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthError;

/// An AES-256-GCM key for one pack or one object.
pub struct SealingKey(LessSafeKey);

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        // A 32-byte key is always a valid AES-256 key.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key");
        Self(LessSafeKey::new(unbound))
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        // ring fails only for inputs over 2^36 bytes; blobs are at most a few MiB.
        #[allow(clippy::expect_used)]
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .expect("AES-GCM input below 64 GiB");
    }

    /// Decrypts `buf` (ciphertext then tag) in place; returns the plaintext.
    pub fn open<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], AuthError> {
        self.0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map_err(|_| AuthError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackupKey, RepoKeys};
    use proptest::prelude::*;

    fn key() -> SealingKey {
        RepoKeys::derive(&BackupKey::from_bytes([3; 32]), &[4; 16]).pack_key(&[5; 32])
    }

    #[test]
    fn round_trip_and_context_binding() {
        let k = key();
        let mut buf = b"hello".to_vec();
        k.seal([0; 12], b"aad", &mut buf);
        assert_eq!(buf.len(), 5 + TAG_LEN);
        let mut other = buf.clone();
        assert_eq!(k.open([0; 12], b"aad", &mut buf).unwrap(), b"hello");
        assert!(k.open([1; 12], b"aad", &mut other.clone()).is_err());
        assert!(k.open([0; 12], b"aaD", &mut other).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic and never decrypt.
        #[test]
        fn arbitrary_bytes_never_open(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), n in any::<[u8; 12]>()) {
            prop_assert!(key().open(n, b"", &mut bytes).is_err());
        }

        /// Any single bit flip is detected.
        #[test]
        fn bit_flips_detected(data in proptest::collection::vec(any::<u8>(), 0..256), bit in any::<usize>()) {
            let k = key();
            let mut buf = data.clone();
            k.seal([7; 12], b"ctx", &mut buf);
            let i = bit % (buf.len() * 8);
            buf[i / 8] ^= 1 << (i % 8);
            prop_assert!(k.open([7; 12], b"ctx", &mut buf).is_err());
        }
    }
}
