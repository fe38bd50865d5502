//! The realm descriptor (`realm.json`): what a client pins.

use serde::{Deserialize, Serialize};

/// Format tag of the descriptor.
pub const REALM_FORMAT: &str = "coffer-realm/1";

/// Lowest Argon2id memory a client accepts, whatever a descriptor says (KiB).
pub const MIN_KSF_MEMORY_KIB: u32 = 19 * 1024;

/// Argon2id parameters of the OPAQUE key-stretching function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsfParams {
    /// Always "argon2id".
    pub algorithm: Argon2idTag,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// The only KSF algorithm: a unit type that (de)serializes as "argon2id".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Argon2idTag;

impl Serialize for Argon2idTag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("argon2id")
    }
}

impl<'de> Deserialize<'de> for Argon2idTag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "argon2id" {
            Ok(Argon2idTag)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported key-stretching function {s:?} (only \"argon2id\")"
            )))
        }
    }
}

impl Default for KsfParams {
    /// Argon2id m = 64 MiB, t = 3, p = 1: about 0.13 s on a laptop-class core.
    fn default() -> Self {
        Self {
            algorithm: Argon2idTag,
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KsfParams {
    /// The Argon2id instance, after checking the parameters are sane.
    pub fn argon2(&self) -> Result<argon2::Argon2<'static>, RealmError> {
        if self.memory_kib < MIN_KSF_MEMORY_KIB {
            return Err(RealmError::WeakKsf(format!(
                "Argon2id memory {} KiB is below the client's minimum of {} KiB",
                self.memory_kib, MIN_KSF_MEMORY_KIB
            )));
        }
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| RealmError::WeakKsf(format!("invalid Argon2id parameters: {e}")))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }
}

/// `realm.json`: identifies a realm and everything a client pins about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealmDescriptor {
    /// Always [`REALM_FORMAT`].
    pub format: String,
    /// Random realm id, hex.
    #[serde(with = "hex16")]
    pub realm_id: [u8; 16],
    /// The trusted core's channel public key (X25519), hex.
    #[serde(with = "hex32")]
    pub public_key: [u8; 32],
    /// The OPAQUE key-stretching function.
    pub ksf: KsfParams,
    /// Highest guess limit a registration may ask for.
    pub max_attempts_limit: u8,
    /// Where the vault's HTTP API listens, e.g. `http://127.0.0.1:8420`.
    pub address: String,
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RealmError {
    /// Not valid JSON or missing fields.
    #[error("invalid realm descriptor: {0}")]
    Invalid(String),
    /// KSF too weak to accept.
    #[error("realm descriptor refused: {0}")]
    WeakKsf(String),
    /// A different realm than the one pinned.
    #[error("realm mismatch: {0}")]
    Mismatch(String),
}

impl RealmDescriptor {
    /// Parses and checks a descriptor.
    pub fn from_json(text: &str) -> Result<Self, RealmError> {
        let d: Self = serde_json::from_str(text).map_err(|e| RealmError::Invalid(e.to_string()))?;
        if d.format != REALM_FORMAT {
            return Err(RealmError::Invalid(format!(
                "format {:?}, expected {REALM_FORMAT:?}",
                d.format
            )));
        }
        if d.max_attempts_limit == 0 {
            return Err(RealmError::Invalid("max_attempts_limit is 0".into()));
        }
        d.ksf.argon2()?;
        Ok(d)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks `other` names the same realm with the same pinned key and KSF
    /// (the address may differ: realms move).
    pub fn check_same_realm(&self, other: &Self) -> Result<(), RealmError> {
        if self.realm_id != other.realm_id {
            return Err(RealmError::Mismatch(format!(
                "the repository's key is in realm {}, not {}",
                hex::encode(self.realm_id),
                hex::encode(other.realm_id)
            )));
        }
        if self.public_key != other.public_key || self.ksf != other.ksf {
            return Err(RealmError::Mismatch(format!(
                "realm {} presents a different public key or KSF than the one pinned; refusing to talk to it",
                hex::encode(self.realm_id)
            )));
        }
        Ok(())
    }
}

macro_rules! hex_array {
    ($name:ident, $n:literal) => {
        mod $name {
            use serde::{Deserialize, Deserializer, Serializer};
            pub fn serialize<S: Serializer>(v: &[u8; $n], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(v))
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; $n], D::Error> {
                let s = String::deserialize(d)?;
                let mut out = [0u8; $n];
                hex::decode_to_slice(&s, &mut out).map_err(|e| {
                    serde::de::Error::custom(format!("expected {} hex digits: {e}", 2 * $n))
                })?;
                Ok(out)
            }
        }
    };
}
hex_array!(hex16, 16);
hex_array!(hex32, 32);
