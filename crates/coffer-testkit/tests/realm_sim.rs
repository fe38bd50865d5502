//! A deterministic simulation of the replicated realm's log protocol
//! (ADR 0011, phase 3, first cut) on the engine of `coffer_testkit::sim`.
//!
//! **Scope.** Only the log layer runs here: the `coffer-vault-core::log`
//! primitives (entries, MACs, acks, certificates, `GroupSlot::check` /
//! `advance`, `CommitTracker`). The cores' OPAQUE and record side is not wired
//! to the log yet: a batch's body is an 8-byte request id, its root is
//! `SHA-256(prev root || body hash)`, and "checking the transition" means
//! recomputing that root and the body hash. Nothing here is production code:
//! the host logic (leader choice, catch-up, resync) is the simulation's own,
//! written from the ADR, to be replaced by the real host state machine.
//!
//! **Node model.** Each node is
//! - a trusted part: its `GroupSlot` (the NVRAM: survives crashes and store
//!   rollbacks), the realm keys, and while leader a `CommitTracker` with the
//!   held replies (volatile);
//! - an untrusted host part: its store (the accepted chain of
//!   `(Entry, Mac, body)` from genesis, plus the best commit certificate it
//!   knows), which survives crashes but can be rolled back to an earlier
//!   length; and volatile host state (role, last heartbeat, leader hint, poll).
//!
//! A node is *ready* when its store ends exactly at its slot `(k, h)`; a node
//! that is not ready (after a store rollback) neither leads nor acks until it
//! has re-fetched entries up to k that chain to h, or jumped with a
//! certificate past k.
//!
//! **Messages.** `Client` (a request; a non-leader forwards it once to the
//! leader it last heard), `Append` (a leader's new entry with its body and the
//! best certificate it knows; its tip doubles as the heartbeat), `Ack` (a
//! node's signed ack of its slot, sent to the sender of an `Append`),
//! `Fetch` / `Entries` (catch-up from any peer: entries after a point, with a
//! certificate for certified jumps), `Poll` / `Status` (leader choice).
//!
//! **Leader choice** (host policy, ADR "Leader failover"): after 3 missed
//! heartbeats a node polls every peer; after two ticks, if a majority
//! (itself included) answered, the best-ranked ready answer leads. The ADR's
//! rank is "highest index, lowest id on ties" ([`Flags::adr_literal`]); the
//! default rank here puts the highest *certified* index first and excludes
//! nodes that know they are stranded on an abandoned branch (see
//! `adr_literal_failover_livelocks` for why).
//!
//! **Faults:** crash/restart, store rollback, cut links, isolation, a split
//! between the faulty set and the rest, loss, duplication, long delays and
//! reordering; then calm. Every seed runs a random plan; three seeds in four
//! keep the faulty set a minority (liveness is then required after calm),
//! the fourth lets it be any size (safety only).
//!
//! `COFFER_SIM_SEED=<n>` (and `COFFER_SIM_NODES=3|5`) runs one seed and prints
//! its summary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use coffer_testkit::sim::{
    Config, Ctx, FaultPlan, FaultSpec, NetConfig, Node, NodeIx, Sim, SimRng, Step, EXTERNAL,
};
use coffer_vault_core::log::{
    body_hash, empty_body_hash, Accept, Ack, AckKey, AckOutcome, Certificate, CommitTracker, Entry,
    EntryKind, GroupContext, GroupId, GroupSlot, LogKey, Mac, Members, NodeId, Reject,
};

const REALM: [u8; 16] = [0x52; 16];
const G: GroupId = [0x47; 16];
/// Tick interval (virtual ms): heartbeats, timeouts, retries.
const TICK: u64 = 10;
/// Missed heartbeats before a follower polls.
const MISSED: u64 = 3;
/// Entries a leader has in flight (ADR: up to 4).
const MAX_IN_FLIGHT: u64 = 4;
/// Entries per catch-up answer.
const FETCH_BATCH: usize = 64;
/// A client retries an unanswered request after this long, at the next node.
const CLIENT_RETRY: u64 = 30;
/// Faults happen in `[FAULT_START, CALM_AT)`.
const FAULT_START: u64 = 20;
const CALM_AT: u64 = 1_500;
/// Liveness: every request is answered within this long after calm.
const LIVE_BOUND: u64 = 1_000;

/// Deliberately broken rules, to show the checker can fail (test-only).
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    /// Followers accept a next-index entry that does not chain (skip `check`).
    ack_without_check: bool,
    /// Leaders count an entry committed on their own ack alone.
    single_ack_commit: bool,
    /// The ADR's literal failover: rank by highest index (lowest id on
    /// ties), and a leader steps down only on an ack or entry past its own
    /// index on another chain.
    adr_literal: bool,
}

struct Shared {
    log: LogKey,
    ack: AckKey,
    members: Members,
    flags: Flags,
}

impl Shared {
    fn ctx(&self) -> GroupContext<'_> {
        GroupContext {
            realm_id: &REALM,
            log_key: &self.log,
            ack_key: &self.ack,
            members: &self.members,
        }
    }
}

fn node_id(ix: NodeIx) -> NodeId {
    ix as NodeId + 1
}

#[derive(Debug, Clone)]
struct Stored {
    e: Entry,
    m: Mac,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Msg {
    Client {
        req: u64,
        forwarded: bool,
    },
    Append {
        entry: Entry,
        mac: Mac,
        body: Vec<u8>,
        cert: Option<Certificate>,
    },
    Ack(Ack),
    Fetch {
        after: u64,
        after_mac: Mac,
        certified: u64,
    },
    Entries {
        start: u64,
        entries: Vec<Stored>,
        cert: Option<Certificate>,
    },
    Poll {
        round: u64,
    },
    Status {
        round: u64,
        st: StatusInfo,
        cert: Option<Certificate>,
    },
}

#[derive(Debug, Clone, Copy)]
struct StatusInfo {
    index: u64,
    ready: bool,
    stranded: bool,
    /// Index of the best certificate the node holds on its own chain.
    certified: u64,
}

/// What a node tells the checker (drained after every step).
#[derive(Debug, Clone)]
enum Obs {
    AckSent {
        index: u64,
        mac: Mac,
        ready: bool,
    },
    Committed {
        index: u64,
        mac: Mac,
        prev: Mac,
    },
    Released {
        req: u64,
        index: u64,
        mac: Mac,
        proposed_at: u64,
    },
    Jumped,
    Resynced,
    BecameLeader,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Follower,
    Polling { round: u64, started: u64 },
    Leader,
}

struct RNode {
    ix: NodeIx,
    id: NodeId,
    n: usize,
    sh: Rc<Shared>,
    // Trusted, durable (NVRAM).
    slot: GroupSlot,
    // Trusted, volatile.
    tracker: Option<CommitTracker>,
    /// The leader's base index (its slot at `become_leader`).
    base: u64,
    held: BTreeMap<u64, Vec<(u64, u64)>>,
    // Untrusted host, durable.
    store: Vec<Stored>,
    cert: Option<Certificate>,
    // Untrusted host, volatile.
    role: Role,
    last_heard: u64,
    leader_hint: Option<NodeIx>,
    round: u64,
    replies: BTreeMap<NodeIx, StatusInfo>,
    queue: VecDeque<u64>,
    acks: BTreeMap<u64, BTreeMap<NodeId, Ack>>,
    /// Nodes that acked another MAC at an index this leader proposed.
    lost: BTreeSet<NodeId>,
    reported: u64,
    stranded: bool,
    last_fetch: Option<u64>,
    obs: Vec<Obs>,
}

fn cert_point(c: &Certificate) -> (u64, Mac) {
    let a = &c.acks[0];
    (a.index, a.entry_mac)
}

/// The stand-in for the core's transition check: body hash and root.
fn transition_ok(prev: &Stored, e: &Entry, body: &[u8]) -> bool {
    body_hash(body) == e.body_hash && e.root == next_root(&prev.e.root, &e.kind, &e.body_hash)
}

fn next_root(prev_root: &[u8; 32], kind: &EntryKind, bh: &[u8; 32]) -> [u8; 32] {
    match kind {
        EntryKind::Batch => body_hash(&[&prev_root[..], &bh[..]].concat()),
        _ => *prev_root,
    }
}

fn genesis(sh: &Shared) -> Stored {
    let e = Entry {
        group: G,
        index: 1,
        prev_mac: Mac::ZERO,
        leader: sh.members.nodes()[0],
        kind: EntryKind::Genesis {
            members: sh.members.clone(),
        },
        range_lo: 0,
        range_hi: u16::MAX,
        root: [0xee; 32],
        body_hash: empty_body_hash(),
    };
    let m = e.mac(&sh.log, &REALM);
    Stored {
        e,
        m,
        body: 0u32.to_be_bytes().to_vec(),
    }
}

impl RNode {
    fn new(ix: NodeIx, n: usize, sh: Rc<Shared>) -> Self {
        // `realm new`: every node starts with the genesis entry accepted.
        let g = genesis(&sh);
        let mut slot = GroupSlot::new(G);
        assert_eq!(
            slot.check(&sh.ctx(), &g.e, &g.m, None),
            Ok(Accept::ChainStep)
        );
        slot.advance(&g.e, &g.m).unwrap();
        Self {
            ix,
            id: node_id(ix),
            n,
            sh,
            slot,
            tracker: None,
            base: 0,
            held: BTreeMap::new(),
            store: vec![g],
            cert: None,
            role: Role::Follower,
            last_heard: 0,
            leader_hint: None,
            round: 0,
            replies: BTreeMap::new(),
            queue: VecDeque::new(),
            acks: BTreeMap::new(),
            lost: BTreeSet::new(),
            reported: 0,
            stranded: false,
            last_fetch: None,
            obs: Vec::new(),
        }
    }

    fn majority(&self) -> usize {
        self.n / 2 + 1
    }

    fn ready(&self) -> bool {
        self.store.len() as u64 == self.slot.index
            && self.store.last().is_some_and(|s| s.m == self.slot.mac)
    }

    fn at(&self, index: u64) -> Option<&Stored> {
        let i = usize::try_from(index).ok()?.checked_sub(1)?;
        self.store.get(i)
    }

    fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Index of the best certificate if it lies on this node's store.
    fn certified_on_chain(&self) -> u64 {
        match &self.cert {
            Some(c) => {
                let (i, m) = cert_point(c);
                if self.at(i).is_some_and(|s| s.m == m) {
                    i
                } else {
                    1
                }
            }
            None => 1,
        }
    }

    fn status(&self) -> StatusInfo {
        StatusInfo {
            index: self.slot.index,
            ready: self.ready(),
            stranded: self.stranded,
            certified: self.certified_on_chain(),
        }
    }

    /// The core signs an ack of its slot (only when ready: store == NVRAM).
    fn send_ack(&mut self, ctx: &mut Ctx<'_, Msg>, to: NodeIx) {
        if !self.ready() || to == EXTERNAL {
            return;
        }
        let ack = Ack::sign(
            &self.sh.ack,
            &REALM,
            self.id,
            G,
            self.slot.index,
            self.slot.mac,
        );
        self.obs.push(Obs::AckSent {
            index: ack.index,
            mac: ack.entry_mac,
            ready: self.ready(),
        });
        ctx.send(to, Msg::Ack(ack));
    }

    fn heard(&mut self, ctx: &Ctx<'_, Msg>, from: NodeIx) {
        if from == EXTERNAL {
            return;
        }
        self.last_heard = ctx.now();
        self.leader_hint = Some(from);
        if matches!(self.role, Role::Polling { .. }) {
            self.role = Role::Follower;
        }
    }

    fn fetch(&mut self, ctx: &mut Ctx<'_, Msg>, to: NodeIx) {
        if to == EXTERNAL || to == self.ix {
            return;
        }
        if self.last_fetch.is_some_and(|t| ctx.now() < t + TICK / 2) {
            return;
        }
        self.last_fetch = Some(ctx.now());
        let after = (self.store.len() as u64).min(self.slot.index).max(1);
        let after_mac = self.at(after).map(|s| s.m).unwrap_or(Mac::ZERO);
        let certified = self.certified_on_chain().min(after);
        ctx.send(
            to,
            Msg::Fetch {
                after,
                after_mac,
                certified,
            },
        );
    }

    /// Takes in a certificate; returns true if it is the best one so far.
    fn learn_cert(&mut self, cert: &Option<Certificate>) -> bool {
        let Some(c) = cert else { return false };
        if c.acks.is_empty() {
            return false;
        }
        let (i, _) = cert_point(c);
        let best = self.cert.as_ref().map_or(0, |b| cert_point(b).0);
        if i <= best {
            return false;
        }
        let sh = &self.sh;
        if c.verify(&sh.members, &sh.ack, &REALM).is_err() {
            return false;
        }
        self.cert = Some(c.clone());
        true
    }

    /// React to the best certificate: a leader whose chain it contradicts or
    /// passes steps down; a node behind or off it fetches.
    fn react_cert(&mut self, ctx: &mut Ctx<'_, Msg>, from: NodeIx) {
        let Some(c) = &self.cert else { return };
        let (i, m) = cert_point(c);
        let off_chain = if i > self.slot.index {
            true
        } else {
            match self.at(i) {
                Some(s) => s.m != m,
                // Store rolled back below it: cannot tell.
                None => false,
            }
        };
        if i <= self.slot.index && off_chain {
            self.stranded = true;
        }
        if off_chain {
            if self.is_leader() {
                self.step_down(ctx);
            }
            self.fetch(ctx, from);
        }
    }

    fn step_down(&mut self, ctx: &Ctx<'_, Msg>) {
        self.role = Role::Follower;
        self.tracker = None;
        self.held.clear();
        self.queue.clear();
        self.acks.clear();
        self.lost.clear();
        self.last_heard = ctx.now();
    }

    /// Chain-steps or jumps onto `s` (the core's accept, the host's write,
    /// the NVRAM write). The caller has checked the transition.
    fn accept(&mut self, s: Stored, cert: Option<&Certificate>) -> Result<Accept, Reject> {
        let how = match self.slot.check(&self.sh.ctx(), &s.e, &s.m, cert) {
            Ok(how) => how,
            Err(Reject::BrokenChain { .. }) if self.sh.flags.ack_without_check => Accept::ChainStep,
            Err(e) => return Err(e),
        };
        self.slot.advance(&s.e, &s.m)?;
        if let Accept::Jump { .. } = how {
            self.stranded = false;
            self.obs.push(Obs::Jumped);
        }
        self.store.push(s);
        Ok(how)
    }

    fn become_leader(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.role = Role::Leader;
        self.tracker = Some(CommitTracker::new(
            G,
            self.sh.members.clone(),
            self.slot.index,
            self.slot.mac,
        ));
        self.base = self.slot.index;
        self.reported = self.slot.index;
        self.held.clear();
        self.acks.clear();
        self.lost.clear();
        self.leader_hint = Some(self.ix);
        self.obs.push(Obs::BecameLeader);
        self.propose(ctx, EntryKind::Leader, 0u32.to_be_bytes().to_vec(), None);
    }

    fn in_flight(&self) -> u64 {
        match &self.tracker {
            Some(t) => t.last_index() - t.committed().max(self.base),
            None => 0,
        }
    }

    fn propose(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        kind: EntryKind,
        body: Vec<u8>,
        req: Option<u64>,
    ) {
        let tip = self.store.last().unwrap().clone();
        let bh = body_hash(&body);
        let e = Entry {
            group: G,
            index: tip.e.index + 1,
            prev_mac: tip.m,
            leader: self.id,
            root: next_root(&tip.e.root, &kind, &bh),
            kind,
            range_lo: 0,
            range_hi: u16::MAX,
            body_hash: bh,
        };
        let m = e.mac(&self.sh.log, &REALM);
        self.tracker.as_mut().unwrap().propose(&e, m).unwrap();
        let s = Stored { e, m, body };
        assert_eq!(self.accept(s.clone(), None), Ok(Accept::ChainStep));
        if let Some(r) = req {
            self.held.entry(s.e.index).or_default().push((r, ctx.now()));
        }
        ctx.broadcast(&Msg::Append {
            entry: s.e,
            mac: s.m,
            body: s.body,
            cert: self.cert.clone(),
        });
        // The leader's own ack, after its own NVRAM write.
        let own = Ack::sign(
            &self.sh.ack,
            &REALM,
            self.id,
            G,
            self.slot.index,
            self.slot.mac,
        );
        self.obs.push(Obs::AckSent {
            index: own.index,
            mac: own.entry_mac,
            ready: self.ready(),
        });
        self.on_ack(ctx, own);
    }

    fn on_ack(&mut self, ctx: &mut Ctx<'_, Msg>, ack: Ack) {
        let Some(t) = self.tracker.as_mut() else {
            return;
        };
        match t.on_ack(&ack, &self.sh.ack, &REALM) {
            Ok(AckOutcome::Counted { .. }) | Ok(AckOutcome::Duplicate) => {
                let majority = self.majority();
                let at = self.acks.entry(ack.index).or_default();
                at.insert(ack.node, ack.clone());
                if at.len() >= majority {
                    let best = self.cert.as_ref().map_or(0, |c| cert_point(c).0);
                    if ack.index > best {
                        self.cert = Some(Certificate::new(at.values().cloned().collect()));
                        let keep = self.acks.split_off(&ack.index);
                        self.acks = keep;
                    }
                }
                self.release(ctx);
            }
            Ok(AckOutcome::OtherChain { index }) if index > t.last_index() => {
                // ADR: an ack past this leader's index on another chain.
                self.step_down(ctx);
            }
            Ok(AckOutcome::OtherChain { .. }) | Ok(AckOutcome::Stale)
                if !self.sh.flags.adr_literal
                    && ack.index > self.certified_on_chain()
                    && self.at(ack.index).is_some_and(|s| s.m != ack.entry_mac) =>
            {
                // This node acked another MAC than this leader's chain holds
                // at an index above anything known committed on it: it can
                // only come back by a jump onto a committed entry of this
                // chain. With more than a minority lost, this chain can never
                // commit again: step down and stay out of leader choice.
                self.lost.insert(ack.node);
                if self.lost.len() > self.n - self.majority() {
                    self.step_down(ctx);
                    self.stranded = true;
                }
            }
            _ => {}
        }
    }

    /// Releases the held replies of committed entries; proposes queued requests.
    fn release(&mut self, ctx: &mut Ctx<'_, Msg>) {
        let Some(t) = self.tracker.as_ref() else {
            return;
        };
        let c = if self.sh.flags.single_ack_commit {
            t.last_index()
        } else {
            t.committed()
        };
        while self.reported < c {
            self.reported += 1;
            let s = self.at(self.reported).unwrap();
            self.obs.push(Obs::Committed {
                index: self.reported,
                mac: s.m,
                prev: s.e.prev_mac,
            });
        }
        let later = self.held.split_off(&(c + 1));
        let done = std::mem::replace(&mut self.held, later);
        for (index, reqs) in done {
            let mac = self.at(index).unwrap().m;
            for (req, proposed_at) in reqs {
                self.obs.push(Obs::Released {
                    req,
                    index,
                    mac,
                    proposed_at,
                });
            }
        }
        while self.in_flight() < MAX_IN_FLIGHT {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            self.propose(ctx, EntryKind::Batch, req.to_be_bytes().to_vec(), Some(req));
            if !self.is_leader() {
                break;
            }
        }
    }

    fn on_append(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        from: NodeIx,
        s: Stored,
        cert: Option<Certificate>,
    ) {
        if self.learn_cert(&cert) {
            self.react_cert(ctx, from);
        }
        if !self.ready() {
            self.fetch(ctx, from);
            return;
        }
        if self.is_leader() {
            // A leader takes no other leader's entries; its ack tells the
            // other leader where it stands (OtherChain past its index).
            self.send_ack(ctx, from);
            return;
        }
        let k = self.slot.index;
        if s.e.index == k + 1 {
            let tip = self.store.last().unwrap();
            if transition_ok(tip, &s.e, &s.body) && self.accept(s, None).is_ok() {
                self.heard(ctx, from);
            } else {
                self.fetch(ctx, from);
            }
        } else if s.e.index > k + 1 {
            self.fetch(ctx, from);
        } else if self.at(s.e.index).is_some_and(|x| x.m == s.m) {
            self.heard(ctx, from);
        }
        self.send_ack(ctx, from);
    }

    fn on_fetch(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        from: NodeIx,
        after: u64,
        after_mac: Mac,
        certified: u64,
    ) {
        let start = if self.at(after).is_some_and(|s| s.m == after_mac) {
            after + 1
        } else {
            certified.max(1) + 1
        };
        let lo = (start - 1) as usize;
        let entries = if lo < self.store.len() {
            let hi = (lo + FETCH_BATCH).min(self.store.len());
            self.store[lo..hi].to_vec()
        } else {
            Vec::new()
        };
        ctx.send(
            from,
            Msg::Entries {
                start,
                entries,
                cert: self.cert.clone(),
            },
        );
    }

    fn on_entries(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        from: NodeIx,
        start: u64,
        entries: Vec<Stored>,
        cert: Option<Certificate>,
    ) {
        if self.learn_cert(&cert) {
            self.react_cert(ctx, from);
        }
        let was_ready = self.ready();
        if start < 2 || start - 1 > self.store.len() as u64 {
            return;
        }
        // The candidate chain: our prefix, then the verified entries.
        let mut cand: Vec<Stored> = self.store[..(start - 1) as usize].to_vec();
        for s in entries {
            let prev = cand.last().unwrap();
            if s.e.index != prev.e.index + 1
                || s.e.prev_mac != prev.m
                || !s.e.verify_mac(&self.sh.log, &REALM, &s.m)
                || !transition_ok(prev, &s.e, &s.body)
            {
                break;
            }
            cand.push(s);
        }
        let k = self.slot.index as usize;
        let mut progressed = false;
        if cand.len() >= k && cand[k - 1].m == self.slot.mac {
            // Our slot is on this chain: re-fetched up to it (resync), then
            // chain steps past it.
            if cand.len() > k && self.is_leader() {
                self.step_down(ctx);
            }
            let rest = cand.split_off(k);
            if !was_ready {
                self.store = cand;
                self.obs.push(Obs::Resynced);
                progressed = true;
            }
            for s in rest {
                if self.accept(s, None).is_err() {
                    break;
                }
                progressed = true;
            }
        } else {
            let jump = self.cert.clone().and_then(|c| {
                let (i, m) = cert_point(&c);
                (i as usize > k && i as usize <= cand.len() && cand[i as usize - 1].m == m)
                    .then_some((i as usize, c))
            });
            if let Some((i, c)) = jump {
                let rest = cand.split_off(i);
                let target = cand.pop().unwrap();
                let (target_e, target_m) = (target.e.clone(), target.m);
                if self
                    .slot
                    .check(&self.sh.ctx(), &target_e, &target_m, Some(&c))
                    .is_ok()
                {
                    if self.is_leader() {
                        self.step_down(ctx);
                    }
                    // The host rewrites its store to the certified chain; the
                    // core jumps.
                    self.store = cand;
                    self.accept(target, Some(&c)).unwrap();
                    progressed = true;
                    for s in rest {
                        if self.accept(s, None).is_err() {
                            break;
                        }
                    }
                }
            } else if !was_ready && cand.len() < k && cand.len() > self.store.len() {
                self.store = cand;
                self.fetch(ctx, from);
            }
        }
        if progressed && self.ready() {
            if !self.is_leader() {
                self.heard(ctx, from);
            }
            self.send_ack(ctx, from);
        }
    }

    fn rank(&self, ix: NodeIx, st: &StatusInfo) -> Option<(u64, u64, std::cmp::Reverse<NodeIx>)> {
        if !st.ready {
            return None;
        }
        if self.sh.flags.adr_literal {
            Some((st.index, 0, std::cmp::Reverse(ix)))
        } else if st.stranded {
            None
        } else {
            Some((st.certified, st.index, std::cmp::Reverse(ix)))
        }
    }

    fn decide_poll(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.role = Role::Follower;
        self.last_heard = ctx.now();
        let mut replies = std::mem::take(&mut self.replies);
        replies.insert(self.ix, self.status());
        if replies.len() < self.majority() {
            return;
        }
        let best = replies
            .iter()
            .filter_map(|(&ix, st)| self.rank(ix, st).map(|r| (r, ix)))
            .max()
            .map(|(_, ix)| ix);
        if best == Some(self.ix) {
            self.become_leader(ctx);
        } else {
            self.leader_hint = best;
        }
    }
}

impl Node for RNode {
    type Msg = Msg;

    fn on_message(&mut self, ctx: &mut Ctx<'_, Msg>, from: NodeIx, msg: Msg) {
        match msg {
            Msg::Client { req, forwarded } => {
                if self.is_leader() {
                    if self.in_flight() < MAX_IN_FLIGHT {
                        self.propose(ctx, EntryKind::Batch, req.to_be_bytes().to_vec(), Some(req));
                    } else {
                        self.queue.push_back(req);
                    }
                } else if !forwarded {
                    if let Some(h) = self.leader_hint.filter(|&h| h != self.ix) {
                        ctx.send(
                            h,
                            Msg::Client {
                                req,
                                forwarded: true,
                            },
                        );
                    }
                }
            }
            Msg::Append {
                entry,
                mac,
                body,
                cert,
            } => self.on_append(
                ctx,
                from,
                Stored {
                    e: entry,
                    m: mac,
                    body,
                },
                cert,
            ),
            Msg::Ack(ack) => self.on_ack(ctx, ack),
            Msg::Fetch {
                after,
                after_mac,
                certified,
            } => self.on_fetch(ctx, from, after, after_mac, certified),
            Msg::Entries {
                start,
                entries,
                cert,
            } => self.on_entries(ctx, from, start, entries, cert),
            Msg::Poll { round } => {
                let st = self.status();
                ctx.send(
                    from,
                    Msg::Status {
                        round,
                        st,
                        cert: self.cert.clone(),
                    },
                );
            }
            Msg::Status { round, st, cert } => {
                if self.learn_cert(&cert) {
                    self.react_cert(ctx, from);
                }
                if matches!(self.role, Role::Polling { round: r, .. } if r == round) {
                    self.replies.insert(from, st);
                }
            }
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Msg>) {
        if !self.ready() {
            // Resyncing: serve and ack nothing; fetch from a random peer.
            let peer = (self.ix + 1 + ctx.rng().index(self.n - 1)) % self.n;
            self.fetch(ctx, peer);
            return;
        }
        match self.role.clone() {
            Role::Leader => {
                let tip = self.store.last().unwrap().clone();
                ctx.broadcast(&Msg::Append {
                    entry: tip.e,
                    mac: tip.m,
                    body: tip.body,
                    cert: self.cert.clone(),
                });
                self.release(ctx);
            }
            Role::Follower => {
                if ctx.now() > self.last_heard + MISSED * TICK + TICK / 2 {
                    self.round += 1;
                    self.replies.clear();
                    self.role = Role::Polling {
                        round: self.round,
                        started: ctx.now(),
                    };
                    ctx.broadcast(&Msg::Poll { round: self.round });
                }
            }
            Role::Polling { started, .. } => {
                if ctx.now() >= started + 2 * TICK {
                    self.decide_poll(ctx);
                }
            }
        }
    }

    fn on_crash(&mut self) {
        self.tracker = None;
        self.held.clear();
        self.role = Role::Follower;
        self.leader_hint = None;
        self.replies.clear();
        self.queue.clear();
        self.acks.clear();
        self.lost.clear();
        self.stranded = false;
        self.last_fetch = None;
    }

    fn on_restart(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.last_heard = ctx.now();
        if !self.ready() {
            let peer = (self.ix + 1 + ctx.rng().index(self.n - 1)) % self.n;
            self.fetch(ctx, peer);
        }
    }

    fn on_rollback(&mut self, rng: &mut SimRng) {
        let len = self.store.len() as u64;
        let keep = rng.range(1, len.saturating_sub(1).max(1));
        self.store.truncate(keep as usize);
        if self.cert.as_ref().is_some_and(|c| cert_point(c).0 > keep) {
            self.cert = None;
        }
    }
}

// ------------------------------------------------------------------ checker

#[derive(Debug)]
struct Violation {
    seed: u64,
    nodes: usize,
    step: u64,
    time: u64,
    what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} ({} nodes), step {} at t={}ms: {}\n  reproduce: COFFER_SIM_SEED={} COFFER_SIM_NODES={} cargo test -p coffer-testkit --test realm_sim one_seed -- --nocapture",
            self.seed, self.nodes, self.step, self.time, self.what, self.seed, self.nodes
        )
    }
}

struct Checker {
    n: usize,
    majority: usize,
    /// Every ack each node ever sent: index → MAC.
    acks: Vec<BTreeMap<u64, Mac>>,
    slot_index: Vec<u64>,
    /// Every (index → (mac, prev_mac)) any leader counted committed.
    committed: BTreeMap<u64, (Mac, Mac)>,
    released: BTreeMap<u64, (u64, u64)>,
    components: Vec<BTreeSet<NodeIx>>,
    component_since: Vec<u64>,
    jumps: u64,
    resyncs: u64,
    leaders: u64,
}

impl Checker {
    fn new(n: usize) -> Self {
        Self {
            n,
            majority: n / 2 + 1,
            acks: vec![BTreeMap::new(); n],
            slot_index: vec![1; n],
            committed: BTreeMap::new(),
            released: BTreeMap::new(),
            components: vec![(0..n).collect(); n],
            component_since: vec![0; n],
            jumps: 0,
            resyncs: 0,
            leaders: 0,
        }
    }

    fn check(&mut self, sim: &mut Sim<RNode>, step: &Step) -> Result<(), String> {
        let now = sim.now();
        if let Step::Faulted(_) = step {
            for ix in 0..self.n {
                let c = sim.component(ix);
                if c != self.components[ix] {
                    self.components[ix] = c;
                    self.component_since[ix] = now;
                }
            }
        }
        for ix in 0..self.n {
            let obs = std::mem::take(&mut sim.node_mut(ix).obs);
            for o in obs {
                self.observe(sim, ix, o)?;
            }
            let node = &sim.nodes()[ix];
            // A node's NVRAM index never goes down.
            if node.slot.index < self.slot_index[ix] {
                return Err(format!(
                    "node {ix}: slot index went down from {} to {}",
                    self.slot_index[ix], node.slot.index
                ));
            }
            self.slot_index[ix] = node.slot.index;
            // A node leads only with its store at its NVRAM (rollback caught).
            if node.tracker.is_some() && !node.ready() {
                return Err(format!("node {ix} leads while its store is off its slot"));
            }
        }
        Ok(())
    }

    fn observe(&mut self, sim: &Sim<RNode>, ix: NodeIx, o: Obs) -> Result<(), String> {
        match o {
            Obs::AckSent { index, mac, ready } => {
                if !ready {
                    return Err(format!("node {ix} acked {index} while resyncing"));
                }
                if let Some(old) = self.acks[ix].insert(index, mac) {
                    if old != mac {
                        return Err(format!(
                            "node {ix} acked two MACs at index {index}: {old:?} and {mac:?}"
                        ));
                    }
                }
            }
            Obs::Committed { index, mac, prev } => {
                if let Some((m, _)) = self.committed.get(&index) {
                    if *m != mac {
                        return Err(format!(
                            "two entries committed at index {index}: {m:?} and {mac:?} (by node {ix})"
                        ));
                    }
                }
                if let Some((m, _)) = self.committed.get(&(index - 1)) {
                    if *m != prev {
                        return Err(format!(
                            "committed {index} (node {ix}) does not chain from committed {}",
                            index - 1
                        ));
                    }
                }
                if let Some((_, p)) = self.committed.get(&(index + 1)) {
                    if *p != mac {
                        return Err(format!(
                            "committed {} does not chain from committed {index} (node {ix})",
                            index + 1
                        ));
                    }
                }
                self.committed.insert(index, (mac, prev));
            }
            Obs::Released {
                req,
                index,
                mac,
                proposed_at,
            } => {
                match self.committed.get(&index) {
                    Some((m, _)) if *m == mac => {}
                    _ => {
                        return Err(format!(
                            "node {ix} released request {req} at {index} before it was committed"
                        ))
                    }
                }
                // Independently of the tracker: a majority of nodes have
                // sent acks at index >= this one on the releasing node's chain.
                let leader = &sim.nodes()[ix];
                let backing = self
                    .acks
                    .iter()
                    .filter(|acks| {
                        acks.range(index..)
                            .any(|(j, m)| leader.at(*j).is_some_and(|s| s.m == *m))
                    })
                    .count();
                if backing < self.majority {
                    return Err(format!(
                        "node {ix} released request {req} at {index} with {backing} acks on its chain (majority {})",
                        self.majority
                    ));
                }
                // A minority side releases nothing proposed after it was cut off.
                let comp = &self.components[ix];
                if comp.len() < self.majority && proposed_at >= self.component_since[ix] {
                    return Err(format!(
                        "node {ix} released request {req} (entry {index}) from a minority side {comp:?}"
                    ));
                }
                self.released.entry(req).or_insert((index, sim.now()));
            }
            Obs::Jumped => self.jumps += 1,
            Obs::Resynced => self.resyncs += 1,
            Obs::BecameLeader => self.leaders += 1,
        }
        Ok(())
    }

    /// Every released entry is still the committed one at its index (and no
    /// later commit contradicted it: `observe` refuses two MACs per index).
    fn final_check(&self) -> Result<(), String> {
        for (req, (index, _)) in &self.released {
            if !self.committed.contains_key(index) {
                return Err(format!(
                    "released request {req} at {index} is not committed"
                ));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ runner

#[derive(Debug, Default, Clone)]
struct Outcome {
    steps: u64,
    released: usize,
    requests: usize,
    committed: u64,
    faulty: usize,
    minority: bool,
    jumps: u64,
    resyncs: u64,
    leaders: u64,
    rollbacks: u64,
    crashes: u64,
    /// Longest time after calm until the last pending request was released.
    settle_ms: u64,
    trace: [u8; 32],
}

#[derive(Debug, Clone, Copy, Default)]
struct RunOpts {
    flags: Flags,
    trace_messages: bool,
    verbose: bool,
}

fn run_seed(seed: u64, nodes: usize, opts: RunOpts) -> Result<Outcome, Violation> {
    let sh = Rc::new(Shared {
        log: LogKey::from_bytes(&[0x11; 32]),
        ack: AckKey::from_bytes(&[0x22; 32]),
        members: Members::new(&(0..nodes).map(node_id).collect::<Vec<_>>()).unwrap(),
        flags: opts.flags,
    });
    let mut rng = SimRng::seed_from_u64(seed ^ 0x5eed_0000_0000_0000 ^ (nodes as u64) << 40);
    let calm = NetConfig::calm(5);
    let minority = seed % 4 != 3;
    let spec = FaultSpec {
        nodes,
        max_faulty: if minority { (nodes - 1) / 2 } else { nodes },
        start: FAULT_START,
        calm_at: CALM_AT,
        episodes: rng.range(2, 8) as usize,
        rollback: true,
        calm_net: calm,
    };
    let (plan, faulty) = FaultPlan::random(&mut rng, &spec);
    let config = Config {
        nodes,
        tick_ms: TICK,
        net: calm,
        trace_messages: opts.trace_messages,
    };
    let ns = (0..nodes)
        .map(|ix| RNode::new(ix, nodes, sh.clone()))
        .collect();
    if opts.verbose {
        println!(
            "seed {seed} ({nodes} nodes): faulty {faulty:?}, plan {:?}",
            plan.faults
        );
    }
    let mut sim = Sim::new(&config, ns, &plan, seed);
    let mut checker = Checker::new(nodes);

    // Clients: requests at random times before calm, and two right after.
    let mut issue: Vec<u64> = (0..rng.range(4, 12)).map(|_| rng.below(CALM_AT)).collect();
    issue.push(CALM_AT + 1);
    issue.push(CALM_AT + 2);
    issue.sort_unstable();
    // req → (next retry time, next target)
    let mut pending: BTreeMap<u64, (u64, NodeIx)> = BTreeMap::new();
    for (req, &t) in issue.iter().enumerate() {
        let target = rng.index(nodes);
        pending.insert(req as u64, (t, target));
    }
    let requests = pending.len();
    let end = CALM_AT + LIVE_BOUND;
    let mut settle = 0;
    let fail = |sim: &Sim<RNode>, what: String| Violation {
        seed,
        nodes,
        step: sim.stats().steps,
        time: sim.now(),
        what,
    };
    loop {
        let next_client = pending.values().map(|(t, _)| *t).min();
        let next_event = sim.next_time();
        match (next_client, next_event) {
            (Some(tc), te) if te.is_none_or(|te| tc <= te) && tc <= end => {
                // Send (or resend) every request due now.
                for (req, (t, target)) in pending.iter_mut() {
                    if *t == tc {
                        sim.inject(
                            tc,
                            *target,
                            Msg::Client {
                                req: *req,
                                forwarded: false,
                            },
                        );
                        *t = tc + CLIENT_RETRY;
                        *target = (*target + 1) % nodes;
                    }
                }
            }
            (_, Some(te)) if te <= end => {
                let step = sim.step();
                if let Err(what) = checker.check(&mut sim, &step) {
                    return Err(fail(&sim, what));
                }
                pending.retain(|req, _| !checker.released.contains_key(req));
                if sim.now() > CALM_AT && pending.is_empty() {
                    settle = sim.now() - CALM_AT;
                    break;
                }
            }
            _ => break,
        }
    }
    checker.final_check().map_err(|w| fail(&sim, w))?;
    if minority && !pending.is_empty() {
        let mut what = format!(
            "liveness: {} request(s) unanswered {LIVE_BOUND} ms after calm (faulty {faulty:?}); ",
            pending.len()
        );
        what.push_str(&diagnose(&sim, &checker));
        return Err(fail(&sim, what));
    }
    let out = Outcome {
        steps: sim.stats().steps,
        released: checker.released.len(),
        requests,
        committed: checker.committed.keys().next_back().copied().unwrap_or(0),
        faulty: faulty.len(),
        minority,
        jumps: checker.jumps,
        resyncs: checker.resyncs,
        leaders: checker.leaders,
        rollbacks: sim.stats().rollbacks,
        crashes: sim.stats().crashes,
        settle_ms: settle,
        trace: sim.trace_hash(),
    };
    if opts.verbose {
        println!("{out:?}\n{:?}\n{}", sim.stats(), diagnose(&sim, &checker));
    }
    Ok(out)
}

/// A summary of the nodes' positions, and whether the group is provably
/// wedged: at the first index above everything committed, no MAC can still
/// gather a majority (nodes that acked it, plus nodes that acked nothing
/// there yet).
fn diagnose(sim: &Sim<RNode>, checker: &Checker) -> String {
    let c = checker.committed.keys().next_back().copied().unwrap_or(1);
    let mut out = format!("committed up to {c}; nodes:");
    for (ix, n) in sim.nodes().iter().enumerate() {
        out.push_str(&format!(
            " [{ix}: slot {} {:?}, store {}, {:?}{}{}]",
            n.slot.index,
            n.slot.mac,
            n.store.len(),
            n.role,
            if n.ready() { "" } else { ", resyncing" },
            if n.stranded { ", stranded" } else { "" },
        ));
    }
    let top = sim.nodes().iter().map(|n| n.slot.index).max().unwrap_or(1);
    for i in c + 1..=top {
        let free = checker
            .acks
            .iter()
            .filter(|a| a.range(i..).next().is_none())
            .count();
        let mut by_mac: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for a in &checker.acks {
            if let Some(m) = a.get(&i) {
                *by_mac.entry(m.0).or_default() += 1;
            }
        }
        let best = by_mac.values().copied().max().unwrap_or(0);
        if best >= checker.majority {
            // Acked by a majority (committed, whether or not a leader saw it).
            continue;
        }
        if best + free < checker.majority {
            out.push_str(&format!(
                "; WEDGED at index {i}: acks split {:?} with {free} node(s) free, majority {}",
                by_mac.values().collect::<Vec<_>>(),
                checker.majority
            ));
        }
        break;
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `seeds` seeds on `nodes` nodes; panics on the first violation.
fn sweep(nodes: usize, seeds: std::ops::Range<u64>) {
    if let Some(seed) = env_u64("COFFER_SIM_SEED") {
        let n = env_u64("COFFER_SIM_NODES").map_or(nodes, |n| n as usize);
        if n != nodes {
            return;
        }
        let opts = RunOpts {
            verbose: true,
            ..RunOpts::default()
        };
        if let Err(v) = run_seed(seed, n, opts) {
            panic!("{v}");
        }
        return;
    }
    let started = std::time::Instant::now();
    if std::env::var_os("COFFER_SIM_SURVEY").is_some() {
        // Every failing seed, not just the first (for triage).
        // COFFER_SIM_LITERAL=1: with the ADR's literal failover.
        let opts = RunOpts {
            flags: Flags {
                adr_literal: std::env::var_os("COFFER_SIM_LITERAL").is_some(),
                ..Flags::default()
            },
            ..RunOpts::default()
        };
        let fails: Vec<Violation> = seeds
            .filter_map(|seed| run_seed(seed, nodes, opts).err())
            .collect();
        for v in &fails {
            println!("{v}");
        }
        assert!(fails.is_empty(), "{} failing seeds", fails.len());
        return;
    }
    let mut total = Outcome::default();
    let mut max_settle = 0;
    let mut runs = 0;
    let mut wedged = Vec::new();
    for seed in seeds {
        match run_seed(seed, nodes, RunOpts::default()) {
            Ok(o) => {
                runs += 1;
                total.steps += o.steps;
                total.released += o.released;
                total.requests += o.requests;
                total.jumps += o.jumps;
                total.resyncs += o.resyncs;
                total.leaders += o.leaders;
                total.rollbacks += o.rollbacks;
                total.crashes += o.crashes;
                total.committed += o.committed;
                total.faulty = total.faulty.max(o.faulty);
                if o.minority {
                    max_settle = max_settle.max(o.settle_ms);
                }
            }
            // The split-vote wedge (see `split_vote_wedges_the_group`): a
            // known protocol issue, counted and reported, never hidden.
            Err(v) if v.what.starts_with("liveness") && v.what.contains("WEDGED") => {
                println!("known issue (split-vote wedge): {v}");
                wedged.push(seed);
            }
            Err(v) => panic!("{v}"),
        }
    }
    println!(
        "{nodes} nodes: {} seed(s) wedged by a split vote: {wedged:?}",
        wedged.len()
    );
    assert!(
        wedged.len() as u64 * 100 <= runs.max(1),
        "more than 1% of seeds wedged: {wedged:?}"
    );
    println!(
        "{nodes} nodes: {runs} seeds, {} steps ({} per seed), {}/{} requests released, {} leaders, {} jumps, {} resyncs, {} rollbacks, {} crashes, slowest settle after calm {max_settle} ms, {:.1}s",
        total.steps,
        total.steps / runs.max(1),
        total.released,
        total.requests,
        total.leaders,
        total.jumps,
        total.resyncs,
        total.rollbacks,
        total.crashes,
        started.elapsed().as_secs_f64()
    );
    assert!(total.jumps > 0, "no certified jump exercised");
    assert!(total.resyncs > 0, "no resync after rollback exercised");
}

#[test]
fn three_nodes_1000_seeds() {
    sweep(3, 0..1000);
}

#[test]
fn five_nodes_1000_seeds() {
    sweep(5, 0..1000);
}

/// `COFFER_SIM_SEED=<n> [COFFER_SIM_NODES=3|5]`: one seed, verbose.
#[test]
fn one_seed() {
    let Some(seed) = env_u64("COFFER_SIM_SEED") else {
        return;
    };
    let n = env_u64("COFFER_SIM_NODES").unwrap_or(3) as usize;
    let opts = RunOpts {
        verbose: true,
        trace_messages: true,
        ..RunOpts::default()
    };
    match run_seed(seed, n, opts) {
        Ok(o) => println!("seed {seed}: ok, trace {:02x?}", &o.trace[..8]),
        Err(v) => panic!("{v}"),
    }
}

#[test]
fn same_seed_same_trace() {
    let opts = RunOpts {
        trace_messages: true,
        ..RunOpts::default()
    };
    for (seed, n) in [(7, 3), (11, 5), (1003, 5)] {
        let a = run_seed(seed, n, opts).unwrap();
        let b = run_seed(seed, n, opts).unwrap();
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.steps, b.steps);
        let c = run_seed(seed + 1, n, opts).unwrap();
        assert_ne!(a.trace, c.trace, "different seeds, different runs");
    }
}

/// The checker catches a leader that releases on its own ack alone.
#[test]
fn checker_catches_single_ack_commits() {
    let opts = RunOpts {
        flags: Flags {
            single_ack_commit: true,
            ..Flags::default()
        },
        ..RunOpts::default()
    };
    let v = (0..50)
        .find_map(|seed| run_seed(seed, 3, opts).err())
        .expect("a single-ack commit rule must violate an invariant");
    println!("caught: {v}");
    assert!(
        v.what.contains("acks on its chain") || v.what.contains("committed"),
        "{v}"
    );
}

/// The checker catches followers that take an entry without the accept rule.
#[test]
fn checker_catches_acks_without_check() {
    let opts = RunOpts {
        flags: Flags {
            ack_without_check: true,
            ..Flags::default()
        },
        ..RunOpts::default()
    };
    let v = (0..400)
        .find_map(|seed| run_seed(seed, 5, opts).err())
        .expect("skipping the accept rule must violate an invariant");
    println!("caught: {v}");
}

/// Regression (protocol issue 1, ADR "Leader failover"): with the ADR's
/// literal failover, a leader whose chain holds uncommitted entries past the
/// majority's (acked by a majority, never certified) keeps the highest index,
/// so it is chosen again after every timeout, and it never sees an ack or
/// entry *past* its index on another chain, so it never steps down: the
/// group livelocks after calm. The harness's default policy (step down when
/// more than a minority acked other MACs above its certified index; rank by
/// certified index; stranded nodes do not stand) recovers.
#[test]
fn adr_literal_failover_livelocks() {
    let literal = RunOpts {
        flags: Flags {
            adr_literal: true,
            ..Flags::default()
        },
        ..RunOpts::default()
    };
    for (seed, n) in [(138, 3), (330, 3), (817, 5)] {
        let v = run_seed(seed, n, literal).expect_err("the literal ADR failover livelocks");
        assert!(v.what.starts_with("liveness"), "{v}");
        assert!(!v.what.contains("WEDGED"), "{v}");
        run_seed(seed, n, RunOpts::default()).unwrap();
    }
}

/// Regression (protocol issue 2, a permanent split vote): faulty {0, 2} of 5,
/// with loss. Competing leaders each had their own entry at index 5 acked by
/// a different subset (2, 2 and 1 of 5 nodes). Every node has acked some
/// MAC at 5, acks are irrevocable, and nothing past 5 can be certified, so
/// no entry can ever commit again: the group is wedged for good, though only
/// a minority was ever faulty. Safety holds; liveness cannot be restored by
/// any host policy. The sweeps count such seeds instead of failing on them.
#[test]
fn split_vote_wedges_the_group() {
    let v = run_seed(464, 5, RunOpts::default()).expect_err("seed 464 wedges");
    println!("{v}");
    assert!(v.what.starts_with("liveness"), "{v}");
    assert!(v.what.contains("WEDGED at index 2"), "{v}");
}
