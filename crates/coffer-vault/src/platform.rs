//! The software platform of the trusted core: the system clock, the OS
//! CSPRNG, and NVRAM as a small file kept apart from the record store.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use coffer_vault_core::{Platform, PlatformError};

/// Bytes per NVRAM slot of a single-node vault (45-byte anchor).
pub(crate) const SLOT: usize = 128;
/// Bytes per NVRAM slot of a replicated member (NVRAM v2, up to 1,191 bytes).
pub(crate) const BIG_SLOT: usize = 2048;
/// Largest NVRAM content a big slot holds.
const MAX_DATA: usize = BIG_SLOT - 32 - 14;
const MAGIC: &[u8; 4] = b"CVNS";

/// Slot size for a file of `len` bytes (two slots), or for new contents.
fn slot_size(len: usize) -> usize {
    if len == 2 * BIG_SLOT {
        BIG_SLOT
    } else {
        SLOT
    }
}

/// NVRAM in a file of two fixed slots, written in place: each write goes to
/// the slot not holding the current contents (`pwrite`, then `fdatasync`),
/// so a torn write leaves the previous contents whole, and no rename or
/// directory sync is needed after the file exists.
///
/// ```text
/// slot = "CVNS" | sequence:u64 | len:u16 | data[len], zero padded to S-32 bytes | SHA-256(first S-32 bytes)
/// ```
///
/// The slot size S is 128 bytes for a single-node vault's anchor and 2,048
/// for a replicated member's NVRAM (chosen when the file is created, from
/// the first contents; read back from the file's length).
///
/// Reading takes the valid slot with the higher sequence. An operator who
/// restores an old copy of the store but not this file is detected; one who
/// rolls back both is what a hardware HSM's NVRAM exists to stop
/// (docs/threat-model.md).
pub struct FilePlatform {
    path: PathBuf,
    file: Option<File>,
    seq: Cell<u64>,
    size: Cell<usize>,
}

impl FilePlatform {
    /// A platform whose NVRAM is `nvram`.
    pub fn new(nvram: &Path) -> Self {
        Self {
            path: nvram.to_path_buf(),
            file: None,
            seq: Cell::new(0),
            size: Cell::new(0),
        }
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> PlatformError {
        PlatformError(format!("NVRAM file {}: {what}: {e}", self.path.display()))
    }
}

fn parse_slot(slot: &[u8], size: usize) -> Option<(u64, Vec<u8>)> {
    if slot.len() != size || &slot[..4] != MAGIC {
        return None;
    }
    let body = size - 32;
    let sum = ring::digest::digest(&ring::digest::SHA256, &slot[..body]);
    if sum.as_ref() != &slot[body..] {
        return None;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&slot[4..12]);
    let len = usize::from(u16::from_be_bytes([slot[12], slot[13]]));
    if len > body - 14 {
        return None;
    }
    Some((u64::from_be_bytes(s), slot[14..14 + len].to_vec()))
}

/// The valid slot with the higher sequence in an NVRAM file's bytes (the
/// slot size read from the file's length): `(sequence, contents, slot size)`.
/// The file is untrusted input (fuzzed through [`crate::fuzzing`]).
pub(crate) fn newest_slot(bytes: &[u8]) -> Option<(u64, Vec<u8>, usize)> {
    let size = slot_size(bytes.len());
    bytes
        .chunks(size)
        .take(2)
        .filter_map(|c| parse_slot(c, size))
        .max_by_key(|(seq, _)| *seq)
        .map(|(seq, data)| (seq, data, size))
}

pub(crate) fn make_slot(seq: u64, data: &[u8], size: usize) -> Vec<u8> {
    let body = size - 32;
    let mut slot = vec![0u8; size];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..12].copy_from_slice(&seq.to_be_bytes());
    slot[12..14].copy_from_slice(&(data.len() as u16).to_be_bytes());
    slot[14..14 + data.len()].copy_from_slice(data);
    let sum = ring::digest::digest(&ring::digest::SHA256, &slot[..body]);
    slot[body..].copy_from_slice(sum.as_ref());
    slot
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
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("read", e)),
        };
        match newest_slot(&bytes) {
            Some((seq, data, size)) => {
                self.seq.set(seq);
                self.size.set(size);
                Ok(Some(data))
            }
            None => Err(self.err(
                "no valid slot",
                "the file is damaged or is not a Coffer NVRAM file",
            )),
        }
    }

    fn nvram_write(&mut self, data: &[u8]) -> Result<(), PlatformError> {
        if data.len() > MAX_DATA {
            return Err(self.err("write", format!("{} bytes do not fit a slot", data.len())));
        }
        if self.file.is_none() {
            let existed = self.path.exists();
            if existed {
                self.nvram_read()?;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(|e| self.err("open", e))?;
            if !existed {
                let size = if data.len() <= SLOT - 32 - 14 {
                    SLOT
                } else {
                    BIG_SLOT
                };
                self.size.set(size);
                f.set_len(2 * size as u64)
                    .map_err(|e| self.err("size", e))?;
                f.sync_all().map_err(|e| self.err("fsync", e))?;
                let dir = self
                    .path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| self.err("fsync directory", e))?;
            }
            self.file = Some(f);
        }
        let size = self.size.get();
        if data.len() > size - 32 - 14 {
            return Err(self.err(
                "write",
                format!("{} bytes do not fit this file's slots", data.len()),
            ));
        }
        // A file whose sequence is at u64::MAX cannot advance: wrapping to 0
        // would make the next read prefer the old slot (NVRAM silently stuck).
        let seq = self.seq.get().checked_add(1).ok_or_else(|| {
            self.err(
                "write",
                "the sequence number is at its maximum (2^64 - 1) and cannot advance; \
                 the file is damaged or was tampered with",
            )
        })?;
        let slot = make_slot(seq, data, size);
        let offset = (seq % 2) * size as u64;
        let f = self
            .file
            .as_ref()
            .ok_or_else(|| self.err("write", "not open"))?;
        f.write_all_at(&slot, offset)
            .map_err(|e| self.err("write", e))?;
        f.sync_data().map_err(|e| self.err("fdatasync", e))?;
        self.seq.set(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alternate_and_a_torn_slot_keeps_the_previous_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nv");
        let mut p = FilePlatform::new(&path);
        assert_eq!(p.nvram_read().unwrap(), None);
        p.nvram_write(b"one").unwrap();
        p.nvram_write(b"two").unwrap();
        assert_eq!(
            FilePlatform::new(&path).nvram_read().unwrap(),
            Some(b"two".to_vec())
        );
        // Tear the slot holding "two": the reader falls back to "one".
        let mut bytes = std::fs::read(&path).unwrap();
        // Sequence 2 went to slot 0 (slots alternate by sequence parity).
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            FilePlatform::new(&path).nvram_read().unwrap(),
            Some(b"one".to_vec())
        );
        // Reopened, the next write goes over the torn slot and wins.
        let mut q = FilePlatform::new(&path);
        q.nvram_read().unwrap();
        q.nvram_write(b"three").unwrap();
        assert_eq!(
            FilePlatform::new(&path).nvram_read().unwrap(),
            Some(b"three".to_vec())
        );
        std::fs::write(&path, [0u8; 256]).unwrap();
        assert!(FilePlatform::new(&path).nvram_read().is_err());
    }

    #[test]
    fn a_sequence_at_its_maximum_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nv");
        let mut file = make_slot(u64::MAX - 1, b"old", SLOT);
        file.extend(make_slot(u64::MAX, b"last", SLOT));
        std::fs::write(&path, &file).unwrap();
        let mut p = FilePlatform::new(&path);
        assert_eq!(p.nvram_read().unwrap(), Some(b"last".to_vec()));
        let e = p.nvram_write(b"next").unwrap_err();
        assert!(e.0.contains("cannot advance"), "{e:?}");
        // Nothing written: the file still reads as before.
        assert_eq!(std::fs::read(&path).unwrap(), file);
        // One below the maximum still advances, to the maximum.
        let mut file = make_slot(u64::MAX - 1, b"old", SLOT);
        file.extend(make_slot(3, b"older", SLOT));
        std::fs::write(&path, &file).unwrap();
        let mut q = FilePlatform::new(&path);
        q.nvram_write(b"next").unwrap();
        assert_eq!(
            newest_slot(&std::fs::read(&path).unwrap()),
            Some((u64::MAX, b"next".to_vec(), SLOT))
        );
    }
}
