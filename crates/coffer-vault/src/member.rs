//! The host's replication state machine for one group on one node (ADR
//! 0011–0014), sans-io: it owns the group's core and store, and is driven by
//! client frames, peer messages, peer answers and timer ticks, each with
//! the current time in ms; after each run of events the driver calls
//! [`Member::pump`], which commits, releases and proposes. What it wants
//! sent comes out of [`Member::take_outbox`]. The daemon drives it from a thread with real
//! time and HTTP (`replication.rs`); the deterministic simulation drives it
//! with virtual time and a seeded network (`tests/realm_sim.rs`), so both
//! run this exact code over real cores.
//!
//! Leader choice, catch-up and batching are host policy (liveness only);
//! every safety rule is the core's: poll after missed heartbeats, the
//! best-ranked ready node stands, leader stickiness, back-off, check quorum.

use std::collections::{BTreeMap, VecDeque};

use coffer_vault_core::log::{Ack, Certificate, Entry, Mac, NodeId};
use coffer_vault_core::peer::{LogItem, PeerMsg, PeerReply, Status};
use coffer_vault_core::replica::{AckEffect, ReplicaStatus};
use coffer_vault_core::{Body, Bucket, Core, CoreError, Input, Platform, StoreWrites};

use crate::engine::{JobInput, MAX_BATCH};
use crate::metrics::GroupGauges;

/// Timer tick (ms).
pub const TICK: u64 = 50;
/// Missed ticks before a follower polls.
const MISSED: u64 = 6;
/// A leader that has not heard a majority for this long steps down (it
/// could commit nothing; clients are better told at once).
const QUORUM_LOST: u64 = 1_000;
/// A client frame waits at most this long for a leader.
const CLIENT_WAIT: u64 = 3_000;

/// What the HTTP layer reads to forward client frames to the leader.
#[derive(Debug, Clone, Default)]
pub struct LeaderView {
    /// Whether this node leads.
    pub me: bool,
    /// The leader's URL, if another node leads.
    pub url: Option<String>,
}

/// Where a client frame's answer goes.
pub trait Responder {
    /// Delivers the answer (a reply frame or a frame-level error).
    fn respond(self, r: Result<Vec<u8>, CoreError>);
}

/// A member's store (untrusted; the core checks what it reads).
pub trait LogStore {
    /// Log items `from..=to` held, in order, up to the first gap.
    fn log_range(&self, from: u64, to: u64) -> Result<Vec<LogItem>, String>;
    /// Keeps the log up to `keep`, then appends `tail` (atomically).
    fn write_log(&mut self, keep: u64, tail: &[LogItem]) -> Result<(), String>;
    /// Writes an applied entry's records and the applied index (atomically).
    fn apply(&mut self, w: &StoreWrites, applied: u64) -> Result<(), String>;
    /// The records of these buckets.
    fn buckets(&self, b: &[u16]) -> Result<Vec<Bucket>, String>;
}

enum HostRole {
    Follower,
    Polling {
        started: u64,
        replies: BTreeMap<NodeId, Status>,
    },
    Candidate {
        epoch: u64,
        started: u64,
        votes: BTreeMap<NodeId, Ack>,
    },
    Leader,
}

struct Waiting<R> {
    job: (JobInput, R),
    since: u64,
}

struct InFlight<R> {
    index: u64,
    writes: StoreWrites,
    senders: Vec<R>,
}

/// One group's member on one node.
pub struct Member<S, P: Platform, R> {
    core: Core<P>,
    store: S,
    me: NodeId,
    peers: Vec<NodeId>,
    majority: usize,
    role: HostRole,
    now: u64,
    last_heard: u64,
    /// When a leader's Append last arrived.
    leader_seen: Option<u64>,
    timeout: u64,
    leader: Option<NodeId>,
    cert: Option<(u64, Certificate)>,
    queue: VecDeque<Waiting<R>>,
    inflight: Option<InFlight<R>>,
    /// Current-epoch acks for the entry this leader proposed last (its
    /// `leader` entry, then each batch): a majority is a certificate.
    collecting: Option<(u64, BTreeMap<NodeId, Ack>)>,
    next_from: BTreeMap<NodeId, u64>,
    outstanding: BTreeMap<NodeId, u64>,
    last_reply: BTreeMap<NodeId, u64>,
    leading_since: u64,
    outbox: Vec<(NodeId, PeerMsg)>,
    seed: u64,
    group: u8,
    /// Batches committed (for metrics).
    pub batches: u64,
    /// Frames handled in them.
    pub batch_frames: u64,
}

fn jitter(seed: &mut u64, max_ms: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % max_ms.max(1)
}

impl<S: LogStore, P: Platform, R: Responder> Member<S, P, R> {
    /// A member over a started core (`Core::start_member`) and its store;
    /// `seed` jitters its timeouts (the simulation passes its own).
    pub fn new(core: Core<P>, store: S, now: u64, seed: u64) -> Option<Self> {
        let status = core.replica_status()?;
        let me = status.node;
        let members = core.members()?;
        let peers: Vec<NodeId> = members.iter().copied().filter(|&n| n != me).collect();
        let mut seed = seed | 1;
        let timeout = TICK * MISSED + jitter(&mut seed, 150);
        Some(Self {
            core,
            store,
            me,
            majority: members.len() / 2 + 1,
            peers,
            role: HostRole::Follower,
            now,
            last_heard: now,
            leader_seen: None,
            timeout,
            leader: None,
            cert: None,
            queue: VecDeque::new(),
            inflight: None,
            collecting: None,
            next_from: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            last_reply: BTreeMap::new(),
            leading_since: now,
            outbox: Vec::new(),
            seed,
            group: status.group,
            batches: 0,
            batch_frames: 0,
        })
    }

    /// The group's number.
    pub fn group(&self) -> u8 {
        self.group
    }

    /// Whether this member leads its group.
    pub fn leads(&self) -> bool {
        self.is_leader()
    }

    /// Gives the store back (the simulation keeps it across a crash).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store (read-only: the simulation's checks).
    pub fn store(&self) -> &S {
        &self.store
    }
}

fn pairs(items: &[LogItem]) -> Vec<(Entry, Mac)> {
    items.iter().map(|i| (i.entry.clone(), i.mac)).collect()
}

impl<S: LogStore, P: Platform, R: Responder> Member<S, P, R> {
    fn st(&self) -> ReplicaStatus {
        // A replicated core always has a status.
        self.core.replica_status().unwrap_or(ReplicaStatus {
            node: self.me,
            promised: 0,
            last_epoch: 0,
            index: 0,
            mac: Mac::ZERO,
            applied: 0,
            ready: false,
            leading: None,
            committed: 0,
            in_flight: false,
            group: self.group,
            range: (0, 0),
        })
    }

    fn status(&self) -> Status {
        let s = self.st();
        Status {
            node: self.me,
            promised: s.promised,
            last_epoch: s.last_epoch,
            index: s.index,
            mac: s.mac,
            applied: s.applied,
            ready: s.ready,
            leader: self.leader.unwrap_or(0),
        }
    }

    fn reply(&self, ack: Option<Ack>) -> PeerReply {
        PeerReply {
            status: self.status(),
            ack,
            cert: self.cert.as_ref().map(|(_, c)| c.clone()),
        }
    }

    fn is_leader(&self) -> bool {
        matches!(self.role, HostRole::Leader)
    }

    fn send(&mut self, to: NodeId, msg: &PeerMsg) {
        self.outbox.push((to, msg.clone()));
        self.outstanding.insert(to, self.now);
    }

    fn broadcast(&mut self, msg: &PeerMsg) {
        for p in self.peers.clone() {
            self.send(p, msg);
        }
    }

    /// Who leads, as the HTTP layer needs it to forward client frames.
    pub fn leader_view(&self, urls: &BTreeMap<NodeId, String>) -> LeaderView {
        LeaderView {
            me: self.is_leader(),
            url: match self.leader {
                Some(l) if l != self.me => urls.get(&l).cloned(),
                _ => None,
            },
        }
    }

    /// The group's gauges for /metrics.
    pub fn gauges(&self) -> GroupGauges {
        let s = self.st();
        let refusing = if s.ready {
            self.core.refusing().map(str::to_string)
        } else {
            Some("resynchronising: this node's store is behind its NVRAM".into())
        };
        GroupGauges {
            leading: self.is_leader(),
            epoch: s.promised,
            log_index: s.index,
            applied: s.applied,
            refusing,
            stats: self.core.stats(),
            sessions: self.core.sessions() as u64,
        }
    }

    /// The core (read-only: status, stats).
    pub fn core(&self) -> &Core<P> {
        &self.core
    }

    /// Messages to send, in order: `(to, message)`. The driver sends them
    /// and feeds each answer (or its absence) back through
    /// [`Member::on_reply`].
    pub fn take_outbox(&mut self) -> Vec<(NodeId, PeerMsg)> {
        std::mem::take(&mut self.outbox)
    }

    /// A client frame, with where its answer goes. It waits for the next
    /// [`Member::pump`], so frames that arrive together form one batch.
    pub fn on_client(&mut self, now: u64, input: JobInput, reply: R) {
        self.now = now;
        self.queue.push_back(Waiting {
            job: (input, reply),
            since: self.now,
        });
    }

    /// Leader work after a run of events: apply what committed, release
    /// its replies, propose the queued frames as the next batch.
    pub fn pump(&mut self, now: u64) {
        self.now = now;
        self.pump_now();
    }

    /// A peer's message; returns the answer to send back.
    pub fn on_peer(&mut self, now: u64, msg: PeerMsg) -> PeerReply {
        self.now = now;
        match msg {
            PeerMsg::Append {
                from,
                epoch,
                items,
                cert,
            } => self.on_append(from, epoch, items, cert),
            PeerMsg::Poll { .. } => self.reply(None),
            PeerMsg::VoteReq { from, request, .. } => self.on_vote_req(from, &request),
        }
    }

    /// A peer's answer to our message (None: it never came).
    pub fn on_answer(&mut self, now: u64, from: NodeId, reply: Option<PeerReply>) {
        self.now = now;
        self.outstanding.remove(&from);
        if let Some(r) = reply {
            self.last_reply.insert(from, self.now);
            self.on_reply(from, r);
        }
    }

    /// The timer (every [`TICK`] ms).
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        self.on_tick();
    }

    fn learn_cert(&mut self, cert: Option<Certificate>) {
        let Some(c) = cert else { return };
        let best = self.cert.as_ref().map_or(0, |(i, _)| *i);
        if let Ok(i) = self.core.check_certificate(&c) {
            if i > best {
                self.cert = Some((i, c));
            }
        }
    }

    fn heard(&mut self, from: NodeId) {
        self.last_heard = self.now;
        self.leader_seen = Some(self.now);
        self.leader = Some(from);
        if matches!(
            self.role,
            HostRole::Polling { .. } | HostRole::Candidate { .. }
        ) {
            self.role = HostRole::Follower;
        }
    }

    /// Leadership lost: what was held fails (clients retry elsewhere).
    fn stepped_down(&mut self, why: &str) {
        if self.is_leader() {
            tracing::warn!(reason = why, "stepped down");
        }
        self.role = HostRole::Follower;
        self.collecting = None;
        self.last_heard = self.now;
        if let Some(f) = self.inflight.take() {
            for s in f.senders {
                s.respond(Err(CoreError::Refusing("the leader changed; retry".into())));
            }
        }
        self.core.step_down();
    }

    fn my_mac_at(&self, index: u64) -> Option<Mac> {
        let s = self.st();
        if index == s.index {
            return Some(s.mac);
        }
        self.store
            .log_range(index, index)
            .ok()?
            .first()
            .map(|i| i.mac)
    }

    fn on_append(
        &mut self,
        from: NodeId,
        epoch: u64,
        items: Vec<LogItem>,
        cert: Option<Certificate>,
    ) -> PeerReply {
        self.learn_cert(cert);
        let st = self.st();
        if !st.ready {
            self.try_resync(&items);
            return self.reply(self.core.current_ack().ok());
        }
        if epoch < st.promised {
            // A superseded leader: our ack tells it (HigherEpoch).
            return self.reply(self.core.current_ack().ok());
        }
        if self.is_leader() && st.leading == Some(epoch) {
            return self.reply(None);
        }
        self.heard(from);
        let Some(first) = items.first() else {
            self.apply_certified();
            return self.reply(self.core.current_ack().ok());
        };
        let s0 = first.entry.index;
        let k = st.index;
        if s0 == 0 || s0 - 1 > k {
            return self.reply(self.core.current_ack().ok());
        }
        // Our MACs where the items overlap our log, read once.
        let lo = (s0 - 1).max(1);
        let hi = items.last().map_or(k, |i| i.entry.index.min(k));
        let mine: Vec<Mac> = if lo <= hi {
            self.store
                .log_range(lo, hi)
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.mac)
                .collect()
        } else {
            Vec::new()
        };
        let mac_at = |i: u64| {
            i.checked_sub(lo)
                .and_then(|o| mine.get(o as usize))
                .copied()
        };
        if s0 > 1 && mac_at(s0 - 1) != Some(first.entry.prev_mac) {
            return self.reply(self.core.current_ack().ok());
        }
        let mut d = s0 - 1;
        for it in &items {
            if it.entry.index <= k && mac_at(it.entry.index) == Some(it.mac) {
                d = it.entry.index;
            } else {
                break;
            }
        }
        let seg: Vec<LogItem> = items
            .iter()
            .filter(|i| i.entry.index > d)
            .cloned()
            .collect();
        if seg.is_empty() {
            self.apply_certified();
            return self.reply(self.core.current_ack().ok());
        }
        let was_leader = self.is_leader();
        let keep = if d == k && seg.len() == 1 {
            match self.core.accept(&seg[0].entry, &seg[0].mac) {
                Ok(()) => k,
                Err(e) => {
                    tracing::debug!(error = %e, "entry refused");
                    return self.reply(self.core.current_ack().ok());
                }
            }
        } else {
            let own = match self.store.log_range(d + 1, k) {
                Ok(o) if o.len() as u64 == k - d => o,
                _ => return self.reply(self.core.current_ack().ok()),
            };
            match self.core.accept_segment(&pairs(&own), &pairs(&seg)) {
                Ok(keep) => keep,
                Err(e) => {
                    tracing::debug!(error = %e, "segment refused");
                    return self.reply(self.core.current_ack().ok());
                }
            }
        };
        if was_leader && self.core.replica_status().and_then(|s| s.leading).is_none() {
            self.stepped_down("a later leader's entries");
        }
        let tail: Vec<LogItem> = seg.into_iter().filter(|i| i.entry.index > keep).collect();
        if let Err(e) = self.store.write_log(keep, &tail) {
            tracing::error!(error = %e, "log write failed");
            return self.reply(None);
        }
        let ack = match self.core.persisted() {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(error = %e, "persisted failed");
                None
            }
        };
        self.apply_certified();
        self.reply(ack)
    }

    /// Store behind NVRAM: entries from a peer that follow our applied entry.
    fn try_resync(&mut self, items: &[LogItem]) {
        let st = self.st();
        let a = st.applied;
        let Some(pos) = items.iter().position(|i| i.entry.index == a + 1) else {
            return;
        };
        let from = &items[pos..];
        let cert = self.cert.as_ref().map(|(_, c)| c.clone());
        match self.core.resync(&pairs(from), cert.as_ref()) {
            Ok(keep) => {
                let tail: Vec<LogItem> = from
                    .iter()
                    .filter(|i| i.entry.index <= keep)
                    .cloned()
                    .collect();
                if let Err(e) = self.store.write_log(a, &tail) {
                    tracing::error!(error = %e, "log write failed during resync");
                    return;
                }
                tracing::info!(index = keep, "resynchronised from a peer");
                self.apply_certified();
            }
            Err(e) => tracing::debug!(error = %e, "resync refused"),
        }
    }

    /// Applies committed entries: by certificate (follower) or by the
    /// leader's tracker.
    fn apply_certified(&mut self) {
        loop {
            let st = self.st();
            if !st.ready || st.applied >= st.index || st.in_flight {
                return;
            }
            let next = st.applied + 1;
            let Ok(items) = self.store.log_range(next, next) else {
                return;
            };
            let Some(item) = items.into_iter().next() else {
                return;
            };
            let buckets = match Body::decode(&item.body) {
                Ok(b) => b.buckets(),
                Err(_) => return,
            };
            let Ok(buckets) = self.store.buckets(&buckets) else {
                return;
            };
            let cert = self.cert.as_ref().map(|(_, c)| c);
            let t = match self
                .core
                .apply(&item.entry, &item.mac, &item.body, buckets, cert)
            {
                Ok(t) => t,
                Err(_) => return,
            };
            if let Err(e) = self.store.apply(t.writes(), next) {
                tracing::error!(error = %e, "store apply failed");
                return;
            }
            if let Err(e) = self.core.applied(t) {
                tracing::error!(error = %e, "core apply failed");
                return;
            }
        }
    }

    fn on_vote_req(&mut self, from: NodeId, request: &Ack) -> PeerReply {
        let epoch = request.epoch;
        // Leader stickiness: a follower that heard a working leader lately
        // does not vote. Only a leader's Appends count here; a poll or a
        // vote of our own does not (else two rounds of polls could keep
        // every node "not quiet" and no candidate would ever win).
        let recent = self
            .leader_seen
            .is_some_and(|t| self.now.saturating_sub(t) <= TICK * MISSED);
        let follower = matches!(self.role, HostRole::Follower);
        if self.is_leader() || (recent && follower) {
            return self.reply(None);
        }
        let was_leader = self.is_leader();
        match self.core.vote(request) {
            Ok(v) => {
                if was_leader {
                    self.stepped_down("voted for a later epoch");
                }
                if matches!(self.role, HostRole::Candidate { epoch: e, .. } if e < epoch) {
                    self.role = HostRole::Follower;
                }
                self.last_heard = self.now;
                self.leader = Some(from);
                self.reply(Some(v))
            }
            Err(_) => self.reply(None),
        }
    }

    fn on_reply(&mut self, from: NodeId, r: PeerReply) {
        self.learn_cert(r.cert.clone());
        match &mut self.role {
            HostRole::Polling { replies, .. } => {
                replies.insert(from, r.status);
                return;
            }
            HostRole::Candidate { epoch, votes, .. } => {
                if let Some(v) = r.ack {
                    if v.epoch == *epoch && v.node == from && self.core.ack_verifies(&v) {
                        votes.insert(from, v);
                    }
                }
                self.try_win();
                return;
            }
            HostRole::Follower => return,
            HostRole::Leader => {}
        }
        let Some(ack) = r.ack else {
            self.next_from.insert(from, self.catch_up_from(&r.status));
            return;
        };
        self.count_ack(from, &ack);
        if !self.is_leader() {
            return;
        }
        let st = self.st();
        let next = if ack.index == st.index && ack.entry_mac == st.mac {
            st.index + 1
        } else {
            self.catch_up_from(&r.status)
        };
        self.next_from.insert(from, next);
        if next <= st.index {
            self.send_append(from);
        }
    }

    fn catch_up_from(&self, s: &Status) -> u64 {
        let st = self.st();
        if s.index <= st.index && self.my_mac_at(s.index) == Some(s.mac) && s.ready {
            s.index + 1
        } else {
            s.applied + 1
        }
    }

    fn count_ack(&mut self, from: NodeId, ack: &Ack) {
        match self.core.on_ack(ack) {
            AckEffect::SteppedDown => {
                self.stepped_down("a member promised a later epoch");
                return;
            }
            AckEffect::Committed(_) | AckEffect::Nothing => {}
        }
        // Certificates: majority acks for one current-epoch entry.
        let st = self.st();
        let Some(epoch) = st.leading else { return };
        if ack.epoch != epoch || ack.entry_epoch != epoch {
            return;
        }
        if let Some((_, acks)) = self.collecting.as_mut().filter(|(i, _)| *i == ack.index) {
            acks.insert(from, ack.clone());
            if acks.len() >= self.majority {
                let c = Certificate::new(acks.values().cloned().collect());
                if let Ok(i) = self.core.check_certificate(&c) {
                    if self.cert.as_ref().is_none_or(|(b, _)| i > *b) {
                        self.cert = Some((i, c));
                    }
                }
            }
        }
    }

    fn send_append(&mut self, to: NodeId) {
        if self
            .outstanding
            .get(&to)
            .is_some_and(|&t| self.now.saturating_sub(t) < TICK * 4)
        {
            return;
        }
        let st = self.st();
        let Some(epoch) = st.leading else { return };
        let from = self.next_from.get(&to).copied().unwrap_or(st.index + 1);
        let items = if from <= st.index {
            self.store.log_range(from, st.index).unwrap_or_default()
        } else {
            Vec::new()
        };
        let msg = PeerMsg::Append {
            from: self.me,
            epoch,
            items,
            cert: self.cert.as_ref().map(|(_, c)| c.clone()),
        };
        self.send(to, &msg);
    }

    fn try_win(&mut self) {
        let HostRole::Candidate { votes, .. } = &self.role else {
            return;
        };
        let st = self.st();
        let ok = votes
            .values()
            .filter(|v| (v.entry_epoch, v.index) <= (st.last_epoch, st.index))
            .count();
        if ok + 1 < self.majority {
            return;
        }
        let votes: Vec<Ack> = votes.values().cloned().collect();
        match self.core.become_leader(&votes) {
            Ok(p) => {
                let item = LogItem {
                    entry: p.entry.clone(),
                    mac: p.mac,
                    body: p.body.clone(),
                };
                if let Err(e) = self.store.write_log(st.index, &[item]) {
                    tracing::error!(error = %e, "log write failed");
                    self.stepped_down("log write failed");
                    return;
                }
                let own = match self.core.persisted() {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "persisted failed");
                        self.stepped_down("NVRAM write failed");
                        return;
                    }
                };
                self.role = HostRole::Leader;
                self.leader = Some(self.me);
                self.leading_since = self.now;
                self.collecting = Some((p.entry.index, BTreeMap::new()));
                tracing::info!(epoch = p.entry.epoch, index = p.entry.index, "leading");
                self.next_from = self.peers.iter().map(|&n| (n, p.entry.index)).collect();
                self.outstanding.clear();
                self.count_ack(self.me, &own);
                for n in self.peers.clone() {
                    self.send_append(n);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "election failed");
                self.role = HostRole::Follower;
            }
        }
    }

    fn on_tick(&mut self) {
        // Frames that waited too long for a leader.
        let leader = self.is_leader();
        while let Some(w) = self.queue.front() {
            if leader || self.now.saturating_sub(w.since) < CLIENT_WAIT {
                break;
            }
            if let Some(w) = self.queue.pop_front() {
                w.job.1.respond(Err(CoreError::Refusing(
                    "no leader reachable: the realm has no working majority".into(),
                )));
            }
        }
        let st = self.st();
        if !st.ready {
            // Ask a peer for our log (an Append answer carries nothing; a
            // Poll tells us who leads, and the leader's heartbeat resyncs).
            if let Some(&p) = self.peers.first() {
                if self
                    .outstanding
                    .get(&p)
                    .is_none_or(|&t| self.now.saturating_sub(t) > TICK * 4)
                {
                    self.send(p, &PeerMsg::Poll { from: self.me });
                }
            }
            return;
        }
        match &self.role {
            HostRole::Leader => {
                let heard = self
                    .last_reply
                    .values()
                    .filter(|&&t| self.now.saturating_sub(t) < QUORUM_LOST)
                    .count();
                if heard + 1 < self.majority
                    && self.now.saturating_sub(self.leading_since) > QUORUM_LOST
                {
                    self.stepped_down("no majority answers");
                    self.leader = None;
                    return;
                }
                for n in self.peers.clone() {
                    self.send_append(n);
                }
            }
            HostRole::Follower => {
                if self.now.saturating_sub(self.last_heard) > self.timeout {
                    let mut replies = BTreeMap::new();
                    replies.insert(self.me, self.status());
                    self.role = HostRole::Polling {
                        started: self.now,
                        replies,
                    };
                    self.broadcast(&PeerMsg::Poll { from: self.me });
                    self.decide_poll(false);
                }
            }
            HostRole::Polling { started, .. } => {
                if self.now.saturating_sub(*started) >= TICK * 2 {
                    self.decide_poll(true);
                }
            }
            HostRole::Candidate { started, .. } => {
                if self.now.saturating_sub(*started) >= TICK * 4 {
                    self.role = HostRole::Follower;
                    self.last_heard = self.now + jitter(&mut self.seed, 200);
                }
            }
        }
    }

    fn decide_poll(&mut self, final_round: bool) {
        let HostRole::Polling { replies, .. } = &self.role else {
            return;
        };
        if replies.len() < self.majority {
            if final_round {
                // No majority answers: nobody can lead; stop forwarding.
                self.role = HostRole::Follower;
                self.last_heard = self.now;
                self.leader = None;
            }
            return;
        }
        if !final_round && replies.len() < self.peers.len() + 1 {
            return;
        }
        // Raft's order, then a tie-break that starts at node g+1 for group
        // g, so a realm's groups spread their leaders over its nodes.
        let n_nodes = self.peers.len() as u32 + 1;
        let g = u32::from(self.group);
        let best = replies
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(&n, s)| {
                let turn = (u32::from(n) + n_nodes - 1 - g % n_nodes) % n_nodes;
                ((s.last_epoch, s.index, std::cmp::Reverse(turn)), n)
            })
            .max()
            .map(|(_, n)| n);
        self.role = HostRole::Follower;
        self.last_heard = self.now;
        if best != Some(self.me) {
            return;
        }
        match self.core.start_election() {
            Ok(epoch) => {
                let Ok(request) = self.core.current_ack() else {
                    return;
                };
                self.role = HostRole::Candidate {
                    epoch,
                    started: self.now,
                    votes: BTreeMap::new(),
                };
                self.broadcast(&PeerMsg::VoteReq {
                    from: self.me,
                    epoch,
                    request,
                });
                self.try_win();
            }
            Err(e) => tracing::warn!(error = %e, "cannot stand for election"),
        }
    }

    /// Leader work: apply what committed, release replies, propose the next batch.
    fn pump_now(&mut self) {
        if !self.is_leader() {
            if !self.queue.is_empty() && self.leader.is_some_and(|l| l != self.me) {
                // A frame reached a follower (the leader changed under the
                // HTTP layer's feet): it answers "retry".
                while let Some(w) = self.queue.pop_front() {
                    w.job.1.respond(Err(CoreError::Refusing(
                        "this node is not the leader; retry".into(),
                    )));
                }
            }
            return;
        }
        // The in-flight batch, once committed.
        if let Some(index) = self.core.inflight_committed() {
            if let Some(f) = self.inflight.take() {
                debug_assert_eq!(f.index, index);
                if let Err(e) = self.store.apply(&f.writes, index) {
                    tracing::error!(error = %e, "store apply failed");
                    self.inflight = Some(f);
                    return;
                }
                match self.core.commit_inflight() {
                    Ok(replies) => {
                        for (s, r) in f.senders.into_iter().zip(replies) {
                            s.respond(r);
                        }
                        self.batches += 1;
                    }
                    Err(e) => tracing::error!(error = %e, "commit failed"),
                }
            }
        }
        self.apply_certified();
        let st = self.st();
        if st.in_flight || st.applied != st.index || self.queue.is_empty() {
            return;
        }
        let mut jobs = Vec::new();
        while jobs.len() < MAX_BATCH {
            match self.queue.pop_front() {
                Some(w) => jobs.push(w.job),
                None => break,
            }
        }
        let mut senders = Vec::with_capacity(jobs.len());
        let mut inputs = Vec::with_capacity(jobs.len());
        for j in jobs {
            let (input, reply) = j;
            inputs.push(match input {
                JobInput::Open {
                    tenant,
                    user,
                    frame,
                } => Input::Open {
                    record: self.core.record_id(&tenant, &user),
                    frame,
                },
                JobInput::Data { frame } => Input::Data { frame },
            });
            senders.push(reply);
        }
        let n = inputs.len() as u64;
        let wanted = self.core.buckets_for(&inputs);
        let buckets = match self.store.buckets(&wanted) {
            Ok(b) => b,
            Err(e) => {
                for s in senders {
                    s.respond(Err(CoreError::Refusing(format!("store read failed: {e}"))));
                }
                return;
            }
        };
        let p = match self.core.propose(inputs, buckets) {
            Ok(p) => p,
            Err(e) => {
                for s in senders {
                    s.respond(Err(CoreError::Refusing(e.to_string())));
                }
                return;
            }
        };
        self.batch_frames += n;
        let item = LogItem {
            entry: p.entry.clone(),
            mac: p.mac,
            body: p.body,
        };
        // In flight before the write: a failure steps down, which answers
        // every held frame.
        self.inflight = Some(InFlight {
            index: p.entry.index,
            writes: p.writes,
            senders,
        });
        self.collecting = Some((p.entry.index, BTreeMap::new()));
        if let Err(e) = self.store.write_log(st.index, std::slice::from_ref(&item)) {
            tracing::error!(error = %e, "log write failed");
            self.stepped_down("log write failed");
            return;
        }
        match self.core.persisted() {
            Ok(own) => self.count_ack(self.me, &own),
            Err(e) => {
                tracing::error!(error = %e, "persisted failed");
                self.stepped_down("NVRAM write failed");
                return;
            }
        }
        for n in self.peers.clone() {
            self.next_from.entry(n).or_insert(p.entry.index);
            self.send_append_now(n);
        }
        // A one-node realm commits on its own ack.
        if self.core.inflight_committed().is_some() {
            self.pump_now();
        }
    }

    /// Sends the newest entries to a follower even if a message is out
    /// (a new proposal must not wait for a heartbeat's answer).
    fn send_append_now(&mut self, to: NodeId) {
        self.outstanding.remove(&to);
        self.send_append(to);
    }
}
