//! Coffer's key types, key derivation and authenticated encryption.
//!
//! Nothing here does I/O. Every secret is a newtype that is not `Copy`, zeroizes
//! on drop and prints as `<redacted>`; every working key is derived from the
//! user's backup key `K` with HKDF-SHA256 under a distinct, versioned label.
//!
//! ```
//! use coffer_crypto::{BackupKey, RecoveryKey, RepoKeys};
//!
//! let k = BackupKey::generate().unwrap();
//! let shown = RecoveryKey::from_backup_key(&k);           // 16 groups of 4 hex digits
//! let typed = shown.expose_secret().to_uppercase().replace(' ', "-");
//! let back = RecoveryKey::parse(&typed).unwrap();          // case, spaces, dashes ignored
//! assert_eq!(back.expose_secret(), k.expose_secret());
//!
//! let keys = RepoKeys::derive(&k, &[7u8; 16]);
//! let check = keys.key_check();
//! assert!(keys.verify_key_check(&check));
//! ```
#![deny(missing_docs)]

mod aead;
mod keys;
mod recovery;

pub use aead::{AuthError, SealingKey, NONCE_LEN, TAG_LEN};
pub use keys::{labels, BackupKey, ChunkIdKey, RepoKeys, KEY_LEN};
pub use recovery::{ParseRecoveryKeyError, RecoveryKey};

/// The operating system's CSPRNG failed: nothing secret can be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// Fills an array with bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| RandomError(e.to_string()))?;
    Ok(out)
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
