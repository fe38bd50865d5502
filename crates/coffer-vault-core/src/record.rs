//! A user's record: the OPAQUE password file, the wrapped key and the guess
//! counter. Fixed size plaintext, so every sealed record has the same length.
//!
//! ```text
//! version u8 = 2 | state u8 (1 live, 2 erased) | max_attempts u8 | attempts_left u8
//!   | salt[16] | password_file[192] | wrapped_len u8 | wrapped_key[96, zero padded]
//! ```
//!
//! `salt` is drawn fresh for every registration and is part of the OPAQUE
//! credential identifier ([`credential_identifier`]), so each registration
//! has an OPRF key of its own. Without it, a `RegisterStart` (which spends
//! no attempt) would evaluate the OPRF under the key of the live record's
//! logins: an oracle for offline guessing once one KE2 is known. Version 1
//! (no salt) had that flaw and is refused.

use coffer_vault_proto::messages::MAX_WRAPPED_KEY;
use coffer_vault_proto::suite::sizes::REGISTRATION_UPLOAD;

use crate::CoreError;

/// Plaintext length of every record.
pub const RECORD_LEN: usize = 4 + SALT_LEN + REGISTRATION_UPLOAD + 1 + MAX_WRAPPED_KEY;
/// Length of a registration's salt.
pub const SALT_LEN: usize = 16;
/// Record format version.
const VERSION: u8 = 2;
/// Sealed length of every record (XChaCha20-Poly1305: nonce + tag).
pub const SEALED_RECORD_LEN: usize = 24 + RECORD_LEN + 16;

/// A decoded record. Neither field is a plaintext secret: the password file
/// is OPAQUE's server record and the key is wrapped under the user's export
/// key; at rest both are sealed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A registration with its counter.
    Live {
        max_attempts: u8,
        attempts_left: u8,
        /// This registration's salt (see the module docs).
        salt: [u8; SALT_LEN],
        password_file: Box<[u8; REGISTRATION_UPLOAD]>,
        wrapped_key: Vec<u8>,
    },
    /// Erased: answers exactly as an unknown user.
    Erased,
}

impl Record {
    pub(crate) fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(RECORD_LEN));
        out.push(VERSION);
        match self {
            Record::Live {
                max_attempts,
                attempts_left,
                salt,
                password_file,
                wrapped_key,
            } => {
                out.push(1);
                out.push(*max_attempts);
                out.push(*attempts_left);
                out.extend_from_slice(salt);
                out.extend_from_slice(&password_file[..]);
                let len = wrapped_key.len().min(MAX_WRAPPED_KEY);
                out.push(len as u8);
                out.extend_from_slice(&wrapped_key[..len]);
            }
            Record::Erased => out.push(2),
        }
        out.resize(RECORD_LEN, 0);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        let bad = |m: &str| CoreError::Integrity(format!("record does not decode: {m}"));
        if bytes.len() != RECORD_LEN {
            return Err(bad("wrong length"));
        }
        if bytes[0] != VERSION {
            return Err(bad("unknown record version"));
        }
        match bytes[1] {
            1 => {
                let mut salt = [0u8; SALT_LEN];
                salt.copy_from_slice(&bytes[4..4 + SALT_LEN]);
                let file_at = 4 + SALT_LEN;
                let mut password_file = Box::new([0u8; REGISTRATION_UPLOAD]);
                password_file.copy_from_slice(&bytes[file_at..file_at + REGISTRATION_UPLOAD]);
                let len = usize::from(bytes[file_at + REGISTRATION_UPLOAD]);
                if len > MAX_WRAPPED_KEY {
                    return Err(bad("wrapped key length"));
                }
                let start = file_at + REGISTRATION_UPLOAD + 1;
                Ok(Record::Live {
                    max_attempts: bytes[2],
                    attempts_left: bytes[3],
                    salt,
                    password_file,
                    wrapped_key: bytes[start..start + len].to_vec(),
                })
            }
            2 => Ok(Record::Erased),
            _ => Err(bad("unknown record state")),
        }
    }
}

/// The OPAQUE credential identifier of a registration: the record id and
/// the registration's salt. The OPRF key is derived from it (RFC 9807 §4.3
/// `DeriveKeyPair(seed, credential_identifier)`), so a new registration of
/// the same record never evaluates under the key of the one it replaces.
pub(crate) fn credential_identifier(record: &crate::RecordId, salt: &[u8; SALT_LEN]) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[..32].copy_from_slice(record);
    id[32..].copy_from_slice(salt);
    id
}

/// Fuzzing hook (feature `testing`): decodes a record plaintext and encodes
/// the result again (re-exported as `anchor::fuzzing::fuzz_reencode_record`).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn fuzz_reencode_record(bytes: &[u8]) -> Result<Vec<u8>, CoreError> {
    Ok(Record::decode(bytes)?.encode().to_vec())
}
