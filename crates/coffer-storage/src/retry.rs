//! Retries with exponential backoff and full jitter, for any store.
//!
//! Only [`StorageError::Transient`] is retried (timeouts, dropped
//! connections, 5xx, 429, Google Drive's 403 rate limits); not-found,
//! permission, quota and other errors return at once. A `Retry-After` the
//! service sent is a floor for the next delay.
//!
//! Every operation of [`BlobStore`] is safe to repeat: `put` writes the same
//! bytes under the same name, `delete` of a missing object succeeds, reads and
//! lists have no effect. `put_if_absent` needs care, see
//! [`RetryStore::put_if_absent`](BlobStore::put_if_absent) below.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{BlobStore, CreateMode, ObjectInfo, PutOutcome, RangeBuf, StorageError};

/// How many times and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Ceiling of the first delay; doubles with every failure.
    pub base_delay: Duration,
    /// Largest ceiling of a delay.
    pub max_delay: Duration,
    /// A service asking to wait longer than this ends the retries at once
    /// (the error says how long it asked for).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, delays drawn from [0, 0.5 s], [0, 1 s] … up to [0, 30 s]:
    /// about a minute of retrying at most without `Retry-After`.
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

type Sleep = dyn Fn(Duration) + Send + Sync;

/// A store whose transient failures are retried (see the module docs).
pub struct RetryStore<S> {
    inner: S,
    policy: RetryPolicy,
    rng: Mutex<SmallRng>,
    sleep: Box<Sleep>,
}

impl<S: BlobStore> std::fmt::Debug for RetryStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryStore")
            .field("location", &self.inner.location())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: BlobStore> RetryStore<S> {
    /// Retries `inner`'s transient failures under `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        let mut seed = [0u8; 8];
        // Jitter only spreads clients apart; a fixed seed is an acceptable fallback.
        let _ = getrandom::fill(&mut seed);
        Self {
            inner,
            policy,
            rng: Mutex::new(SmallRng::seed_from_u64(u64::from_le_bytes(seed))),
            sleep: Box::new(std::thread::sleep),
        }
    }

    /// Replaces how the store waits (tests record delays instead of sleeping)
    /// and seeds the jitter.
    pub fn with_clock(
        mut self,
        seed: u64,
        sleep: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Self {
        self.rng = Mutex::new(SmallRng::seed_from_u64(seed));
        self.sleep = Box::new(sleep);
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The delay after the `failures`-th failure: full jitter over an
    /// exponentially growing ceiling, but never less than `retry_after`.
    fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .policy
            .base_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.policy.max_delay);
        let jitter = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            Duration::from_nanos(
                rng.random_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64),
            )
        };
        jitter.max(retry_after.unwrap_or_default())
    }

    fn retry<T>(
        &self,
        op: &str,
        name: &str,
        mut f: impl FnMut() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut failures = 0;
        loop {
            let e = match f() {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            failures += 1;
            let too_long = e
                .retry_after()
                .is_some_and(|d| d > self.policy.max_retry_after);
            if failures >= self.policy.max_attempts || too_long {
                return Err(e.after_attempts(failures));
            }
            let d = self.delay(failures, e.retry_after());
            // Not `{e}`: its advice ("run the command again later") is for
            // when the retries are spent, not while they run.
            let what = match &e {
                StorageError::Transient {
                    location, detail, ..
                } => format!("temporary failure in {location}: {detail}"),
                other => other.to_string(),
            };
            tracing::warn!(
                "{op} {name}: {what}; retrying in {:.1} s (attempt {} of {})",
                d.as_secs_f64(),
                failures + 1,
                self.policy.max_attempts
            );
            (self.sleep)(d);
        }
    }

    /// After an attempt that may have written, the object exists: is it ours?
    fn resolve_existing(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        let existing = self.get(name)?;
        if existing == data {
            return Ok(PutOutcome::Created);
        }
        if existing.len() < data.len() && data.starts_with(&existing) {
            // Our own attempt, cut short on a backend without atomic writes.
            self.put(name, data)?;
            return Ok(PutOutcome::Created);
        }
        Ok(PutOutcome::AlreadyExists)
    }
}

impl<S: BlobStore> BlobStore for RetryStore<S> {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.retry("put", name, || self.inner.put(name, data))
    }

    /// Retried like the others, with one rule: once an attempt has failed
    /// after possibly writing (a lost response, a timeout), `AlreadyExists`
    /// from a later attempt is checked by reading the object back. Our own
    /// bytes mean the earlier attempt landed: the answer is `Created`, as if
    /// the response had not been lost; a strict prefix of them is our attempt
    /// cut short (only where writes are not atomic): it is completed, and the
    /// answer is `Created`; anything else is another writer's: `AlreadyExists`.
    ///
    /// So callers get the answer they would have got without the fault — as
    /// long as what they write is unique to them (Coffer's objects are: each
    /// holds a random id or nonce). Two writers of identical bytes would both
    /// be told `Created`, which for identical content is harmless.
    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        let mut ambiguous = false;
        let outcome = self.retry("put_if_absent", name, || {
            let r = self.inner.put_if_absent(name, data);
            ambiguous |= r.as_ref().is_err_and(StorageError::is_transient);
            r
        })?;
        match outcome {
            PutOutcome::AlreadyExists if ambiguous => self.resolve_existing(name, data),
            o => Ok(o),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.retry("get", name, || self.inner.get(name))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.retry("get_range", name, || {
            self.inner.get_range(name, offset, len)
        })
    }

    fn get_range_buf(&self, name: &str, offset: u64, len: u64) -> Result<RangeBuf, StorageError> {
        self.retry("get_range", name, || {
            self.inner.get_range_buf(name, offset, len)
        })
    }

    /// Sorted, each name once: Google Drive allows two files of one name and
    /// lists both; the first listed is kept.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = self.retry("list", prefix, || self.inner.list(prefix))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let before = out.len();
        out.dedup_by(|later, first| later.name == first.name);
        if out.len() != before {
            tracing::warn!(
                "{} lists {} duplicate names under {prefix:?}; using the first of each",
                self.inner.location(),
                before - out.len()
            );
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.retry("delete", name, || self.inner.delete(name))
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn create_mode(&self) -> CreateMode {
        self.inner.create_mode()
    }

    fn max_object_size(&self) -> u64 {
        self.inner.max_object_size()
    }

    fn remove_stale_temporaries(&self, age: Duration) -> Result<u64, StorageError> {
        self.retry("remove_stale_temporaries", ".tmp", || {
            self.inner.remove_stale_temporaries(age)
        })
    }
}

#[cfg(test)]
mod tests;
