//! Counters for the Prometheus endpoint. Nothing here identifies a user.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use coffer_vault_core::Stats;

/// Shared counters and gauges.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Batches run by the core.
    pub batches: AtomicU64,
    /// Frames handled in those batches.
    pub batch_frames: AtomicU64,
    /// Time in store commits (µs).
    pub store_commit_us: AtomicU64,
    /// Store commits.
    pub store_commits: AtomicU64,
    /// Time in the core, prepare + commit incl. NVRAM (µs).
    pub core_us: AtomicU64,
    /// Rate-limited opens, by scope.
    pub rate_limited_user: AtomicU64,
    /// Rate-limited opens, by scope.
    pub rate_limited_tenant: AtomicU64,
    /// Refused tokens.
    pub unauthorized: AtomicU64,
    /// The core's counters after the last batch.
    pub core: Mutex<Stats>,
    /// Open sessions after the last batch.
    pub sessions: AtomicU64,
    /// NVRAM generation after the last batch.
    pub generation: AtomicU64,
    /// Replicated realm: 1 while this node leads.
    pub realm_leading: AtomicU64,
    /// Replicated realm: the promised epoch.
    pub realm_epoch: AtomicU64,
    /// Replicated realm: the last accepted log index.
    pub realm_log_index: AtomicU64,
    /// Why the core refuses (None: serving).
    pub refusing: Mutex<Option<String>>,
}

impl Metrics {
    /// Counts a finished HTTP request.
    pub fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_default() += 1;
        }
    }

    /// The refusal reason, if any.
    pub fn refusing(&self) -> Option<String> {
        self.refusing.lock().ok().and_then(|r| r.clone())
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP coffer_vault_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE coffer_vault_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "coffer_vault_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let s = self.core.lock().map(|s| *s).unwrap_or_default();
        let counters: [(&str, &str, u64); 14] = [
            (
                "logins_started_total",
                "Logins started (attempts spent at KE1).",
                s.logins_started,
            ),
            (
                "logins_ok_total",
                "Logins with a correct KE3 (key released).",
                s.logins_ok,
            ),
            (
                "logins_failed_total",
                "Logins with a wrong KE3.",
                s.logins_failed,
            ),
            (
                "records_erased_total",
                "Records erased by the guess limit.",
                s.erased,
            ),
            (
                "registrations_total",
                "Registrations stored.",
                s.registrations,
            ),
            (
                "deletes_total",
                "Records deleted by their owner.",
                s.deletes,
            ),
            ("replays_total", "Replayed open frames refused.", s.replays),
            (
                "integrity_failures_total",
                "Reads refused because the store did not match the trusted tree.",
                s.integrity_failures,
            ),
            (
                "batches_total",
                "Core batches.",
                self.batches.load(Ordering::Relaxed),
            ),
            (
                "batch_frames_total",
                "Frames handled in core batches.",
                self.batch_frames.load(Ordering::Relaxed),
            ),
            (
                "store_commits_total",
                "Durable store commits.",
                self.store_commits.load(Ordering::Relaxed),
            ),
            (
                "store_commit_microseconds_total",
                "Time spent in store commits.",
                self.store_commit_us.load(Ordering::Relaxed),
            ),
            (
                "core_microseconds_total",
                "Time spent in the core (incl. NVRAM writes).",
                self.core_us.load(Ordering::Relaxed),
            ),
            (
                "unauthorized_total",
                "Requests with a refused token.",
                self.unauthorized.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP coffer_vault_{name} {help}\n# TYPE coffer_vault_{name} counter\ncoffer_vault_{name} {v}");
        }
        let _ = writeln!(out, "# HELP coffer_vault_rate_limited_total Opens refused by a rate limit.\n# TYPE coffer_vault_rate_limited_total counter");
        let _ = writeln!(
            out,
            "coffer_vault_rate_limited_total{{scope=\"user\"}} {}",
            self.rate_limited_user.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "coffer_vault_rate_limited_total{{scope=\"tenant\"}} {}",
            self.rate_limited_tenant.load(Ordering::Relaxed)
        );
        let gauges: [(&str, &str, u64); 6] = [
            (
                "realm_leading",
                "Replicated realm: 1 while this node leads its group.",
                self.realm_leading.load(Ordering::Relaxed),
            ),
            (
                "realm_epoch",
                "Replicated realm: the epoch this node's core promised.",
                self.realm_epoch.load(Ordering::Relaxed),
            ),
            (
                "realm_log_index",
                "Replicated realm: the last log entry this node's core accepted.",
                self.realm_log_index.load(Ordering::Relaxed),
            ),
            (
                "sessions",
                "Open sessions in the core.",
                self.sessions.load(Ordering::Relaxed),
            ),
            (
                "nvram_generation",
                "NVRAM anchor generation (replicated realm: the applied log index).",
                self.generation.load(Ordering::Relaxed),
            ),
            (
                "refusing",
                "1 while the core refuses to serve (store does not match NVRAM).",
                u64::from(self.refusing().is_some()),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP coffer_vault_{name} {help}\n# TYPE coffer_vault_{name} gauge\ncoffer_vault_{name} {v}");
        }
        out
    }
}
