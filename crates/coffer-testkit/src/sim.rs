//! A deterministic simulation engine for message-passing protocols (ADR 0011,
//! phase 3): N nodes, a virtual clock, a seeded network that delays, loses,
//! duplicates and reorders messages and honours partitions (sets of cut
//! links), and a fault plan (crash, restart, per-node store rollback, cuts,
//! network weather, and "calm": the end of all faults).
//!
//! The engine is generic over [`Node`]: a synchronous state machine driven by
//! messages, periodic timer ticks, crashes (lose volatile state), restarts
//! and store rollbacks. Nothing reads the OS clock or OS entropy: every
//! random choice comes from one [`SimRng`] seeded from a `u64`, events are
//! ordered by (virtual time, sequence number), so the same seed and the same
//! node code give the same run, event for event ([`Sim::trace_hash`]).
//!
//! One step is one event: a delivery, a tick or a fault. Callers check their
//! invariants between steps ([`Sim::step`] returns what happened).
//!
//! The RNG is a self-contained xoshiro256** seeded by SplitMix64 rather than
//! `rand`'s `SmallRng`/`StdRng`, whose algorithms may change between `rand`
//! releases: a failing seed kept as a regression test must keep reproducing.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Debug;

/// A node's position in the simulation (0-based).
pub type NodeIx = usize;

/// The sender of messages injected from outside the simulated nodes
/// (clients, test drivers).
pub const EXTERNAL: NodeIx = usize::MAX;

/// A small, fast, seedable and portable RNG (xoshiro256**, seeded by
/// SplitMix64). Also a [`rand::RngCore`], so `rand::Rng` methods work on it.
#[derive(Debug, Clone)]
pub struct SimRng {
    s: [u64; 4],
}

impl SimRng {
    /// The generator for `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut x = seed;
        let mut split = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [split(), split(), split(), split()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the bias is below 2^-32 for the sizes used here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A value in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < u64::from(permille)
    }

    /// An index into a slice of length `len` (0 when empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A derived, independent generator (e.g. one per subsystem).
    pub fn fork(&mut self) -> SimRng {
        SimRng::seed_from_u64(self.next_u64())
    }
}

impl rand::RngCore for SimRng {
    fn next_u32(&mut self) -> u32 {
        (SimRng::next_u64(self) >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        SimRng::next_u64(self)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = SimRng::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The network's weather: per-message delay range, loss and duplication.
/// Reordering comes from independent delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Shortest delivery delay (virtual ms).
    pub min_delay: u64,
    /// Longest delivery delay (virtual ms).
    pub max_delay: u64,
    /// Probability (‰) that a message is lost.
    pub loss_permille: u32,
    /// Probability (‰) that a message is delivered twice.
    pub dup_permille: u32,
}

impl NetConfig {
    /// A reliable network: delays in `1..=max_delay`, no loss, no duplicates.
    pub fn calm(max_delay: u64) -> Self {
        Self {
            min_delay: 1,
            max_delay,
            loss_permille: 0,
            dup_permille: 0,
        }
    }
}

/// Engine parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of nodes.
    pub nodes: usize,
    /// Interval between a node's timer ticks (virtual ms); each tick is
    /// jittered by up to a quarter of it.
    pub tick_ms: u64,
    /// The network at the start (and after [`Fault::Calm`]).
    pub net: NetConfig,
    /// Fold each message's `Debug` form into the trace hash (slower; for
    /// determinism checks). Event kinds, times and endpoints always are.
    pub trace_messages: bool,
}

/// A fault (or the end of faults), applied at a virtual time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node stops; it loses its volatile state ([`Node::on_crash`]).
    Crash(NodeIx),
    /// A crashed node starts again ([`Node::on_restart`]); no-op if up.
    Restart(NodeIx),
    /// The node's store goes back to an earlier state ([`Node::on_rollback`]).
    /// A running node is crashed, rolled back and restarted (a host restart
    /// on a restored store); a crashed one is only rolled back.
    Rollback(NodeIx),
    /// Cut the link between two nodes (both directions).
    Cut(NodeIx, NodeIx),
    /// Cut every link of one node.
    Isolate(NodeIx),
    /// Cut every link between the two sides.
    Split(Vec<NodeIx>, Vec<NodeIx>),
    /// Heal every cut link.
    HealAll,
    /// Change the network's weather.
    Net(NetConfig),
    /// End of faults: heal all links, restart every crashed node, and go
    /// back to the configured calm network.
    Calm,
}

/// A fault plan: faults at virtual times.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// `(time, fault)`, in any order.
    pub faults: Vec<(u64, Fault)>,
}

/// What [`FaultPlan::random`] may do.
#[derive(Debug, Clone)]
pub struct FaultSpec {
    /// Number of nodes.
    pub nodes: usize,
    /// How many nodes may be faulty (crashed, rolled back, cut off). The
    /// faulty set is drawn once, of size `1..=max_faulty` (or 0).
    pub max_faulty: usize,
    /// Faults start at or after this time.
    pub start: u64,
    /// [`Fault::Calm`] is applied at this time; no faults after it.
    pub calm_at: u64,
    /// Number of fault episodes.
    pub episodes: usize,
    /// Allow store rollbacks.
    pub rollback: bool,
    /// The calm network, for the weather episodes to vary around.
    pub calm_net: NetConfig,
}

impl FaultPlan {
    /// A random plan within `spec`, returned with its faulty set. Crashes,
    /// rollbacks and cuts only touch the faulty set (a cut has at least one
    /// faulty end; a split puts the faulty set on one side); network weather
    /// (loss, duplication, long delays) affects every link.
    pub fn random(rng: &mut SimRng, spec: &FaultSpec) -> (FaultPlan, Vec<NodeIx>) {
        let mut all: Vec<NodeIx> = (0..spec.nodes).collect();
        let k = if spec.max_faulty == 0 {
            0
        } else {
            rng.range(0, spec.max_faulty as u64) as usize
        };
        // A random subset of size k.
        for i in 0..all.len() {
            let j = i + rng.index(all.len() - i);
            all.swap(i, j);
        }
        let mut faulty: Vec<NodeIx> = all[..k].to_vec();
        faulty.sort_unstable();
        let healthy: Vec<NodeIx> = all[k..].to_vec();
        let mut faults = Vec::new();
        let span = spec.calm_at.saturating_sub(spec.start).max(1);
        for _ in 0..spec.episodes {
            let at = spec.start + rng.below(span);
            let len = rng.range(span / 20 + 1, span / 3 + 1);
            let end = (at + len).min(spec.calm_at);
            let kind = rng.below(10);
            match kind {
                0..=2 if !faulty.is_empty() => {
                    let f = faulty[rng.index(faulty.len())];
                    faults.push((at, Fault::Crash(f)));
                    faults.push((end, Fault::Restart(f)));
                }
                3 if !faulty.is_empty() && spec.rollback => {
                    let f = faulty[rng.index(faulty.len())];
                    faults.push((at, Fault::Rollback(f)));
                }
                4 | 5 if !faulty.is_empty() => {
                    let f = faulty[rng.index(faulty.len())];
                    if rng.chance(500) {
                        faults.push((at, Fault::Isolate(f)));
                    } else {
                        let other = rng.index(spec.nodes);
                        faults.push((at, Fault::Cut(f, other)));
                    }
                    faults.push((end, Fault::HealAll));
                }
                6 if !faulty.is_empty() => {
                    faults.push((at, Fault::Split(faulty.clone(), healthy.clone())));
                    faults.push((end, Fault::HealAll));
                }
                _ => {
                    let base = spec.calm_net;
                    let net = NetConfig {
                        min_delay: base.min_delay,
                        max_delay: base.max_delay * rng.range(1, 4),
                        loss_permille: rng.range(0, 250) as u32,
                        dup_permille: rng.range(0, 100) as u32,
                    };
                    faults.push((at, Fault::Net(net)));
                    faults.push((end, Fault::Net(base)));
                }
            }
        }
        faults.push((spec.calm_at, Fault::Calm));
        (FaultPlan { faults }, faulty)
    }
}

/// What a node's handler can do: read the clock, draw randomness, send.
pub struct Ctx<'a, M> {
    me: NodeIx,
    now: u64,
    nodes: usize,
    rng: &'a mut SimRng,
    out: &'a mut Vec<(NodeIx, M)>,
}

impl<M: Clone> Ctx<'_, M> {
    /// This node.
    pub fn me(&self) -> NodeIx {
        self.me
    }
    /// The virtual time (ms).
    pub fn now(&self) -> u64 {
        self.now
    }
    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }
    /// The simulation's RNG.
    pub fn rng(&mut self) -> &mut SimRng {
        self.rng
    }
    /// Sends `msg` to `to` through the network (to itself: dropped).
    pub fn send(&mut self, to: NodeIx, msg: M) {
        if to != self.me && to < self.nodes {
            self.out.push((to, msg));
        }
    }
    /// Sends `msg` to every other node.
    pub fn broadcast(&mut self, msg: &M) {
        for to in 0..self.nodes {
            if to != self.me {
                self.out.push((to, msg.clone()));
            }
        }
    }
}

/// A simulated node: a synchronous state machine.
pub trait Node {
    /// Its messages.
    type Msg: Clone + Debug;
    /// A message arrived (`from` may be [`EXTERNAL`]).
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Msg>, from: NodeIx, msg: Self::Msg);
    /// The periodic timer fired.
    fn on_tick(&mut self, ctx: &mut Ctx<'_, Self::Msg>);
    /// The node stopped: drop everything volatile.
    fn on_crash(&mut self);
    /// The node starts again from its durable state.
    fn on_restart(&mut self, ctx: &mut Ctx<'_, Self::Msg>);
    /// The node's store goes back to an earlier state (called while down).
    fn on_rollback(&mut self, _rng: &mut SimRng) {}
}

#[derive(Debug)]
enum Event<M> {
    Deliver { from: NodeIx, to: NodeIx, msg: M },
    Tick { node: NodeIx, epoch: u64 },
    Fault(Fault),
}

struct Queued<M> {
    at: u64,
    seq: u64,
    event: Event<M>,
}

impl<M> PartialEq for Queued<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<M> Eq for Queued<M> {}
impl<M> PartialOrd for Queued<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for Queued<M> {
    /// Reversed: the earliest (time, seq) is the heap's maximum.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A message reached a running node.
    Delivered {
        /// Sender.
        from: NodeIx,
        /// Receiver.
        to: NodeIx,
    },
    /// A message was dropped at delivery (receiver down or link cut).
    Dropped {
        /// Sender.
        from: NodeIx,
        /// Receiver.
        to: NodeIx,
    },
    /// A node's timer fired.
    Ticked(NodeIx),
    /// A stale timer of a node that crashed since (nothing ran).
    StaleTick(NodeIx),
    /// A fault was applied.
    Faulted(Fault),
    /// Nothing is scheduled.
    Idle,
}

/// Counters over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub steps: u64,
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost (weather), cut, or sent to a crashed node.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Crashes (including those of rollbacks).
    pub crashes: u64,
    /// Store rollbacks.
    pub rollbacks: u64,
}

/// The simulation: nodes, clock, network, faults.
pub struct Sim<N: Node> {
    nodes: Vec<N>,
    up: Vec<bool>,
    epoch: Vec<u64>,
    cut: BTreeSet<(NodeIx, NodeIx)>,
    calm_net: NetConfig,
    net: NetConfig,
    tick_ms: u64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued<N::Msg>>,
    rng: SimRng,
    trace: blake3::Hasher,
    trace_messages: bool,
    stats: Stats,
    out: Vec<(NodeIx, N::Msg)>,
    /// Scripted mode: sent messages are held here instead of the network.
    held: Option<Vec<(NodeIx, NodeIx, N::Msg)>>,
}

impl<N: Node> Sim<N> {
    /// A simulation of `nodes` (all up) seeded with `seed`; faults of `plan`
    /// are scheduled. Each node's first tick is at a random phase.
    pub fn new(config: &Config, nodes: Vec<N>, plan: &FaultPlan, seed: u64) -> Self {
        let n = nodes.len();
        let mut sim = Self {
            nodes,
            up: vec![true; n],
            epoch: vec![0; n],
            cut: BTreeSet::new(),
            calm_net: config.net,
            net: config.net,
            tick_ms: config.tick_ms.max(1),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: SimRng::seed_from_u64(seed),
            trace: blake3::Hasher::new(),
            trace_messages: config.trace_messages,
            stats: Stats::default(),
            out: Vec::new(),
            held: None,
        };
        sim.trace.update(&seed.to_le_bytes());
        for node in 0..n {
            let at = sim.rng.below(sim.tick_ms) + 1;
            sim.push(at, Event::Tick { node, epoch: 0 });
        }
        for (at, f) in &plan.faults {
            sim.push(*at, Event::Fault(f.clone()));
        }
        sim
    }

    fn push(&mut self, at: u64, event: Event<N::Msg>) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    /// The virtual time (ms).
    pub fn now(&self) -> u64 {
        self.now
    }
    /// The nodes.
    pub fn nodes(&self) -> &[N] {
        &self.nodes
    }
    /// One node, mutably (for drivers that inspect or drain outputs).
    pub fn node_mut(&mut self, ix: NodeIx) -> &mut N {
        &mut self.nodes[ix]
    }
    /// Whether a node is running.
    pub fn is_up(&self, ix: NodeIx) -> bool {
        self.up[ix]
    }
    /// Whether the link between `a` and `b` is cut.
    pub fn is_cut(&self, a: NodeIx, b: NodeIx) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }
    /// The nodes `ix` can reach over uncut links (itself included),
    /// whether or not they are running.
    pub fn component(&self, ix: NodeIx) -> BTreeSet<NodeIx> {
        let mut seen = BTreeSet::from([ix]);
        let mut stack = vec![ix];
        while let Some(a) = stack.pop() {
            for b in 0..self.nodes.len() {
                if !self.is_cut(a, b) && seen.insert(b) {
                    stack.push(b);
                }
            }
        }
        seen
    }
    /// The current network weather.
    pub fn net(&self) -> NetConfig {
        self.net
    }
    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// A hash of everything that happened so far (events, times, endpoints,
    /// and message contents when `trace_messages` is set).
    pub fn trace_hash(&self) -> [u8; 32] {
        *self.trace.finalize().as_bytes()
    }
    /// The time of the next scheduled event.
    pub fn next_time(&self) -> Option<u64> {
        self.queue.peek().map(|q| q.at)
    }

    /// Delivers `msg` to `to` from [`EXTERNAL`] at `at` (not before now),
    /// bypassing weather and cuts (a client on the node's own side).
    pub fn inject(&mut self, at: u64, to: NodeIx, msg: N::Msg) {
        let at = at.max(self.now);
        self.push(
            at,
            Event::Deliver {
                from: EXTERNAL,
                to,
                msg,
            },
        );
    }

    fn record(&mut self, tag: u8, a: NodeIx, b: NodeIx) {
        self.trace.update(&[tag]);
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(&(a as u64).to_le_bytes());
        self.trace.update(&(b as u64).to_le_bytes());
    }

    /// Runs one event; returns what it was.
    pub fn step(&mut self) -> Step {
        let Some(q) = self.queue.pop() else {
            return Step::Idle;
        };
        self.now = self.now.max(q.at);
        self.stats.steps += 1;
        let step = match q.event {
            Event::Deliver { from, to, msg } => {
                let cut = from != EXTERNAL && self.is_cut(from, to);
                if !self.up[to] || cut {
                    self.stats.dropped += 1;
                    self.record(1, from, to);
                    Step::Dropped { from, to }
                } else {
                    self.stats.delivered += 1;
                    self.record(2, from, to);
                    if self.trace_messages {
                        self.trace.update(format!("{msg:?}").as_bytes());
                    }
                    self.handle(to, |n, ctx| n.on_message(ctx, from, msg));
                    Step::Delivered { from, to }
                }
            }
            Event::Tick { node, epoch } => {
                if !self.up[node] || epoch != self.epoch[node] {
                    self.record(3, node, node);
                    Step::StaleTick(node)
                } else {
                    self.record(4, node, node);
                    self.handle(node, |n, ctx| n.on_tick(ctx));
                    let jitter = self.rng.below(self.tick_ms / 4 + 1);
                    let at = self.now + self.tick_ms + jitter;
                    self.push(at, Event::Tick { node, epoch });
                    Step::Ticked(node)
                }
            }
            Event::Fault(f) => {
                self.record(5, 0, 0);
                self.trace.update(format!("{f:?}").as_bytes());
                self.apply(&f);
                Step::Faulted(f)
            }
        };
        step
    }

    /// Runs steps until the clock passes `until` or nothing is scheduled,
    /// calling `check` after each one.
    pub fn run_until(&mut self, until: u64, mut check: impl FnMut(&mut Self, &Step)) {
        while self.next_time().is_some_and(|t| t <= until) {
            let s = self.step();
            check(self, &s);
        }
        self.now = self.now.max(until);
    }

    /// Runs one handler of node `me` with a context, then sends what it
    /// queued (the one place a node's code runs).
    fn handle(&mut self, me: NodeIx, f: impl FnOnce(&mut N, &mut Ctx<'_, N::Msg>)) {
        let mut out = std::mem::take(&mut self.out);
        let mut ctx = Ctx {
            me,
            now: self.now,
            nodes: self.nodes.len(),
            rng: &mut self.rng,
            out: &mut out,
        };
        f(&mut self.nodes[me], &mut ctx);
        self.flush(me, &mut out);
        self.out = out;
    }

    fn flush(&mut self, from: NodeIx, out: &mut Vec<(NodeIx, N::Msg)>) {
        if let Some(held) = self.held.as_mut() {
            for (to, msg) in out.drain(..) {
                self.stats.sent += 1;
                held.push((from, to, msg));
            }
            return;
        }
        for (to, msg) in out.drain(..) {
            self.stats.sent += 1;
            if self.is_cut(from, to) || self.rng.chance(self.net.loss_permille) {
                self.stats.dropped += 1;
                continue;
            }
            if self.rng.chance(self.net.dup_permille) {
                self.stats.duplicated += 1;
                let d = self.rng.range(self.net.min_delay, self.net.max_delay);
                self.push(
                    self.now + d,
                    Event::Deliver {
                        from,
                        to,
                        msg: msg.clone(),
                    },
                );
            }
            let d = self.rng.range(self.net.min_delay, self.net.max_delay);
            self.push(self.now + d, Event::Deliver { from, to, msg });
        }
    }

    // ------------------------------------------------------------ scripted mode
    //
    // For pinned scenarios that a random plan is unlikely to hit: the test
    // drives time, ticks, faults and every delivery itself. Scheduled events
    // are not run unless the test calls [`Sim::step`].

    /// Scripted mode on: from now on sent messages are held
    /// ([`Sim::take_held`]) instead of going through the network.
    pub fn script(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// The messages sent since the last call, as `(from, to, msg)`.
    pub fn take_held(&mut self) -> Vec<(NodeIx, NodeIx, N::Msg)> {
        self.held.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Moves the clock to `t` (never back).
    pub fn set_now(&mut self, t: u64) {
        self.now = self.now.max(t);
    }

    /// Delivers `msg` now (to a running node; cuts and weather ignored).
    pub fn deliver(&mut self, from: NodeIx, to: NodeIx, msg: N::Msg) -> Step {
        self.stats.steps += 1;
        if !self.up[to] {
            self.stats.dropped += 1;
            return Step::Dropped { from, to };
        }
        self.stats.delivered += 1;
        self.record(2, from, to);
        self.handle(to, |n, ctx| n.on_message(ctx, from, msg));
        Step::Delivered { from, to }
    }

    /// Runs a node's timer now (if it is up).
    pub fn tick(&mut self, node: NodeIx) -> Step {
        self.stats.steps += 1;
        if !self.up[node] {
            return Step::StaleTick(node);
        }
        self.record(4, node, node);
        self.handle(node, |n, ctx| n.on_tick(ctx));
        Step::Ticked(node)
    }

    /// Applies a fault now.
    pub fn fault(&mut self, f: Fault) -> Step {
        self.stats.steps += 1;
        self.apply(&f);
        Step::Faulted(f)
    }

    fn crash(&mut self, ix: NodeIx) {
        if self.up[ix] {
            self.up[ix] = false;
            self.epoch[ix] += 1;
            self.stats.crashes += 1;
            self.nodes[ix].on_crash();
        }
    }

    fn restart(&mut self, ix: NodeIx) {
        if self.up[ix] {
            return;
        }
        self.up[ix] = true;
        self.handle(ix, |n, ctx| n.on_restart(ctx));
        let at = self.now + 1 + self.rng.below(self.tick_ms);
        let epoch = self.epoch[ix];
        self.push(at, Event::Tick { node: ix, epoch });
    }

    fn cut_link(&mut self, a: NodeIx, b: NodeIx) {
        if a != b {
            self.cut.insert((a.min(b), a.max(b)));
        }
    }

    fn apply(&mut self, f: &Fault) {
        let n = self.nodes.len();
        match f {
            Fault::Crash(ix) => self.crash(*ix),
            Fault::Restart(ix) => self.restart(*ix),
            Fault::Rollback(ix) => {
                self.stats.rollbacks += 1;
                let was_up = self.up[*ix];
                self.crash(*ix);
                self.nodes[*ix].on_rollback(&mut self.rng);
                if was_up {
                    self.restart(*ix);
                }
            }
            Fault::Cut(a, b) => self.cut_link(*a, *b),
            Fault::Isolate(a) => {
                for b in 0..n {
                    self.cut_link(*a, b);
                }
            }
            Fault::Split(left, right) => {
                for &a in left {
                    for &b in right {
                        self.cut_link(a, b);
                    }
                }
            }
            Fault::HealAll => self.cut.clear(),
            Fault::Net(net) => self.net = *net,
            Fault::Calm => {
                self.cut.clear();
                self.net = self.calm_net;
                for ix in 0..n {
                    self.restart(ix);
                }
            }
        }
    }
}
