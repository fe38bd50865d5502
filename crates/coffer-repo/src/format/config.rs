//! The repository config: the only object readable without the key.
//!
//! `bytes = header(Config) || body || SHA-256(header || body) || HMAC-SHA256(config_mac_key, header || body)`
//! with `body = postcard(ConfigBody)`. The body carries the repository id (the
//! HKDF salt) and a key-check value, so a wrong key is told apart from a
//! damaged repository; the unkeyed checksum, checked first, tells accidental
//! damage to those two fields apart from a wrong key.

use serde::{Deserialize, Serialize};

use coffer_crypto::{BackupKey, RepoKeys};

use super::types::{decode, encode};
use super::{check_header, header, Kind};
use crate::{RepoError, Result};

/// Name of the config object.
pub const CONFIG_NAME: &str = "config";

/// How `K` is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyMode {
    /// The user keeps `K` as a 64-digit recovery key.
    RecoveryKey,
    /// `K` is escrowed in a key vault behind a password (descriptor, JSON).
    Vault {
        /// The realm descriptor the client pins.
        realm: String,
    },
}

/// Chunker parameters, fixed at `init` (changing them breaks dedup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Minimum chunk size.
    pub min: u32,
    /// Average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

/// The config's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigBody {
    /// Random repository id, the HKDF salt of every key.
    pub repo_id: [u8; 16],
    /// Creation time, Unix nanoseconds.
    pub created_ns: i64,
    /// How `K` is held.
    pub key_mode: KeyMode,
    /// Chunking of files and media.
    pub file_chunker: ChunkerParams,
    /// Chunking of SQLite database images (smaller: pages change in place).
    pub db_chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// zstd level.
    pub zstd_level: i32,
    /// HMAC of a fixed label under a key derived from `K`.
    pub key_check: [u8; 32],
}

/// Serializes and MACs the config.
pub fn encode_config(keys: &RepoKeys, body: &ConfigBody) -> Vec<u8> {
    let mut out = header(Kind::Config).to_vec();
    out.extend_from_slice(&encode(body));
    let mac = keys.config_mac(&out);
    let sum = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    out.extend_from_slice(&mac);
    out
}

/// Splits a config into (header || body, checksum, mac) after checking the checksum.
fn split(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    check_header(bytes, Kind::Config, CONFIG_NAME)?;
    if bytes.len() < 6 + 64 {
        return Err(RepoError::integrity(CONFIG_NAME, "truncated"));
    }
    let (rest, mac) = bytes.split_at(bytes.len() - 32);
    let (signed, sum) = rest.split_at(rest.len() - 32);
    let expect = ring::digest::digest(&ring::digest::SHA256, signed);
    if expect.as_ref() != sum {
        return Err(RepoError::integrity(
            CONFIG_NAME,
            "checksum mismatch: the config is damaged or truncated",
        ));
    }
    Ok((signed, mac))
}

/// Reads the config's body without the key (to learn the repository id).
pub fn peek_config(bytes: &[u8]) -> Result<ConfigBody> {
    let (signed, _) = split(bytes)?;
    decode(&signed[6..], CONFIG_NAME)
}

/// Opens the config with `K`: wrong key → [`RepoError::WrongKey`], altered
/// config → [`RepoError::Integrity`].
pub fn open_config(bytes: &[u8], k: &BackupKey, location: &str) -> Result<(ConfigBody, RepoKeys)> {
    let body = peek_config(bytes)?;
    let keys = RepoKeys::derive(k, &body.repo_id);
    if !keys.verify_key_check(&body.key_check) {
        return Err(RepoError::WrongKey {
            location: location.to_string(),
        });
    }
    let (signed, mac) = split(bytes)?;
    if !keys.verify_config_mac(signed, mac) {
        return Err(RepoError::integrity(
            CONFIG_NAME,
            "the config's MAC does not match: it was altered",
        ));
    }
    Ok((body, keys))
}
