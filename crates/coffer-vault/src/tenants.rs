//! Tenants (apps) and the tokens that vouch for their users.
//!
//! Each tenant has a token-verification key: an Ed25519 public key (the app
//! signs; the vault only verifies) or an HS256 secret. A user presents a JWT
//! whose header `kid` names the tenant and whose claims are `iss` = tenant,
//! `sub` = the app's user id, `exp`. The vault keys the record by a keyed
//! hash of (tenant, user) inside the core and never stores the user id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
        /// Hex secret.
        secret: String,
    },
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

/// The tenants, reloaded from disk when an unknown tenant shows up and the file changed.
pub struct Tenants {
    path: PathBuf,
    state: RwLock<(Option<SystemTime>, KeyMap)>,
}

fn load(path: &Path) -> anyhow::Result<TenantsFile> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(serde_json::from_str(&t)
            .map_err(|e| anyhow::anyhow!("{} is not a valid tenants file: {e}", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TenantsFile::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn decoding(key: &TenantKey) -> anyhow::Result<(Algorithm, DecodingKey)> {
    Ok(match key {
        TenantKey::EdDSA { public_key } => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_der(&hex::decode(public_key)?),
        ),
        TenantKey::HS256 { secret } => (
            Algorithm::HS256,
            DecodingKey::from_secret(&hex::decode(secret)?),
        ),
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
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
        let m = mtime(&self.path);
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
        let lookup = |s: &Self| {
            s.state
                .read()
                .ok()
                .and_then(|st| st.1.get(&tenant).cloned())
        };
        let found = match lookup(self) {
            Some(k) => Some(k),
            None => {
                let changed = self
                    .state
                    .read()
                    .map(|s| s.0 != mtime(&self.path))
                    .unwrap_or(false);
                if changed && self.reload().is_ok() {
                    lookup(self)
                } else {
                    None
                }
            }
        };
        let (alg, key) = found.ok_or_else(|| TokenError::UnknownTenant(tenant.clone()))?;
        let mut v = Validation::new(alg);
        v.set_issuer(&[tenant.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.leeway = 30;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(TokenError::Invalid("sub must be 1..256 bytes".into()));
        }
        Ok((tenant, data.claims.sub))
    }
}

fn write_file(path: &Path, file: &TenantsFile) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(file)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Adds (or replaces) a tenant's verification key.
pub fn add_tenant(data: &Path, name: &str, key: TenantKey) -> anyhow::Result<()> {
    decoding(&key)?;
    let path = data.join(TENANTS_FILE);
    let mut file = load(&path)?;
    file.tenants.insert(name.to_string(), key);
    write_file(&path, &file)
}

/// Development: a token for (tenant, user), creating the tenant with a random
/// HS256 secret on first use.
pub fn dev_token(data: &Path, tenant: &str, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let path = data.join(TENANTS_FILE);
    let mut file = load(&path)?;
    let secret = match file.tenants.get(tenant) {
        Some(TenantKey::HS256 { secret }) => hex::decode(secret)?,
        Some(TenantKey::EdDSA { .. }) => anyhow::bail!(
            "tenant {tenant:?} verifies Ed25519 tokens signed by the app; the vault cannot issue them"
        ),
        None => {
            let mut s = [0u8; 32];
            getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("random: {e}"))?;
            file.tenants.insert(tenant.to_string(), TenantKey::HS256 { secret: hex::encode(s) });
            write_file(&path, &file)?;
            s.to_vec()
        }
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(tenant.to_string());
    let exp = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + ttl_secs;
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
