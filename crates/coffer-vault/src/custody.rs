//! Key custody for the realm master secret.
//!
//! A vault realm has exactly one long-term secret: a 32-byte *master secret*
//! from which every other realm key is derived (elsewhere). This module
//! creates it and keeps it at rest, in one of two ways:
//!
//! * **Software key file** (development only), when no PKCS#11 module is
//!   given: `<data_dir>/realm.key`, mode 0600, holding one line of text: the
//!   64 lowercase hex digits of the secret followed by `\n`. Loading refuses a
//!   file that group or others can access (like ssh does for private keys).
//!
//! * **PKCS#11 token** (SoftHSM2 in tests; Luna, nShield, CloudHSM, ... in
//!   production): the token holds a non-extractable AES-256 *wrapping key*
//!   (label `--pkcs11-key-label`, default `coffer-realm-wrap`), generated in
//!   the token on first use. The master secret is drawn from the OS RNG,
//!   encrypted in the token with `CKM_AES_GCM` (random 96-bit IV, 128-bit tag,
//!   AAD [`WRAP_AAD`]) and the result stored in `<data_dir>/realm.key.p11`
//!   (mode 0600), a one-line JSON object:
//!   `{"version":1,"mechanism":"CKM_AES_GCM","aad":"coffer/v1/realm-master",
//!   "token_label":"coffer","key_label":"coffer-realm-wrap","iv":"<24 hex>",
//!   "ciphertext":"<96 hex: 32 bytes + 16-byte tag>"}`. Loading asks the token
//!   to decrypt it. The blob alone yields nothing; the wrapping key never
//!   leaves the token.
//!
//! Both files are created atomically and never overwritten: `init` on an
//! already initialised data directory fails with
//! [`CustodyError::AlreadyExists`].
//!
//! Neither the secret nor the PIN is ever logged or printed; both are kept in
//! zeroizing buffers.
//!
//! See `docs/key-custody.md` for the threat model.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// File name of the software key file inside the data directory.
pub const SOFTWARE_KEY_FILE: &str = "realm.key";
/// File name of the token-wrapped blob inside the data directory.
pub const PKCS11_BLOB_FILE: &str = "realm.key.p11";
/// Additional authenticated data bound to the AES-GCM wrap. Must be non-empty:
/// SoftHSM crashes on AES-GCM with empty AAD (rust-cryptoki issue #605).
pub const WRAP_AAD: &[u8] = b"coffer/v1/realm-master";
/// Environment variable holding the user PIN when no PIN file is given.
pub const PIN_ENV: &str = "COFFER_PKCS11_PIN";

const MASTER_LEN: usize = 32;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_BITS: usize = 128;
const BLOB_VERSION: u32 = 1;
const BLOB_MECHANISM: &str = "CKM_AES_GCM";
/// Upper bound on the size of the files read here (they are ~100 bytes).
const MAX_FILE_LEN: u64 = 16 * 1024;

/// clap args, flattened into `coffer-vault init` and `coffer-vault serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct CustodyArgs {
    /// PKCS#11 module (.so). Without it the master secret is kept in a software key file (development only).
    #[arg(long, env = "COFFER_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// Token label to use (default: "coffer").
    #[arg(long, env = "COFFER_PKCS11_TOKEN", default_value = "coffer")]
    pub pkcs11_token: String,
    /// File holding the user PIN (else env COFFER_PKCS11_PIN).
    #[arg(long)]
    pub pkcs11_pin_file: Option<PathBuf>,
    /// Label of the AES-256 wrapping key inside the token (default "coffer-realm-wrap").
    #[arg(long, default_value = "coffer-realm-wrap")]
    pub pkcs11_key_label: String,
}

/// The realm master secret. Zeroized on drop; neither `Clone` nor `Copy`;
/// `Debug` never shows it.
pub struct MasterSecret(Zeroizing<[u8; MASTER_LEN]>);

impl MasterSecret {
    /// The 32 secret bytes. Do not copy them anywhere that is not zeroized.
    pub fn expose_secret(&self) -> &[u8; MASTER_LEN] {
        &self.0
    }

    /// Wraps existing bytes (for tests and for code that derives a realm from
    /// known material). The caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; MASTER_LEN]) -> Self {
        MasterSecret(Zeroizing::new(bytes))
    }

    fn generate() -> Result<Self, CustodyError> {
        let mut secret = Zeroizing::new([0u8; MASTER_LEN]);
        getrandom::fill(&mut secret[..]).map_err(|e| CustodyError::Rng(e.to_string()))?;
        Ok(MasterSecret(secret))
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(REDACTED)")
    }
}

/// Everything that can go wrong keeping the master secret. Messages never
/// contain secret material or the PIN.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// No key file / blob in the data directory.
    #[error("no realm master secret at {}: run `coffer-vault init` first{hint}", path.display())]
    MissingKeyFile {
        /// The file that was expected.
        path: PathBuf,
        /// Extra advice (e.g. the other custody mode's file exists), starting with "; " or empty.
        hint: String,
    },
    /// `init` refuses to overwrite an existing master secret.
    #[error(
        "{} already exists: the realm is already initialised and init refuses to overwrite its master secret",
        path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The software key file is accessible by group or others.
    #[error(
        "permissions {mode:04o} for {} are too open: the realm key file must not be accessible by group or others (run `chmod 600 {}`)",
        path.display(), path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file or blob does not parse.
    #[error("malformed {}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The OS random number generator failed.
    #[error("random number generator failed: {0}")]
    Rng(String),
    /// No PIN given.
    #[error("no PKCS#11 user PIN: pass --pkcs11-pin-file or set {PIN_ENV}")]
    MissingPin,
    /// The PIN file is empty.
    #[error("PKCS#11 PIN file {} is empty", path.display())]
    EmptyPin {
        /// The PIN file.
        path: PathBuf,
    },
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("failed to load PKCS#11 module {}: {reason}", path.display())]
    ModuleLoad {
        /// The module path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No initialised token carries the requested label.
    #[error("PKCS#11 token '{label}' not found via {}; tokens found: {}", module.display(), list_labels(found))]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// The module.
        module: PathBuf,
        /// Labels of the initialised tokens the module reports.
        found: Vec<String>,
    },
    /// Several tokens carry the requested label.
    #[error("{count} PKCS#11 tokens are labelled '{label}': labels must be unique")]
    TokenAmbiguous {
        /// The label.
        label: String,
        /// How many tokens carry it.
        count: usize,
    },
    /// The token rejected the PIN.
    #[error("wrong PIN for PKCS#11 token '{token}'")]
    WrongPin {
        /// The token label.
        token: String,
    },
    /// The token's user PIN is locked after too many wrong attempts.
    #[error("the user PIN of PKCS#11 token '{token}' is locked")]
    PinLocked {
        /// The token label.
        token: String,
    },
    /// The wrapping key is not in the token.
    #[error("AES key '{key}' not found in PKCS#11 token '{token}'{hint}")]
    KeyNotFound {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// Extra advice, starting with "; " or empty.
        hint: String,
    },
    /// Several AES keys carry the wrapping key's label.
    #[error("{count} AES keys labelled '{key}' in PKCS#11 token '{token}': labels must be unique")]
    KeyAmbiguous {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// How many.
        count: usize,
    },
    /// The key found does not have the protection this module requires.
    #[error(
        "AES key '{key}' in PKCS#11 token '{token}' is unsuitable ({reason}); refusing to use it"
    )]
    KeyPolicy {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The token could not decrypt the blob.
    #[error(
        "could not unwrap the realm master secret in {} with key '{key}' of PKCS#11 token '{token}': the blob was tampered with, or this is the wrong token or key ({detail})",
        path.display()
    )]
    UnwrapFailed {
        /// The blob.
        path: PathBuf,
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// What the token said.
        detail: String,
    },
    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {op} failed: {source}")]
    Pkcs11 {
        /// What was being done.
        op: &'static str,
        /// The cryptoki error.
        #[source]
        source: P11Error,
    },
}

fn list_labels(labels: &[String]) -> String {
    if labels.is_empty() {
        "none (no initialised token in any slot)".to_owned()
    } else {
        labels
            .iter()
            .map(|l| format!("'{l}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn p11(op: &'static str) -> impl FnOnce(P11Error) -> CustodyError {
    move |source| CustodyError::Pkcs11 { op, source }
}

/// Creates a fresh master secret, persists it according to `args`, and
/// returns it. Refuses if the data directory already holds one (in either
/// custody mode). Creates `data_dir` (mode 0700) if missing.
pub fn create_master(args: &CustodyArgs, data_dir: &Path) -> Result<MasterSecret, CustodyError> {
    for name in [SOFTWARE_KEY_FILE, PKCS11_BLOB_FILE] {
        let path = data_dir.join(name);
        if path.symlink_metadata().is_ok() {
            return Err(CustodyError::AlreadyExists { path });
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| CustodyError::Io {
            op: "creating data directory",
            path: data_dir.to_owned(),
            source,
        })?;
    match &args.pkcs11_module {
        None => create_software(&data_dir.join(SOFTWARE_KEY_FILE)),
        Some(module) => create_pkcs11(args, module, &data_dir.join(PKCS11_BLOB_FILE)),
    }
}

/// Loads the master secret kept according to `args`.
pub fn load_master(args: &CustodyArgs, data_dir: &Path) -> Result<MasterSecret, CustodyError> {
    let (name, other, other_hint) = match args.pkcs11_module {
        None => (
            SOFTWARE_KEY_FILE,
            PKCS11_BLOB_FILE,
            "this realm's master secret is in a PKCS#11 token: pass --pkcs11-module",
        ),
        Some(_) => (
            PKCS11_BLOB_FILE,
            SOFTWARE_KEY_FILE,
            "this realm's master secret is in a software key file: omit --pkcs11-module",
        ),
    };
    let path = data_dir.join(name);
    let loaded = match &args.pkcs11_module {
        None => load_software(&path),
        Some(module) => load_pkcs11(args, module, &path),
    };
    match loaded {
        Err(CustodyError::Io {
            path: failed,
            source,
            ..
        }) if failed == path && source.kind() == io::ErrorKind::NotFound => {
            let other = data_dir.join(other);
            let hint = if other.exists() {
                format!("; found {}: {other_hint}", other.display())
            } else {
                String::new()
            };
            Err(CustodyError::MissingKeyFile { path, hint })
        }
        result => result,
    }
}

/// One-line description of where the master secret is kept, for logs and
/// `--help`-style output. Contains no secrets.
pub fn describe(args: &CustodyArgs) -> String {
    match &args.pkcs11_module {
        None => format!(
            "software key file {SOFTWARE_KEY_FILE} in the data directory (development only)"
        ),
        Some(module) => format!(
            "PKCS#11 token '{}' via {} (wrapping key '{}')",
            args.pkcs11_token,
            module.display(),
            args.pkcs11_key_label
        ),
    }
}

// ---------------------------------------------------------------------------
// Files

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CustodyError + 'a {
    move |source| CustodyError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` (mode 0600) atomically, failing with
/// [`CustodyError::AlreadyExists`] if `path` exists: the data go to a
/// temporary file that is fsynced, then hard-linked to `path` (link(2) never
/// replaces an existing name), then the directory is fsynced.
fn write_new_file(path: &Path, contents: &[u8]) -> Result<(), CustodyError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| CustodyError::Rng(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(nonce)
    ));

    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(CustodyError::Io {
            op: "writing",
            path: tmp,
            source,
        });
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(CustodyError::AlreadyExists {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(CustodyError::Io {
                op: "creating",
                path: path.to_owned(),
                source,
            })
        }
    }
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Some filesystems cannot fsync a directory; the file itself is synced.
        Err(e) if e.kind() != io::ErrorKind::InvalidInput => Err(CustodyError::Io {
            op: "syncing directory",
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Reads a small file into a zeroizing buffer. If `private`, refuses a file
/// that group or others may access.
fn read_small_file(path: &Path, private: bool) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    if !meta.is_file() {
        return Err(CustodyError::Malformed {
            path: path.to_owned(),
            reason: "not a regular file".to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if private && mode & 0o077 != 0 {
        return Err(CustodyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(CustodyError::Malformed {
            path: path.to_owned(),
            reason: format!("{} bytes is too large", meta.len()),
        });
    }
    // Pre-size so that the buffer never reallocates (which would leave an
    // un-zeroized copy behind).
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize + 1));
    (&mut file)
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    if buf.len() as u64 > MAX_FILE_LEN {
        return Err(CustodyError::Malformed {
            path: path.to_owned(),
            reason: "file is too large".to_owned(),
        });
    }
    Ok(buf)
}

fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

// ---------------------------------------------------------------------------
// Software mode

fn create_software(path: &Path) -> Result<MasterSecret, CustodyError> {
    let master = MasterSecret::generate()?;
    let mut line = Zeroizing::new([0u8; 2 * MASTER_LEN + 1]);
    hex::encode_to_slice(master.expose_secret(), &mut line[..2 * MASTER_LEN]).map_err(|e| {
        CustodyError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    line[2 * MASTER_LEN] = b'\n';
    write_new_file(path, &line[..])?;
    Ok(master)
}

fn load_software(path: &Path) -> Result<MasterSecret, CustodyError> {
    let content = read_small_file(path, true)?;
    let hex_digits = trim_line_end(&content);
    let mut secret = Zeroizing::new([0u8; MASTER_LEN]);
    if hex_digits.len() != 2 * MASTER_LEN
        || hex::decode_to_slice(hex_digits, &mut secret[..]).is_err()
    {
        // Do not echo the content: it is (almost) the secret.
        return Err(CustodyError::Malformed {
            path: path.to_owned(),
            reason: format!(
                "expected one line of {} hex digits (the {MASTER_LEN}-byte master secret)",
                2 * MASTER_LEN
            ),
        });
    }
    Ok(MasterSecret(secret))
}

// ---------------------------------------------------------------------------
// PKCS#11 mode

/// The on-disk wrapped blob (`realm.key.p11`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedBlob {
    version: u32,
    mechanism: String,
    aad: String,
    token_label: String,
    key_label: String,
    iv: String,
    ciphertext: String,
}

/// C_Initialize/C_Finalize are process-global: serialise this module's use
/// of PKCS#11 so that two custody operations never finalize under each other.
static P11_LOCK: Mutex<()> = Mutex::new(());

/// A loaded and initialised PKCS#11 module, finalized on drop (unless some
/// other part of the process had initialised it already).
struct Module {
    ctx: Pkcs11,
    path: PathBuf,
    finalize: bool,
    _lock: MutexGuard<'static, ()>,
}

impl Module {
    fn open(path: &Path) -> Result<Self, CustodyError> {
        let lock = P11_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let load_err = |reason: String| CustodyError::ModuleLoad {
            path: path.to_owned(),
            reason,
        };
        if !path.exists() {
            return Err(load_err("no such file".to_owned()));
        }
        let ctx = Pkcs11::new(path).map_err(|e| load_err(e.to_string()))?;
        let finalize = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(e) => return Err(load_err(format!("C_Initialize: {e}"))),
        };
        Ok(Module {
            ctx,
            path: path.to_owned(),
            finalize,
            _lock: lock,
        })
    }

    fn find_token(&self, label: &str) -> Result<Slot, CustodyError> {
        let slots = self
            .ctx
            .get_slots_with_initialized_token()
            .map_err(p11("C_GetSlotList"))?;
        let mut found = Vec::new();
        let mut matching = Vec::new();
        for slot in slots {
            let info = self
                .ctx
                .get_token_info(slot)
                .map_err(p11("C_GetTokenInfo"))?;
            if info.label() == label {
                matching.push(slot);
            }
            found.push(info.label().to_owned());
        }
        match matching.as_slice() {
            [slot] => Ok(*slot),
            [] => Err(CustodyError::TokenNotFound {
                label: label.to_owned(),
                module: self.path.clone(),
                found,
            }),
            many => Err(CustodyError::TokenAmbiguous {
                label: label.to_owned(),
                count: many.len(),
            }),
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.finalize {
            // Nothing useful to do about a failure here.
            let _ = self.ctx.clone().finalize();
        }
    }
}

fn read_pin(args: &CustodyArgs) -> Result<AuthPin, CustodyError> {
    let pin: Zeroizing<Vec<u8>> = match &args.pkcs11_pin_file {
        Some(path) => {
            let content = read_small_file(path, false)?;
            let pin = Zeroizing::new(trim_line_end(&content).to_vec());
            if pin.is_empty() {
                return Err(CustodyError::EmptyPin { path: path.clone() });
            }
            pin
        }
        None => match std::env::var(PIN_ENV) {
            Ok(v) if !v.is_empty() => Zeroizing::new(v.into_bytes()),
            _ => return Err(CustodyError::MissingPin),
        },
    };
    let pin_str = std::str::from_utf8(&pin).map_err(|_| CustodyError::Malformed {
        path: args
            .pkcs11_pin_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("${PIN_ENV}"))),
        reason: "the PIN is not valid UTF-8".to_owned(),
    })?;
    // Box<str>::from copies into an exact-size allocation that AuthPin
    // (secrecy::SecretString) zeroizes; `pin` is zeroized on return.
    Ok(AuthPin::new(Box::<str>::from(pin_str)))
}

/// Opens the module, finds the token, logs in as user, and runs `f` with the
/// logged-in session.
fn with_token<T>(
    args: &CustodyArgs,
    module_path: &Path,
    read_write: bool,
    f: impl FnOnce(&Session) -> Result<T, CustodyError>,
) -> Result<T, CustodyError> {
    let pin = read_pin(args)?;
    let module = Module::open(module_path)?;
    let slot = module.find_token(&args.pkcs11_token)?;
    let session = if read_write {
        module.ctx.open_rw_session(slot)
    } else {
        module.ctx.open_ro_session(slot)
    }
    .map_err(p11("C_OpenSession"))?;
    let token = || args.pkcs11_token.clone();
    let logged_in = match session.login(UserType::User, Some(&pin)) {
        Ok(()) => true,
        Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => false,
        Err(P11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            return Err(CustodyError::WrongPin { token: token() })
        }
        Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
            return Err(CustodyError::PinLocked { token: token() })
        }
        Err(e) => return Err(p11("C_Login")(e)),
    };
    drop(pin);
    let result = f(&session);
    if logged_in {
        let _ = session.logout();
    }
    drop(session);
    drop(module);
    result
}

fn ulong(n: usize) -> Result<Ulong, CustodyError> {
    Ulong::try_from(n).map_err(p11("integer conversion"))
}

fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Finds the wrapping key; `None` if absent. Checks that it is a sensitive,
/// non-extractable AES-256 token object allowed to do `needed`, and that it
/// has never left the token in the clear: CKA_ALWAYS_SENSITIVE and
/// CKA_NEVER_EXTRACTABLE are true only for a key generated sensitive and
/// non-extractable on the token (an imported key, or one whose flags were
/// tightened after the fact, may have copies outside it), and CKA_TOKEN for
/// one that outlives the session (docs/key-custody.md: the key never leaves
/// the token).
fn find_key(
    session: &Session,
    args: &CustodyArgs,
    needed: &[AttributeType],
) -> Result<Option<ObjectHandle>, CustodyError> {
    let keys = session
        .find_objects(&key_template(&args.pkcs11_key_label))
        .map_err(p11("C_FindObjects"))?;
    let key = match keys.as_slice() {
        [] => return Ok(None),
        [key] => *key,
        many => {
            return Err(CustodyError::KeyAmbiguous {
                token: args.pkcs11_token.clone(),
                key: args.pkcs11_key_label.clone(),
                count: many.len(),
            })
        }
    };
    let mut types = vec![
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::AlwaysSensitive,
        AttributeType::NeverExtractable,
        AttributeType::Token,
        AttributeType::ValueLen,
    ];
    types.extend_from_slice(needed);
    let attrs = session
        .get_attributes(key, &types)
        .map_err(p11("C_GetAttributeValue"))?;
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for attr in &attrs {
        seen.push(attr.attribute_type());
        match attr {
            Attribute::Sensitive(false) => problems.push("CKA_SENSITIVE is false".to_owned()),
            Attribute::Extractable(true) => problems.push("CKA_EXTRACTABLE is true".to_owned()),
            Attribute::AlwaysSensitive(false) => problems.push(
                "CKA_ALWAYS_SENSITIVE is false (the key was not sensitive at some point: it may exist outside the token)".to_owned(),
            ),
            Attribute::NeverExtractable(false) => problems.push(
                "CKA_NEVER_EXTRACTABLE is false (the key was imported or once extractable: it may exist outside the token)".to_owned(),
            ),
            Attribute::Token(false) => {
                problems.push("CKA_TOKEN is false (a session object, not stored on the token)".to_owned())
            }
            Attribute::ValueLen(len) if usize::from(*len) != MASTER_LEN => {
                problems.push(format!("{}-bit key, want 256", usize::from(*len) * 8))
            }
            Attribute::Encrypt(false) => problems.push("CKA_ENCRYPT is false".to_owned()),
            Attribute::Decrypt(false) => problems.push("CKA_DECRYPT is false".to_owned()),
            _ => {}
        }
    }
    for t in &types {
        if !seen.contains(t) {
            problems.push(format!("{t} unavailable"));
        }
    }
    if problems.is_empty() {
        Ok(Some(key))
    } else {
        Err(CustodyError::KeyPolicy {
            token: args.pkcs11_token.clone(),
            key: args.pkcs11_key_label.clone(),
            reason: problems.join(", "),
        })
    }
}

fn generate_key(session: &Session, args: &CustodyArgs) -> Result<ObjectHandle, CustodyError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(args.pkcs11_key_label.as_bytes().to_vec()),
        Attribute::ValueLen(ulong(MASTER_LEN)?),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(p11("C_GenerateKey (AES-256 wrapping key)"))
}

fn create_pkcs11(
    args: &CustodyArgs,
    module: &Path,
    path: &Path,
) -> Result<MasterSecret, CustodyError> {
    let master = MasterSecret::generate()?;
    let mut iv = [0u8; GCM_IV_LEN];
    getrandom::fill(&mut iv).map_err(|e| CustodyError::Rng(e.to_string()))?;
    let ciphertext = with_token(args, module, true, |session| {
        let key = match find_key(
            session,
            args,
            &[AttributeType::Encrypt, AttributeType::Decrypt],
        )? {
            Some(key) => key,
            None => generate_key(session, args)?,
        };
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, WRAP_AAD, ulong(GCM_TAG_BITS)?)
            .map_err(p11("AES-GCM parameters"))?;
        session
            .encrypt(&Mechanism::AesGcm(params), key, master.expose_secret())
            .map_err(p11("C_Encrypt (AES-GCM wrap of the master secret)"))
    })?;
    if ciphertext.len() != MASTER_LEN + GCM_TAG_BITS / 8 {
        return Err(CustodyError::Pkcs11 {
            op: "C_Encrypt (unexpected AES-GCM output length)",
            source: P11Error::InvalidValue,
        });
    }
    let blob = WrappedBlob {
        version: BLOB_VERSION,
        mechanism: BLOB_MECHANISM.to_owned(),
        aad: String::from_utf8_lossy(WRAP_AAD).into_owned(),
        token_label: args.pkcs11_token.clone(),
        key_label: args.pkcs11_key_label.clone(),
        iv: hex::encode(iv),
        ciphertext: hex::encode(&ciphertext),
    };
    let mut json = serde_json::to_vec(&blob).map_err(|e| CustodyError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    write_new_file(path, &json)?;
    Ok(master)
}

fn load_pkcs11(
    args: &CustodyArgs,
    module: &Path,
    path: &Path,
) -> Result<MasterSecret, CustodyError> {
    let malformed = |reason: String| CustodyError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let content = read_small_file(path, false)?;
    let blob: WrappedBlob =
        serde_json::from_slice(&content).map_err(|e| malformed(e.to_string()))?;
    if blob.version != BLOB_VERSION {
        return Err(malformed(format!("unsupported version {}", blob.version)));
    }
    if blob.mechanism != BLOB_MECHANISM || blob.aad.as_bytes() != WRAP_AAD {
        return Err(malformed(format!(
            "unsupported mechanism/aad {}/{}",
            blob.mechanism, blob.aad
        )));
    }
    let mut iv = [0u8; GCM_IV_LEN];
    hex::decode_to_slice(&blob.iv, &mut iv)
        .map_err(|e| malformed(format!("iv: {e} (want {GCM_IV_LEN} bytes)")))?;
    let ciphertext =
        hex::decode(&blob.ciphertext).map_err(|e| malformed(format!("ciphertext: {e}")))?;

    let made_with =
        if blob.token_label != args.pkcs11_token || blob.key_label != args.pkcs11_key_label {
            format!(
                "; the blob was made with token '{}', key '{}'",
                blob.token_label, blob.key_label
            )
        } else {
            String::new()
        };
    let unwrap_failed = |detail: String| CustodyError::UnwrapFailed {
        path: path.to_owned(),
        token: args.pkcs11_token.clone(),
        key: args.pkcs11_key_label.clone(),
        detail: format!("{detail}{made_with}"),
    };

    let plaintext = with_token(args, module, false, |session| {
        let key = find_key(session, args, &[AttributeType::Decrypt])?.ok_or_else(|| {
            CustodyError::KeyNotFound {
                token: args.pkcs11_token.clone(),
                key: args.pkcs11_key_label.clone(),
                hint: made_with.clone(),
            }
        })?;
        let params = GcmParams::new(&mut iv, WRAP_AAD, ulong(GCM_TAG_BITS)?)
            .map_err(p11("AES-GCM parameters"))?;
        match session.decrypt(&Mechanism::AesGcm(params), key, &ciphertext) {
            Ok(plain) => Ok(Zeroizing::new(plain)),
            Err(P11Error::Pkcs11(rv, Function::DecryptInit)) => {
                Err(unwrap_failed(format!("C_DecryptInit: {rv:?}")))
            }
            Err(P11Error::Pkcs11(rv, Function::Decrypt)) => {
                Err(unwrap_failed(format!("C_Decrypt: {rv:?}")))
            }
            Err(e) => Err(p11("C_Decrypt")(e)),
        }
    })?;
    if plaintext.len() != MASTER_LEN {
        return Err(unwrap_failed(format!(
            "decrypted {} bytes, want {MASTER_LEN}",
            plaintext.len()
        )));
    }
    let mut secret = Zeroizing::new([0u8; MASTER_LEN]);
    secret.copy_from_slice(&plaintext);
    Ok(MasterSecret(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let m = MasterSecret::from_bytes([7u8; 32]);
        assert_eq!(format!("{m:?}"), "MasterSecret(REDACTED)");
    }

    #[test]
    fn trims_one_line_end() {
        assert_eq!(trim_line_end(b"1234\n"), b"1234");
        assert_eq!(trim_line_end(b"1234\r\n"), b"1234");
        assert_eq!(trim_line_end(b"1234"), b"1234");
        assert_eq!(trim_line_end(b"1234\n\n"), b"1234\n");
    }

    #[test]
    fn describe_modes() {
        let mut args = CustodyArgs {
            pkcs11_module: None,
            pkcs11_token: "coffer".into(),
            pkcs11_pin_file: None,
            pkcs11_key_label: "coffer-realm-wrap".into(),
        };
        assert!(describe(&args).starts_with("software key file realm.key"));
        args.pkcs11_module = Some("/usr/lib/softhsm/libsofthsm2.so".into());
        assert_eq!(
            describe(&args),
            "PKCS#11 token 'coffer' via /usr/lib/softhsm/libsofthsm2.so (wrapping key 'coffer-realm-wrap')"
        );
    }
}
