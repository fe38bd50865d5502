//! The realm descriptor (`realm.json`): what a client pins.
//!
//! Two formats: `coffer-realm/1` names one vault by its `address` (what
//! `coffer-vault init` writes); `coffer-realm/2` lists the `nodes` of a
//! replicated realm, any of which serves any client. Callers read the URLs
//! through [`RealmDescriptor::nodes`] whatever the format.

use serde::{Deserialize, Serialize};

/// Format tag of a single-node descriptor (`"address"`), written by
/// `coffer-vault init`.
pub const REALM_FORMAT: &str = "coffer-realm/1";

/// Format tag of a replicated realm's descriptor (`"nodes"`).
pub const REALM_FORMAT_V2: &str = "coffer-realm/2";

/// Most nodes a `coffer-realm/2` descriptor may list (a realm's node ids are
/// small integers, and a client tries each at most once per session).
pub const MAX_NODES: usize = 16;

/// Longest node URL accepted.
pub const MAX_NODE_URL_LEN: usize = 1024;

/// Lowest Argon2id memory a client accepts, whatever a descriptor says (KiB).
pub const MIN_KSF_MEMORY_KIB: u32 = 19 * 1024;

/// Highest Argon2id memory a client accepts (KiB): 1 GiB.
///
/// The KSF runs on the client, at every login and registration, with the
/// parameters the descriptor names; a descriptor (one a repository's config
/// carries is unauthenticated before `K` is known) must not be able to make
/// a phone allocate gigabytes. 1 GiB is 16 times the default and above any
/// interactive profile (RFC 9106's memory-constrained one is 64 MiB, OWASP's
/// 19 to 46 MiB); RFC 9106's 2 GiB profile is for servers, not clients.
pub const MAX_KSF_MEMORY_KIB: u32 = 1024 * 1024;

/// Most Argon2id passes a client accepts. RFC 9106 recommends 1 to 3 and
/// OWASP 1 to 5; 16 leaves room for a slow-hash policy at low memory.
pub const MAX_KSF_ITERATIONS: u32 = 16;

/// Most Argon2id lanes a client accepts. Lanes add no cost to an attacker
/// and this client computes them on one thread; 16 covers any real profile.
pub const MAX_KSF_PARALLELISM: u32 = 16;

/// Most Argon2id work a client accepts, as memory × passes (KiB): 4 GiB, for
/// example 1 GiB × 4, 256 MiB × 16 or the default 64 MiB × 3 (192 MiB). Time
/// grows with this product: 4 GiB is a few seconds on a laptop core and some
/// tens of seconds on a slow phone, the most a login should ever cost.
pub const MAX_KSF_WORK_KIB: u64 = 4 * 1024 * 1024;

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
    /// The Argon2id instance, after checking the parameters are sane: not
    /// too weak ([`MIN_KSF_MEMORY_KIB`]) and not so costly that a descriptor
    /// could exhaust the client ([`MAX_KSF_MEMORY_KIB`],
    /// [`MAX_KSF_ITERATIONS`], [`MAX_KSF_PARALLELISM`], [`MAX_KSF_WORK_KIB`]).
    /// `coffer-vault init` and `realm new` check the same.
    pub fn argon2(&self) -> Result<argon2::Argon2<'static>, RealmError> {
        if self.memory_kib < MIN_KSF_MEMORY_KIB {
            return Err(RealmError::WeakKsf(format!(
                "Argon2id memory {} KiB is below the client's minimum of {} KiB",
                self.memory_kib, MIN_KSF_MEMORY_KIB
            )));
        }
        let costly = |m: String| Err(RealmError::CostlyKsf(m));
        if self.memory_kib > MAX_KSF_MEMORY_KIB {
            return costly(format!(
                "Argon2id memory {} KiB is above the client's maximum of {MAX_KSF_MEMORY_KIB} KiB (1 GiB)",
                self.memory_kib
            ));
        }
        if self.iterations > MAX_KSF_ITERATIONS {
            return costly(format!(
                "Argon2id passes {} are above the client's maximum of {MAX_KSF_ITERATIONS}",
                self.iterations
            ));
        }
        if self.parallelism > MAX_KSF_PARALLELISM {
            return costly(format!(
                "Argon2id lanes {} are above the client's maximum of {MAX_KSF_PARALLELISM}",
                self.parallelism
            ));
        }
        let work = u64::from(self.memory_kib) * u64::from(self.iterations);
        if work > MAX_KSF_WORK_KIB {
            return costly(format!(
                "Argon2id memory × passes = {} KiB × {} is above the client's maximum of \
                 {MAX_KSF_WORK_KIB} KiB (4 GiB, e.g. 1 GiB × 4 or 256 MiB × 16)",
                self.memory_kib, self.iterations
            ));
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
///
/// The fields keep format 1's shape so that code building a single-node
/// descriptor keeps compiling; a format 2 descriptor keeps its node list in
/// `address` (see there). Build a format 2 descriptor with
/// [`RealmDescriptor::new_v2`] and read the URLs of either format with
/// [`RealmDescriptor::nodes`]. (De)serializing goes through the checks of
/// [`RealmDescriptor::from_json`] except the guess limit and KSF ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DescriptorJson", into = "DescriptorJson")]
pub struct RealmDescriptor {
    /// [`REALM_FORMAT`] (one vault) or [`REALM_FORMAT_V2`] (a replicated realm).
    pub format: String,
    /// Random realm id, hex.
    pub realm_id: [u8; 16],
    /// The trusted core's channel public key (X25519), hex.
    pub public_key: [u8; 32],
    /// The OPAQUE key-stretching function.
    pub ksf: KsfParams,
    /// Highest guess limit a registration may ask for.
    pub max_attempts_limit: u8,
    /// Format 1: where the vault's HTTP API listens, e.g.
    /// `http://127.0.0.1:8420`. Format 2: the nodes' URLs in order, separated
    /// by single spaces (a checked node URL holds no whitespace). Never use
    /// it as one URL: read [`RealmDescriptor::nodes`].
    pub address: String,
}

/// `realm.json` as written: format 1 has `address`, format 2 has `nodes`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorJson {
    format: String,
    #[serde(with = "hex16")]
    realm_id: [u8; 16],
    #[serde(with = "hex32")]
    public_key: [u8; 32],
    ksf: KsfParams,
    max_attempts_limit: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<String>>,
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RealmError {
    /// Not valid JSON, missing fields, or a field out of bounds.
    #[error("invalid realm descriptor: {0}")]
    Invalid(String),
    /// KSF too weak to accept.
    #[error("realm descriptor refused: {0}")]
    WeakKsf(String),
    /// KSF so costly it would exhaust the client.
    #[error("realm descriptor refused: {0}")]
    CostlyKsf(String),
    /// A different realm than the one pinned.
    #[error("realm mismatch: {0}")]
    Mismatch(String),
}

impl TryFrom<DescriptorJson> for RealmDescriptor {
    type Error = RealmError;

    fn try_from(j: DescriptorJson) -> Result<Self, RealmError> {
        let invalid = |m: String| Err(RealmError::Invalid(m));
        let address = match (j.format.as_str(), j.address, j.nodes) {
            (REALM_FORMAT, Some(address), None) => address,
            (REALM_FORMAT, _, Some(_)) => {
                return invalid(format!(
                    "\"nodes\" needs format {REALM_FORMAT_V2:?}; a {REALM_FORMAT:?} descriptor \
                     names its one vault in \"address\""
                ))
            }
            (REALM_FORMAT, None, None) => return invalid("missing field `address`".into()),
            (REALM_FORMAT_V2, None, Some(nodes)) => {
                check_nodes(&nodes)?;
                nodes.join(" ")
            }
            (REALM_FORMAT_V2, Some(_), _) => {
                return invalid(format!(
                    "a {REALM_FORMAT_V2:?} descriptor lists its nodes in \"nodes\"; \
                     \"address\" belongs to {REALM_FORMAT:?}"
                ))
            }
            (REALM_FORMAT_V2, None, None) => {
                return invalid(format!(
                    "missing field `nodes` (a {REALM_FORMAT_V2:?} descriptor lists 1 to \
                     {MAX_NODES} node URLs)"
                ))
            }
            (other, _, _) => {
                return invalid(format!(
                    "format {other:?}, expected {REALM_FORMAT:?} or {REALM_FORMAT_V2:?} \
                     (a newer descriptor needs a newer client)"
                ))
            }
        };
        Ok(Self {
            format: j.format,
            realm_id: j.realm_id,
            public_key: j.public_key,
            ksf: j.ksf,
            max_attempts_limit: j.max_attempts_limit,
            address,
        })
    }
}

impl From<RealmDescriptor> for DescriptorJson {
    fn from(d: RealmDescriptor) -> Self {
        let (address, nodes) = if d.format == REALM_FORMAT_V2 {
            (None, Some(d.nodes()))
        } else {
            (Some(d.address), None)
        };
        Self {
            format: d.format,
            realm_id: d.realm_id,
            public_key: d.public_key,
            ksf: d.ksf,
            max_attempts_limit: d.max_attempts_limit,
            address,
            nodes,
        }
    }
}

impl RealmDescriptor {
    /// A `coffer-realm/2` descriptor for a replicated realm served by
    /// `nodes` (1 to [`MAX_NODES`] distinct `http://` or `https://` URLs),
    /// checked as [`RealmDescriptor::from_json`] checks one read from disk.
    pub fn new_v2(
        realm_id: [u8; 16],
        public_key: [u8; 32],
        ksf: KsfParams,
        max_attempts_limit: u8,
        nodes: Vec<String>,
    ) -> Result<Self, RealmError> {
        check_nodes(&nodes)?;
        let d = Self {
            format: REALM_FORMAT_V2.into(),
            realm_id,
            public_key,
            ksf,
            max_attempts_limit,
            address: nodes.join(" "),
        };
        d.check_bounds()?;
        Ok(d)
    }

    /// Parses and checks a descriptor of either format.
    pub fn from_json(text: &str) -> Result<Self, RealmError> {
        let j: DescriptorJson =
            serde_json::from_str(text).map_err(|e| RealmError::Invalid(e.to_string()))?;
        let d = Self::try_from(j)?;
        d.check_bounds()?;
        Ok(d)
    }

    fn check_bounds(&self) -> Result<(), RealmError> {
        if self.max_attempts_limit == 0 {
            return Err(RealmError::Invalid("max_attempts_limit is 0".into()));
        }
        self.ksf.argon2()?;
        Ok(())
    }

    /// Pretty JSON, in the descriptor's own format.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The URLs a client may send to, in the descriptor's order: format 1's
    /// `address`, or format 2's `nodes`.
    pub fn nodes(&self) -> Vec<String> {
        if self.format == REALM_FORMAT_V2 {
            self.address
                .split_whitespace()
                .map(str::to_string)
                .collect()
        } else {
            vec![self.address.clone()]
        }
    }

    /// Checks `other` names the same realm with the same pinned key and KSF
    /// (the addresses may differ, and so may the format: realms move, and a
    /// single vault may grow into a replicated realm under the same key).
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

/// Checks a format 2 node list: 1 to [`MAX_NODES`] URLs, each well formed,
/// none naming a node listed before it.
fn check_nodes(nodes: &[String]) -> Result<(), RealmError> {
    let invalid = |m: String| Err(RealmError::Invalid(m));
    if nodes.is_empty() {
        return invalid(format!(
            "\"nodes\" is empty: a realm descriptor lists 1 to {MAX_NODES} node URLs"
        ));
    }
    if nodes.len() > MAX_NODES {
        return invalid(format!(
            "\"nodes\" lists {} URLs; a realm descriptor lists at most {MAX_NODES}",
            nodes.len()
        ));
    }
    let mut seen: Vec<String> = Vec::with_capacity(nodes.len());
    for (i, url) in nodes.iter().enumerate() {
        if url.len() > MAX_NODE_URL_LEN {
            return invalid(format!(
                "node {} is a URL of {} bytes; at most {MAX_NODE_URL_LEN}",
                i + 1,
                url.len()
            ));
        }
        check_node_url(url).or_else(|why| invalid(format!("node {} ({url:?}) {why}", i + 1)))?;
        let key = node_key(url);
        if let Some(j) = seen.iter().position(|k| *k == key) {
            return invalid(format!(
                "node {} ({url:?}) is node {} ({:?}) again; list each node once",
                i + 1,
                j + 1,
                nodes[j]
            ));
        }
        seen.push(key);
    }
    Ok(())
}

/// Checks `url` can be a vault's address (a format 1 `address` or a format
/// 2 node): `scheme://host[:port][/path]`, the scheme `http` or `https`, no
/// credentials, query or fragment. `coffer-vault init` checks its
/// `--address` with it (a format 1 descriptor read from disk is not checked:
/// the client refuses what it cannot reach).
pub fn check_vault_url(url: &str) -> Result<(), RealmError> {
    check_node_url(url).map_err(|m| RealmError::Invalid(format!("the vault address {url:?} {m}")))
}

/// Why `url` cannot be a node's URL: `scheme://host[:port][/path]`, the
/// scheme `http` or `https`.
fn check_node_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("is not an http:// or https:// URL")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    if url.contains(['?', '#']) {
        return Err("has a query or fragment; a node URL is a scheme, a host, \
                    an optional port and an optional path"
            .into());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    // A token goes in a header; credentials in a pinned file would leak to
    // every holder, and `http://good@evil` misleads a reader.
    if authority.contains('@') {
        return Err("carries user information (`user@`); a node URL holds no credentials".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("has an IPv6 host without its closing `]`")?;
        match after {
            "" => (addr, None),
            p => (
                addr,
                Some(p.strip_prefix(':').ok_or("has junk after its IPv6 host")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("has an invalid port {p:?} (1 to 65535)"));
        }
    }
    Ok(())
}

/// What makes two node URLs the same node: scheme, host and port compared
/// without case, the path without a trailing `/`.
fn node_key(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    format!(
        "{}://{}/{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase(),
        path.trim_end_matches('/')
    )
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    /// A descriptor written by `coffer-vault init` before format 2 existed.
    const V1: &str = r#"{
  "format": "coffer-realm/1",
  "realm_id": "2dd080a6690d20f2743507ad0009aa31",
  "public_key": "a974fe8639a23f39229a86b04930f5b1f61b79d112680cbaeb9cb052b3866fbe",
  "ksf": {
    "algorithm": "argon2id",
    "memory_kib": 65536,
    "iterations": 3,
    "parallelism": 1
  },
  "max_attempts_limit": 10,
  "address": "http://127.0.0.1:8420"
}"#;

    const V2: &str = r#"{
  "format": "coffer-realm/2",
  "realm_id": "2dd080a6690d20f2743507ad0009aa31",
  "public_key": "a974fe8639a23f39229a86b04930f5b1f61b79d112680cbaeb9cb052b3866fbe",
  "ksf": {
    "algorithm": "argon2id",
    "memory_kib": 65536,
    "iterations": 3,
    "parallelism": 1
  },
  "max_attempts_limit": 10,
  "nodes": [
    "https://vault-1.example:8420",
    "https://vault-2.example:8420",
    "http://[::1]:8421/coffer"
  ]
}"#;

    fn v2_with(nodes: &str) -> String {
        let start = V2.find("\"nodes\"").unwrap();
        format!("{}\"nodes\": {nodes}\n}}", &V2[..start])
    }

    fn invalid(text: &str) -> String {
        match RealmDescriptor::from_json(text) {
            Err(RealmError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn ksf(memory_kib: u32, iterations: u32, parallelism: u32) -> KsfParams {
        KsfParams {
            memory_kib,
            iterations,
            parallelism,
            ..KsfParams::default()
        }
    }

    #[test]
    fn ksf_bounds_refuse_a_descriptor_that_would_exhaust_the_client() {
        let costly = |k: KsfParams| match k.argon2() {
            Err(RealmError::CostlyKsf(m)) => m,
            other => panic!("expected CostlyKsf for {k:?}, got {:?}", other.map(|_| ())),
        };
        // Every bound is inclusive.
        for ok in [
            KsfParams::default(),
            ksf(MIN_KSF_MEMORY_KIB, 1, 1),
            ksf(MAX_KSF_MEMORY_KIB, 4, 1),
            ksf(256 * 1024, MAX_KSF_ITERATIONS, MAX_KSF_PARALLELISM),
        ] {
            assert!(ok.argon2().is_ok(), "{ok:?}");
        }
        assert!(costly(ksf(MAX_KSF_MEMORY_KIB + 1, 1, 1)).contains("above the client's maximum"));
        assert!(costly(ksf(u32::MAX, 1, 1)).contains("memory"));
        assert!(costly(ksf(65536, MAX_KSF_ITERATIONS + 1, 1)).contains("passes"));
        assert!(costly(ksf(65536, u32::MAX, 1)).contains("passes"));
        assert!(costly(ksf(65536, 3, MAX_KSF_PARALLELISM + 1)).contains("lanes"));
        assert!(costly(ksf(65536, 3, u32::MAX)).contains("lanes"));
        assert!(costly(ksf(MAX_KSF_MEMORY_KIB, 5, 1)).contains("memory × passes"));
        // Too weak stays a separate refusal.
        assert!(matches!(
            ksf(MIN_KSF_MEMORY_KIB - 1, 1, 1).argon2(),
            Err(RealmError::WeakKsf(_))
        ));
        // A descriptor naming such a KSF is refused when read, before any use.
        let huge = V1.replace("\"memory_kib\": 65536", "\"memory_kib\": 4294967295");
        assert!(matches!(
            RealmDescriptor::from_json(&huge),
            Err(RealmError::CostlyKsf(_))
        ));
        let passes = V2.replace("\"iterations\": 3", "\"iterations\": 1000000");
        assert!(matches!(
            RealmDescriptor::from_json(&passes),
            Err(RealmError::CostlyKsf(_))
        ));
    }

    #[test]
    fn vault_url_check() {
        assert_eq!(check_vault_url("https://vault.example:8420/x"), Ok(()));
        assert_eq!(check_vault_url("http://127.0.0.1:8420"), Ok(()));
        for bad in [
            "notaurl",
            "127.0.0.1:8420",
            "ftp://a",
            "http://",
            "http://a:0",
        ] {
            assert!(
                matches!(check_vault_url(bad), Err(RealmError::Invalid(m)) if m.contains(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn v1_reads_and_writes_byte_for_byte() {
        let d = RealmDescriptor::from_json(V1).unwrap();
        assert_eq!(d.format, REALM_FORMAT);
        assert_eq!(d.address, "http://127.0.0.1:8420");
        assert_eq!(d.nodes(), ["http://127.0.0.1:8420"]);
        assert_eq!(d.to_json(), V1);
    }

    #[test]
    fn v1_address_stays_unchecked_as_before() {
        // Format 1 never checked its address (in-process tests use "mem:");
        // the client refuses what it cannot reach.
        let d = RealmDescriptor::from_json(&V1.replace("http://127.0.0.1:8420", "mem:")).unwrap();
        assert_eq!(d.nodes(), ["mem:"]);
    }

    #[test]
    fn v2_reads_round_trips_and_matches_new_v2() {
        let d = RealmDescriptor::from_json(V2).unwrap();
        assert_eq!(d.format, REALM_FORMAT_V2);
        let nodes = vec![
            "https://vault-1.example:8420".to_string(),
            "https://vault-2.example:8420".to_string(),
            "http://[::1]:8421/coffer".to_string(),
        ];
        assert_eq!(d.nodes(), nodes);
        assert_eq!(d.to_json(), V2);
        assert_eq!(RealmDescriptor::from_json(&d.to_json()).unwrap(), d);
        let built =
            RealmDescriptor::new_v2(d.realm_id, d.public_key, KsfParams::default(), 10, nodes)
                .unwrap();
        assert_eq!(built, d);
        // Through serde directly too (a descriptor embedded in other JSON).
        let v: RealmDescriptor = serde_json::from_str(V2).unwrap();
        assert_eq!(v, d);
        assert_eq!(serde_json::to_string_pretty(&d).unwrap(), V2);
    }

    #[test]
    fn one_realm_whichever_format() {
        let v1 = RealmDescriptor::from_json(V1).unwrap();
        let v2 = RealmDescriptor::from_json(V2).unwrap();
        assert_eq!(v1.check_same_realm(&v2), Ok(()));
        assert_eq!(v2.check_same_realm(&v1), Ok(()));
        let mut other = v2.clone();
        other.public_key[0] ^= 1;
        assert!(matches!(
            v1.check_same_realm(&other),
            Err(RealmError::Mismatch(_))
        ));
    }

    #[test]
    fn format_and_field_mixups_are_refused() {
        let m = invalid(&V2.replace("coffer-realm/2", "coffer-realm/1"));
        assert!(
            m.contains("\"nodes\" needs format \"coffer-realm/2\""),
            "{m}"
        );
        let m = invalid(&V1.replace("coffer-realm/1", "coffer-realm/2"));
        assert!(m.contains("lists its nodes in \"nodes\""), "{m}");
        let m = invalid(&V1.replace(",\n  \"address\": \"http://127.0.0.1:8420\"", ""));
        assert!(m.contains("missing field `address`"), "{m}");
        let no_nodes = V2.find(",\n  \"nodes\"").unwrap();
        let m = invalid(&format!("{}\n}}", &V2[..no_nodes]));
        assert!(m.contains("missing field `nodes`"), "{m}");
        let m = invalid(&V2.replace("coffer-realm/2", "coffer-realm/3"));
        assert!(m.contains("\"coffer-realm/3\", expected"), "{m}");
        let m = invalid(&V2.replace("\"nodes\"", "\"extra\": 1, \"nodes\""));
        assert!(m.contains("unknown field `extra`"), "{m}");
        // Both at once.
        let m = invalid(&V2.replace(
            "\"nodes\"",
            "\"address\": \"http://127.0.0.1:1\", \"nodes\"",
        ));
        assert!(m.contains("\"address\" belongs to"), "{m}");
    }

    #[test]
    fn node_lists_out_of_bounds_are_refused() {
        let m = invalid(&v2_with("[]"));
        assert!(m.contains("\"nodes\" is empty"), "{m}");
        let seventeen: Vec<String> = (1..=17).map(|i| format!("http://n{i}:1")).collect();
        let m = invalid(&v2_with(&serde_json::to_string(&seventeen).unwrap()));
        assert!(
            m.contains("lists 17 URLs; a realm descriptor lists at most 16"),
            "{m}"
        );
        let sixteen = &seventeen[..16];
        let d = RealmDescriptor::from_json(&v2_with(&serde_json::to_string(sixteen).unwrap()));
        assert_eq!(d.unwrap().nodes(), sixteen);
        let long = format!("[\"http://a/{}\"]", "x".repeat(MAX_NODE_URL_LEN));
        let m = invalid(&v2_with(&long));
        assert!(m.contains("node 1 is a URL of 1033 bytes"), "{m}");
    }

    #[test]
    fn bad_node_urls_are_refused_by_position() {
        for (url, why) in [
            ("ftp://a:1", "is not an http:// or https:// URL"),
            ("HTTP://a:1", "is not an http:// or https:// URL"),
            ("127.0.0.1:8420", "is not an http:// or https:// URL"),
            ("http://", "has no host"),
            ("http:///path", "has no host"),
            ("http://:8420", "has no host"),
            ("http://a b:1", "whitespace"),
            ("http://a:1\n", "whitespace"),
            ("http://a:1/?x=1", "query or fragment"),
            ("http://a:1/#top", "query or fragment"),
            ("http://user:pw@a:1", "user information"),
            ("http://a:0", "invalid port \"0\""),
            ("http://a:65536", "invalid port \"65536\""),
            ("http://a:", "invalid port \"\""),
            ("http://a:x", "invalid port \"x\""),
            ("http://[::1", "closing `]`"),
            ("http://[::1]x", "junk after its IPv6 host"),
        ] {
            let list = serde_json::to_string(&["http://ok:1", url]).unwrap();
            let m = invalid(&v2_with(&list));
            assert!(
                m.starts_with(&format!("node 2 ({url:?}) ")) && m.contains(why),
                "{url:?}: {m}"
            );
        }
    }

    #[test]
    fn duplicate_nodes_are_refused() {
        for (a, b) in [
            ("http://a:1", "http://a:1"),
            ("http://a:1", "http://A:1/"),
            (
                "https://vault.example/coffer",
                "https://vault.example/coffer/",
            ),
        ] {
            let list = serde_json::to_string(&[a, "http://other:2", b]).unwrap();
            let m = invalid(&v2_with(&list));
            assert!(
                m.contains(&format!("node 3 ({b:?}) is node 1 ({a:?}) again")),
                "{m}"
            );
        }
        // Different schemes, ports or paths are different nodes.
        let list = serde_json::to_string(&[
            "http://a:1",
            "https://a:1",
            "http://a:2",
            "http://a:1/other",
        ])
        .unwrap();
        assert_eq!(
            RealmDescriptor::from_json(&v2_with(&list))
                .unwrap()
                .nodes()
                .len(),
            4
        );
    }

    #[test]
    fn new_v2_refuses_what_from_json_refuses() {
        let d = RealmDescriptor::from_json(V2).unwrap();
        let new = |ksf: KsfParams, limit: u8, nodes: &[&str]| {
            RealmDescriptor::new_v2(
                d.realm_id,
                d.public_key,
                ksf,
                limit,
                nodes.iter().map(|s| s.to_string()).collect(),
            )
        };
        assert!(matches!(
            new(KsfParams::default(), 10, &[]),
            Err(RealmError::Invalid(_))
        ));
        assert!(matches!(
            new(KsfParams::default(), 10, &["http://a:1", "http://a:1"]),
            Err(RealmError::Invalid(_))
        ));
        assert!(matches!(
            new(KsfParams::default(), 0, &["http://a:1"]),
            Err(RealmError::Invalid(_))
        ));
        let weak = KsfParams {
            memory_kib: MIN_KSF_MEMORY_KIB - 1,
            ..KsfParams::default()
        };
        assert!(matches!(
            new(weak, 10, &["http://a:1"]),
            Err(RealmError::WeakKsf(_))
        ));
        assert!(new(KsfParams::default(), 10, &["http://a:1"]).is_ok());
    }

    proptest! {
        #[test]
        fn v2_round_trips(
            ports in proptest::collection::btree_set(1u16..=65535, 1..=MAX_NODES),
            https in any::<bool>(),
            limit in 1u8..=255,
        ) {
            let scheme = if https { "https" } else { "http" };
            let nodes: Vec<String> =
                ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect();
            let d = RealmDescriptor::new_v2([1; 16], [2; 32], KsfParams::default(), limit, nodes.clone())
                .unwrap();
            let again = RealmDescriptor::from_json(&d.to_json()).unwrap();
            prop_assert_eq!(again.nodes(), nodes);
            prop_assert_eq!(again, d);
        }

        #[test]
        fn arbitrary_node_lists_never_panic(nodes in proptest::collection::vec(".{0,40}", 0..20)) {
            if let Ok(d) = RealmDescriptor::from_json(&v2_with(&serde_json::to_string(&nodes).unwrap())) {
                // Whatever is accepted survives the round trip unchanged.
                prop_assert_eq!(d.nodes(), nodes);
            }
        }
    }
}
