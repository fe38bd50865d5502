//! A user's record: the OPAQUE password file, the wrapped key and the guess
//! counter. Fixed size plaintext, so every sealed record has the same length.
//!
//! ```text
//! version u8 = 1 | state u8 (1 live, 2 erased) | max_attempts u8 | attempts_left u8
//!   | password_file[192] | wrapped_len u8 | wrapped_key[96, zero padded]
//! ```

use coffer_vault_proto::messages::MAX_WRAPPED_KEY;
use coffer_vault_proto::suite::sizes::REGISTRATION_UPLOAD;

use crate::CoreError;

/// Plaintext length of every record.
pub const RECORD_LEN: usize = 4 + REGISTRATION_UPLOAD + 1 + MAX_WRAPPED_KEY;
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
        password_file: Box<[u8; REGISTRATION_UPLOAD]>,
        wrapped_key: Vec<u8>,
    },
    /// Erased: answers exactly as an unknown user.
    Erased,
}

impl Record {
    pub(crate) fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(RECORD_LEN));
        out.push(1);
        match self {
            Record::Live {
                max_attempts,
                attempts_left,
                password_file,
                wrapped_key,
            } => {
                out.push(1);
                out.push(*max_attempts);
                out.push(*attempts_left);
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
        if bytes[0] != 1 {
            return Err(bad("unknown record version"));
        }
        match bytes[1] {
            1 => {
                let mut password_file = Box::new([0u8; REGISTRATION_UPLOAD]);
                password_file.copy_from_slice(&bytes[4..4 + REGISTRATION_UPLOAD]);
                let len = usize::from(bytes[4 + REGISTRATION_UPLOAD]);
                if len > MAX_WRAPPED_KEY {
                    return Err(bad("wrapped key length"));
                }
                let start = 5 + REGISTRATION_UPLOAD;
                Ok(Record::Live {
                    max_attempts: bytes[2],
                    attempts_left: bytes[3],
                    password_file,
                    wrapped_key: bytes[start..start + len].to_vec(),
                })
            }
            2 => Ok(Record::Erased),
            _ => Err(bad("unknown record state")),
        }
    }
}

/// Fuzzing hook (feature `testing`): decodes a record plaintext and encodes
/// the result again (re-exported as `anchor::fuzzing::fuzz_reencode_record`).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn fuzz_reencode_record(bytes: &[u8]) -> Result<Vec<u8>, CoreError> {
    Ok(Record::decode(bytes)?.encode().to_vec())
}
