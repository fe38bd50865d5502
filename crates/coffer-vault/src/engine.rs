//! What owns the trusted core and the store, and runs frames in batches:
//! one store commit and one NVRAM write per batch (group commit), replies
//! only after both.
//!
//! Two ways to run it (`coffer-vault serve --engine`, ADR 0016):
//! - [`spawn`]: a thread of its own; the HTTP runtime's threads hand it
//!   frames. On a machine with cores to spare, HTTP runs beside the core.
//! - [`spawn_inline`]: a task on a single-threaded runtime, the same thread
//!   as HTTP. Each batch starts after the runtime has read every request
//!   that arrived, so HTTP work and the core's work run in turns instead of
//!   preempting each other. For a vault on one core.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use coffer_vault_core::{Core, CoreError, Input};

use crate::metrics::Metrics;
use crate::platform::FilePlatform;
use crate::store::Store;

/// Most frames in one batch.
pub const MAX_BATCH: usize = 512;
/// Queue depth before the host answers "busy".
pub const QUEUE: usize = 8192;

/// A frame for the core.
pub enum JobInput {
    /// An open frame for (tenant, user).
    Open {
        /// Tenant.
        tenant: String,
        /// User.
        user: String,
        /// Frame.
        frame: Vec<u8>,
    },
    /// A data frame.
    Data {
        /// Frame.
        frame: Vec<u8>,
    },
}

/// A frame and where its reply goes.
pub struct Job {
    /// The frame.
    pub input: JobInput,
    /// The reply.
    pub reply: oneshot::Sender<Result<Vec<u8>, CoreError>>,
}

/// Starts the engine thread.
pub fn spawn(
    core: Core<FilePlatform>,
    store: Store,
    metrics: Arc<Metrics>,
) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    publish(&core, &metrics);
    std::thread::Builder::new()
        .name("vault-core".into())
        .spawn(move || run(core, store, rx, metrics))?;
    Ok(tx)
}

/// Starts the engine as a task on the current runtime, which must be a
/// single-threaded one (`coffer-vault serve --engine inline`): a batch runs
/// on the runtime's thread and holds it, store commit included.
pub fn spawn_inline(
    mut core: Core<FilePlatform>,
    store: Store,
    metrics: Arc<Metrics>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    publish(&core, &metrics);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // tokio 1.x wakes a yielded task only after it has run out of
            // ready tasks and polled the I/O driver, so every connection with
            // a request waiting reads it and queues its job before the batch
            // is taken. Only the batch size depends on that, not correctness.
            tokio::task::yield_now().await;
            let jobs = take_batch(first, &mut rx);
            run_batch(&mut core, &store, jobs, &metrics);
        }
    });
    tx
}

/// Publishes the core's state for `/metrics` and `/healthz`: whether it
/// refuses, its NVRAM generation, open sessions and counters.
fn publish(core: &Core<FilePlatform>, metrics: &Metrics) {
    metrics
        .sessions
        .store(core.sessions() as u64, Ordering::Relaxed);
    metrics
        .generation
        .store(core.anchor().generation, Ordering::Relaxed);
    if let Ok(mut s) = metrics.core.lock() {
        *s = core.stats();
    }
    if let Ok(mut r) = metrics.refusing.lock() {
        *r = core.refusing().map(str::to_string);
    }
}

/// `first` and whatever else is queued, up to [`MAX_BATCH`].
fn take_batch(first: Job, rx: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut jobs = vec![first];
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    jobs
}

fn run(
    mut core: Core<FilePlatform>,
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.blocking_recv() {
        let jobs = take_batch(first, &mut rx);
        run_batch(&mut core, &store, jobs, &metrics);
    }
}

/// One batch: the core's prepare, the store commit, NVRAM and the replies.
fn run_batch(core: &mut Core<FilePlatform>, store: &Store, jobs: Vec<Job>, metrics: &Metrics) {
    let t0 = Instant::now();
    let mut senders = Vec::with_capacity(jobs.len());
    let mut inputs = Vec::with_capacity(jobs.len());
    for j in jobs {
        inputs.push(match j.input {
            JobInput::Open {
                tenant,
                user,
                frame,
            } => Input::Open {
                record: core.record_id(&tenant, &user),
                frame,
            },
            JobInput::Data { frame } => Input::Data { frame },
        });
        senders.push(j.reply);
    }
    let n = inputs.len() as u64;
    let wanted = core.buckets_for(&inputs);
    let fail_all = |senders: Vec<oneshot::Sender<Result<Vec<u8>, CoreError>>>, e: CoreError| {
        for s in senders {
            let _ = s.send(Err(e.clone()));
        }
    };
    let buckets = match store.buckets(&wanted) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            fail_all(
                senders,
                CoreError::Refusing(format!("store read failed: {e}")),
            );
            return;
        }
    };
    let writes = match core.prepare(inputs, buckets) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "core refused the batch");
            fail_all(senders, e);
            return;
        }
    };
    let mut store_us = 0;
    if !writes.is_empty() {
        let ts = Instant::now();
        if let Err(e) = store.commit(&writes) {
            tracing::error!(error = %e, "store commit failed; the core refuses until restarted");
            core.abort(&e.to_string());
            publish(core, metrics);
            fail_all(senders, CoreError::Refusing(e.to_string()));
            return;
        }
        store_us = ts.elapsed().as_micros() as u64;
        metrics.store_commits.fetch_add(1, Ordering::Relaxed);
        metrics
            .store_commit_us
            .fetch_add(store_us, Ordering::Relaxed);
    }
    let committed = core.commit();
    metrics.batches.fetch_add(1, Ordering::Relaxed);
    metrics.batch_frames.fetch_add(n, Ordering::Relaxed);
    metrics.core_us.fetch_add(
        (t0.elapsed().as_micros() as u64).saturating_sub(store_us),
        Ordering::Relaxed,
    );
    publish(core, metrics);
    // Replies leave after the metrics are published, so a client that
    // reads /metrics after its answer sees the batch that made it.
    match committed {
        Ok(replies) => {
            for (s, r) in senders.into_iter().zip(replies) {
                let _ = s.send(r);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "NVRAM write failed; the core refuses");
            fail_all(senders, e);
        }
    }
}
