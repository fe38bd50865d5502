//! Counters for the Prometheus endpoint. Nothing here identifies a user.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use coffer_vault_core::Stats;

/// One replicated group's gauges on this node.
#[derive(Debug, Clone, Default)]
pub struct GroupGauges {
    /// Whether this node leads the group.
    pub leading: bool,
    /// The promised epoch.
    pub epoch: u64,
    /// The last accepted log index.
    pub log_index: u64,
    /// The applied index.
    pub applied: u64,
    /// Why the group's core refuses or waits, if it does.
    pub refusing: Option<String>,
    /// The group core's counters.
    pub stats: Stats,
    /// Its open sessions.
    pub sessions: u64,
}

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
    /// A replicated node's groups.
    pub groups: Mutex<BTreeMap<u8, GroupGauges>>,
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

    /// The refusal reason, if any (a replicated node: the first group's
    /// that refuses).
    pub fn refusing(&self) -> Option<String> {
        if let Ok(g) = self.groups.lock() {
            if !g.is_empty() {
                return g
                    .iter()
                    .find_map(|(i, x)| x.refusing.as_ref().map(|r| format!("group {i}: {r}")));
            }
        }
        self.refusing.lock().ok().and_then(|r| r.clone())
    }

    /// A replicated group's gauges, after each event of its loop. Group 0
    /// also sets the unlabelled gauges.
    pub fn publish_group(&self, group: u8, g: GroupGauges) {
        if group == 0 {
            self.generation.store(g.applied, Ordering::Relaxed);
            self.realm_leading
                .store(u64::from(g.leading), Ordering::Relaxed);
            self.realm_epoch.store(g.epoch, Ordering::Relaxed);
            self.realm_log_index.store(g.log_index, Ordering::Relaxed);
        }
        if let Ok(mut m) = self.groups.lock() {
            m.insert(group, g);
            let sessions: u64 = m.values().map(|g| g.sessions).sum();
            self.sessions.store(sessions, Ordering::Relaxed);
        }
    }

    fn core_stats(&self) -> Stats {
        if let Ok(m) = self.groups.lock() {
            if !m.is_empty() {
                let mut t = Stats::default();
                for g in m.values() {
                    let s = g.stats;
                    t.logins_started += s.logins_started;
                    t.logins_ok += s.logins_ok;
                    t.logins_failed += s.logins_failed;
                    t.erased += s.erased;
                    t.registrations += s.registrations;
                    t.deletes += s.deletes;
                    t.replays += s.replays;
                    t.integrity_failures += s.integrity_failures;
                }
                return t;
            }
        }
        self.core.lock().map(|s| *s).unwrap_or_default()
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
        let s = self.core_stats();
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
        if let Ok(m) = self.groups.lock() {
            if !m.is_empty() {
                let _ = writeln!(out, "# HELP coffer_vault_group Replicated realm, per group: leading (1/0), epoch, log_index, applied, refusing (1/0).\n# TYPE coffer_vault_group gauge");
                for (i, g) in m.iter() {
                    for (what, v) in [
                        ("leading", u64::from(g.leading)),
                        ("epoch", g.epoch),
                        ("log_index", g.log_index),
                        ("applied", g.applied),
                        ("refusing", u64::from(g.refusing.is_some())),
                    ] {
                        let _ = writeln!(
                            out,
                            "coffer_vault_group{{group=\"{i}\",gauge=\"{what}\"}} {v}"
                        );
                    }
                }
            }
        }
        out
    }
}
