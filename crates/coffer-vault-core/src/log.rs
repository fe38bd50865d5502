//! The replicated realm's authenticated log (ADR 0011, phase 2): the pure,
//! self-contained pieces a core needs to take part in a replication group.
//! Nothing here does I/O or touches the single-node `prepare`/`commit` path;
//! the core API (`propose`, `accept`, `persisted`, `on_acks`, …) is built on
//! top of these later.
//!
//! ```text
//! entry = "CVLE" | 2 | group[16] | epoch u64 | index u64 | prev_mac[32] | leader u8
//!         | kind u8 | range_lo u16 | range_hi u16 | root[32] | body_hash[32]
//!         | genesis only: n u8 | node[n]                          (139 B + genesis tail)
//! mac   = HMAC-SHA256(log_key, "coffer/v1/log-entry" || realm_id || entry)
//! ack   = node u8 | group[16] | epoch u64 | entry_epoch u64 | index u64 | entry_mac[32]
//!         | HMAC-SHA256(ack_key, "coffer/v1/ack" || realm_id || the above)   (105 B)
//! cert  = n u8 | ack[105]*n                                       (1..=MAX_MEMBERS acks)
//! slot  = group[16] | state u8 | promised u64 | last_epoch u64 | index u64 | mac[32]  (73 B)
//! nvram = "CVNV" | 2 | realm_id[16] | node u8 | n u8 | slot*n                (23 B + 73 B·n)
//! ```
//! All integers are big-endian, as in the v1 anchor.
//!
//! **Epochs (ADR 0012).** An epoch is `counter << 8 | node`: the low byte
//! names the one node whose core may lead it, so two leaders never share an
//! epoch. Genesis has epoch 0; every other entry's epoch has a counter ≥ 1
//! and its low byte equals the entry's `leader`. A slot holds the highest
//! epoch it promised (`promised`, P) and the epoch, index and MAC of its last
//! entry (`last_epoch` L, `index` k, `mac` h); `(L, k)` only ever grows
//! (lexicographically), and P never decreases. An ack is a MAC'd snapshot
//! of a slot, `(P, L, k, h)`: it acks the entry `(L, k, h)` under promise P,
//! and it doubles as the vote for epoch P. Only acks with `P == L` (the
//! entry's own epoch) count towards a commit or go into a certificate.
//!
//! Choices where ADR 0011 leaves room (decided here, to be kept or revisited):
//!
//! - **Kind codes:** 1 genesis, 2 leader, 3 batch; 4 `prepare_in`,
//!   5 `transfer_out`, 6 `transfer_in`, 7 `complete`, 8 `retire` are
//!   reserved and decode to [`LogError::NotYetSupported`] (their transfer
//!   state has no layout yet); anything else is [`LogError::UnknownKind`].
//! - **Genesis** is the only kind with a tail: its member list, 1 to
//!   [`MAX_MEMBERS`] distinct node ids in strictly ascending order (so the
//!   encoding is canonical), and its `leader` must be one of them. It sits
//!   at index 1 with `prev_mac` all zero. A fresh slot is `(0, zero MAC)`,
//!   so a genesis entry is accepted as an ordinary chain step from it.
//! - **Empty bodies:** `genesis` and `leader` entries must carry
//!   `body_hash = SHA-256(0u32)`, the hash of a body with no records
//!   ([`empty_body_hash`]). Only `batch` entries carry records.
//! - **Strict decoding** everywhere: exact lengths, known magic, version,
//!   kinds and slot states, `range_lo <= range_hi`, index ≥ 1 for entries
//!   and acks (≥ 2 for non-genesis entries), epochs as above (genesis 0;
//!   otherwise counter ≥ 1 and low byte = `leader`), an ack's entry epoch at
//!   most its promise, no trailing bytes. Every
//!   decoded value re-encodes to the same bytes, so a bit flip in an
//!   encoding is either refused or changes what the MAC covers.
//! - **Certificates:** every ack must verify and name the same
//!   (group, epoch, entry_epoch, index, entry_mac) with `epoch ==
//!   entry_epoch`, or the whole certificate is refused; acks
//!   from non-members and repeated acks from one node are carried but not
//!   counted. A strict majority of the members must remain.
//! - **Leader membership:** the accept rule also refuses a non-genesis entry
//!   whose `leader` is not a member of the group (only a core can MAC an
//!   entry, so this is defence in depth, not a protocol rule).
//! - **Slot states:** 1 member, 2 retired (the tombstone of ADR 0011's
//!   membership change; nothing in this module retires a slot yet). A slot
//!   at index 0 must hold the zero MAC and last epoch 0; a slot's last epoch
//!   never exceeds its promise.
//! - **Segments** ([`GroupSlot::check_segment`]): a member replaces its
//!   uncommitted suffix only when shown its own suffix (MAC'd, chained, ending
//!   at its slot) and a leader's segment from the same point whose last
//!   epoch is at least its promise and strictly above its last entry's
//!   epoch. A segment is checked and applied as one unit.
//! - **Elections** ([`GroupSlot::start_election`], [`Candidate::elect`]):
//!   a vote is an [`Ack`] whose promise is the candidate's epoch; it counts
//!   if the voter's last `(epoch, index)` is no newer than the candidate's.
//!   The candidacy is volatile and consumed, so an epoch is led at most once.
//! - **The MAC comparisons** (`prev_mac` against the slot, certificate and
//!   ack triples) are constant-time via `subtle` even though MACs are
//!   public; MAC verification uses `ring::hmac::verify`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ring::hmac;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A replication group's id.
pub type GroupId = [u8; 16];
/// A node's id within the realm.
pub type NodeId = u8;

/// Entry magic.
pub const ENTRY_MAGIC: &[u8; 4] = b"CVLE";
/// Entry format version (2: with the epoch, ADR 0012).
pub const ENTRY_VERSION: u8 = 2;
/// Length of an entry without a genesis tail.
pub const ENTRY_HEADER_LEN: usize = 4 + 1 + 16 + 8 + 8 + 32 + 1 + 1 + 2 + 2 + 32 + 32;
/// Most members a group can have (Juicebox's `CONFIGURATION_LIMIT`).
pub const MAX_MEMBERS: usize = 9;
/// Length of an encoded ack (with its MAC).
pub const ACK_LEN: usize = 1 + 16 + 8 + 8 + 8 + 32 + 32;
/// Length of an encoded NVRAM group slot.
pub const SLOT_LEN: usize = 16 + 1 + 8 + 8 + 8 + 32;
/// Most groups one node's NVRAM holds (Juicebox's `GROUPS_LIMIT`).
pub const MAX_GROUPS: usize = 16;
/// NVRAM v2 magic (shared with v1; the version byte tells them apart).
pub const NVRAM_MAGIC: &[u8; 4] = b"CVNV";
/// NVRAM format version of the replicated realm.
pub const NVRAM_VERSION: u8 = 2;
/// Length of the NVRAM v2 header.
pub const NVRAM_HEADER_LEN: usize = 4 + 1 + 16 + 1 + 1;
/// Longest NVRAM v2 contents (1,191 bytes).
pub const NVRAM_MAX_LEN: usize = NVRAM_HEADER_LEN + MAX_GROUPS * SLOT_LEN;

const ENTRY_DOMAIN: &[u8] = b"coffer/v1/log-entry";
const ACK_DOMAIN: &[u8] = b"coffer/v1/ack";

/// The node allowed to lead `epoch` (its low byte).
pub fn epoch_node(epoch: u64) -> NodeId {
    (epoch & 0xff) as NodeId
}

/// The smallest epoch led by `node` that is strictly above `above`, or
/// `None` when the counter is exhausted.
pub fn next_epoch(above: u64, node: NodeId) -> Option<u64> {
    let counter = (above >> 8).checked_add(1)?;
    if counter >> 56 != 0 {
        return None;
    }
    Some(counter << 8 | u64::from(node))
}

/// Why bytes do not decode as a log structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Too short.
    #[error("truncated")]
    Truncated,
    /// Longer than the structure.
    #[error("trailing bytes")]
    TrailingBytes,
    /// Not the expected magic.
    #[error("bad magic")]
    BadMagic,
    /// A version this core does not read.
    #[error("unsupported version {0}")]
    Version(u8),
    /// An entry kind that does not exist.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// A reserved entry kind (transfers, retire): not yet supported.
    #[error("entry kind {0} is not yet supported")]
    NotYetSupported(u8),
    /// Well-framed but violates a rule of the format.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// A MAC (of an entry or an ack). Public data; compared in constant time anyway.
#[derive(Clone, Copy)]
pub struct Mac(pub [u8; 32]);

impl Mac {
    /// The all-zero MAC: `prev_mac` of a genesis entry, the MAC of a fresh slot.
    pub const ZERO: Mac = Mac([0; 32]);

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn is_zero(&self) -> bool {
        bool::from(self.0.ct_eq(&[0u8; 32]))
    }
}

impl PartialEq for Mac {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}
impl Eq for Mac {}

impl std::fmt::Debug for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mac(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The key entry MACs are made with (`coffer/v1/vault/log-mac`).
#[derive(Clone)]
pub struct LogKey(hmac::Key);

/// The key ack MACs are made with (`coffer/v1/vault/ack-mac`).
#[derive(Clone)]
pub struct AckKey(hmac::Key);

impl LogKey {
    /// A key from 32 bytes (the core derives it: [`crate::RealmSecrets::log_key`]).
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }
}

impl AckKey {
    /// A key from 32 bytes (the core derives it: [`crate::RealmSecrets::ack_key`]).
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogKey(REDACTED)")
    }
}

impl std::fmt::Debug for AckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckKey(REDACTED)")
    }
}

fn sign(key: &hmac::Key, domain: &[u8], realm_id: &[u8; 16], data: &[u8]) -> Mac {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(domain);
    ctx.update(realm_id);
    ctx.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    Mac(out)
}

fn verify(key: &hmac::Key, domain: &[u8], realm_id: &[u8; 16], data: &[u8], mac: &Mac) -> bool {
    let mut input = Vec::with_capacity(domain.len() + 16 + data.len());
    input.extend_from_slice(domain);
    input.extend_from_slice(realm_id);
    input.extend_from_slice(data);
    hmac::verify(key, &input, &mac.0).is_ok()
}

/// `SHA-256(body)`, the `body_hash` of an entry.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The hash of a body with no records (`n = 0`): genesis and leader entries.
pub fn empty_body_hash() -> [u8; 32] {
    body_hash(&0u32.to_be_bytes())
}

/// A group's members: 1 to [`MAX_MEMBERS`] distinct node ids, kept sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(Vec<NodeId>);

impl Members {
    /// Members from node ids in any order; refuses none, too many or repeats.
    pub fn new(nodes: &[NodeId]) -> Result<Self, LogError> {
        let mut v = nodes.to_vec();
        v.sort_unstable();
        Self::from_sorted(v)
    }

    fn from_sorted(v: Vec<NodeId>) -> Result<Self, LogError> {
        if v.is_empty() || v.len() > MAX_MEMBERS {
            return Err(LogError::Malformed("a group has 1 to 9 members"));
        }
        if v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(LogError::Malformed(
                "members must be distinct and in ascending order",
            ));
        }
        Ok(Self(v))
    }

    /// The node ids, ascending.
    pub fn nodes(&self) -> &[NodeId] {
        &self.0
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a group has at least one member); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.0.binary_search(&node).is_ok()
    }

    /// A strict majority: `n / 2 + 1`.
    pub fn majority(&self) -> usize {
        self.0.len() / 2 + 1
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A group's first entry (index 1): its members, fixed for its life.
    Genesis {
        /// The members.
        members: Members,
    },
    /// A new leader's first entry (empty body).
    Leader,
    /// A batch of record changes.
    Batch,
}

impl EntryKind {
    /// The kind's code on the wire.
    pub fn code(&self) -> u8 {
        match self {
            EntryKind::Genesis { .. } => 1,
            EntryKind::Leader => 2,
            EntryKind::Batch => 3,
        }
    }
}

/// A log entry: the MAC'd roll-forward record of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The group.
    pub group: GroupId,
    /// The epoch of the leader that proposed it (0 for genesis; ADR 0012).
    pub epoch: u64,
    /// Position in the group's log (genesis is 1).
    pub index: u64,
    /// MAC of the entry at `index - 1` (zero for genesis).
    pub prev_mac: Mac,
    /// The node whose core proposed it.
    pub leader: NodeId,
    /// What it is.
    pub kind: EntryKind,
    /// Lowest bucket the group owns.
    pub range_lo: u16,
    /// Highest bucket the group owns.
    pub range_hi: u16,
    /// Root of the group's tree after the entry.
    pub root: [u8; 32],
    /// `SHA-256(body)`.
    pub body_hash: [u8; 32],
}

/// Reads a byte string front to back; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        if self.0.len() < n {
            return Err(LogError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LogError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, LogError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, LogError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, LogError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn mac(&mut self) -> Result<Mac, LogError> {
        Ok(Mac(self.array()?))
    }
    fn finish(self) -> Result<(), LogError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(LogError::TrailingBytes)
        }
    }
}

impl Entry {
    /// The entry's bytes (what the MAC covers).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + 1 + MAX_MEMBERS);
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.group);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.prev_mac.0);
        out.push(self.leader);
        out.push(self.kind.code());
        out.extend_from_slice(&self.range_lo.to_be_bytes());
        out.extend_from_slice(&self.range_hi.to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.body_hash);
        if let EntryKind::Genesis { members } = &self.kind {
            // At most MAX_MEMBERS (9), so the count fits a byte.
            out.push(members.len() as u8);
            out.extend_from_slice(members.nodes());
        }
        out
    }

    /// Parses untrusted bytes strictly (see the module docs); never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        let mut r = Reader(bytes);
        if r.take(4)? != ENTRY_MAGIC {
            return Err(LogError::BadMagic);
        }
        let version = r.u8()?;
        if version != ENTRY_VERSION {
            return Err(LogError::Version(version));
        }
        let group = r.array()?;
        let epoch = r.u64()?;
        let index = r.u64()?;
        let prev_mac = r.mac()?;
        let leader = r.u8()?;
        let code = r.u8()?;
        let range_lo = r.u16()?;
        let range_hi = r.u16()?;
        let root = r.array()?;
        let body_hash = r.array()?;
        let kind = match code {
            1 => {
                let n = usize::from(r.u8()?);
                let members = Members::from_sorted(r.take(n)?.to_vec())?;
                EntryKind::Genesis { members }
            }
            2 => EntryKind::Leader,
            3 => EntryKind::Batch,
            4..=8 => return Err(LogError::NotYetSupported(code)),
            _ => return Err(LogError::UnknownKind(code)),
        };
        r.finish()?;
        let entry = Self {
            group,
            epoch,
            index,
            prev_mac,
            leader,
            kind,
            range_lo,
            range_hi,
            root,
            body_hash,
        };
        entry.validate()?;
        Ok(entry)
    }

    /// The format's rules beyond framing (what `decode` enforces; `encode`
    /// does not, so a builder can call this).
    pub fn validate(&self) -> Result<(), LogError> {
        if self.range_lo > self.range_hi {
            return Err(LogError::Malformed("range_lo > range_hi"));
        }
        match &self.kind {
            EntryKind::Genesis { members } => {
                if self.index != 1 {
                    return Err(LogError::Malformed("genesis must be at index 1"));
                }
                if !self.prev_mac.is_zero() {
                    return Err(LogError::Malformed("genesis prev_mac must be zero"));
                }
                if !members.contains(self.leader) {
                    return Err(LogError::Malformed("genesis leader is not a member"));
                }
                if self.epoch != 0 {
                    return Err(LogError::Malformed("genesis has epoch 0"));
                }
            }
            EntryKind::Leader | EntryKind::Batch => {
                if self.index < 2 {
                    return Err(LogError::Malformed("only genesis sits at index 1"));
                }
                if self.epoch >> 8 == 0 || epoch_node(self.epoch) != self.leader {
                    return Err(LogError::Malformed(
                        "an entry's epoch is counter << 8 | leader, counter >= 1",
                    ));
                }
            }
        }
        if matches!(self.kind, EntryKind::Genesis { .. } | EntryKind::Leader)
            && !bool::from(self.body_hash.ct_eq(&empty_body_hash()))
        {
            return Err(LogError::Malformed(
                "genesis and leader entries have an empty body",
            ));
        }
        Ok(())
    }

    /// `HMAC-SHA256(log_key, "coffer/v1/log-entry" || realm_id || entry)`.
    pub fn mac(&self, key: &LogKey, realm_id: &[u8; 16]) -> Mac {
        sign(&key.0, ENTRY_DOMAIN, realm_id, &self.encode())
    }

    /// Whether `mac` is this entry's MAC (constant-time).
    pub fn verify_mac(&self, key: &LogKey, realm_id: &[u8; 16], mac: &Mac) -> bool {
        verify(&key.0, ENTRY_DOMAIN, realm_id, &self.encode(), mac)
    }
}

/// A member core's MAC'd snapshot of its group slot (ADR 0012): "under
/// promise `epoch` I durably hold the entry `(entry_epoch, index,
/// entry_mac)` as my last one". It acks that entry (and, by the MAC chain,
/// its whole prefix) and doubles as the vote for `epoch`. Only an ack with
/// `epoch == entry_epoch` counts towards a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The acking node.
    pub node: NodeId,
    /// The group.
    pub group: GroupId,
    /// The node's promised epoch when it signed.
    pub epoch: u64,
    /// The acked entry's epoch.
    pub entry_epoch: u64,
    /// The entry's index.
    pub index: u64,
    /// The entry's MAC.
    pub entry_mac: Mac,
    /// The ack's own MAC.
    pub mac: Mac,
}

fn ack_body(
    node: NodeId,
    group: &GroupId,
    epoch: u64,
    entry_epoch: u64,
    index: u64,
    entry_mac: &Mac,
) -> [u8; ACK_LEN - 32] {
    let mut b = [0u8; ACK_LEN - 32];
    b[0] = node;
    b[1..17].copy_from_slice(group);
    b[17..25].copy_from_slice(&epoch.to_be_bytes());
    b[25..33].copy_from_slice(&entry_epoch.to_be_bytes());
    b[33..41].copy_from_slice(&index.to_be_bytes());
    b[41..73].copy_from_slice(&entry_mac.0);
    b
}

impl Ack {
    /// Makes an ack (the core does this in `persisted`, after NVRAM).
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &AckKey,
        realm_id: &[u8; 16],
        node: NodeId,
        group: GroupId,
        epoch: u64,
        entry_epoch: u64,
        index: u64,
        entry_mac: Mac,
    ) -> Self {
        let mac = sign(
            &key.0,
            ACK_DOMAIN,
            realm_id,
            &ack_body(node, &group, epoch, entry_epoch, index, &entry_mac),
        );
        Self {
            node,
            group,
            epoch,
            entry_epoch,
            index,
            entry_mac,
            mac,
        }
    }

    /// The ack of a slot as it stands (after its NVRAM write).
    pub fn of_slot(key: &AckKey, realm_id: &[u8; 16], node: NodeId, slot: &GroupSlot) -> Self {
        Self::sign(
            key,
            realm_id,
            node,
            slot.group,
            slot.promised,
            slot.last_epoch,
            slot.index,
            slot.mac,
        )
    }

    /// Whether the ack's MAC is valid (constant-time).
    pub fn verify(&self, key: &AckKey, realm_id: &[u8; 16]) -> bool {
        verify(&key.0, ACK_DOMAIN, realm_id, &self.body(), &self.mac)
    }

    fn body(&self) -> [u8; ACK_LEN - 32] {
        ack_body(
            self.node,
            &self.group,
            self.epoch,
            self.entry_epoch,
            self.index,
            &self.entry_mac,
        )
    }

    fn same_point(&self, other: &Ack) -> bool {
        bool::from(self.group.ct_eq(&other.group))
            && self.epoch == other.epoch
            && self.entry_epoch == other.entry_epoch
            && self.index == other.index
            && self.entry_mac == other.entry_mac
    }

    /// The ack's bytes.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut out = [0u8; ACK_LEN];
        out[..ACK_LEN - 32].copy_from_slice(&self.body());
        out[ACK_LEN - 32..].copy_from_slice(&self.mac.0);
        out
    }

    /// Parses untrusted bytes: exactly [`ACK_LEN`] bytes, index ≥ 1,
    /// `entry_epoch <= epoch`. Does not check the MAC ([`Ack::verify`] does).
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        let mut r = Reader(bytes);
        let ack = Self::read(&mut r)?;
        r.finish()?;
        Ok(ack)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, LogError> {
        let node = r.u8()?;
        let group = r.array()?;
        let epoch = r.u64()?;
        let entry_epoch = r.u64()?;
        let index = r.u64()?;
        let entry_mac = r.mac()?;
        let mac = r.mac()?;
        if index == 0 {
            return Err(LogError::Malformed("ack for index 0"));
        }
        if entry_epoch > epoch {
            return Err(LogError::Malformed("ack entry epoch above its promise"));
        }
        Ok(Self {
            node,
            group,
            epoch,
            entry_epoch,
            index,
            entry_mac,
            mac,
        })
    }
}

/// Why a certificate does not prove a commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// No acks at all.
    #[error("empty certificate")]
    Empty,
    /// Acks for different (group, epoch, entry_epoch, index, entry_mac) points.
    #[error("acks for different entries")]
    Mixed,
    /// Acks made under a later promise than the entry's epoch: they prove
    /// the entry is held, not that it committed (Raft's "figure 8").
    #[error("acks under epoch {epoch} for an entry of epoch {entry_epoch}")]
    OldEpoch {
        /// The acks' promised epoch.
        epoch: u64,
        /// The entry's epoch.
        entry_epoch: u64,
    },
    /// An ack whose MAC does not verify.
    #[error("ack from node {node} has a bad MAC")]
    BadAckMac {
        /// The node it claims to come from.
        node: NodeId,
    },
    /// Valid, but for another entry than the one it was offered with.
    #[error("certificate for another entry")]
    OtherEntry,
    /// Too few distinct members acked.
    #[error("{have} distinct member acks, {need} needed")]
    NoMajority {
        /// Distinct members with a valid ack.
        have: usize,
        /// A strict majority.
        need: usize,
    },
}

/// A commit certificate: acks from a strict majority of the group's members
/// for one (group, epoch, index, entry_mac), each made under a promise of
/// exactly the entry's epoch (ADR 0012: only current-epoch acks commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The acks.
    pub acks: Vec<Ack>,
}

impl Certificate {
    /// A certificate from acks.
    pub fn new(acks: Vec<Ack>) -> Self {
        Self { acks }
    }

    /// Checks the certificate and returns the (group, epoch, index,
    /// entry_mac) it proves committed: every ack verifies and names the same
    /// point, made under a promise equal to the entry's epoch, and at least
    /// `members.majority()` distinct members acked. Acks from non-members
    /// and repeats from one node are not counted.
    pub fn verify(
        &self,
        members: &Members,
        key: &AckKey,
        realm_id: &[u8; 16],
    ) -> Result<(GroupId, u64, u64, Mac), CertError> {
        let first = self.acks.first().ok_or(CertError::Empty)?;
        let (group, epoch, index, entry_mac) =
            (first.group, first.entry_epoch, first.index, first.entry_mac);
        if first.epoch != first.entry_epoch {
            return Err(CertError::OldEpoch {
                epoch: first.epoch,
                entry_epoch: first.entry_epoch,
            });
        }
        let mut counted = BTreeSet::new();
        for ack in &self.acks {
            if !ack.same_point(first) {
                return Err(CertError::Mixed);
            }
            if !ack.verify(key, realm_id) {
                return Err(CertError::BadAckMac { node: ack.node });
            }
            if members.contains(ack.node) {
                counted.insert(ack.node);
            }
        }
        let need = members.majority();
        if counted.len() < need {
            return Err(CertError::NoMajority {
                have: counted.len(),
                need,
            });
        }
        Ok((group, epoch, index, entry_mac))
    }

    /// [`Certificate::verify`], and that it is for exactly this entry.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_for(
        &self,
        members: &Members,
        key: &AckKey,
        realm_id: &[u8; 16],
        group: &GroupId,
        epoch: u64,
        index: u64,
        entry_mac: &Mac,
    ) -> Result<(), CertError> {
        let (g, e, i, m) = self.verify(members, key, realm_id)?;
        if !bool::from(g.ct_eq(group)) || e != epoch || i != index || m != *entry_mac {
            return Err(CertError::OtherEntry);
        }
        Ok(())
    }

    /// The certificate's bytes (`n u8 | ack*n`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.acks.len() * ACK_LEN);
        // Certificates hold at most MAX_MEMBERS acks when decoded; one built
        // by hand with more is truncated at 255 and will not decode.
        out.push(self.acks.len().min(255) as u8);
        for ack in self.acks.iter().take(255) {
            out.extend_from_slice(&ack.encode());
        }
        out
    }

    /// Parses untrusted bytes: 1 to [`MAX_MEMBERS`] acks, all for one triple,
    /// nothing after. Does not check MACs or majority ([`Certificate::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        let mut r = Reader(bytes);
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_MEMBERS {
            return Err(LogError::Malformed("a certificate holds 1 to 9 acks"));
        }
        let mut acks = Vec::with_capacity(n);
        for _ in 0..n {
            acks.push(Ack::read(&mut r)?);
        }
        r.finish()?;
        if let Some(first) = acks.first() {
            if acks.iter().any(|a| !a.same_point(first)) {
                return Err(LogError::Malformed(
                    "certificate acks for different entries",
                ));
            }
        }
        Ok(Self { acks })
    }
}

/// The state of a group slot in NVRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// A member: accepts and acks entries.
    Member,
    /// A tombstone: the group retired (or this node left); accepts nothing, ever.
    Retired,
}

impl SlotState {
    fn code(self) -> u8 {
        match self {
            SlotState::Member => 1,
            SlotState::Retired => 2,
        }
    }
}

/// Why a slot refuses an entry. None of these leave the slot changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The slot is a tombstone.
    #[error("the group is retired on this node")]
    Retired,
    /// The entry is for another group.
    #[error("entry for another group")]
    WrongGroup,
    /// The entry's MAC does not verify.
    #[error("entry MAC does not verify")]
    BadMac,
    /// A non-genesis entry from a node that is not a member.
    #[error("entry leader {0} is not a member")]
    LeaderNotMember(NodeId),
    /// The entry this slot already holds (acked once; never again).
    #[error("replay of entry {index}")]
    Replay {
        /// Its index.
        index: u64,
    },
    /// A different entry at the index this slot holds: acking it would be a double ack.
    #[error("conflicting entry at held index {index}")]
    Conflict {
        /// Its index.
        index: u64,
    },
    /// An entry below the slot's index.
    #[error("entry {index} is below the held index {held}")]
    Stale {
        /// The entry's index.
        index: u64,
        /// The slot's index.
        held: u64,
    },
    /// The next index, but not chaining from the held MAC (a fork or a forged
    /// `prev_mac`), and no certificate.
    #[error("entry {index} does not chain from the held entry")]
    BrokenChain {
        /// The entry's index.
        index: u64,
    },
    /// An index past the next one without a certificate.
    #[error("entry {index} skips ahead of {held} without a certificate")]
    Gap {
        /// The entry's index.
        index: u64,
        /// The slot's index.
        held: u64,
    },
    /// A jump whose certificate does not hold.
    #[error("certificate: {0}")]
    BadCertificate(CertError),
    /// An entry (or a segment's last entry) of an epoch below the promise.
    #[error("epoch {epoch} is below the promised epoch {promised}")]
    StaleEpoch {
        /// The entry's (segment's) epoch.
        epoch: u64,
        /// The slot's promised epoch.
        promised: u64,
    },
    /// An entry whose epoch is below the epoch of the entry it follows, or
    /// a jump or replacement that would not move `(last epoch, index)` up.
    #[error("epoch {epoch} goes back from {last}")]
    EpochRegress {
        /// The entry's epoch.
        epoch: u64,
        /// The slot's last entry epoch.
        last: u64,
    },
    /// A segment (or the proof of this slot's own suffix) that is empty,
    /// not consecutive, not chained, or not ending where it must.
    #[error("malformed segment: {0}")]
    BadSegment(&'static str),
    /// A segment that conflicts with this slot's log but whose epoch is not
    /// strictly above every entry it would replace.
    #[error("replacing entries of epoch {last} needs a higher epoch than {epoch}")]
    NoReplace {
        /// The segment's epoch.
        epoch: u64,
        /// The slot's last entry epoch.
        last: u64,
    },
    /// The epoch counter is exhausted.
    #[error("no epoch left")]
    EpochExhausted,
}

/// How a slot accepted an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// `index == k + 1`, `prev_mac == h`, epoch ≥ P and ≥ L.
    ChainStep,
    /// A certified entry with `(epoch, index) > (L, k)`.
    Jump {
        /// The slot's index before the jump.
        from: u64,
    },
    /// A segment: the host keeps its log up to `keep` and appends the
    /// segment's entries after it. `keep < k` replaces (truncates) this
    /// slot's entries `keep+1..=k` (ADR 0012); `keep == k` extends.
    Segment {
        /// The last index kept.
        keep: u64,
    },
}

/// What the accept rule needs besides the slot: the realm's keys and the
/// group's members (from its genesis entry; for the genesis itself they are
/// not used).
#[derive(Debug, Clone, Copy)]
pub struct GroupContext<'a> {
    /// The realm id.
    pub realm_id: &'a [u8; 16],
    /// The entry MAC key.
    pub log_key: &'a LogKey,
    /// The ack MAC key.
    pub ack_key: &'a AckKey,
    /// The group's members.
    pub members: &'a Members,
}

/// One group's NVRAM slot: the highest epoch this core promised, and the
/// epoch, index and MAC of the last entry it accepted in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSlot {
    /// The group.
    pub group: GroupId,
    /// Member or tombstone.
    pub state: SlotState,
    /// The highest epoch this core promised (voted for or accepted).
    pub promised: u64,
    /// The epoch of the last accepted entry (at most `promised`).
    pub last_epoch: u64,
    /// Index of the last accepted entry (0: none yet).
    pub index: u64,
    /// Its MAC (zero when `index` is 0).
    pub mac: Mac,
}

impl GroupSlot {
    /// A fresh member slot, before the group's genesis: `(0, zero)`.
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            state: SlotState::Member,
            promised: 0,
            last_epoch: 0,
            index: 0,
            mac: Mac::ZERO,
        }
    }

    /// The slot's bytes.
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        out[..16].copy_from_slice(&self.group);
        out[16] = self.state.code();
        out[17..25].copy_from_slice(&self.promised.to_be_bytes());
        out[25..33].copy_from_slice(&self.last_epoch.to_be_bytes());
        out[33..41].copy_from_slice(&self.index.to_be_bytes());
        out[41..].copy_from_slice(&self.mac.0);
        out
    }

    /// Parses exactly [`SLOT_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        let mut r = Reader(bytes);
        let slot = Self::read(&mut r)?;
        r.finish()?;
        Ok(slot)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, LogError> {
        let group = r.array()?;
        let state = match r.u8()? {
            1 => SlotState::Member,
            2 => SlotState::Retired,
            _ => return Err(LogError::Malformed("unknown slot state")),
        };
        let promised = r.u64()?;
        let last_epoch = r.u64()?;
        let index = r.u64()?;
        let mac = r.mac()?;
        if index == 0 && (!mac.is_zero() || last_epoch != 0) {
            return Err(LogError::Malformed(
                "a slot at index 0 holds the zero MAC and epoch 0",
            ));
        }
        if last_epoch > promised {
            return Err(LogError::Malformed(
                "a slot's last epoch exceeds its promise",
            ));
        }
        Ok(Self {
            group,
            state,
            promised,
            last_epoch,
            index,
            mac,
        })
    }

    /// The accept rule for one entry (ADR 0011, with ADR 0012's epochs): the
    /// entry's MAC verifies, it is for this group, and either (a) chain
    /// step: `index == k + 1`, `prev_mac == h`, `epoch >= P` and
    /// `epoch >= L`; or (b) certified jump: a commit certificate for exactly
    /// this (group, epoch, index, mac) and `(epoch, index) > (L, k)`. The
    /// certificate is only consulted when (a) does not hold. Does not change
    /// the slot. Replacing entries takes [`GroupSlot::check_segment`].
    pub fn check(
        &self,
        ctx: &GroupContext<'_>,
        entry: &Entry,
        mac: &Mac,
        cert: Option<&Certificate>,
    ) -> Result<Accept, Reject> {
        self.check_entry(ctx, entry, mac)?;
        let next = self.index.checked_add(1) == Some(entry.index);
        let chains = next && entry.prev_mac == self.mac;
        let epoch_err = if entry.epoch < self.promised {
            Some(Reject::StaleEpoch {
                epoch: entry.epoch,
                promised: self.promised,
            })
        } else if entry.epoch < self.last_epoch {
            Some(Reject::EpochRegress {
                epoch: entry.epoch,
                last: self.last_epoch,
            })
        } else {
            None
        };
        if chains && epoch_err.is_none() {
            return Ok(Accept::ChainStep);
        }
        let Some(c) = cert else {
            if chains {
                if let Some(e) = epoch_err {
                    return Err(e);
                }
            }
            self.order(entry.index, mac)?;
            return Err(if next {
                Reject::BrokenChain { index: entry.index }
            } else {
                Reject::Gap {
                    index: entry.index,
                    held: self.index,
                }
            });
        };
        c.verify_for(
            ctx.members,
            ctx.ack_key,
            ctx.realm_id,
            &entry.group,
            entry.epoch,
            entry.index,
            mac,
        )
        .map_err(Reject::BadCertificate)?;
        self.newer(entry, mac)?;
        Ok(Accept::Jump { from: self.index })
    }

    /// State, group, MAC and leader membership.
    fn check_entry(&self, ctx: &GroupContext<'_>, entry: &Entry, mac: &Mac) -> Result<(), Reject> {
        if self.state == SlotState::Retired {
            return Err(Reject::Retired);
        }
        if !bool::from(entry.group.ct_eq(&self.group)) {
            return Err(Reject::WrongGroup);
        }
        if !entry.verify_mac(ctx.log_key, ctx.realm_id, mac) {
            return Err(Reject::BadMac);
        }
        if !matches!(entry.kind, EntryKind::Genesis { .. }) && !ctx.members.contains(entry.leader) {
            return Err(Reject::LeaderNotMember(entry.leader));
        }
        Ok(())
    }

    /// The segment rule (ADR 0012, Raft's AppendEntries with proof): `seg`
    /// is a leader's entries `d+1..=m`, and `own` is this slot's own entries
    /// `d+1..=k` as the host holds them (empty when `d == k`). Both must be
    /// MAC-verified, consecutive and chained; `own` must end at `(L, k, h)`
    /// and `seg` must start from the MAC `own` starts from (or `h`). With
    /// `E` the segment's last epoch, `E >= P` is required; then either the
    /// segment agrees with `own` where they overlap and goes past `k`
    /// (extension, first new entry's epoch ≥ L), or it differs at some index
    /// `c` and `E > L` (replacement of the uncommitted suffix `c..=k`: every
    /// replaced entry has an epoch ≤ L < E). Does not change the slot; the
    /// host keeps its log up to the returned `keep` and appends the rest of
    /// the segment, then [`GroupSlot::advance`] takes the segment's last
    /// entry.
    pub fn check_segment(
        &self,
        ctx: &GroupContext<'_>,
        own: &[(Entry, Mac)],
        seg: &[(Entry, Mac)],
    ) -> Result<Accept, Reject> {
        let (first, _) = seg.first().ok_or(Reject::BadSegment("empty segment"))?;
        let d = first
            .index
            .checked_sub(1)
            .ok_or(Reject::BadSegment("segment at index 0"))?;
        if d > self.index {
            return Err(Reject::Gap {
                index: first.index,
                held: self.index,
            });
        }
        if own.len() as u64 != self.index - d {
            return Err(Reject::BadSegment("own suffix does not cover d+1..=k"));
        }
        // The MAC this slot holds at d: own[0].prev_mac, or h when d == k.
        let start_mac = chain_ok(ctx, self, own, d)?;
        if let Some((last, lm)) = own.last() {
            if last.index != self.index || *lm != self.mac || last.epoch != self.last_epoch {
                return Err(Reject::BadSegment("own suffix does not end at the slot"));
            }
        }
        let seg_base = chain_ok(ctx, self, seg, d)?;
        if seg_base != start_mac {
            return Err(Reject::BrokenChain { index: first.index });
        }
        let (top, _) = seg.last().ok_or(Reject::BadSegment("empty segment"))?;
        if top.epoch < self.promised {
            return Err(Reject::StaleEpoch {
                epoch: top.epoch,
                promised: self.promised,
            });
        }
        let conflict = own
            .iter()
            .zip(seg.iter())
            .position(|((_, a), (_, b))| a != b);
        match conflict {
            None => {
                if top.index <= self.index {
                    return Err(Reject::Replay { index: top.index });
                }
                // The first entry past k must not go back in epoch.
                let past = usize::try_from(self.index - d)
                    .ok()
                    .and_then(|i| seg.get(i))
                    .ok_or(Reject::BadSegment("segment index overflow"))?;
                if past.0.epoch < self.last_epoch {
                    return Err(Reject::EpochRegress {
                        epoch: past.0.epoch,
                        last: self.last_epoch,
                    });
                }
                Ok(Accept::Segment { keep: self.index })
            }
            Some(c) => {
                if top.epoch <= self.last_epoch {
                    return Err(Reject::NoReplace {
                        epoch: top.epoch,
                        last: self.last_epoch,
                    });
                }
                Ok(Accept::Segment { keep: d + c as u64 })
            }
        }
    }

    /// Refuses an index at or below the slot's.
    fn order(&self, index: u64, mac: &Mac) -> Result<(), Reject> {
        if index < self.index {
            Err(Reject::Stale {
                index,
                held: self.index,
            })
        } else if index == self.index {
            if *mac == self.mac {
                Err(Reject::Replay { index })
            } else {
                Err(Reject::Conflict { index })
            }
        } else {
            Ok(())
        }
    }

    /// Refuses an entry whose `(epoch, index)` is not above `(L, k)`.
    fn newer(&self, entry: &Entry, mac: &Mac) -> Result<(), Reject> {
        if entry.epoch < self.last_epoch {
            return Err(Reject::EpochRegress {
                epoch: entry.epoch,
                last: self.last_epoch,
            });
        }
        if entry.epoch == self.last_epoch {
            self.order(entry.index, mac)?;
        }
        Ok(())
    }

    /// Moves the slot to an entry [`GroupSlot::check`] or
    /// [`GroupSlot::check_segment`] accepted (for a segment: its last
    /// entry); the caller then writes NVRAM before any ack. Re-checks what
    /// it can without keys: the group, the state, and that
    /// `(epoch, index)` goes strictly up. Raises the promise to the entry's
    /// epoch if it is higher.
    pub fn advance(&mut self, entry: &Entry, mac: &Mac) -> Result<(), Reject> {
        if self.state == SlotState::Retired {
            return Err(Reject::Retired);
        }
        if !bool::from(entry.group.ct_eq(&self.group)) {
            return Err(Reject::WrongGroup);
        }
        self.newer(entry, mac)?;
        self.promised = self.promised.max(entry.epoch);
        self.last_epoch = entry.epoch;
        self.index = entry.index;
        self.mac = *mac;
        Ok(())
    }

    /// Promises `epoch` (a vote): refuses an epoch below the promise;
    /// promising the current one again is a no-op. The caller writes NVRAM,
    /// then signs [`Ack::of_slot`] as the vote.
    pub fn promise(&mut self, epoch: u64) -> Result<(), Reject> {
        if self.state == SlotState::Retired {
            return Err(Reject::Retired);
        }
        if epoch < self.promised {
            return Err(Reject::StaleEpoch {
                epoch,
                promised: self.promised,
            });
        }
        self.promised = epoch;
        Ok(())
    }

    /// Starts an election for this core (`node`): promises the smallest
    /// epoch led by `node` above the promise, and returns the (volatile)
    /// candidacy. The caller writes NVRAM before asking for any vote, so a
    /// restarted core never leads an epoch twice: it has lost the
    /// [`Candidate`], and its next election starts above the promise.
    pub fn start_election(&mut self, node: NodeId) -> Result<Candidate, Reject> {
        if self.state == SlotState::Retired {
            return Err(Reject::Retired);
        }
        let epoch = next_epoch(self.promised, node).ok_or(Reject::EpochExhausted)?;
        self.promised = epoch;
        Ok(Candidate {
            group: self.group,
            node,
            epoch,
        })
    }
}

/// Verifies a run of entries `d+1..` for this slot's group: MACs, leader
/// membership, consecutive indices from `d+1`, chained MACs, epochs
/// non-decreasing. Returns the MAC the run starts from (the first entry's
/// `prev_mac`; `slot.mac` for an empty run, which callers then ignore).
fn chain_ok(
    ctx: &GroupContext<'_>,
    slot: &GroupSlot,
    run: &[(Entry, Mac)],
    d: u64,
) -> Result<Mac, Reject> {
    let mut want = d;
    let mut prev: Option<(&Entry, &Mac)> = None;
    for (e, m) in run {
        slot.check_entry(ctx, e, m)?;
        want = want
            .checked_add(1)
            .ok_or(Reject::BadSegment("index overflow"))?;
        if e.index != want {
            return Err(Reject::BadSegment("not consecutive"));
        }
        if let Some((p, pm)) = prev {
            if e.prev_mac != *pm {
                return Err(Reject::BrokenChain { index: e.index });
            }
            if e.epoch < p.epoch {
                return Err(Reject::EpochRegress {
                    epoch: e.epoch,
                    last: p.epoch,
                });
            }
        }
        prev = Some((e, m));
    }
    Ok(run.first().map_or(slot.mac, |(e, _)| e.prev_mac))
}

/// Why a candidate does not become leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectError {
    /// The slot promised another epoch since (or is another group's).
    #[error("the slot no longer promises this candidate's epoch")]
    Superseded,
    /// Fewer than a majority of valid votes (the candidate counts itself).
    #[error("{have} votes, {need} needed")]
    NoMajority {
        /// Distinct members whose vote counts.
        have: usize,
        /// A strict majority.
        need: usize,
    },
}

/// A core's candidacy for one epoch (volatile; from
/// [`GroupSlot::start_election`], consumed by [`Candidate::elect`]).
#[derive(Debug)]
pub struct Candidate {
    group: GroupId,
    node: NodeId,
    epoch: u64,
}

impl Candidate {
    /// The epoch it stands for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counts votes: acks that verify, come from distinct members, are for
    /// this group, carry exactly this epoch as their promise, and report a
    /// last entry `(entry_epoch, index)` no newer than the candidate's own
    /// `(L, k)` (Raft's election restriction). The candidate counts itself.
    /// With a majority, returns the leader's [`CommitTracker`]; its first
    /// proposal is the `leader` entry of this epoch at `k + 1`. Consumes
    /// the candidacy either way: an epoch is led at most once.
    pub fn elect(
        self,
        slot: &GroupSlot,
        ctx: &GroupContext<'_>,
        votes: &[Ack],
    ) -> Result<CommitTracker, ElectError> {
        if slot.state != SlotState::Member
            || !bool::from(slot.group.ct_eq(&self.group))
            || slot.promised != self.epoch
        {
            return Err(ElectError::Superseded);
        }
        let mut counted = BTreeSet::new();
        if ctx.members.contains(self.node) {
            counted.insert(self.node);
        }
        for v in votes {
            if v.verify(ctx.ack_key, ctx.realm_id)
                && bool::from(v.group.ct_eq(&self.group))
                && ctx.members.contains(v.node)
                && v.epoch == self.epoch
                && (v.entry_epoch, v.index) <= (slot.last_epoch, slot.index)
            {
                counted.insert(v.node);
            }
        }
        let need = ctx.members.majority();
        if counted.len() < need {
            return Err(ElectError::NoMajority {
                have: counted.len(),
                need,
            });
        }
        Ok(CommitTracker::new(
            self.group,
            ctx.members.clone(),
            self.epoch,
            slot.index,
            slot.mac,
        ))
    }
}

/// A node's NVRAM in a replicated realm (version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvramV2 {
    /// The realm.
    pub realm_id: [u8; 16],
    /// This node's id.
    pub node: NodeId,
    /// One slot per group this node belongs (or belonged) to; distinct groups.
    pub slots: Vec<GroupSlot>,
}

impl NvramV2 {
    /// The NVRAM bytes (`23 + 73·n`; at most [`NVRAM_MAX_LEN`] for a valid value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(NVRAM_HEADER_LEN + self.slots.len() * SLOT_LEN);
        out.extend_from_slice(NVRAM_MAGIC);
        out.push(NVRAM_VERSION);
        out.extend_from_slice(&self.realm_id);
        out.push(self.node);
        // A valid value has at most MAX_GROUPS slots; more is truncated and will not decode.
        out.push(self.slots.len().min(255) as u8);
        for slot in self.slots.iter().take(255) {
            out.extend_from_slice(&slot.encode());
        }
        out
    }

    /// Parses NVRAM contents: magic, version 2, 1 to [`MAX_GROUPS`] slots
    /// for distinct groups, exact length.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() > NVRAM_MAX_LEN {
            return Err(LogError::TrailingBytes);
        }
        let mut r = Reader(bytes);
        if r.take(4)? != NVRAM_MAGIC {
            return Err(LogError::BadMagic);
        }
        let version = r.u8()?;
        if version != NVRAM_VERSION {
            return Err(LogError::Version(version));
        }
        let realm_id = r.array()?;
        let node = r.u8()?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_GROUPS {
            return Err(LogError::Malformed("NVRAM holds 1 to 16 group slots"));
        }
        let mut slots: Vec<GroupSlot> = Vec::with_capacity(n);
        for _ in 0..n {
            let slot = GroupSlot::read(&mut r)?;
            if slots.iter().any(|s| s.group == slot.group) {
                return Err(LogError::Malformed("two NVRAM slots for one group"));
            }
            slots.push(slot);
        }
        r.finish()?;
        Ok(Self {
            realm_id,
            node,
            slots,
        })
    }

    /// The slot of a group.
    pub fn slot(&self, group: &GroupId) -> Option<&GroupSlot> {
        self.slots.iter().find(|s| &s.group == group)
    }

    /// The slot of a group, to advance.
    pub fn slot_mut(&mut self, group: &GroupId) -> Option<&mut GroupSlot> {
        self.slots.iter_mut().find(|s| &s.group == group)
    }
}

/// Why the leader's tracker refuses an ack outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The ack's MAC does not verify.
    #[error("ack MAC does not verify")]
    BadMac,
    /// An ack for another group.
    #[error("ack for another group")]
    WrongGroup,
    /// An ack from a node that is not a member.
    #[error("ack from non-member {0}")]
    NotMember(NodeId),
}

/// What a verified ack did to the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// It raised that node's acked index on this chain; `committed` is the
    /// commit index now (0: nothing committed yet).
    Counted {
        /// The commit index.
        committed: u64,
    },
    /// The node already acked this index or a later one on this chain.
    Duplicate,
    /// Made under a promise above this leader's epoch: the node voted for
    /// (or follows) a later leader; this leader should step down.
    HigherEpoch {
        /// The ack's promised epoch.
        epoch: u64,
    },
    /// Not a current-epoch ack (its promise is older, or it acks an entry
    /// of an earlier epoch): never counted (ADR 0012's commit rule).
    OldEpoch,
    /// At or below the tracker's base (or already forgotten): says nothing
    /// about this chain.
    Stale,
    /// For an entry not on this leader's chain (another MAC at that index, or
    /// an index past the chain's end). A leader that sees one past its own
    /// index should step down (ADR 0011, "Leader failover").
    OtherChain {
        /// The ack's index.
        index: u64,
    },
}

/// Why the tracker refuses a proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// An entry for another group.
    #[error("entry for another group")]
    WrongGroup,
    /// Not the next index of the chain.
    #[error("entry {index} is not the next index {next}")]
    NotNext {
        /// Its index.
        index: u64,
        /// The expected index.
        next: u64,
    },
    /// `prev_mac` is not the chain's last MAC.
    #[error("entry does not chain from the last proposed entry")]
    BrokenChain,
    /// Not of this leader's epoch.
    #[error("entry of epoch {epoch}, leader of {leader}")]
    WrongEpoch {
        /// The entry's epoch.
        epoch: u64,
        /// The leader's.
        leader: u64,
    },
}

/// The leader's commit rule (ADR 0012, Raft's): only acks made under this
/// leader's epoch for entries of this epoch count. Entry i is committed
/// once a strict majority of members have such acks at an index ≥ i whose
/// MACs match this leader's chain there, and i is at or below that index.
/// Entries of earlier epochs (at or below the base) commit only under a
/// committed entry of this epoch. Its own ack counts like any other (feed
/// it in after its own `persisted`).
#[derive(Debug, Clone)]
pub struct CommitTracker {
    group: GroupId,
    members: Members,
    epoch: u64,
    /// Index of `chain[0]`.
    first: u64,
    /// MACs of the proposed entries from `first` on.
    chain: VecDeque<Mac>,
    /// The last proposed (or base) index and MAC.
    last: (u64, Mac),
    /// Per member: highest index acked on this chain.
    best: BTreeMap<NodeId, u64>,
    committed: u64,
}

impl CommitTracker {
    /// A tracker for the leader of `epoch` whose slot is at
    /// `(base_index, base_mac)`: its first proposal is at `base_index + 1`
    /// chaining from `base_mac`. A core gets one from [`Candidate::elect`].
    pub fn new(
        group: GroupId,
        members: Members,
        epoch: u64,
        base_index: u64,
        base_mac: Mac,
    ) -> Self {
        Self {
            group,
            members,
            epoch,
            first: base_index.saturating_add(1),
            chain: VecDeque::new(),
            last: (base_index, base_mac),
            best: BTreeMap::new(),
            committed: 0,
        }
    }

    /// Records the leader's next entry and its MAC.
    pub fn propose(&mut self, entry: &Entry, mac: Mac) -> Result<(), ProposeError> {
        if !bool::from(entry.group.ct_eq(&self.group)) {
            return Err(ProposeError::WrongGroup);
        }
        if entry.epoch != self.epoch {
            return Err(ProposeError::WrongEpoch {
                epoch: entry.epoch,
                leader: self.epoch,
            });
        }
        let next = self.last.0.saturating_add(1);
        if entry.index != next || self.last.0 == u64::MAX {
            return Err(ProposeError::NotNext {
                index: entry.index,
                next,
            });
        }
        if entry.prev_mac != self.last.1 {
            return Err(ProposeError::BrokenChain);
        }
        self.chain.push_back(mac);
        self.last = (entry.index, mac);
        Ok(())
    }

    /// The commit index (0: nothing committed by this leader yet).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The leader's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last proposed index (the base index before any proposal).
    pub fn last_index(&self) -> u64 {
        self.last.0
    }

    /// The MAC this leader proposed at `index`, if it still tracks it.
    pub fn mac_at(&self, index: u64) -> Option<Mac> {
        let off = index.checked_sub(self.first)?;
        self.chain.get(usize::try_from(off).ok()?).copied()
    }

    /// Forgets committed MACs up to `index` (at most the commit index); acks
    /// for them then count as [`AckOutcome::Stale`].
    pub fn forget_through(&mut self, index: u64) {
        let upto = index.min(self.committed);
        while self.first <= upto && self.chain.pop_front().is_some() {
            self.first = self.first.saturating_add(1);
        }
    }

    /// Takes in an ack: verifies it, then counts it if it raises its node's
    /// index on this chain.
    pub fn on_ack(
        &mut self,
        ack: &Ack,
        key: &AckKey,
        realm_id: &[u8; 16],
    ) -> Result<AckOutcome, AckError> {
        if !ack.verify(key, realm_id) {
            return Err(AckError::BadMac);
        }
        if !bool::from(ack.group.ct_eq(&self.group)) {
            return Err(AckError::WrongGroup);
        }
        if !self.members.contains(ack.node) {
            return Err(AckError::NotMember(ack.node));
        }
        if ack.epoch > self.epoch {
            return Ok(AckOutcome::HigherEpoch { epoch: ack.epoch });
        }
        if ack.epoch != self.epoch || ack.entry_epoch != self.epoch {
            return Ok(AckOutcome::OldEpoch);
        }
        if ack.index < self.first {
            return Ok(AckOutcome::Stale);
        }
        match self.mac_at(ack.index) {
            Some(m) if m == ack.entry_mac => {}
            _ => return Ok(AckOutcome::OtherChain { index: ack.index }),
        }
        let best = self.best.entry(ack.node).or_insert(0);
        if ack.index <= *best {
            return Ok(AckOutcome::Duplicate);
        }
        *best = ack.index;
        // The majority-th highest acked index among members (absent = 0).
        let mut acked: Vec<u64> = self.best.values().copied().collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = acked.get(self.members.majority() - 1).copied().unwrap_or(0);
        self.committed = self.committed.max(candidate);
        Ok(AckOutcome::Counted {
            committed: self.committed,
        })
    }
}
