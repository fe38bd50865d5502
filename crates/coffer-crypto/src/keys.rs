//! The backup key `K` and the working keys derived from it.

use std::fmt;

use ring::{hkdf, hmac};
use zeroize::{Zeroize, Zeroizing};

use crate::aead::SealingKey;
use crate::{random_bytes, RandomError};

/// Length of `K` and of every derived symmetric key, in bytes.
pub const KEY_LEN: usize = 32;

/// HKDF `info` labels. Versioned: a future format that changes how a key is
/// used gets a new label, so no key ever serves two purposes or two versions.
pub mod labels {
    /// Root of the per-pack data keys.
    pub const DATA: &[u8] = b"coffer/v1/data";
    /// Root of the per-object metadata keys (index files, snapshots).
    pub const METADATA: &[u8] = b"coffer/v1/metadata";
    /// Key of the keyed BLAKE3 that names chunks and trees.
    pub const CHUNK_ID: &[u8] = b"coffer/v1/chunk-id";
    /// Key of the key-check value stored in the repository config.
    pub const KEY_CHECK: &[u8] = b"coffer/v1/key-check";
    /// Key of the MAC over the repository config.
    pub const CONFIG_MAC: &[u8] = b"coffer/v1/config-mac";
    /// Seed of the chunker's gear table (dedup tuning, not secrecy).
    pub const CHUNKER_SEED: &[u8] = b"coffer/v1/chunker-seed";
    /// Prefix of a per-pack key, followed by the 32-byte pack id.
    pub const PACK_KEY: &[u8] = b"coffer/v1/pack-key/";
    /// Prefix of a per-object metadata key, followed by kind byte and object id.
    pub const OBJECT_KEY: &[u8] = b"coffer/v1/object-key/";
    /// Message MACed into the key-check value, followed by the repository id.
    pub const KEY_CHECK_MSG: &[u8] = b"coffer/v1/key-check-message/";
}

/// `K`: the user's 256-bit backup key, from which every repository key derives.
///
/// Not `Copy`, zeroized on drop, redacted in `Debug`.
pub struct BackupKey(Zeroizing<[u8; KEY_LEN]>);

impl BackupKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(Zeroizing::new(random_bytes()?)))
    }

    /// Wraps existing key bytes (from a recovery key or the vault).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut b = bytes;
        let k = Self(Zeroizing::new(b));
        b.zeroize();
        k
    }

    /// The raw key bytes. Callers must not copy them into unzeroized memory.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupKey(<redacted>)")
    }
}

/// Key of the keyed BLAKE3 that names chunks and trees, so that storage cannot
/// confirm that a repository holds a file it already knows.
pub struct ChunkIdKey(Zeroizing<[u8; KEY_LEN]>);

impl ChunkIdKey {
    /// The id of `data`: keyed BLAKE3, 32 bytes.
    pub fn id(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }

    /// A streaming hasher under this key, for data that arrives in parts.
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.0)
    }
}

impl fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkIdKey(<redacted>)")
    }
}

/// Every working key of one repository, derived from `K` and the repository id.
///
/// The repository id is the HKDF salt, so the same `K` used for two
/// repositories yields unrelated keys and an object copied from one repository
/// into the other fails authentication.
pub struct RepoKeys {
    data_root: Zeroizing<[u8; KEY_LEN]>,
    meta_root: Zeroizing<[u8; KEY_LEN]>,
    chunk_id: ChunkIdKey,
    key_check: hmac::Key,
    config_mac: hmac::Key,
    chunker_seed: u64,
    repo_id: [u8; 16],
}

impl fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepoKeys(<redacted>)")
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    // ring only fails here if the output is longer than 255 hash blocks; every
    // caller asks for at most 32 bytes, a local invariant.
    #[allow(clippy::expect_used)]
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output of at most 32 bytes");
}

impl RepoKeys {
    /// Derives the repository's keys: `HKDF-SHA256(salt = repo_id, ikm = K)`,
    /// expanded once per label in [`labels`].
    pub fn derive(k: &BackupKey, repo_id: &[u8; 16]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, repo_id).extract(k.expose_secret());
        let sub = |label: &[u8]| {
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            expand(&prk, &[label], &mut out[..]);
            out
        };
        let key_check = sub(labels::KEY_CHECK);
        let config_mac = sub(labels::CONFIG_MAC);
        let mut seed = [0u8; 8];
        expand(&prk, &[labels::CHUNKER_SEED], &mut seed);
        Self {
            data_root: sub(labels::DATA),
            meta_root: sub(labels::METADATA),
            chunk_id: ChunkIdKey(sub(labels::CHUNK_ID)),
            key_check: hmac::Key::new(hmac::HMAC_SHA256, &key_check[..]),
            config_mac: hmac::Key::new(hmac::HMAC_SHA256, &config_mac[..]),
            chunker_seed: u64::from_le_bytes(seed),
            repo_id: *repo_id,
        }
    }

    /// The key-check value stored in the config: tells a wrong key apart from
    /// a corrupted repository.
    pub fn key_check(&self) -> [u8; 32] {
        let tag = hmac::sign(&self.key_check, &self.key_check_message());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of a stored key-check value.
    pub fn verify_key_check(&self, stored: &[u8]) -> bool {
        hmac::verify(&self.key_check, &self.key_check_message(), stored).is_ok()
    }

    fn key_check_message(&self) -> Vec<u8> {
        [labels::KEY_CHECK_MSG, &self.repo_id[..]].concat()
    }

    /// MAC over the serialized config.
    pub fn config_mac(&self, body: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.config_mac, body);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of the config MAC.
    pub fn verify_config_mac(&self, body: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.config_mac, body, mac).is_ok()
    }

    /// The keyed hash that names chunks and trees.
    pub fn chunk_id_key(&self) -> &ChunkIdKey {
        &self.chunk_id
    }

    /// Seed of the chunker's gear table.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// The key of one pack: `HKDF-Expand(data_root, "coffer/v1/pack-key/" || pack_id)`.
    /// Pack ids are 256 random bits, so each pack has its own key and a blob
    /// counter is a nonce unique by construction, across crashes and retries.
    pub fn pack_key(&self, pack_id: &[u8; 32]) -> SealingKey {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.data_root[..]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        expand(&prk, &[labels::PACK_KEY, pack_id], &mut key[..]);
        SealingKey::new(&key)
    }

    /// The key of one metadata object (index file, snapshot, session,
    /// condemnation record): derived from its kind and its random 256-bit id,
    /// so each object has its own key. Objects rewritten under the same id
    /// (sessions, condemnation records) must use a fresh nonce per write.
    pub fn object_key(&self, kind: u8, object_id: &[u8; 32]) -> SealingKey {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.meta_root[..]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        expand(
            &prk,
            &[labels::OBJECT_KEY, &[kind], object_id],
            &mut key[..],
        );
        SealingKey::new(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> BackupKey {
        BackupKey::from_bytes([b; 32])
    }

    #[test]
    fn debug_is_redacted() {
        let key = k(0x42);
        let keys = RepoKeys::derive(&key, &[0; 16]);
        for s in [
            format!("{key:?}"),
            format!("{keys:?}"),
            format!("{:?}", keys.chunk_id_key()),
        ] {
            assert!(s.contains("redacted"), "{s}");
            assert!(!s.contains("42"), "{s}");
        }
    }

    #[test]
    fn wrong_key_fails_key_check() {
        let good = RepoKeys::derive(&k(1), &[9; 16]);
        let bad = RepoKeys::derive(&k(2), &[9; 16]);
        assert!(good.verify_key_check(&good.key_check()));
        assert!(!bad.verify_key_check(&good.key_check()));
    }

    #[test]
    fn repo_id_separates_keys() {
        let a = RepoKeys::derive(&k(1), &[1; 16]);
        let b = RepoKeys::derive(&k(1), &[2; 16]);
        assert_ne!(a.chunk_id_key().id(b"x"), b.chunk_id_key().id(b"x"));
        assert_ne!(a.key_check(), b.key_check());
    }

    /// Known-answer vectors, computed independently (Python hmac/hashlib HKDF and
    /// the blake3 package): any change to a label or to the derivation breaks
    /// every existing repository, so it must show up here.
    #[test]
    fn derivation_known_answers() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([0u8; 32]), &[0u8; 16]);
        assert_eq!(
            hex::encode(keys.key_check()),
            "252f69ddda530cb0616d1386bcee6174f5a1a6079d6f46677716a9a7a4a666f3"
        );
        assert_eq!(
            hex::encode(keys.chunk_id_key().id(b"coffer")),
            "762f4fb3f2e9712b931b50a15afcd55d6814ed4473ca05f8f7f0cef851fc0096"
        );
        assert_eq!(keys.chunker_seed(), 2057442283796367360);
    }
}
