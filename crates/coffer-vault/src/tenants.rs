//! Tenants (apps) and the tokens that vouch for their users.
//!
//! Each tenant has a token-verification key: an Ed25519 public key (the app
//! signs; the vault only verifies) or an HS256 secret. A user presents a JWT
//! whose header `kid` names the tenant and whose claims are `iss` = tenant,
//! `sub` = the app's user id, `exp`. The vault keys the record by a keyed
//! hash of (tenant, user) inside the core and never stores the user id.
//!
//! In a replicated realm every node reads the same tenants (ADR 0011):
//! `<data>/tenants.json` may be a symlink to a file shared by the nodes'
//! data directories (`realm new` makes `node-i/tenants.json` point to
//! `../tenants.json`). Writes go to the link's target, never over the link,
//! and each node reloads when the file changes, through whichever link.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// File holding the tenants.
pub const TENANTS_FILE: &str = "tenants.json";

/// A tenant's verification key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "alg")]
pub enum TenantKey {
    /// Ed25519 public key (raw 32 bytes, hex).
    EdDSA {
        /// Hex public key.
        public_key: String,
    },
    /// HS256 shared secret (hex). Development and single-operator setups.
    HS256 {
        /// Hex secret, wiped when dropped.
        #[serde(with = "zeroizing_string")]
        secret: Zeroizing<String>,
    },
}

/// (De)serializes a `Zeroizing<String>` as a plain JSON string (zeroize's
/// own serde support is not enabled in this workspace).
mod zeroizing_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
        String::deserialize(d).map(Zeroizing::new)
    }
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantKey::EdDSA { public_key } => write!(f, "EdDSA({public_key})"),
            TenantKey::HS256 { .. } => f.write_str("HS256(REDACTED)"),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct TenantsFile {
    tenants: HashMap<String, TenantKey>,
}

/// Claims of a user token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Tenant.
    pub iss: String,
    /// User id within the tenant.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Missing or malformed.
    #[error("missing or malformed bearer token")]
    Malformed,
    /// Unknown tenant.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// Signature, expiry or claims wrong.
    #[error("token refused: {0}")]
    Invalid(String),
}

/// Tenant name → verification algorithm and key.
type KeyMap = HashMap<String, (Algorithm, DecodingKey)>;

/// The tenants, reloaded from disk when a token does not verify against
/// them (an unknown tenant, or a key replaced) and the file changed.
pub struct Tenants {
    pub(crate) path: PathBuf,
    pub(crate) state: RwLock<(Option<Stamp>, KeyMap)>,
}

/// What identifies one version of the tenants file (through symlinks).
/// Every write renames a new file over the old one, so the inode changes
/// even when two writes land within one tick of the mtime clock; the
/// times and length catch an edit made in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn load(path: &Path) -> anyhow::Result<TenantsFile> {
    // The text holds HS256 secrets: wiped once parsed.
    match std::fs::read_to_string(path).map(Zeroizing::new) {
        Ok(t) => Ok(serde_json::from_str(&t)
            .map_err(|e| anyhow::anyhow!("{} is not a valid tenants file: {e}", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TenantsFile::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

pub(crate) fn decoding(key: &TenantKey) -> anyhow::Result<(Algorithm, DecodingKey)> {
    Ok(match key {
        TenantKey::EdDSA { public_key } => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_der(&hex::decode(public_key)?),
        ),
        TenantKey::HS256 { secret } => (
            Algorithm::HS256,
            // jsonwebtoken's DecodingKey keeps its own copy, unwiped (it
            // does not zeroize); the decoded bytes here are.
            DecodingKey::from_secret(&Zeroizing::new(hex::decode(secret.as_str())?)),
        ),
    })
}

/// The file's stamp, following symlinks; `None` while it does not exist.
fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

impl Tenants {
    /// Loads `<data>/tenants.json` (absent: no tenants yet).
    pub fn open(data: &Path) -> anyhow::Result<Self> {
        let t = Self {
            path: data.join(TENANTS_FILE),
            state: RwLock::new((None, HashMap::new())),
        };
        t.reload()?;
        Ok(t)
    }

    fn reload(&self) -> anyhow::Result<()> {
        // Stamp first: a write landing between the stamp and the read is
        // seen again at the next check rather than missed.
        let m = stamp(&self.path);
        let file = load(&self.path)?;
        let mut keys = HashMap::new();
        for (name, key) in &file.tenants {
            keys.insert(name.clone(), decoding(key)?);
        }
        if let Ok(mut s) = self.state.write() {
            *s = (m, keys);
        }
        Ok(())
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.1.len()).unwrap_or(0)
    }

    /// True without tenants.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies a token: (tenant, user).
    pub fn verify(&self, token: &str) -> Result<(String, String), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let tenant = header.kid.ok_or(TokenError::Malformed)?;
        match self.verify_with(&tenant, token) {
            // The tenant may have been added, or its key replaced, since the
            // file was read, through this node or another sharing the file.
            // A refused token costs one stat; a re-read only if it changed.
            Err(_) if self.reload_if_changed() => self.verify_with(&tenant, token),
            other => other,
        }
    }

    /// Re-reads the file if it changed since it was read; whether it did
    /// (and now reads well).
    fn reload_if_changed(&self) -> bool {
        let changed = self
            .state
            .read()
            .map(|s| s.0 != stamp(&self.path))
            .unwrap_or(false);
        changed && self.reload().is_ok()
    }

    /// Verifies a token against the tenants as last read.
    fn verify_with(&self, tenant: &str, token: &str) -> Result<(String, String), TokenError> {
        let found = self
            .state
            .read()
            .ok()
            .and_then(|st| st.1.get(tenant).cloned());
        let (alg, key) = found.ok_or_else(|| TokenError::UnknownTenant(tenant.to_string()))?;
        let mut v = Validation::new(alg);
        v.set_issuer(&[tenant]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.leeway = 30;
        // A token with `nbf` in the future is not valid yet (RFC 7519 §4.1.5).
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(TokenError::Invalid("sub must be 1..256 bytes".into()));
        }
        Ok((tenant.to_string(), data.claims.sub))
    }
}

/// Symlinks followed at most, as the kernel's limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// The file that `path` stands for: `path` itself, or where its symlinks
/// lead (a relative target is relative to the link's directory). The target
/// need not exist yet: a write creates it.
fn resolve_links(path: &Path) -> anyhow::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)
                    .map_err(|e| anyhow::anyhow!("cannot read the link {}: {e}", p.display()))?;
                // `join` keeps an absolute target as it is.
                p = match p.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => anyhow::bail!("cannot inspect {}: {e}", p.display()),
        }
    }
    anyhow::bail!(
        "{}: more than {MAX_LINKS} symbolic links in a row (a loop?)",
        path.display()
    )
}

/// Runs a read-modify-write of the tenants file `path` (symlinks followed)
/// under an exclusive lock on its directory, so that two `token` or
/// `add-tenant` runs on nodes sharing the file do not lose each other's
/// tenant. `f` changes the file as read; it is written back if `f` says so.
fn update(
    path: &Path,
    f: impl FnOnce(&mut TenantsFile) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let target = resolve_links(path)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let lock = std::fs::File::open(&dir)
        .map_err(|e| anyhow::anyhow!("cannot open {} to lock it: {e}", dir.display()))?;
    lock.lock()
        .map_err(|e| anyhow::anyhow!("cannot lock {}: {e}", dir.display()))?;
    let mut file = load(&target)?;
    if f(&mut file)? {
        write_file(&target, &file)?;
    }
    Ok(())
}

/// Replaces the tenants file `path` atomically: a temporary file next to
/// the file that `path` stands for, renamed over it. Renaming over `path`
/// itself would replace a symlink by a regular file and split a realm's
/// shared tenants into one copy per node.
fn write_file(path: &Path, file: &TenantsFile) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = resolve_links(path)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| TENANTS_FILE.to_string());
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    // A name of its own: writers on several nodes never share a temp file.
    let tmp = target.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        hex::encode(nonce)
    ));
    let written = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The text holds HS256 secrets: wiped once written.
        let text = Zeroizing::new(serde_json::to_string_pretty(file)?);
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::anyhow!("cannot write {}: {e}", target.display()));
    }
    // The rename is durable once the directory is.
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Adds (or replaces) a tenant's verification key.
pub fn add_tenant(data: &Path, name: &str, key: TenantKey) -> anyhow::Result<()> {
    decoding(&key)?;
    update(&data.join(TENANTS_FILE), |file| {
        file.tenants.insert(name.to_string(), key);
        Ok(true)
    })
}

/// Development: a token for (tenant, user), creating the tenant with a random
/// HS256 secret on first use.
pub fn dev_token(data: &Path, tenant: &str, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
    // The rules `verify_with` applies: a token it would refuse is not made.
    if tenant.is_empty() {
        anyhow::bail!("the tenant name must not be empty");
    }
    if user.is_empty() || user.len() > 256 {
        anyhow::bail!("the user id must be 1 to 256 bytes ({} given)", user.len());
    }
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = now
        .checked_add(ttl_secs)
        .filter(|e| i64::try_from(*e).is_ok())
        .ok_or_else(|| anyhow::anyhow!("--ttl-secs {ttl_secs} is too large"))?;
    let mut secret = Zeroizing::new(Vec::new());
    update(&data.join(TENANTS_FILE), |file| {
        Ok(match file.tenants.get(tenant) {
            Some(TenantKey::HS256 { secret: s }) => {
                secret = Zeroizing::new(hex::decode(s.as_str())?);
                false
            }
            Some(TenantKey::EdDSA { .. }) => anyhow::bail!(
                "tenant {tenant:?} verifies Ed25519 tokens signed by the app; the vault cannot issue them"
            ),
            None => {
                let mut s = Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut s[..]).map_err(|e| anyhow::anyhow!("random: {e}"))?;
                file.tenants.insert(
                    tenant.to_string(),
                    TenantKey::HS256 {
                        secret: Zeroizing::new(hex::encode(&s[..])),
                    },
                );
                secret = Zeroizing::new(s.to_vec());
                true
            }
        })
    })?;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(tenant.to_string());
    let claims = Claims {
        iss: tenant.to_string(),
        sub: user.to_string(),
        exp,
    };
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&secret),
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// `<out>/node-1` and `<out>/node-2`, each with `tenants.json` a
    /// relative symlink to `../tenants.json`, as `realm new` lays them out.
    fn realm_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let out = tempfile::tempdir().unwrap();
        let nodes: Vec<PathBuf> = (1..=2)
            .map(|i| {
                let d = out.path().join(format!("node-{i}"));
                std::fs::create_dir(&d).unwrap();
                symlink("../tenants.json", d.join(TENANTS_FILE)).unwrap();
                d
            })
            .collect();
        (out, nodes[0].clone(), nodes[1].clone())
    }

    fn assert_still_links(out: &Path) {
        for i in 1..=2 {
            let link = out.join(format!("node-{i}")).join(TENANTS_FILE);
            let m = std::fs::symlink_metadata(&link).unwrap();
            assert!(
                m.file_type().is_symlink(),
                "{} was replaced",
                link.display()
            );
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                Path::new("../tenants.json")
            );
        }
        let shared = std::fs::symlink_metadata(out.join(TENANTS_FILE)).unwrap();
        assert!(shared.file_type().is_file());
        assert_eq!(shared.permissions().mode() & 0o777, 0o600);
        // No temporary file left behind.
        let mut names: Vec<String> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["node-1", "node-2", "tenants.json"]);
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Creates tenant `app`; then sign tokens with its secret by hand.
        dev_token(dir.path(), "app", "alice", 60).unwrap();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(TENANTS_FILE)).unwrap())
                .unwrap();
        let secret = hex::decode(file["tenants"]["app"]["secret"].as_str().unwrap()).unwrap();
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sign = |nbf: u64| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("app".into());
            let claims = serde_json::json!({
                "iss": "app", "sub": "alice", "exp": now + 3600, "nbf": nbf,
            });
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&secret)).unwrap()
        };
        let t = Tenants::open(dir.path()).unwrap();
        assert!(t.verify(&sign(now - 10)).is_ok());
        let e = t.verify(&sign(now + 3600)).unwrap_err().to_string();
        assert!(e.contains("ImmatureSignature"), "{e}");
    }

    #[test]
    fn the_dev_token_command_makes_no_token_the_vault_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        for (tenant, user, ttl) in [
            ("app", "", 60),
            ("app", &*"u".repeat(257), 60),
            ("", "alice", 60),
            ("app", "alice", u64::MAX),
            ("app", "alice", u64::MAX - 1000),
        ] {
            assert!(
                dev_token(dir.path(), tenant, user, ttl).is_err(),
                "{tenant:?} {} bytes, ttl {ttl}",
                user.len()
            );
        }
        let t = Tenants::open(dir.path()).unwrap();
        let ok = dev_token(dir.path(), "app", &"u".repeat(256), 60).unwrap();
        assert!(t.verify(&ok).is_ok());
    }

    #[test]
    fn a_token_minted_through_one_node_verifies_on_another() {
        let (out, node1, node2) = realm_dirs();
        // Opened before the shared file exists (the links dangle).
        let t2 = Tenants::open(&node2).unwrap();
        assert!(t2.is_empty());
        let token = dev_token(&node1, "app", "alice", 3600).unwrap();
        assert_still_links(out.path());
        assert_eq!(
            t2.verify(&token).unwrap(),
            ("app".to_string(), "alice".to_string())
        );
        // A second tenant right after the first, likely within one tick of
        // the mtime clock, through the other node, seen by a `Tenants`
        // opened in between on the first.
        let t1 = Tenants::open(&node1).unwrap();
        assert_eq!(t1.len(), 1);
        let token = dev_token(&node2, "app2", "bob", 3600).unwrap();
        assert_eq!(t1.verify(&token).unwrap().0, "app2");
        assert_eq!(t1.len(), 2);
        assert_still_links(out.path());
        // The same tenant's existing secret is reused, not replaced.
        let again = dev_token(&node2, "app", "carol", 3600).unwrap();
        assert_eq!(t2.verify(&again).unwrap().1, "carol");
    }

    #[test]
    fn a_key_replaced_through_one_node_is_used_by_another() {
        let (out, node1, node2) = realm_dirs();
        dev_token(&node1, "app", "alice", 3600).unwrap();
        let t2 = Tenants::open(&node2).unwrap();
        // Rotate the tenant's key through node 1; node 2 has the old one.
        add_tenant(
            &node1,
            "app",
            TenantKey::HS256 {
                secret: Zeroizing::new(hex::encode([9u8; 32])),
            },
        )
        .unwrap();
        assert_still_links(out.path());
        let token = dev_token(&node1, "app", "dave", 3600).unwrap();
        assert_eq!(t2.verify(&token).unwrap().1, "dave");
        // A token under a key nobody has is still refused.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("app".into());
        let claims = Claims {
            iss: "app".into(),
            sub: "eve".into(),
            exp: u64::MAX / 2,
        };
        let forged =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&[1; 32])).unwrap();
        assert!(matches!(t2.verify(&forged), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn concurrent_writers_through_both_links_lose_nothing() {
        let (out, node1, node2) = realm_dirs();
        let writers: Vec<_> = [node1.clone(), node2.clone()]
            .into_iter()
            .enumerate()
            .map(|(n, dir)| {
                std::thread::spawn(move || {
                    for i in 0..20 {
                        dev_token(&dir, &format!("t{n}-{i}"), "u", 60).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(Tenants::open(&node1).unwrap().len(), 40);
        assert_still_links(out.path());
    }

    #[test]
    fn a_plain_file_still_works_and_links_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let token = dev_token(dir.path(), "app", "alice", 3600).unwrap();
        let m = std::fs::symlink_metadata(dir.path().join(TENANTS_FILE)).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(
            Tenants::open(dir.path()).unwrap().verify(&token).unwrap().1,
            "alice"
        );

        // An absolute link to a link: followed to the end.
        let shared = dir.path().join("shared.json");
        std::fs::write(&shared, "{\"tenants\":{}}").unwrap();
        let hop = dir.path().join("hop.json");
        symlink(&shared, &hop).unwrap();
        let node = dir.path().join("node");
        std::fs::create_dir(&node).unwrap();
        symlink("../hop.json", node.join(TENANTS_FILE)).unwrap();
        assert_eq!(
            resolve_links(&node.join(TENANTS_FILE)).unwrap(),
            shared.clone()
        );
        let token = dev_token(&node, "app", "bob", 3600).unwrap();
        assert!(std::fs::symlink_metadata(&hop)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::read_to_string(&shared)
            .unwrap()
            .contains("\"app\""));
        assert_eq!(
            Tenants::open(&node).unwrap().verify(&token).unwrap().1,
            "bob"
        );

        // A loop is an error, not a hang.
        let a = dir.path().join("loop-a");
        symlink("loop-b", &a).unwrap();
        symlink("loop-a", dir.path().join("loop-b")).unwrap();
        let e = resolve_links(&a).unwrap_err().to_string();
        assert!(e.contains("symbolic links in a row"), "{e}");
    }
}
