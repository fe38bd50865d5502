//! Counters the engine updates and a UI may poll from another thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters of a long operation.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files done.
    pub files: AtomicU64,
    /// Bytes processed (read, restored or verified).
    pub bytes: AtomicU64,
    /// Bytes expected in total, if known (0 = unknown).
    pub total_bytes: AtomicU64,
    /// Bytes written to storage.
    pub uploaded: AtomicU64,
    current: Mutex<String>,
}

impl Progress {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Sets the item being worked on.
    pub fn set_current(&self, s: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The item being worked on.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
