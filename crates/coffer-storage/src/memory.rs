//! An in-memory store for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{check_range, BlobStore, CreateMode, ObjectInfo, PutOutcome, StorageError};

/// Objects in a map; every operation is atomic.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A poisoned lock only means a test thread panicked; the map is still whole.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces an object's bytes directly (tests that tamper with storage).
    pub fn replace(&self, name: &str, data: Vec<u8>) {
        self.map().insert(name.to_string(), data);
    }
}

impl BlobStore for MemStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.map().insert(name.to_string(), data.to_vec());
        Ok(())
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        let mut m = self.map();
        if m.contains_key(name) {
            return Ok(PutOutcome::AlreadyExists);
        }
        m.insert(name.to_string(), data.to_vec());
        Ok(PutOutcome::Created)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::not_found(name, "memory"))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let m = self.map();
        let obj = m
            .get(name)
            .ok_or_else(|| StorageError::not_found(name, "memory"))?;
        let size = obj.len() as u64;
        let end = check_range(name, &self.location(), offset, len, size)?;
        Ok(obj[offset as usize..end as usize].to_vec())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        Ok(self
            .map()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                name: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.map().remove(name);
        Ok(())
    }

    fn location(&self) -> String {
        "memory".to_string()
    }

    fn create_mode(&self) -> CreateMode {
        CreateMode::Atomic
    }
}
