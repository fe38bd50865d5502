//! Hooks for the fuzz targets (`fuzz/fuzz_targets/vault_nvram_file.rs`,
//! `vault_token.rs`): the daemon's parsers of untrusted bytes, without the
//! filesystem. Not a stable API.

use std::path::PathBuf;
use std::sync::RwLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::tenants::{Claims, TenantKey, Tenants};

/// Slot size of a single-node vault's NVRAM file (two slots a file).
pub const NVRAM_SLOT: usize = crate::platform::SLOT;
/// Slot size of a replicated member's NVRAM file.
pub const NVRAM_BIG_SLOT: usize = crate::platform::BIG_SLOT;

/// What `FilePlatform::nvram_read` makes of an NVRAM file's bytes: the valid
/// slot with the higher sequence, as (sequence, contents, slot size).
pub fn nvram_newest_slot(file: &[u8]) -> Option<(u64, Vec<u8>, usize)> {
    crate::platform::newest_slot(file)
}

/// One slot as `FilePlatform::nvram_write` writes it (`data` must fit:
/// at most `size - 46` bytes).
pub fn nvram_make_slot(seq: u64, data: &[u8], size: usize) -> Vec<u8> {
    crate::platform::make_slot(seq, data, size)
}

/// Tenants with these keys, as if read from a tenants file that then never
/// changes (so a refused token costs no reload).
pub fn tenants(keys: Vec<(String, TenantKey)>) -> anyhow::Result<Tenants> {
    let mut map = std::collections::HashMap::new();
    for (name, key) in keys {
        map.insert(name, crate::tenants::decoding(&key)?);
    }
    Ok(Tenants {
        // Never a file (a path under /dev/null cannot exist): its stamp is
        // always `None`, as recorded.
        path: PathBuf::from("/dev/null/tenants.json"),
        state: RwLock::new((None, map)),
    })
}

/// An HS256 token over `claims`, with `kid` in its header when given.
pub fn hs256_token(secret: &[u8], kid: Option<&str>, claims: &Claims) -> Option<String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).ok()
}

/// A tenant key verifying HS256 tokens under `secret`.
pub fn hs256_key(secret: &[u8]) -> TenantKey {
    TenantKey::HS256 {
        secret: zeroize::Zeroizing::new(hex::encode(secret)),
    }
}

/// A tenant key verifying Ed25519 tokens under `public_key`.
pub fn ed25519_key(public_key: &[u8; 32]) -> TenantKey {
    TenantKey::EdDSA {
        public_key: hex::encode(public_key),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The hooks behave as the daemon does (the fuzz targets rely on it).
    #[test]
    fn hooks_match_the_daemon() {
        let mut file = nvram_make_slot(7, b"seven", NVRAM_SLOT);
        file.extend(nvram_make_slot(8, b"eight", NVRAM_SLOT));
        assert_eq!(
            nvram_newest_slot(&file),
            Some((8, b"eight".to_vec(), NVRAM_SLOT))
        );
        // A torn second slot: the first is read; no whole slot: nothing.
        assert_eq!(
            nvram_newest_slot(&file[..200]),
            Some((7, b"seven".to_vec(), NVRAM_SLOT))
        );
        assert_eq!(nvram_newest_slot(&file[..100]), None);

        let t = tenants(vec![
            ("app".into(), hs256_key(&[5; 32])),
            ("ed".into(), ed25519_key(&[7; 32])),
        ])
        .unwrap();
        let claims = |iss: &str, sub: &str| Claims {
            iss: iss.into(),
            sub: sub.into(),
            exp: 4_000_000_000,
        };
        let ok = hs256_token(&[5; 32], Some("app"), &claims("app", "u")).unwrap();
        assert_eq!(t.verify(&ok).unwrap(), ("app".into(), "u".into()));
        for bad in [
            hs256_token(&[6; 32], Some("app"), &claims("app", "u")),
            hs256_token(&[5; 32], None, &claims("app", "u")),
            hs256_token(&[5; 32], Some("app"), &claims("ed", "u")),
            hs256_token(&[5; 32], Some("app"), &claims("app", "")),
            hs256_token(&[5; 32], Some("ed"), &claims("ed", "u")),
        ] {
            assert!(t.verify(&bad.unwrap()).is_err());
        }
    }
}
