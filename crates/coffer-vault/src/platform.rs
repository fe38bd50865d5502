//! The software platform of the trusted core: the system clock, the OS
//! CSPRNG, and NVRAM as a small file kept apart from the record store.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use coffer_vault_core::{Platform, PlatformError};

/// NVRAM in a file, written atomically and durably (temp, fsync, rename,
/// fsync of the directory). An operator who restores an old copy of the
/// store but not this file is detected; one who rolls back both is what a
/// hardware HSM's NVRAM exists to stop (docs/threat-model.md).
pub struct FilePlatform {
    nvram: PathBuf,
}

impl FilePlatform {
    /// A platform whose NVRAM is `nvram`.
    pub fn new(nvram: &Path) -> Self {
        Self {
            nvram: nvram.to_path_buf(),
        }
    }
}

impl Platform for FilePlatform {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        // The OS CSPRNG does not fail on Linux once booted; if it ever did,
        // carrying on with zeros would be fatal, so stop the process.
        if getrandom::fill(buf).is_err() {
            eprintln!("coffer-vault: the OS random number generator failed; stopping");
            std::process::abort();
        }
    }

    fn nvram_read(&self) -> Result<Option<Vec<u8>>, PlatformError> {
        match fs::read(&self.nvram) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PlatformError(format!(
                "cannot read NVRAM file {}: {e}",
                self.nvram.display()
            ))),
        }
    }

    fn nvram_write(&mut self, data: &[u8]) -> Result<(), PlatformError> {
        let err = |what: &str, e: std::io::Error| {
            PlatformError(format!("NVRAM file {}: {what}: {e}", self.nvram.display()))
        };
        let dir = self
            .nvram
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = self.nvram.with_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| err("create", e))?;
            f.write_all(data).map_err(|e| err("write", e))?;
            f.sync_all().map_err(|e| err("fsync", e))?;
        }
        fs::rename(&tmp, &self.nvram).map_err(|e| err("rename", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("fsync directory", e))?;
        Ok(())
    }
}
