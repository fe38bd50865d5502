//! A fault-injecting store, **for tests**: it reproduces, seeded and
//! repeatable, what the real servers available here cannot — consumer drives'
//! rate limits (403 with `Retry-After`), duplicate names, eventually
//! consistent listings, servers that ignore conditional creates, writes cut
//! short, lost responses and latency.
//!
//! Always compiled (it is small and has no dependencies) so that other
//! crates' tests can wrap their stores in it; never used by [`crate::open`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{BlobStore, CreateMode, ObjectInfo, PutOutcome, StorageError};

/// Which faults, how often. Probabilities are per call, in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Seed of every random decision.
    pub seed: u64,
    /// A call fails with a transient error before reaching the store.
    pub transient: f64,
    /// A write reaches the store, then fails with a transient error (the
    /// response was lost: the caller cannot tell it landed).
    pub lost_response: f64,
    /// A call fails like Google Drive's 403 `rateLimitExceeded`, asking to
    /// wait [`FaultConfig::retry_after`].
    pub rate_limit: f64,
    /// The `Retry-After` of rate-limit errors.
    pub retry_after: Duration,
    /// Latency added to every call, uniform in `[min, max]`.
    pub latency: (Duration, Duration),
    /// A write stores a truncated object, then fails with a transient error
    /// (a backend without atomic writes, killed mid-upload).
    pub partial_write: f64,
    /// A newly created name shows in `list` only from the `list_lag + 1`-th
    /// listing on (eventually consistent listing).
    pub list_lag: u32,
    /// A listed name is listed twice (Google Drive allows duplicate names).
    pub duplicate_names: f64,
    /// `put_if_absent` overwrites and reports `Created` while the store
    /// claims [`CreateMode::Atomic`]: a server that ignores `If-None-Match`
    /// (Garage 2.5.0).
    pub ignore_create_condition: bool,
    /// `put_if_absent` is a check-then-write and says so
    /// ([`CreateMode::CheckThenWrite`]), like WebDAV and the drives.
    pub check_then_write: bool,
}

impl FaultConfig {
    /// No faults at all (a starting point for `..FaultConfig::quiet(seed)`).
    pub fn quiet(seed: u64) -> Self {
        Self {
            seed,
            transient: 0.0,
            lost_response: 0.0,
            rate_limit: 0.0,
            retry_after: Duration::from_secs(7),
            latency: (Duration::ZERO, Duration::ZERO),
            partial_write: 0.0,
            list_lag: 0,
            duplicate_names: 0.0,
            ignore_create_condition: false,
            check_then_write: false,
        }
    }

    /// A consumer drive on a bad day: every fault above, often.
    pub fn drive_like(seed: u64) -> Self {
        Self {
            transient: 0.1,
            lost_response: 0.05,
            rate_limit: 0.05,
            latency: (Duration::ZERO, Duration::from_micros(300)),
            partial_write: 0.05,
            list_lag: 2,
            duplicate_names: 0.05,
            ..Self::quiet(seed)
        }
    }
}

/// How many faults were injected, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Transient errors before the store was reached.
    pub transient: u64,
    /// Writes that landed but reported a transient error.
    pub lost_responses: u64,
    /// 403 rate-limit errors.
    pub rate_limited: u64,
    /// Truncated writes.
    pub partial_writes: u64,
    /// Names left out of a listing because they were too new.
    pub hidden_in_listing: u64,
    /// Names listed twice.
    pub duplicated_in_listing: u64,
}

#[derive(Default)]
struct Counters {
    transient: AtomicU64,
    lost_responses: AtomicU64,
    rate_limited: AtomicU64,
    partial_writes: AtomicU64,
    hidden_in_listing: AtomicU64,
    duplicated_in_listing: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Wraps a store and injects the faults of a [`FaultConfig`].
pub struct FaultStore<S> {
    inner: S,
    cfg: FaultConfig,
    rng: Mutex<SmallRng>,
    /// Names not yet visible in listings, with how many listings remain.
    unlisted: Mutex<HashMap<String, u32>>,
    counters: Counters,
}

impl<S: BlobStore> FaultStore<S> {
    /// `inner` with the faults of `cfg`.
    pub fn new(inner: S, cfg: FaultConfig) -> Self {
        Self {
            inner,
            rng: Mutex::new(SmallRng::seed_from_u64(cfg.seed)),
            cfg,
            unlisted: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// The wrapped store (to look at what really got stored).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Faults injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultStats {
            transient: get(&c.transient),
            lost_responses: get(&c.lost_responses),
            rate_limited: get(&c.rate_limited),
            partial_writes: get(&c.partial_writes),
            hidden_in_listing: get(&c.hidden_in_listing),
            duplicated_in_listing: get(&c.duplicated_in_listing),
        }
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng().random_bool(p.min(1.0))
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, SmallRng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transient(&self, name: &str, detail: &str, retry_after: Option<Duration>) -> StorageError {
        StorageError::Transient {
            name: name.to_string(),
            location: self.location(),
            detail: format!("{detail} (injected)"),
            retry_after,
            attempts: 1,
        }
    }

    /// Latency, then maybe an error instead of the call.
    fn before(&self, name: &str) -> Result<(), StorageError> {
        let (lo, hi) = self.cfg.latency;
        if hi > Duration::ZERO {
            let d = self
                .rng()
                .random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64);
            std::thread::sleep(Duration::from_nanos(d));
        }
        if self.roll(self.cfg.rate_limit) {
            bump(&self.counters.rate_limited);
            return Err(self.transient(
                name,
                "HTTP 403: User rate limit exceeded. (userRateLimitExceeded)",
                Some(self.cfg.retry_after),
            ));
        }
        if self.roll(self.cfg.transient) {
            bump(&self.counters.transient);
            return Err(self.transient(name, "connection reset by peer", None));
        }
        Ok(())
    }

    /// After a write that landed: maybe lose the response.
    fn after_write<T>(&self, name: &str, r: T) -> Result<T, StorageError> {
        if self.roll(self.cfg.lost_response) {
            bump(&self.counters.lost_responses);
            return Err(self.transient(name, "no answer within 60 s", None));
        }
        Ok(r)
    }

    fn exists(&self, name: &str) -> Result<bool, StorageError> {
        match self.inner.get_range(name, 0, 0) {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A name just created stays out of listings for a while.
    fn created(&self, name: &str) {
        if self.cfg.list_lag > 0 {
            self.unlisted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), self.cfg.list_lag);
        }
    }

    /// Writes a truncated copy, then fails; `None` when no such fault rolls.
    fn maybe_partial(
        &self,
        name: &str,
        data: &[u8],
        write: impl FnOnce(&[u8]) -> Result<(), StorageError>,
    ) -> Option<StorageError> {
        if data.is_empty() || !self.roll(self.cfg.partial_write) {
            return None;
        }
        let cut = self.rng().random_range(0..data.len());
        bump(&self.counters.partial_writes);
        Some(match write(&data[..cut]) {
            Ok(()) => self.transient(name, "connection closed during the upload", None),
            Err(e) => e,
        })
    }
}

impl<S: BlobStore> BlobStore for FaultStore<S> {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.before(name)?;
        let new = !self.exists(name)?;
        let partial = self.maybe_partial(name, data, |d| self.inner.put(name, d));
        if new {
            self.created(name);
        }
        if let Some(e) = partial {
            return Err(e);
        }
        self.inner.put(name, data)?;
        self.after_write(name, ())
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        self.before(name)?;
        if self.cfg.ignore_create_condition || self.cfg.check_then_write {
            if self.cfg.check_then_write && self.exists(name)? {
                return Ok(PutOutcome::AlreadyExists);
            }
            self.put(name, data)?;
            return Ok(PutOutcome::Created);
        }
        if self.exists(name)? {
            return Ok(PutOutcome::AlreadyExists);
        }
        if let Some(e) = self.maybe_partial(name, data, |d| {
            self.inner.put_if_absent(name, d).map(|_| ())
        }) {
            self.created(name);
            return Err(e);
        }
        let outcome = self.inner.put_if_absent(name, data)?;
        if outcome == PutOutcome::Created {
            self.created(name);
        }
        self.after_write(name, outcome)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.before(name)?;
        self.inner.get(name)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.before(name)?;
        self.inner.get_range(name, offset, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.before(prefix)?;
        let listed = self.inner.list(prefix)?;
        let mut out = Vec::with_capacity(listed.len());
        {
            let mut unlisted = self.unlisted.lock().unwrap_or_else(|p| p.into_inner());
            for o in listed {
                if unlisted.get(&o.name).is_some_and(|n| *n > 0) {
                    bump(&self.counters.hidden_in_listing);
                    continue;
                }
                let twice = self.roll(self.cfg.duplicate_names);
                if twice {
                    bump(&self.counters.duplicated_in_listing);
                    out.push(o.clone());
                }
                out.push(o);
            }
            unlisted.retain(|_, n| {
                *n -= 1;
                *n > 0
            });
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.before(name)?;
        self.inner.delete(name)?;
        self.unlisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.after_write(name, ())
    }

    fn location(&self) -> String {
        format!("{} (with injected faults)", self.inner.location())
    }

    fn create_mode(&self) -> CreateMode {
        if self.cfg.check_then_write {
            CreateMode::CheckThenWrite
        } else {
            self.inner.create_mode()
        }
    }

    fn max_object_size(&self) -> u64 {
        self.inner.max_object_size()
    }

    fn remove_stale_temporaries(&self, age: Duration) -> Result<u64, StorageError> {
        self.before(".tmp")?;
        self.inner.remove_stale_temporaries(age)
    }
}
