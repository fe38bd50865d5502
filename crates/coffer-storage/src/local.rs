//! A repository in a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::temporaries::{is_stale, temp_file_name, TMP_DIR};
use crate::{check_range, BlobStore, CreateMode, ObjectInfo, PutOutcome, StorageError};

/// Objects as files under a root directory.
///
/// Every write goes to a temporary file under `.tmp/`, is fsynced, then
/// renamed (or hard-linked, for a conditional create) into place and the
/// directory fsynced: a crash leaves either the whole object or none.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn write_temp(&self, name: &str, data: &[u8]) -> Result<PathBuf, StorageError> {
        let tmp_dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir).map_err(|e| self.write_err(name, e))?;
        let tmp = tmp_dir.join(temp_file_name(name));
        let res = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(self.write_err(name, e));
        }
        Ok(tmp)
    }

    fn parent_ready(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| self.write_err(name, e))?;
        }
        Ok(())
    }

    fn read_err(&self, name: &str, e: std::io::Error) -> StorageError {
        StorageError::io(name, &self.location(), e)
    }

    fn write_err(&self, name: &str, e: std::io::Error) -> StorageError {
        StorageError::write_io(name, &self.location(), e)
    }
}

fn sync_dir(dir: Option<&Path>) {
    // Directory fsync makes the rename durable; failure here is not fatal to
    // correctness of what readers see, only to durability on power loss.
    if let Some(d) = dir {
        if let Ok(f) = File::open(d) {
            let _ = f.sync_all();
        }
    }
}

impl BlobStore for LocalStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let path = self.path(name);
        self.parent_ready(name, &path)?;
        let tmp = self.write_temp(name, data)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(self.write_err(name, e));
        }
        sync_dir(path.parent());
        Ok(())
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        let path = self.path(name);
        if path.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        self.parent_ready(name, &path)?;
        let tmp = self.write_temp(name, data)?;
        // link(2) fails if the target exists: an atomic create-if-absent.
        let res = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => {
                sync_dir(path.parent());
                Ok(PutOutcome::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(self.write_err(name, e)),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        fs::read(self.path(name)).map_err(|e| self.read_err(name, e))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let mut f = File::open(self.path(name)).map_err(|e| self.read_err(name, e))?;
        let size = f.metadata().map_err(|e| self.read_err(name, e))?.len();
        check_range(name, &self.location(), offset, len, size)?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.read_err(name, e))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).map_err(|e| self.read_err(name, e))?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        // Walk the directory that holds the prefix, then filter by full name.
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut out = Vec::new();
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            let path = if d.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&d)
            };
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.read_err(&d, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.read_err(&d, e))?;
                let fname = entry.file_name().to_string_lossy().into_owned();
                if d.is_empty() && fname == TMP_DIR {
                    continue;
                }
                let name = if d.is_empty() {
                    fname
                } else {
                    format!("{d}/{fname}")
                };
                let ft = entry.file_type().map_err(|e| self.read_err(&name, e))?;
                if ft.is_dir() {
                    if name.starts_with(prefix) || prefix.starts_with(&format!("{name}/")) {
                        stack.push(name);
                    }
                } else if name.starts_with(prefix) {
                    let size = match entry.metadata() {
                        Ok(m) => m.len(),
                        // Deleted since the directory was read.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(self.read_err(&name, e)),
                    };
                    out.push(ObjectInfo { name, size });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.read_err(name, e)),
        }
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create_mode(&self) -> CreateMode {
        CreateMode::Atomic
    }

    fn remove_stale_temporaries(&self, age: std::time::Duration) -> Result<u64, StorageError> {
        let dir = self.root.join(TMP_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.read_err(TMP_DIR, e)),
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let elapsed = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            let name = e.file_name().to_string_lossy().into_owned();
            if is_stale(&name, elapsed, age) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
