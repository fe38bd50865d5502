//! The daemon's driver of a group's [`Member`] (ADR 0013): one thread owns
//! the member (core and store) and feeds it client frames, peer messages,
//! peer answers and a timer tick, with real time. Peer messages go out
//! through one sender thread per peer (ureq, short timeouts), so a dead or
//! cut-off peer delays only its own queue.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use coffer_vault_core::log::NodeId;
use coffer_vault_core::peer::{LogItem, PeerMsg, PeerReply};
use coffer_vault_core::{Bucket, Core, CoreError, StoreWrites};

use crate::engine::Job;
pub use crate::member::LeaderView;
use crate::member::{LogStore, Member, Responder, TICK};
use crate::metrics::Metrics;
use crate::platform::FilePlatform;
use crate::store::Store;

/// Events for a group's thread.
pub enum Event {
    /// A client frame.
    Client(Job),
    /// A peer's message; the reply bytes go back.
    Peer(PeerMsg, oneshot::Sender<Vec<u8>>),
    /// A peer answered (None: no answer).
    Reply(NodeId, Option<PeerReply>),
}

impl Responder for oneshot::Sender<Result<Vec<u8>, CoreError>> {
    fn respond(self, r: Result<Vec<u8>, CoreError>) {
        let _ = self.send(r);
    }
}

impl LogStore for Store {
    fn log_range(&self, from: u64, to: u64) -> Result<Vec<LogItem>, String> {
        Store::log_range(self, from, to).map_err(|e| e.to_string())
    }
    fn write_log(&mut self, keep: u64, tail: &[LogItem]) -> Result<(), String> {
        Store::write_log(self, keep, tail).map_err(|e| e.to_string())
    }
    fn apply(&mut self, w: &StoreWrites, applied: u64) -> Result<(), String> {
        Store::apply(self, w, applied).map_err(|e| e.to_string())
    }
    fn buckets(&self, b: &[u16]) -> Result<Vec<Bucket>, String> {
        Store::buckets(self, b).map_err(|e| e.to_string())
    }
}

type DaemonMember = Member<Store, FilePlatform, oneshot::Sender<Result<Vec<u8>, CoreError>>>;

/// Starts a group's thread and its peer senders; returns the event queue.
pub fn spawn(
    core: Core<FilePlatform>,
    store: Store,
    urls: BTreeMap<NodeId, String>,
    view: Arc<Mutex<LeaderView>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<Sender<Event>> {
    let (tx, rx) = crossbeam_channel::bounded::<Event>(crate::engine::QUEUE);
    let epoch = Instant::now();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(1);
    let member = Member::new(core, store, 0, seed)
        .ok_or_else(|| std::io::Error::other("not a replicated core"))?;
    let group = member.group();
    let me = member.core().replica_status().map_or(0, |s| s.node);
    let mut out = BTreeMap::new();
    for (&p, url) in urls.iter().filter(|(&p, _)| p != me) {
        let (ptx, prx) = crossbeam_channel::bounded::<Vec<u8>>(64);
        let events = tx.clone();
        let url = url.clone();
        std::thread::Builder::new()
            .name(format!("peer-{group}-{p}"))
            .spawn(move || sender(p, url, prx, events))?;
        out.insert(p, ptx);
    }
    std::thread::Builder::new()
        .name(format!("vault-group-{group}"))
        .spawn(move || run(member, rx, out, urls, view, metrics, epoch))?;
    Ok(tx)
}

fn ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

fn run(
    mut m: DaemonMember,
    rx: Receiver<Event>,
    out: BTreeMap<NodeId, Sender<Vec<u8>>>,
    urls: BTreeMap<NodeId, String>,
    view: Arc<Mutex<LeaderView>>,
    metrics: Arc<Metrics>,
    epoch: Instant,
) {
    let group = m.group();
    let mut next_tick = ms(epoch) + TICK;
    let (mut batches, mut frames) = (0, 0);
    loop {
        let wait = next_tick.saturating_sub(ms(epoch));
        let mut event = match rx.recv_timeout(Duration::from_millis(wait)) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Take what else is queued before the member acts, so client frames
        // that arrived together form one batch.
        let mut taken = 0;
        while let Some(ev) = event.take() {
            match ev {
                Event::Client(job) => m.on_client(ms(epoch), job.input, job.reply),
                Event::Peer(msg, reply) => {
                    let r = m.on_peer(ms(epoch), msg);
                    let _ = reply.send(r.encode());
                }
                Event::Reply(from, r) => m.on_answer(ms(epoch), from, r),
            }
            taken += 1;
            if taken < crate::engine::MAX_BATCH {
                event = rx.try_recv().ok();
            }
        }
        if ms(epoch) >= next_tick {
            m.tick(ms(epoch));
            next_tick = ms(epoch) + TICK;
        }
        m.pump(ms(epoch));
        for (to, msg) in m.take_outbox() {
            if let Some(tx) = out.get(&to) {
                // A full queue drops the message: the member sends again
                // after its outstanding timeout.
                let _ = tx.try_send(msg.encode(group));
            }
        }
        if let Ok(mut v) = view.lock() {
            *v = m.leader_view(&urls);
        }
        metrics.publish_group(group, m.gauges());
        metrics
            .batches
            .fetch_add(m.batches - batches, Ordering::Relaxed);
        metrics
            .batch_frames
            .fetch_add(m.batch_frames - frames, Ordering::Relaxed);
        (batches, frames) = (m.batches, m.batch_frames);
    }
}

/// Posts messages to one peer, in order; answers go back as events.
fn sender(peer: NodeId, url: String, rx: Receiver<Vec<u8>>, events: Sender<Event>) {
    let agent = crate::net::agent(Duration::from_millis(300), Duration::from_secs(3));
    let endpoint = format!("{}/v1/peer", url.trim_end_matches('/'));
    while let Ok(body) = rx.recv() {
        let reply = agent
            .post(&endpoint)
            .header("content-type", "application/octet-stream")
            .send(&body[..])
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|mut r| {
                r.body_mut()
                    .with_config()
                    .limit(crate::peer::MAX_MESSAGE as u64)
                    .read_to_vec()
                    .ok()
            })
            .and_then(|b| PeerReply::decode(&b).ok());
        if events.send(Event::Reply(peer, reply)).is_err() {
            return;
        }
    }
}
