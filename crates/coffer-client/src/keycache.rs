//! The device's cache of `K` for repositories in password mode, so that
//! daily backups need neither the password nor the vault.
//!
//! [`KeyCache`] is the interface. Where the OS has a keychain (macOS
//! Keychain, Windows Credential Manager, the Secret Service on a Linux
//! desktop) a backend for it belongs behind this trait; none is implemented
//! in this build, which targets servers without one, so [`default_cache`]
//! always returns the file backend, [`FileKeyCache`]:
//!
//! * one file per repository, `$XDG_DATA_HOME/coffer/keys/<repo-id-hex>.key`
//!   (else `~/.local/share/coffer/keys/…`), mode 0600, in a directory of
//!   mode 0700;
//! * written whole or not at all (a temporary file in the same directory,
//!   fsynced, renamed into place, the directory fsynced);
//! * refused when readable or writable by group or others, or inside a
//!   directory others may write to: a key exposed that way is reported, not used.
//!
//! The file holds `K` in the clear: anyone who can read it as this user can
//! read the backups, exactly as with a recovery key saved on the device.
//! Deleting it (`forget`) unlinks it; on flash storage and copy-on-write
//! file systems an overwrite would not reliably destroy the old blocks, so
//! none is attempted.
//!
//! ```
//! use coffer_client::keycache::{FileKeyCache, KeyCache};
//! # let dir = tempfile::tempdir().unwrap();
//! let cache = FileKeyCache::new(dir.path().join("keys"));
//! let k = coffer_client::BackupKey::from_bytes([7; 32]);
//! cache.store(&[1; 16], &k).unwrap();
//! assert_eq!(cache.load(&[1; 16]).unwrap().unwrap().expose_secret(), &[7; 32]);
//! assert!(cache.forget(&[1; 16]).unwrap());
//! assert!(cache.load(&[1; 16]).unwrap().is_none());
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coffer_crypto::BackupKey;
use zeroize::Zeroizing;

/// First line of a cache file.
const MAGIC: &str = "coffer-key-cache/1";

/// Why the key cache could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyCacheError {
    /// The cache file or its directory is open to other users: not used.
    #[error("{} has mode {mode:03o}: a cached key must be readable by its owner only (chmod {want:03o} it, or delete it and open the repository again with the password)", path.display())]
    InsecurePermissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode it should have.
        want: u32,
    },
    /// The cache file does not have the expected content.
    #[error("the key cache file {} is damaged ({detail}); delete it (`coffer key forget`) and open the repository again with the password", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: &'static str,
    },
    /// Reading or writing failed.
    #[error("key cache {}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// No place for the cache: neither `XDG_DATA_HOME` nor `HOME` is set.
    #[error("no place for the key cache: set XDG_DATA_HOME or HOME")]
    NoLocation,
    /// The OS random number generator failed.
    #[error(transparent)]
    Random(#[from] coffer_crypto::RandomError),
}

fn io(path: &Path, error: std::io::Error) -> KeyCacheError {
    KeyCacheError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Where a device keeps `K` per repository id.
pub trait KeyCache {
    /// `K` for the repository, if cached.
    fn load(&self, repo_id: &[u8; 16]) -> Result<Option<BackupKey>, KeyCacheError>;
    /// Caches `K` for the repository (replacing any previous entry).
    fn store(&self, repo_id: &[u8; 16], k: &BackupKey) -> Result<(), KeyCacheError>;
    /// Drops the entry; returns whether there was one.
    fn forget(&self, repo_id: &[u8; 16]) -> Result<bool, KeyCacheError>;
    /// Where the entry lives, for messages.
    fn describe(&self, repo_id: &[u8; 16]) -> String;
}

/// The device's key cache: the OS keychain where this build has a backend
/// for one (none yet), else [`FileKeyCache::default_location`].
pub fn default_cache() -> Result<Box<dyn KeyCache>, KeyCacheError> {
    Ok(Box::new(FileKeyCache::new(
        FileKeyCache::default_location()?
    )))
}

/// Key files in a directory private to the user.
#[derive(Debug, Clone)]
pub struct FileKeyCache {
    dir: PathBuf,
}

impl FileKeyCache {
    /// A cache in `dir` (created with mode 0700 on the first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_DATA_HOME/coffer/keys`, else `~/.local/share/coffer/keys`.
    pub fn default_location() -> Result<PathBuf, KeyCacheError> {
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d).join("coffer/keys"));
        }
        if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return Ok(PathBuf::from(h).join(".local/share/coffer/keys"));
        }
        Err(KeyCacheError::NoLocation)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one repository.
    pub fn path(&self, repo_id: &[u8; 16]) -> PathBuf {
        self.dir.join(format!("{}.key", hex::encode(repo_id)))
    }

    /// Refuses a directory others may write to (they could swap the file).
    fn check_dir(&self) -> Result<(), KeyCacheError> {
        let meta = fs::metadata(&self.dir).map_err(|e| io(&self.dir, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(KeyCacheError::InsecurePermissions {
                path: self.dir.clone(),
                mode,
                want: 0o700,
            });
        }
        Ok(())
    }

    fn create_dir(&self) -> Result<(), KeyCacheError> {
        if !self.dir.is_dir() {
            if let Some(parent) = self.dir.parent() {
                fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&self.dir, e)),
            }
        }
        self.check_dir()
    }
}

/// Most bytes a key cache file may hold.
const MAX_FILE: usize = 4096;

fn encode(repo_id: &[u8; 16], k: &BackupKey) -> Zeroizing<String> {
    // The key's hex goes straight into a buffer sized for the whole text, so
    // no unwiped copy (a temporary String, a reallocation) is left behind.
    let mut key_hex = Zeroizing::new([0u8; 64]);
    let mut out = Zeroizing::new(String::with_capacity(MAGIC.len() + 6 + 32 + 5 + 64 + 2));
    if hex::encode_to_slice(k.expose_secret(), &mut key_hex[..]).is_ok() {
        if let Ok(key_hex) = std::str::from_utf8(&key_hex[..]) {
            out.push_str(MAGIC);
            out.push_str("\nrepo ");
            out.push_str(&hex::encode(repo_id));
            out.push_str("\nkey ");
            out.push_str(key_hex);
            out.push('\n');
        }
    }
    out
}

fn decode(path: &Path, repo_id: &[u8; 16], text: &str) -> Result<BackupKey, KeyCacheError> {
    let corrupt = |detail| KeyCacheError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(corrupt("not a coffer key cache file"));
    }
    let repo = lines
        .next()
        .and_then(|l| l.strip_prefix("repo "))
        .ok_or_else(|| corrupt("no repository line"))?;
    if repo != hex::encode(repo_id) {
        return Err(corrupt("it belongs to another repository"));
    }
    let key_hex = lines
        .next()
        .and_then(|l| l.strip_prefix("key "))
        .ok_or_else(|| corrupt("no key line"))?;
    if lines.next().is_some() {
        return Err(corrupt("trailing lines"));
    }
    let mut k = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(key_hex, &mut k[..])
        .map_err(|_| corrupt("the key is not 64 hex digits"))?;
    Ok(BackupKey::from_bytes(*k))
}

impl KeyCache for FileKeyCache {
    fn load(&self, repo_id: &[u8; 16]) -> Result<Option<BackupKey>, KeyCacheError> {
        let path = self.path(repo_id);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        self.check_dir()?;
        // Checked on the open handle: what is read is what was checked.
        let meta = f.metadata().map_err(|e| io(&path, e))?;
        if !meta.is_file() {
            return Err(KeyCacheError::Corrupt {
                path,
                detail: "not a regular file",
            });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyCacheError::InsecurePermissions {
                path,
                mode,
                want: 0o600,
            });
        }
        if meta.len() > MAX_FILE as u64 {
            return Err(KeyCacheError::Corrupt {
                path,
                detail: "too large",
            });
        }
        // Sized beforehand, and the read bounded, so that the buffer holding
        // the key never reallocates (leaving an unwiped copy behind).
        let mut text = Zeroizing::new(String::with_capacity(MAX_FILE + 1));
        (&mut f)
            .take(MAX_FILE as u64)
            .read_to_string(&mut text)
            .map_err(|e| io(&path, e))?;
        decode(&path, repo_id, &text).map(Some)
    }

    fn store(&self, repo_id: &[u8; 16], k: &BackupKey) -> Result<(), KeyCacheError> {
        self.create_dir()?;
        let path = self.path(repo_id);
        let suffix: [u8; 8] = coffer_crypto::random_bytes()?;
        let tmp = self.dir.join(format!(
            ".{}.tmp-{}",
            hex::encode(repo_id),
            hex::encode(suffix)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The umask may only remove bits; make sure of 0600 exactly.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(encode(repo_id, k).as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io(&path, e));
        }
        // The rename is durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, e))?;
        Ok(())
    }

    fn forget(&self, repo_id: &[u8; 16]) -> Result<bool, KeyCacheError> {
        let path = self.path(repo_id);
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = File::open(&self.dir).and_then(|d| d.sync_all());
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn describe(&self, repo_id: &[u8; 16]) -> String {
        self.path(repo_id).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [0xab; 16];

    fn cache() -> (tempfile::TempDir, FileKeyCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = FileKeyCache::new(dir.path().join("share/coffer/keys"));
        (dir, c)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn store_load_forget() {
        let (_d, c) = cache();
        assert!(c.load(&ID).unwrap().is_none());
        assert!(!c.forget(&ID).unwrap());
        c.store(&ID, &BackupKey::from_bytes([3; 32])).unwrap();
        assert_eq!(c.load(&ID).unwrap().unwrap().expose_secret(), &[3; 32]);
        // Another repository's entry is separate.
        assert!(c.load(&[1; 16]).unwrap().is_none());
        // Replaced whole.
        c.store(&ID, &BackupKey::from_bytes([4; 32])).unwrap();
        assert_eq!(c.load(&ID).unwrap().unwrap().expose_secret(), &[4; 32]);
        assert!(c.forget(&ID).unwrap());
        assert!(!c.path(&ID).exists());
        assert!(c.load(&ID).unwrap().is_none());
    }

    #[test]
    fn file_0600_in_dir_0700_whatever_the_umask() {
        let (_d, c) = cache();
        c.store(&ID, &BackupKey::from_bytes([3; 32])).unwrap();
        assert_eq!(mode(c.dir()), 0o700);
        assert_eq!(mode(&c.path(&ID)), 0o600);
        let text = fs::read_to_string(c.path(&ID)).unwrap();
        assert!(text.starts_with("coffer-key-cache/1\nrepo abab"));
        assert!(text.contains(&"03".repeat(32)));
    }

    #[test]
    fn write_is_atomic_and_leaves_no_temporaries() {
        let (_d, c) = cache();
        c.store(&ID, &BackupKey::from_bytes([3; 32])).unwrap();
        // A leftover temporary from a crash is ignored and the store still works.
        fs::write(c.dir().join(".abab.tmp-dead"), b"partial").unwrap();
        c.store(&ID, &BackupKey::from_bytes([5; 32])).unwrap();
        let names: Vec<String> = fs::read_dir(c.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&format!("{}.key", hex::encode(ID))));
        // The store replaced the file by rename: a reader holding the old
        // file keeps reading the old, complete content.
        let old = File::open(c.path(&ID)).unwrap();
        c.store(&ID, &BackupKey::from_bytes([6; 32])).unwrap();
        let mut s = String::new();
        (&old).read_to_string(&mut s).unwrap();
        assert!(s.contains(&"05".repeat(32)));
        assert_eq!(c.load(&ID).unwrap().unwrap().expose_secret(), &[6; 32]);
    }

    #[test]
    fn readable_by_others_is_refused() {
        let (_d, c) = cache();
        c.store(&ID, &BackupKey::from_bytes([3; 32])).unwrap();
        for bad in [0o640, 0o604, 0o660, 0o644] {
            fs::set_permissions(c.path(&ID), fs::Permissions::from_mode(bad)).unwrap();
            let e = c.load(&ID).unwrap_err();
            assert!(
                matches!(e, KeyCacheError::InsecurePermissions { mode, .. } if mode == bad),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        fs::set_permissions(c.path(&ID), fs::Permissions::from_mode(0o400)).unwrap();
        assert!(c.load(&ID).unwrap().is_some());
        fs::set_permissions(c.dir(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            c.load(&ID).unwrap_err(),
            KeyCacheError::InsecurePermissions { .. }
        ));
        assert!(matches!(
            c.store(&ID, &BackupKey::from_bytes([3; 32])).unwrap_err(),
            KeyCacheError::InsecurePermissions { .. }
        ));
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let (_d, c) = cache();
        c.store(&ID, &BackupKey::from_bytes([3; 32])).unwrap();
        let good = fs::read_to_string(c.path(&ID)).unwrap();
        let cases = [
            good.replace("coffer-key-cache/1", "something"),
            good.replace(&hex::encode(ID), &hex::encode([1u8; 16])),
            good.replace(&"03".repeat(32), &"zz".repeat(32)),
            good[..good.len() - 10].to_string(),
            format!("{good}extra\n"),
        ];
        for text in cases {
            fs::write(c.path(&ID), &text).unwrap();
            assert!(
                matches!(c.load(&ID), Err(KeyCacheError::Corrupt { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn default_location_follows_xdg() {
        // Read-only check of the rule on the current environment.
        let loc = FileKeyCache::default_location();
        match (std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) if !x.is_empty() => {
                assert_eq!(loc.unwrap(), PathBuf::from(x).join("coffer/keys"))
            }
            (_, Some(h)) if !h.is_empty() => assert_eq!(
                loc.unwrap(),
                PathBuf::from(h).join(".local/share/coffer/keys")
            ),
            _ => assert!(loc.is_err()),
        }
    }
}
