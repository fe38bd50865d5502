//! A batch entry's body and the follower's transition check (ADR 0011,
//! phase 2, "Accept rule").
//!
//! ```text
//! body      = n u32 | (record_id[32] | sealed_record[SEALED_RECORD_LEN])*n
//! body_hash = SHA-256(body)                                  (log::body_hash)
//! ```
//!
//! The body lists the records a batch wrote, as the leader's core sealed
//! them. A follower's core checks the transition before it acks the entry:
//! the host supplies the buckets the body touches from this node's own
//! store; the core verifies them against its tree, puts the sealed records
//! in (insert, or replace the record with the same id), and requires the
//! recomputed root to equal the entry's root and every record's bucket to
//! lie in `[range_lo, range_hi]`. The core does not open the records: it
//! cannot re-run OPAQUE (the leader's randomness and sessions are not
//! replayable); the body is trusted because only a core can MAC the entry
//! that commits to it.
//!
//! Choices where ADR 0011 leaves room (decided here):
//!
//! - **Canonical bodies:** record ids strictly increasing, so a set of
//!   records has exactly one encoding and one `body_hash`, and an id occurs
//!   at most once. [`Body::new`] and [`Body::from_writes`] sort; decoding
//!   refuses anything else. Every sealed record is exactly
//!   [`SEALED_RECORD_LEN`] bytes (the format fixes it), so the length of a
//!   body follows from `n` and is checked exactly.
//! - **Bounded:** at most [`MAX_BODY_RECORDS`] records (1024, about 390 KB).
//!   A batch writes at most one record per input (its session's record) and
//!   the daemon batches at most 512 inputs, so a leader never needs more.
//! - **Empty bodies** (`n = 0`) are valid: every batch is an entry, even one
//!   that changes nothing (its root is then the current root).
//! - **Records are only inserted or replaced,** never removed: the core
//!   never removes a record (a delete or an erasure writes an erased
//!   record), so a body has no removals.
//! - **Strict about the supplied buckets:** exactly the buckets the body
//!   touches ([`Body::buckets`]), each once; a missing, extra or repeated
//!   bucket is refused, as is one that does not match the tree's leaf.
//! - **Order of checks:** the body hash first (so only MAC-covered bytes are
//!   parsed), then the body's format, the range, the buckets, the root. All
//!   comparisons of hashes and roots are constant-time.
//! - **Nothing changes until the store commit:** [`check_transition`] reads
//!   the tree and returns a [`Transition`]: the store writes (records and
//!   leaves; no v1 marker, the entry takes its place) and the pending leaf
//!   updates. The caller commits the writes, then [`Transition::apply`]s it
//!   (via [`crate::Core::apply_transition`]), which refuses if the tree is
//!   no longer the one it was checked against.

use std::collections::{BTreeMap, BTreeSet};

use subtle::ConstantTimeEq;

use crate::log::{body_hash, Entry, LogError};
use crate::merkle::{bucket_of, leaf_hash, Tree};
use crate::record::SEALED_RECORD_LEN;
use crate::{Bucket, RecordId, StoreWrites};

/// Most records one body carries.
pub const MAX_BODY_RECORDS: usize = 1024;
/// Length of one record in a body: id and sealed record.
pub const BODY_RECORD_LEN: usize = 32 + SEALED_RECORD_LEN;
/// Length of the largest valid body.
pub const MAX_BODY_LEN: usize = 4 + MAX_BODY_RECORDS * BODY_RECORD_LEN;

/// Why bytes (or a list of records) are not a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Shorter than its count says.
    #[error("truncated body")]
    Truncated,
    /// Longer than its count says.
    #[error("trailing bytes after the body's records")]
    TrailingBytes,
    /// More than [`MAX_BODY_RECORDS`] records.
    #[error("{0} records in a body (at most {MAX_BODY_RECORDS})")]
    TooManyRecords(u64),
    /// Record ids not strictly increasing (unsorted or repeated).
    #[error("record ids not strictly increasing at record {0}")]
    NotCanonical(usize),
    /// Two records with one id (building a body).
    #[error("record id listed twice")]
    DuplicateRecord,
    /// A sealed record of the wrong length (building a body).
    #[error("sealed record of {0} bytes (expected {SEALED_RECORD_LEN})")]
    SealedLength(usize),
}

/// A batch's records: ids strictly increasing, each sealed record exactly
/// [`SEALED_RECORD_LEN`] bytes, at most [`MAX_BODY_RECORDS`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    records: Vec<(RecordId, Vec<u8>)>,
}

impl Body {
    /// A body with no records.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A body from records in any order; refuses repeated ids, sealed records
    /// of the wrong length and too many records.
    pub fn new(mut records: Vec<(RecordId, Vec<u8>)>) -> Result<Self, BodyError> {
        if records.len() > MAX_BODY_RECORDS {
            return Err(BodyError::TooManyRecords(records.len() as u64));
        }
        if let Some((_, s)) = records.iter().find(|(_, s)| s.len() != SEALED_RECORD_LEN) {
            return Err(BodyError::SealedLength(s.len()));
        }
        records.sort_by_key(|r| r.0);
        if records.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(BodyError::DuplicateRecord);
        }
        Ok(Self { records })
    }

    /// The leader's side: the body of a batch from the writes
    /// [`crate::Core::prepare`] returned (its records; leaves and marker
    /// follow from them). A follower that checks this body against the
    /// same state reaches the leader's root and bucket bytes.
    pub fn from_writes(writes: &StoreWrites) -> Result<Self, BodyError> {
        Self::new(writes.records.clone())
    }

    /// The records, ids strictly increasing.
    pub fn records(&self) -> &[(RecordId, Vec<u8>)] {
        &self.records
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the body has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The buckets the body touches, ascending and distinct: the ones the
    /// host must read from its store for [`check_transition`].
    pub fn buckets(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self.records.iter().map(|(id, _)| bucket_of(id)).collect();
        // Ids are sorted and the bucket is their prefix, so buckets are too.
        out.dedup();
        out
    }

    /// The body's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.records.len() * BODY_RECORD_LEN);
        // At most MAX_BODY_RECORDS records: the count fits a u32.
        out.extend_from_slice(&(self.records.len() as u32).to_be_bytes());
        for (id, sealed) in &self.records {
            out.extend_from_slice(id);
            out.extend_from_slice(sealed);
        }
        out
    }

    /// `SHA-256` of the encoding: the entry's `body_hash`.
    pub fn hash(&self) -> [u8; 32] {
        body_hash(&self.encode())
    }

    /// Parses untrusted bytes strictly (see the module docs); never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, BodyError> {
        let (count, rest) = match bytes.split_first_chunk::<4>() {
            Some((c, rest)) => (u32::from_be_bytes(*c), rest),
            None => return Err(BodyError::Truncated),
        };
        let n = usize::try_from(count)
            .ok()
            .filter(|n| *n <= MAX_BODY_RECORDS)
            .ok_or(BodyError::TooManyRecords(u64::from(count)))?;
        // n ≤ MAX_BODY_RECORDS: no overflow.
        let want = n * BODY_RECORD_LEN;
        if rest.len() < want {
            return Err(BodyError::Truncated);
        }
        if rest.len() > want {
            return Err(BodyError::TrailingBytes);
        }
        let mut records: Vec<(RecordId, Vec<u8>)> = Vec::with_capacity(n);
        for (i, chunk) in rest.chunks_exact(BODY_RECORD_LEN).enumerate() {
            let (id, sealed) = chunk.split_at(32);
            let mut rid = [0u8; 32];
            rid.copy_from_slice(id);
            if let Some((prev, _)) = records.last() {
                if *prev >= rid {
                    return Err(BodyError::NotCanonical(i));
                }
            }
            records.push((rid, sealed.to_vec()));
        }
        Ok(Self { records })
    }
}

/// Why a follower's core refuses an entry's transition. None of these
/// change the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The entry breaks a rule of its format.
    #[error("entry: {0}")]
    Entry(LogError),
    /// `SHA-256(body)` is not the entry's `body_hash`.
    #[error("the body does not match the entry's body hash")]
    BodyHash,
    /// The body does not decode.
    #[error("body: {0}")]
    Body(BodyError),
    /// A record outside the entry's range.
    #[error("record in bucket {bucket} outside the range {lo}..={hi}")]
    OutOfRange {
        /// The record's bucket.
        bucket: u16,
        /// The entry's `range_lo`.
        lo: u16,
        /// The entry's `range_hi`.
        hi: u16,
    },
    /// The host did not supply a bucket the body touches.
    #[error("the host did not supply bucket {0}")]
    MissingBucket(u16),
    /// The host supplied a bucket the body does not touch.
    #[error("the host supplied bucket {0}, which the body does not touch")]
    UnexpectedBucket(u16),
    /// The host supplied a bucket twice.
    #[error("the host supplied bucket {0} twice")]
    DuplicateBucket(u16),
    /// A supplied bucket does not match the core's tree (a stale, rolled back
    /// or tampered store).
    #[error("bucket {0} does not match the trusted tree")]
    BucketMismatch(u16),
    /// The records applied give another root than the entry's.
    #[error("the recomputed root is not the entry's root")]
    RootMismatch,
    /// The tree changed between the check and the apply.
    #[error("the tree changed since the transition was checked")]
    TreeMoved,
    /// A prepared batch awaits its commit.
    #[error("a prepared batch awaits its commit")]
    Busy,
    /// The core refuses to serve.
    #[error("the core refuses: {0}")]
    Refusing(String),
}

/// A checked transition: what the host commits, and the tree update the core
/// applies once that commit is durable.
#[derive(Debug, Clone)]
pub struct Transition {
    writes: StoreWrites,
    base_root: [u8; 32],
    root: [u8; 32],
}

impl Transition {
    /// What the host commits with the entry, in one transaction: the body's
    /// records and the new leaves of the buckets they touch (no marker).
    pub fn writes(&self) -> &StoreWrites {
        &self.writes
    }

    /// The root the tree had when checked.
    pub fn base_root(&self) -> [u8; 32] {
        self.base_root
    }

    /// The new root (the entry's).
    pub fn root(&self) -> [u8; 32] {
        self.root
    }

    /// Sets the new leaves in `tree`, after the store commit. Refuses
    /// ([`TransitionError::TreeMoved`]) if the tree's root is no longer the
    /// one the transition was checked against; then nothing changes.
    pub fn apply(self, tree: &mut Tree) -> Result<(), TransitionError> {
        if !bool::from(tree.root().ct_eq(&self.base_root)) {
            return Err(TransitionError::TreeMoved);
        }
        for (b, h) in &self.writes.leaves {
            tree.set_leaf(*b, *h);
        }
        Ok(())
    }
}

/// The transition check (module docs): `entry` (MAC and log position
/// already checked by the caller), its `body` bytes, and `buckets`, the
/// current contents of every bucket the body touches as this node's store
/// holds them. Reads `tree` only.
pub fn check_transition(
    tree: &Tree,
    entry: &Entry,
    body: &[u8],
    buckets: Vec<Bucket>,
) -> Result<Transition, TransitionError> {
    entry.validate().map_err(TransitionError::Entry)?;
    if !bool::from(body_hash(body).ct_eq(&entry.body_hash)) {
        return Err(TransitionError::BodyHash);
    }
    let body = Body::decode(body).map_err(TransitionError::Body)?;
    let (lo, hi) = (entry.range_lo, entry.range_hi);
    if let Some(bucket) = body
        .records
        .iter()
        .map(|(id, _)| bucket_of(id))
        .find(|b| *b < lo || *b > hi)
    {
        return Err(TransitionError::OutOfRange { bucket, lo, hi });
    }
    let touched: BTreeSet<u16> = body.buckets().into_iter().collect();
    let mut given: BTreeMap<u16, Vec<(RecordId, Vec<u8>)>> = BTreeMap::new();
    for b in buckets {
        if !touched.contains(&b.index) {
            return Err(TransitionError::UnexpectedBucket(b.index));
        }
        if given.insert(b.index, b.records).is_some() {
            return Err(TransitionError::DuplicateBucket(b.index));
        }
    }
    let mut contents: BTreeMap<u16, BTreeMap<RecordId, Vec<u8>>> = BTreeMap::new();
    for b in &touched {
        let records = given.remove(b).ok_or(TransitionError::MissingBucket(*b))?;
        if !tree.bucket_matches(*b, &records) {
            return Err(TransitionError::BucketMismatch(*b));
        }
        contents.insert(*b, records.into_iter().collect());
    }
    for (id, sealed) in &body.records {
        if let Some(bucket) = contents.get_mut(&bucket_of(id)) {
            bucket.insert(*id, sealed.clone());
        }
    }
    let leaves: Vec<(u16, [u8; 32])> = contents
        .iter()
        .map(|(b, records)| {
            let list: Vec<(&[u8; 32], &[u8])> =
                records.iter().map(|(k, v)| (k, v.as_slice())).collect();
            (*b, leaf_hash(&list))
        })
        .collect();
    let root = tree.root_with(&leaves);
    if !bool::from(root.ct_eq(&entry.root)) {
        return Err(TransitionError::RootMismatch);
    }
    Ok(Transition {
        writes: StoreWrites {
            records: body.records,
            leaves,
            marker: None,
        },
        base_root: tree.root(),
        root,
    })
}
