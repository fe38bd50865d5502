//! A core as a member of a replicated group (ADR 0011, 0012, 0013).
//!
//! The log rules live in [`crate::log`]; this module runs them on a real
//! core: its NVRAM (a [`NvramV2`] with one slot), its Merkle tree, its
//! OPAQUE sessions and its held replies. Every call returns data; the core
//! never talks to a peer or touches the store.
//!
//! **Apply on commit (ADR 0013).** A member's store holds the log (entries
//! with their bodies) and the records as of its *applied* index `a`, which
//! is at most its slot's index `k`. The tree always reflects `a`, except on
//! a leader, whose tree also holds its one in-flight batch. An entry is
//! applied (its records written, its transition checked by the core) only
//! once it is committed: the leader knows from its [`CommitTracker`], a
//! follower from a certificate its core verifies. So an uncommitted suffix
//! that a newer leader replaces was never applied, and replacing it is a
//! truncation of the log, with no undo.
//!
//! **Calls, by role.**
//! - Follower: [`Core::accept`] (chain step) or [`Core::accept_segment`],
//!   the host writes the entries, then [`Core::persisted`] writes NVRAM and
//!   returns the ack. [`Core::apply`] with a certificate, the host writes
//!   the transition's records, then [`Core::applied`].
//! - Election: [`Core::start_election`] (NVRAM first), [`Core::vote`] on
//!   the others, then [`Core::become_leader`] with the votes: it proposes
//!   the `leader` entry.
//! - Leader: [`Core::propose`] a batch (one in flight), the host writes the
//!   entry, [`Core::persisted`] (its own ack, fed back through
//!   [`Core::on_ack`]), acks from the others; once committed, the host
//!   writes the proposal's records and calls [`Core::commit_inflight`] for
//!   the replies. Earlier entries committed under this leader go through
//!   [`Core::apply`] without a certificate.
//! - Store behind NVRAM (rolled back or lost): [`Core::resync`] with
//!   entries fetched from a peer.

use crate::log::{
    Accept, Ack, AckOutcome, Candidate, Certificate, CommitTracker, Entry, EntryKind, GroupContext,
    GroupId, GroupSlot, LogError, Mac, Members, NodeId, NvramV2, Reject,
};
use crate::merkle::Tree;
use crate::platform::PlatformRng;
use crate::transition::{self, Body, Transition, TransitionError};
use crate::{
    Anchor, Bucket, Core, CoreError, Created, Input, Platform, RealmConfig, RealmSecrets,
    StartState, Stats, StoreWrites,
};
use opaque_ke::ServerSetup;

/// Why a replication call was refused. None of these change the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// This core is not a replicated member (a v1 realm).
    #[error("not a replicated realm")]
    NotReplicated,
    /// The store does not reach the core's NVRAM yet: resync first.
    #[error("the store is behind this node's NVRAM; resynchronising")]
    NotReady,
    /// The log rule refused.
    #[error("log: {0}")]
    Log(#[from] Reject),
    /// A log value is malformed.
    #[error("log format: {0}")]
    Format(#[from] LogError),
    /// A transition check failed.
    #[error("transition: {0}")]
    Transition(#[from] TransitionError),
    /// The call does not fit the core's role or state.
    #[error("{0}")]
    State(&'static str),
    /// Replacing entries this core already applied would need a snapshot.
    #[error("the segment replaces applied entries (from {keep}, applied {applied}); a snapshot install is needed")]
    BelowApplied {
        /// Where the segment would keep the log.
        keep: u64,
        /// This core's applied index.
        applied: u64,
    },
    /// The NVRAM write failed: the core refuses from now on.
    #[error("NVRAM: {0}")]
    Nvram(String),
}

/// The role the core is in (the host chooses when to stand; the core checks).
enum Role {
    Follower,
    Candidate(Candidate),
    Leader(Box<CommitTracker>),
}

/// The leader's proposed batch that is not committed yet.
struct InFlight {
    index: u64,
    replies: Vec<Result<Vec<u8>, CoreError>>,
    /// Old leaves of the buckets the batch changed (to revert the tree).
    revert: Vec<(u16, [u8; 32])>,
}

/// A checked accept that waits for the host's write, then NVRAM.
struct PendingAccept {
    keep: u64,
    tail: Vec<(Entry, Mac)>,
}

/// A core's replication state.
pub(crate) struct Replica {
    node: NodeId,
    members: Members,
    group: GroupId,
    /// The group's number in its realm.
    index: u8,
    /// The buckets it owns (from its genesis entry).
    range: (u16, u16),
    nv: NvramV2,
    applied: u64,
    /// `(mac, root)` of this core's log from `applied` on: `chain[0]` is the
    /// applied entry. Reaches the slot's index when `ready`.
    chain: Vec<(Mac, [u8; 32])>,
    ready: bool,
    role: Role,
    inflight: Option<InFlight>,
    pending: Option<PendingAccept>,
}

/// What `realm new` gets for the first node.
pub struct CreatedGroup {
    /// The sealed server setup and channel key (same on every node).
    pub created: Created,
    /// The genesis entry.
    pub genesis: Entry,
    /// Its MAC.
    pub genesis_mac: Mac,
}

/// What the host hands the core at start.
pub struct MemberStore<'a> {
    /// The sealed OPAQUE setup.
    pub sealed_setup: &'a [u8],
    /// The leaves of the store's records (the applied state).
    pub leaves: Vec<(u16, [u8; 32])>,
    /// The genesis entry and MAC (index 1; names the members).
    pub genesis: (Entry, Mac),
    /// The store's log from the applied entry on: `log[0]` is the applied
    /// entry, the rest follow it to the store's last entry.
    pub log: Vec<(Entry, Mac)>,
}

/// A leader's proposal: the host writes the entry (with its body) to its
/// log, calls [`Core::persisted`], and sends it to the members.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The entry.
    pub entry: Entry,
    /// Its MAC.
    pub mac: Mac,
    /// Its body bytes.
    pub body: Vec<u8>,
    /// What to write to the records once it commits (empty for a `leader`
    /// entry).
    pub writes: StoreWrites,
}

/// What an ack did on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEffect {
    /// Counted (or ignored); the commit index is now this.
    Committed(u64),
    /// A member promised a later epoch: this core stepped down.
    SteppedDown,
    /// Not a leader, or an ack that says nothing.
    Nothing,
}

/// The replication state a host may read (no secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This node.
    pub node: NodeId,
    /// The promised epoch.
    pub promised: u64,
    /// The last accepted entry's epoch.
    pub last_epoch: u64,
    /// The last accepted entry's index.
    pub index: u64,
    /// Its MAC.
    pub mac: Mac,
    /// The applied index.
    pub applied: u64,
    /// Whether the store reaches NVRAM.
    pub ready: bool,
    /// The epoch this core leads, if it leads.
    pub leading: Option<u64>,
    /// The leader's commit index (0 when not leading).
    pub committed: u64,
    /// Whether a batch is in flight.
    pub in_flight: bool,
    /// The group's number in the realm.
    pub group: u8,
    /// The buckets it owns.
    pub range: (u16, u16),
}

/// The id of a realm's group number `index` (ADR 0014).
pub fn group_of(realm_id: &[u8; 16], index: u8) -> GroupId {
    let mut g = *realm_id;
    g[0] ^= 0x47;
    g[15] ^= index;
    g
}

/// The group number of a group id of this realm, if it is one.
pub fn group_index(realm_id: &[u8; 16], group: &GroupId) -> Option<u8> {
    let index = group[15] ^ realm_id[15];
    (group_of(realm_id, index) == *group).then_some(index)
}

/// The bucket range of group `index` of `groups` (equal shares of the
/// 2^16 buckets, in order; ADR 0014).
pub fn group_range(index: u8, groups: u8) -> (u16, u16) {
    let n = u32::from(groups.max(1));
    let i = u32::from(index.min(groups.saturating_sub(1)));
    // Bucket b belongs to floor(b·n / 2^16) (group_for_bucket): group i
    // starts at ceil(i·2^16 / n).
    let start = |i: u32| (i * 65_536).div_ceil(n);
    (start(i) as u16, (start(i + 1) - 1) as u16)
}

/// Which group of `groups` owns `bucket`.
pub fn group_for_bucket(bucket: u16, groups: u8) -> u8 {
    let n = u32::from(groups.max(1));
    ((u32::from(bucket) * n) / 65_536) as u8
}

/// Which group serves a (tenant, user): the core's record-id hash, reduced
/// to its bucket (ADR 0014). In an HSM this is a call into the core; in
/// software it holds a copy of the record-id key, so the host's router
/// needs no round trip through a busy member thread. It gives the host the
/// bucket of a user it already knows, never a record id.
#[derive(Clone)]
pub struct RecordRouter {
    key: ring::hmac::Key,
    groups: u8,
}

impl std::fmt::Debug for RecordRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordRouter(REDACTED)")
    }
}

impl RecordRouter {
    /// The group that owns the user's record.
    pub fn group(&self, tenant: &str, user: &str) -> u8 {
        let id = crate::secrets::record_id_with(&self.key, tenant, user);
        group_for_bucket(crate::merkle::bucket_of(&id), self.groups)
    }
}

/// Verifies a run of entries after `(index, mac)`: MACs, group,
/// consecutive, chained, epochs non-decreasing.
fn run_ok(
    ctx: &GroupContext<'_>,
    group: &GroupId,
    from: (u64, Mac, u64),
    run: &[(Entry, Mac)],
) -> Result<(), ReplicaError> {
    let (mut index, mut mac, mut epoch) = from;
    for (e, m) in run {
        if &e.group != group || !e.verify_mac(ctx.log_key, ctx.realm_id, m) {
            return Err(Reject::BadMac.into());
        }
        if e.index != index + 1 || e.prev_mac != mac {
            return Err(Reject::BadSegment("entries do not chain").into());
        }
        if e.epoch < epoch {
            return Err(Reject::EpochRegress {
                epoch: e.epoch,
                last: epoch,
            }
            .into());
        }
        (index, mac, epoch) = (e.index, *m, e.epoch);
    }
    Ok(())
}

impl<P: Platform> Core<P> {
    /// `realm new`, first node of group `index` (of `groups`): the group's
    /// genesis entry naming `members` and owning its share of the buckets,
    /// and this node's NVRAM holding it. With `sealed_setup` (every group
    /// after the first) the realm's OPAQUE setup is reused, so clients pin
    /// one key whichever group serves them; without, a fresh one is made.
    #[allow(clippy::too_many_arguments)]
    pub fn init_group(
        mut platform: P,
        master: &[u8; 32],
        config: RealmConfig,
        node: NodeId,
        members: &[NodeId],
        (index, groups): (u8, u8),
        sealed_setup: Option<&[u8]>,
    ) -> Result<CreatedGroup, CoreError> {
        if platform.nvram_read()?.is_some() {
            return Err(CoreError::Nvram(
                "NVRAM already holds a realm anchor; refusing to overwrite it".into(),
            ));
        }
        if groups == 0 || index >= groups {
            return Err(CoreError::Setup(format!("group {index} of {groups}")));
        }
        let secrets = RealmSecrets::derive(master, &config.realm_id);
        let sealed_setup = match sealed_setup {
            Some(s) => {
                secrets.open_setup(&config.realm_id, s)?;
                s.to_vec()
            }
            None => {
                let setup = ServerSetup::<crate::CofferSuite>::new(&mut PlatformRng(&mut platform));
                let mut nonce = [0u8; 24];
                platform.fill_random(&mut nonce);
                secrets.seal_setup(nonce, &config.realm_id, &setup)
            }
        };
        let members =
            Members::new(members).map_err(|e| CoreError::Setup(format!("members: {e}")))?;
        let (range_lo, range_hi) = group_range(index, groups);
        let genesis = Entry {
            group: group_of(&config.realm_id, index),
            epoch: 0,
            index: 1,
            prev_mac: Mac::ZERO,
            leader: members.nodes()[0],
            kind: EntryKind::Genesis {
                members: members.clone(),
            },
            range_lo,
            range_hi,
            root: Tree::build([]).root(),
            body_hash: crate::log::empty_body_hash(),
        };
        let mac = genesis.mac(secrets.log_key(), &config.realm_id);
        Self::join_group(platform, master, &config, node, &genesis, &mac)?;
        Ok(CreatedGroup {
            created: Created {
                sealed_setup,
                public_key: secrets.channel_public_key(),
            },
            genesis,
            genesis_mac: mac,
        })
    }

    /// `realm new`, every node: checks the genesis entry and writes this
    /// node's NVRAM holding it (one slot at index 1).
    pub fn join_group(
        mut platform: P,
        master: &[u8; 32],
        config: &RealmConfig,
        node: NodeId,
        genesis: &Entry,
        mac: &Mac,
    ) -> Result<(), CoreError> {
        if platform.nvram_read()?.is_some() {
            return Err(CoreError::Nvram(
                "NVRAM already holds a realm anchor; refusing to overwrite it".into(),
            ));
        }
        let secrets = RealmSecrets::derive(master, &config.realm_id);
        let EntryKind::Genesis { members } = &genesis.kind else {
            return Err(CoreError::Setup("not a genesis entry".into()));
        };
        if !members.contains(node) {
            return Err(CoreError::Setup(format!(
                "node {node} is not a member of the group"
            )));
        }
        let ctx = GroupContext {
            realm_id: &config.realm_id,
            log_key: secrets.log_key(),
            ack_key: secrets.ack_key(),
            members,
        };
        if group_index(&config.realm_id, &genesis.group).is_none() {
            return Err(CoreError::Setup(
                "the genesis entry is for another realm's group".into(),
            ));
        }
        let mut slot = GroupSlot::new(genesis.group);
        slot.check(&ctx, genesis, mac, None)
            .map_err(|e| CoreError::Setup(format!("genesis: {e}")))?;
        slot.advance(genesis, mac)
            .map_err(|e| CoreError::Setup(format!("genesis: {e}")))?;
        let nv = NvramV2 {
            realm_id: config.realm_id,
            node,
            slots: vec![slot],
        };
        platform.nvram_write(&nv.encode())?;
        Ok(())
    }

    /// Starts a member over its store (module docs). The NVRAM must be a
    /// version-2 NVRAM of this realm.
    pub fn start_member(
        mut platform: P,
        master: &[u8; 32],
        config: RealmConfig,
        store: MemberStore<'_>,
    ) -> Result<(Self, StartState), CoreError> {
        let secrets = RealmSecrets::derive(master, &config.realm_id);
        let setup = secrets.open_setup(&config.realm_id, store.sealed_setup)?;
        let bytes = platform.nvram_read()?.ok_or_else(|| {
            CoreError::Nvram(
                "NVRAM is empty: this node was not created with this --nvram file".into(),
            )
        })?;
        let mut nv = NvramV2::decode(&bytes).map_err(|e| {
            CoreError::Nvram(format!(
                "NVRAM is not a replicated node's NVRAM ({e}); wrong --nvram file?"
            ))
        })?;
        if nv.realm_id != config.realm_id {
            return Err(CoreError::Nvram(
                "NVRAM belongs to another realm (wrong --nvram file?)".into(),
            ));
        }
        let (genesis, gmac) = &store.genesis;
        let group = genesis.group;
        let group_ix = group_index(&config.realm_id, &group).ok_or_else(|| {
            CoreError::Integrity("the store's genesis entry is not for this realm".into())
        })?;
        let mut slot = *nv.slot(&group).ok_or_else(|| {
            CoreError::Nvram(format!(
                "this NVRAM holds no slot for group {group_ix} (wrong --nvram file?)"
            ))
        })?;
        let members = match &genesis.kind {
            EntryKind::Genesis { members }
                if genesis.index == 1
                    && genesis.verify_mac(secrets.log_key(), &config.realm_id, gmac) =>
            {
                members.clone()
            }
            _ => {
                return Err(CoreError::Integrity(
                    "the store's genesis entry does not verify".into(),
                ))
            }
        };
        if !members.contains(nv.node) {
            return Err(CoreError::Nvram(format!(
                "NVRAM names node {}, which is not a member",
                nv.node
            )));
        }
        let tree = Tree::build(store.leaves);
        let ctx = GroupContext {
            realm_id: &config.realm_id,
            log_key: secrets.log_key(),
            ack_key: secrets.ack_key(),
            members: &members,
        };
        let mut refusing = None;
        let (first, fmac) = store
            .log
            .first()
            .ok_or_else(|| CoreError::Integrity("the store's log is empty".into()))?;
        let applied = first.index;
        if first.group != group || !first.verify_mac(ctx.log_key, ctx.realm_id, fmac) {
            refusing = Some("the store's applied entry does not verify".to_string());
        } else if tree.root() != first.root {
            refusing = Some(format!(
                "the store's records do not match its applied entry {applied}: the store was tampered with"
            ));
        } else if applied > slot.index {
            refusing = Some(format!(
                "the store applied entry {applied}, past this node's NVRAM ({}): wrong --nvram file?",
                slot.index
            ));
        }
        let mut chain = vec![(*fmac, first.root)];
        let mut ready = false;
        let mut state = StartState::Ready;
        if refusing.is_none()
            && run_ok(
                &ctx,
                &group,
                (first.index, *fmac, first.epoch),
                &store.log[1..],
            )
            .is_ok()
        {
            let off = (slot.index - applied) as usize;
            if let Some((e, m)) = store.log.get(off) {
                if *m == slot.mac && e.index == slot.index {
                    ready = true;
                    chain.extend(store.log[1..=off].iter().map(|(e, m)| (*m, e.root)));
                    // Entries past NVRAM: a crash between the store write
                    // and the NVRAM write. Chain steps roll NVRAM forward.
                    let mut rolled = false;
                    for (e, m) in &store.log[off + 1..] {
                        if slot.check(&ctx, e, m, None) != Ok(Accept::ChainStep) {
                            break;
                        }
                        if slot.advance(e, m).is_err() {
                            break;
                        }
                        chain.push((*m, e.root));
                        rolled = true;
                    }
                    if rolled {
                        if let Some(s) = nv.slot_mut(&group) {
                            *s = slot;
                        }
                        platform.nvram_write(&nv.encode())?;
                        state = StartState::RolledForward;
                    }
                }
            }
        }
        if let Some(why) = &refusing {
            state = StartState::Refusing(why.clone());
        } else if !ready {
            state = StartState::Resyncing(format!(
                "the store's log does not reach this node's NVRAM (entry {}): resynchronising from a peer",
                slot.index
            ));
        }
        let boot_ms = platform.now_ms();
        let anchor = Anchor {
            generation: applied,
            root: tree.root(),
        };
        Ok((
            Self {
                platform,
                context: coffer_vault_proto::suite::opaque_context(&config.realm_id),
                secrets,
                config,
                setup,
                tree,
                anchor,
                refusing,
                sessions: Default::default(),
                replays: Default::default(),
                boot_ms,
                pending: None,
                stats: Stats::default(),
                session_prefix: Some(group_ix),
                repl: Some(Replica {
                    node: nv.node,
                    members,
                    group,
                    index: group_ix,
                    range: (genesis.range_lo, genesis.range_hi),
                    nv,
                    applied,
                    chain,
                    ready,
                    role: Role::Follower,
                    inflight: None,
                    pending: None,
                }),
            },
            state,
        ))
    }

    fn repl(&self) -> Result<&Replica, ReplicaError> {
        self.repl.as_ref().ok_or(ReplicaError::NotReplicated)
    }

    fn slot(&self) -> Result<GroupSlot, ReplicaError> {
        let r = self.repl()?;
        r.nv.slot(&r.group)
            .copied()
            .ok_or(ReplicaError::State("no slot"))
    }

    /// Replication status (None for a v1 core).
    pub fn replica_status(&self) -> Option<ReplicaStatus> {
        let r = self.repl.as_ref()?;
        let s = r.nv.slot(&r.group)?;
        let (leading, committed) = match &r.role {
            Role::Leader(t) => (Some(t.epoch()), t.committed()),
            _ => (None, 0),
        };
        Some(ReplicaStatus {
            node: r.node,
            promised: s.promised,
            last_epoch: s.last_epoch,
            index: s.index,
            mac: s.mac,
            applied: r.applied,
            ready: r.ready,
            leading,
            committed,
            in_flight: r.inflight.is_some(),
            group: r.index,
            range: r.range,
        })
    }

    /// The router for a realm of `groups` groups (None for a v1 core).
    pub fn record_router(&self, groups: u8) -> Option<RecordRouter> {
        self.repl.as_ref()?;
        Some(RecordRouter {
            key: self.secrets.record_id_key(),
            groups,
        })
    }

    /// The group's members (None for a v1 core).
    pub fn members(&self) -> Option<Vec<NodeId>> {
        self.repl.as_ref().map(|r| r.members.nodes().to_vec())
    }

    /// Writes the slot to NVRAM; a failure makes the core refuse.
    fn write_slot(&mut self, slot: GroupSlot) -> Result<(), ReplicaError> {
        let Some(r) = self.repl.as_mut() else {
            return Err(ReplicaError::NotReplicated);
        };
        let mut nv = r.nv.clone();
        if let Some(s) = nv.slot_mut(&r.group) {
            *s = slot;
        }
        if let Err(e) = self.platform.nvram_write(&nv.encode()) {
            let why = format!("NVRAM write failed: {e}");
            self.refusing = Some(why.clone());
            return Err(ReplicaError::Nvram(why));
        }
        if let Some(r) = self.repl.as_mut() {
            r.nv = nv;
        }
        Ok(())
    }

    fn usable(&self) -> Result<(), ReplicaError> {
        let r = self.repl()?;
        if let Some(why) = &self.refusing {
            if r.ready {
                return Err(ReplicaError::Nvram(why.clone()));
            }
        }
        if !r.ready {
            return Err(ReplicaError::NotReady);
        }
        Ok(())
    }

    fn ack_now(&self) -> Result<Ack, ReplicaError> {
        let r = self.repl()?;
        let slot = self.slot()?;
        Ok(Ack::of_slot(
            self.secrets.ack_key(),
            &self.config.realm_id,
            r.node,
            &slot,
        ))
    }

    /// This node's signed slot (its latest ack), e.g. to answer a leader
    /// whose entry it already holds, or a superseded one.
    pub fn current_ack(&self) -> Result<Ack, ReplicaError> {
        self.usable()?;
        self.ack_now()
    }

    /// Steps down from leading or standing: reverts the in-flight batch in
    /// the tree, drops the sessions (they lived in this leader's core), and
    /// returns the held replies' count (they never leave; clients retry).
    pub fn step_down(&mut self) -> usize {
        let Some(r) = self.repl.as_mut() else {
            return 0;
        };
        r.role = Role::Follower;
        let mut dropped = 0;
        if let Some(f) = r.inflight.take() {
            dropped = f.replies.len();
            for (b, h) in f.revert.iter().rev() {
                self.tree.set_leaf(*b, *h);
            }
        }
        // A proposal not yet persisted is dropped too.
        if let Some(p) = &r.pending {
            if p.tail.iter().any(|(e, _)| e.leader == r.node) {
                r.pending = None;
            }
        }
        self.sessions = Default::default();
        dropped
    }

    /// Chain step: checks a leader's next entry against the slot. The host
    /// then writes it (with its body) to its log and calls
    /// [`Core::persisted`].
    pub fn accept(&mut self, entry: &Entry, mac: &Mac) -> Result<(), ReplicaError> {
        self.usable()?;
        let slot = self.slot()?;
        let r = self.repl()?;
        if r.pending.is_some() {
            return Err(ReplicaError::State("an accepted entry awaits persisted"));
        }
        let ctx = self.group_ctx()?;
        match slot.check(&ctx, entry, mac, None)? {
            Accept::ChainStep => {}
            _ => return Err(ReplicaError::State("not a chain step")),
        }
        self.supersede(entry.epoch);
        if let Some(r) = self.repl.as_mut() {
            r.pending = Some(PendingAccept {
                keep: slot.index,
                tail: vec![(entry.clone(), *mac)],
            });
        }
        Ok(())
    }

    /// Segment (ADR 0012): `own` is this node's log from `d+1` to its slot
    /// (as the host holds it), `seg` a leader's entries from `d+1`. Returns
    /// the index to keep: the host truncates its log after it, appends the
    /// segment's entries past it, then calls [`Core::persisted`].
    pub fn accept_segment(
        &mut self,
        own: &[(Entry, Mac)],
        seg: &[(Entry, Mac)],
    ) -> Result<u64, ReplicaError> {
        self.usable()?;
        let slot = self.slot()?;
        let r = self.repl()?;
        if r.pending.is_some() {
            return Err(ReplicaError::State("an accepted entry awaits persisted"));
        }
        let applied = r.applied;
        let ctx = self.group_ctx()?;
        let keep = match slot.check_segment(&ctx, own, seg)? {
            Accept::Segment { keep } => keep,
            _ => return Err(ReplicaError::State("not a segment")),
        };
        let tail: Vec<(Entry, Mac)> = seg
            .iter()
            .filter(|(e, _)| e.index > keep)
            .cloned()
            .collect();
        if tail.is_empty() {
            return Err(ReplicaError::State("the segment adds nothing"));
        }
        // A valid segment of a later epoch ends this core's leadership (and
        // reverts its in-flight batch) before anything else.
        let last_epoch = tail.last().map_or(0, |(e, _)| e.epoch);
        self.supersede(last_epoch);
        // Committed entries are never replaced (ADR 0012), and only
        // committed ones are applied: this cannot hold for a valid segment
        // unless the store applied an uncommitted entry. Defensive.
        if keep < applied || (keep < slot.index && self.inflight_index().is_some()) {
            return Err(ReplicaError::BelowApplied { keep, applied });
        }
        if let Some(r) = self.repl.as_mut() {
            r.pending = Some(PendingAccept { keep, tail });
        }
        Ok(keep)
    }

    fn inflight_index(&self) -> Option<u64> {
        self.repl.as_ref()?.inflight.as_ref().map(|f| f.index)
    }

    /// A leader or candidate that takes an entry of a later epoch steps down.
    fn supersede(&mut self, epoch: u64) {
        let own = match self.repl.as_ref().map(|r| &r.role) {
            Some(Role::Leader(t)) => Some(t.epoch()),
            Some(Role::Candidate(c)) => Some(c.epoch()),
            _ => None,
        };
        if own.is_some_and(|e| epoch > e) {
            self.step_down();
        }
    }

    /// After the host wrote the accepted entries durably: NVRAM, then the
    /// ack (the vote and the ack are one value, ADR 0012).
    pub fn persisted(&mut self) -> Result<Ack, ReplicaError> {
        let Some(p) = self.repl.as_mut().and_then(|r| r.pending.take()) else {
            return Err(ReplicaError::State("persisted without an accepted entry"));
        };
        let mut slot = self.slot()?;
        let Some((last, last_mac)) = p.tail.last() else {
            return Err(ReplicaError::State("empty accept"));
        };
        slot.advance(last, last_mac)?;
        self.write_slot(slot)?;
        if let Some(r) = self.repl.as_mut() {
            let keep_len = (p.keep - r.applied + 1) as usize;
            r.chain.truncate(keep_len);
            r.chain.extend(p.tail.iter().map(|(e, m)| (*m, e.root)));
        }
        self.ack_now()
    }

    /// Votes for a candidate: `request` is the candidate core's own signed
    /// slot after [`Core::start_election`] (its ack promising its new
    /// epoch). Only a core that stood for that epoch can make one, so a
    /// host cannot make members promise an epoch nobody stands for (say, the
    /// last one, which would end all elections). Promises the epoch in
    /// NVRAM, then signs this core's slot: the vote.
    pub fn vote(&mut self, request: &Ack) -> Result<Ack, ReplicaError> {
        self.usable()?;
        let r = self.repl()?;
        if !request.verify(self.secrets.ack_key(), &self.config.realm_id)
            || request.group != r.group
            || !r.members.contains(request.node)
            || crate::log::epoch_node(request.epoch) != request.node
            || request.node == r.node
        {
            return Err(ReplicaError::State(
                "not a vote request from a candidate core of this group",
            ));
        }
        let epoch = request.epoch;
        let mut slot = self.slot()?;
        slot.promise(epoch)?;
        self.supersede(epoch);
        self.write_slot(slot)?;
        self.ack_now()
    }

    /// Stands for election: promises this node's next epoch in NVRAM (before
    /// any vote request leaves) and returns it.
    pub fn start_election(&mut self) -> Result<u64, ReplicaError> {
        self.usable()?;
        self.step_down();
        let mut slot = self.slot()?;
        let node = self.repl()?.node;
        let c = slot.start_election(node)?;
        let epoch = c.epoch();
        self.write_slot(slot)?;
        if let Some(r) = self.repl.as_mut() {
            r.role = Role::Candidate(c);
        }
        Ok(epoch)
    }

    /// Counts the votes; with a majority, leads and proposes the epoch's
    /// `leader` entry (root: the last entry's). Sessions opened before now
    /// are refused (ADR 0011, "Leader failover").
    pub fn become_leader(&mut self, votes: &[Ack]) -> Result<Proposal, ReplicaError> {
        self.usable()?;
        let slot = self.slot()?;
        let ctx_members;
        let c = {
            let Some(r) = self.repl.as_mut() else {
                return Err(ReplicaError::NotReplicated);
            };
            ctx_members = r.members.clone();
            match std::mem::replace(&mut r.role, Role::Follower) {
                Role::Candidate(c) => c,
                other => {
                    r.role = other;
                    return Err(ReplicaError::State("not a candidate"));
                }
            }
        };
        let ctx = GroupContext {
            realm_id: &self.config.realm_id,
            log_key: self.secrets.log_key(),
            ack_key: self.secrets.ack_key(),
            members: &ctx_members,
        };
        let tracker = c
            .elect(&slot, &ctx, votes)
            .map_err(|_| ReplicaError::State("no majority of valid votes"))?;
        let tip_root = self
            .repl()?
            .chain
            .last()
            .map(|(_, root)| *root)
            .ok_or(ReplicaError::State("empty chain"))?;
        self.sessions = Default::default();
        self.boot_ms = self.platform.now_ms();
        let body = Body::empty().encode();
        let proposal =
            self.make_entry(tracker.epoch(), EntryKind::Leader, tip_root, &body, &slot)?;
        let mut tracker = tracker;
        tracker
            .propose(&proposal.0, proposal.1)
            .map_err(|_| ReplicaError::State("tracker refused the leader entry"))?;
        if let Some(r) = self.repl.as_mut() {
            r.role = Role::Leader(Box::new(tracker));
            r.pending = Some(PendingAccept {
                keep: slot.index,
                tail: vec![(proposal.0.clone(), proposal.1)],
            });
        }
        Ok(Proposal {
            entry: proposal.0,
            mac: proposal.1,
            body,
            writes: StoreWrites::default(),
        })
    }

    fn make_entry(
        &self,
        epoch: u64,
        kind: EntryKind,
        root: [u8; 32],
        body: &[u8],
        slot: &GroupSlot,
    ) -> Result<(Entry, Mac), ReplicaError> {
        let r = self.repl()?;
        let entry = Entry {
            group: r.group,
            epoch,
            index: slot.index + 1,
            prev_mac: slot.mac,
            leader: r.node,
            kind,
            range_lo: r.range.0,
            range_hi: r.range.1,
            root,
            body_hash: crate::log::body_hash(body),
        };
        let mac = entry.mac(self.secrets.log_key(), &self.config.realm_id);
        Ok((entry, mac))
    }

    /// Leader: runs a batch and proposes it as the next entry. Needs every
    /// earlier entry committed and applied (one batch in flight). The
    /// replies wait in the core until [`Core::commit_inflight`].
    pub fn propose(
        &mut self,
        inputs: Vec<Input>,
        buckets: Vec<Bucket>,
    ) -> Result<Proposal, ReplicaError> {
        self.usable()?;
        let slot = self.slot()?;
        let r = self.repl()?;
        let epoch = match &r.role {
            Role::Leader(t) => t.epoch(),
            _ => return Err(ReplicaError::State("not the leader")),
        };
        if r.pending.is_some() || r.inflight.is_some() {
            return Err(ReplicaError::State("a proposal is in flight"));
        }
        if r.applied != slot.index {
            return Err(ReplicaError::State(
                "earlier entries are not committed and applied yet",
            ));
        }
        // Frames for records of another group's range never reach the
        // batch (the host routes by range; a misrouted one is refused).
        let ((lo, hi), group) = (r.range, r.index);
        let mut misrouted = Vec::new();
        let inputs: Vec<Input> = inputs
            .into_iter()
            .enumerate()
            .filter_map(|(i, input)| match &input {
                Input::Open { record, .. }
                    if !(lo..=hi).contains(&crate::merkle::bucket_of(record)) =>
                {
                    misrouted.push(i);
                    None
                }
                _ => Some(input),
            })
            .collect();
        let (mut replies, writes, revert, _) = self.run_batch(inputs, buckets);
        for i in misrouted {
            replies.insert(
                i,
                Err(CoreError::Refusing(format!(
                    "record outside group {group}'s range {lo}..={hi}"
                ))),
            );
        }
        let body = Body::from_writes(&writes)
            .map_err(|_| ReplicaError::State("batch too large for one entry"))?
            .encode();
        let (entry, mac) =
            self.make_entry(epoch, EntryKind::Batch, self.tree.root(), &body, &slot)?;
        if let Some(r) = self.repl.as_mut() {
            if let Role::Leader(t) = &mut r.role {
                t.propose(&entry, mac)
                    .map_err(|_| ReplicaError::State("tracker refused the proposal"))?;
            }
            r.inflight = Some(InFlight {
                index: entry.index,
                replies,
                revert,
            });
            r.pending = Some(PendingAccept {
                keep: slot.index,
                tail: vec![(entry.clone(), mac)],
            });
        }
        Ok(Proposal {
            entry,
            mac,
            body,
            writes,
        })
    }

    /// Leader: takes an ack (its own too, after [`Core::persisted`]).
    pub fn on_ack(&mut self, ack: &Ack) -> AckEffect {
        let realm_id = self.config.realm_id;
        let key = self.secrets.ack_key();
        let Some(Role::Leader(t)) = self.repl.as_mut().map(|r| &mut r.role) else {
            return AckEffect::Nothing;
        };
        let outcome = t.on_ack(ack, key, &realm_id);
        let committed = t.committed();
        match outcome {
            Ok(AckOutcome::HigherEpoch { .. }) => {
                self.step_down();
                AckEffect::SteppedDown
            }
            Ok(_) => AckEffect::Committed(committed),
            Err(_) => AckEffect::Nothing,
        }
    }

    /// Leader: the in-flight batch's index, once committed.
    pub fn inflight_committed(&self) -> Option<u64> {
        let r = self.repl.as_ref()?;
        let f = r.inflight.as_ref()?;
        match &r.role {
            Role::Leader(t) if t.committed() >= f.index && r.applied + 1 == f.index => {
                Some(f.index)
            }
            _ => None,
        }
    }

    /// Leader, after the host wrote the committed batch's records: the
    /// replies leave.
    pub fn commit_inflight(&mut self) -> Result<Vec<Result<Vec<u8>, CoreError>>, ReplicaError> {
        let index = self
            .inflight_committed()
            .ok_or(ReplicaError::State("no committed batch in flight"))?;
        let Some(r) = self.repl.as_mut() else {
            return Err(ReplicaError::NotReplicated);
        };
        let f = r
            .inflight
            .take()
            .ok_or(ReplicaError::State("no batch in flight"))?;
        r.applied = index;
        r.chain.remove(0);
        self.anchor = Anchor {
            generation: index,
            root: self.tree.root(),
        };
        Ok(f.replies)
    }

    /// Checks the transition of the next committed entry to apply
    /// (`applied + 1`): it must be this core's entry at that index, and
    /// committed, by this leader's tracker or by `cert` (a certificate for
    /// an entry of this core's log at or past it). `buckets`: the store's
    /// buckets the body touches. The host writes the transition's records
    /// (and the applied index), then calls [`Core::applied`].
    pub fn apply(
        &self,
        entry: &Entry,
        mac: &Mac,
        body: &[u8],
        buckets: Vec<Bucket>,
        cert: Option<&Certificate>,
    ) -> Result<Transition, ReplicaError> {
        self.usable()?;
        let r = self.repl()?;
        if r.inflight.is_some() {
            return Err(ReplicaError::State("a batch is in flight"));
        }
        let next = r.applied + 1;
        if entry.index != next {
            return Err(ReplicaError::State("not the next entry to apply"));
        }
        match r.chain.get(1) {
            Some((m, _)) if m == mac => {}
            _ => return Err(ReplicaError::State("not this node's entry at that index")),
        }
        if !entry.verify_mac(self.secrets.log_key(), &self.config.realm_id, mac) {
            return Err(Reject::BadMac.into());
        }
        let by_leader = matches!(&r.role, Role::Leader(t) if t.committed() >= next);
        if !by_leader {
            let c = cert.ok_or(ReplicaError::State("not known to be committed"))?;
            let (g, _, ci, cm) = c
                .verify(&r.members, self.secrets.ack_key(), &self.config.realm_id)
                .map_err(|e| ReplicaError::Log(Reject::BadCertificate(e)))?;
            let on_chain = ci >= next
                && ci
                    .checked_sub(r.applied)
                    .and_then(|off| r.chain.get(off as usize))
                    .is_some_and(|(m, _)| *m == cm);
            if g != r.group || !on_chain {
                return Err(ReplicaError::State(
                    "the certificate is not for this node's log",
                ));
            }
        }
        Ok(transition::check_transition(
            &self.tree, entry, body, buckets,
        )?)
    }

    /// After the host durably wrote an applied transition's records.
    pub fn applied(&mut self, t: Transition) -> Result<u64, ReplicaError> {
        let root = t.root();
        {
            let r = self.repl()?;
            if r.chain.get(1).map(|(_, rt)| *rt) != Some(root) {
                return Err(ReplicaError::State("not the next entry's transition"));
            }
        }
        t.apply(&mut self.tree)?;
        let Some(r) = self.repl.as_mut() else {
            return Err(ReplicaError::NotReplicated);
        };
        r.applied += 1;
        r.chain.remove(0);
        self.anchor = Anchor {
            generation: r.applied,
            root,
        };
        Ok(r.applied)
    }

    /// Store behind NVRAM: `entries` follow the applied entry (fetched from
    /// a peer). If they chain to this node's slot, the core is ready again;
    /// the host writes them up to the returned index. Otherwise, with a
    /// certificate for one of them newer than the slot, the core jumps to it
    /// (NVRAM first). Returns the index to keep the log up to.
    pub fn resync(
        &mut self,
        entries: &[(Entry, Mac)],
        cert: Option<&Certificate>,
    ) -> Result<u64, ReplicaError> {
        let r = self.repl()?;
        if r.ready {
            return Err(ReplicaError::State("already in sync"));
        }
        let slot = self.slot()?;
        let (amac, _) = r.chain[0];
        let a = r.applied;
        let ctx = self.group_ctx()?;
        // The longest prefix that chains from the applied entry.
        let mut ok = 0;
        let (mut index, mut mac, mut epoch) = (a, amac, 0u64);
        for (e, m) in entries {
            if run_ok(
                &ctx,
                &r.group,
                (index, mac, epoch),
                std::slice::from_ref(&(e.clone(), *m)),
            )
            .is_err()
            {
                break;
            }
            (index, mac, epoch) = (e.index, *m, e.epoch);
            ok += 1;
        }
        let entries = &entries[..ok];
        let at = |i: u64| -> Option<&(Entry, Mac)> {
            i.checked_sub(a + 1).and_then(|o| entries.get(o as usize))
        };
        if let Some((_, m)) = at(slot.index) {
            if *m == slot.mac {
                self.resynced(&entries[..(slot.index - a) as usize]);
                return Ok(slot.index);
            }
        }
        if slot.index == a && slot.mac == amac {
            self.resynced(&[]);
            return Ok(a);
        }
        let c = cert.ok_or(ReplicaError::State(
            "the peer's log does not reach this node's NVRAM; a certificate is needed",
        ))?;
        let target = c.acks.first().map(|x| x.index).unwrap_or(0);
        let (te, tm) = at(target).ok_or(ReplicaError::State(
            "the certificate is not for the fetched entries",
        ))?;
        let mut slot2 = slot;
        match slot.check(&ctx, te, tm, Some(c))? {
            Accept::Jump { .. } | Accept::ChainStep => {}
            Accept::Segment { .. } => return Err(ReplicaError::State("unexpected segment")),
        }
        slot2.advance(te, tm)?;
        self.write_slot(slot2)?;
        self.resynced(&entries[..(target - a) as usize]);
        Ok(target)
    }

    /// The log after the applied entry is now `after` (checked): ready.
    fn resynced(&mut self, after: &[(Entry, Mac)]) {
        if let Some(r) = self.repl.as_mut() {
            r.chain.truncate(1);
            r.chain.extend(after.iter().map(|(e, m)| (*m, e.root)));
            r.ready = true;
        }
        self.refusing = None;
    }

    fn group_ctx(&self) -> Result<GroupContext<'_>, ReplicaError> {
        let r = self.repl()?;
        Ok(GroupContext {
            realm_id: &self.config.realm_id,
            log_key: self.secrets.log_key(),
            ack_key: self.secrets.ack_key(),
            members: &r.members,
        })
    }

    /// Verifies a certificate for this group (for the host to keep the best
    /// one it has seen); returns its index.
    pub fn check_certificate(&self, cert: &Certificate) -> Result<u64, ReplicaError> {
        let r = self.repl()?;
        let (g, _, i, _) = cert
            .verify(&r.members, self.secrets.ack_key(), &self.config.realm_id)
            .map_err(|e| ReplicaError::Log(Reject::BadCertificate(e)))?;
        if g != r.group {
            return Err(Reject::WrongGroup.into());
        }
        Ok(i)
    }

    /// Verifies an ack's MAC (for the host's vote and certificate bookkeeping).
    pub fn ack_verifies(&self, ack: &Ack) -> bool {
        ack.verify(self.secrets.ack_key(), &self.config.realm_id)
    }
}
