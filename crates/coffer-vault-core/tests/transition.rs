//! The follower's transition check (ADR 0011, phase 2): batch bodies built
//! from a leader core's real writes, replayed on a second core started from
//! the same state; and everything a host or a forged body could get wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_vault_core::log::{
    empty_body_hash, Accept, Entry, EntryKind, GroupContext, GroupId, GroupSlot, Mac, Members,
};
use coffer_vault_core::merkle::{bucket_of, Tree};
use coffer_vault_core::testing::{MemRealm, MemStore, Outcome, TestClient};
use coffer_vault_core::transition::{
    Body, BodyError, TransitionError, BODY_RECORD_LEN, MAX_BODY_LEN, MAX_BODY_RECORDS,
};
use coffer_vault_core::{
    Bucket, Input, Platform, RealmSecrets, RecordId, StoreWrites, SEALED_RECORD_LEN,
};
use coffer_vault_proto::{client::Login, ClientChannel, ErrorCode};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const G: GroupId = [0x47; 16];
const K: [u8; 32] = [0x4b; 32];
const LEADER: u8 = 1;

/// A record id in a chosen bucket.
fn rid(bucket: u16, tail: u8) -> RecordId {
    let mut id = [tail; 32];
    id[..2].copy_from_slice(&bucket.to_be_bytes());
    id
}

/// The group's log as the leader writes it: MAC'd entries chaining from
/// genesis, with the realm's real log key.
struct Chain {
    secrets: RealmSecrets,
    realm_id: [u8; 16],
    members: Members,
    index: u64,
    last: Mac,
}

impl Chain {
    fn new(realm: &MemRealm) -> Self {
        Self {
            secrets: RealmSecrets::derive(&realm.master, &realm.config.realm_id),
            realm_id: realm.config.realm_id,
            members: Members::new(&[1, 2, 3]).unwrap(),
            index: 0,
            last: Mac::ZERO,
        }
    }

    fn ctx(&self) -> GroupContext<'_> {
        GroupContext {
            realm_id: &self.realm_id,
            log_key: self.secrets.log_key(),
            ack_key: self.secrets.ack_key(),
            members: &self.members,
        }
    }

    /// The next entry: genesis first, then batches.
    fn next(&mut self, root: [u8; 32], body: &[u8]) -> (Entry, Mac) {
        let index = self.index + 1;
        let kind = if index == 1 {
            EntryKind::Genesis {
                members: self.members.clone(),
            }
        } else {
            EntryKind::Batch
        };
        let e = Entry {
            group: G,
            // Genesis has epoch 0; the leader's batches its first epoch (ADR 0012).
            epoch: if index == 1 {
                0
            } else {
                1 << 8 | u64::from(LEADER)
            },
            index,
            prev_mac: self.last,
            leader: LEADER,
            kind,
            range_lo: 0,
            range_hi: u16::MAX,
            root,
            body_hash: coffer_vault_core::log::body_hash(body),
        };
        let mac = e.mac(self.secrets.log_key(), &self.realm_id);
        self.index = index;
        self.last = mac;
        (e, mac)
    }
}

/// A follower: a second core from the same seed (same master, realm id and
/// sealed setup), its own store, and its group slot.
struct Follower {
    realm: MemRealm,
    slot: GroupSlot,
    accepted: usize,
}

impl Follower {
    fn new(seed: u64) -> Self {
        Self {
            realm: MemRealm::new(seed).unwrap(),
            slot: GroupSlot::new(G),
            accepted: 0,
        }
    }

    fn root(&self) -> [u8; 32] {
        self.realm.core.tree_root()
    }

    /// The buckets the body touches, from this follower's store.
    fn buckets_for(&self, body: &[u8]) -> Vec<Bucket> {
        match Body::decode(body) {
            Ok(b) => b
                .buckets()
                .into_iter()
                .map(|i| self.realm.store.bucket(i))
                .collect(),
            Err(_) => vec![],
        }
    }

    /// The whole accept path: the slot's rule, the transition check, the
    /// store commit, the tree update, the slot.
    fn accept(
        &mut self,
        chain: &Chain,
        entry: &Entry,
        mac: &Mac,
        body: &[u8],
    ) -> Result<(), TransitionError> {
        assert_eq!(
            self.slot.check(&chain.ctx(), entry, mac, None),
            Ok(Accept::ChainStep)
        );
        let buckets = self.buckets_for(body);
        let t = self.realm.core.check_transition(entry, body, buckets)?;
        assert_eq!(t.root(), entry.root);
        self.realm.store.apply(t.writes());
        self.realm.core.apply_transition(t)?;
        self.slot.advance(entry, mac).unwrap();
        self.accepted += 1;
        Ok(())
    }
}

/// A leader (journaling its writes), a follower, and the chain, with the
/// genesis entry already accepted.
struct Pair {
    leader: MemRealm,
    follower: Follower,
    chain: Chain,
    client: TestClient,
}

impl Pair {
    fn new(seed: u64) -> Self {
        let mut leader = MemRealm::new(seed).unwrap();
        leader.journal = Some(Vec::new());
        let mut follower = Follower::new(seed);
        assert_eq!(follower.root(), leader.core.tree_root());
        assert_eq!(follower.realm.sealed_setup, leader.sealed_setup);
        let mut chain = Chain::new(&leader);
        let empty = Body::empty().encode();
        assert_eq!(coffer_vault_core::log::body_hash(&empty), empty_body_hash());
        let (e, m) = chain.next(leader.core.tree_root(), &empty);
        follower.accept(&chain, &e, &m, &empty).unwrap();
        let client = TestClient::new(seed ^ 0xc1, leader.descriptor());
        Self {
            leader,
            follower,
            chain,
            client,
        }
    }

    /// The leader's batches since the last call.
    fn take(&mut self) -> Vec<StoreWrites> {
        std::mem::take(self.leader.journal.as_mut().unwrap())
    }

    /// Proposes every journaled batch as an entry and has the follower
    /// accept it; the roots agree after each. Returns how many bodies had
    /// records.
    fn replay(&mut self) -> usize {
        let batches = self.take();
        // The leader's root after each batch, from its writes alone.
        let mut shadow = Tree::build(self.follower.realm.store.leaves.clone());
        let mut nonempty = 0;
        for w in batches {
            let body = Body::from_writes(&w).unwrap();
            assert_eq!(Body::decode(&body.encode()).unwrap(), body);
            nonempty += usize::from(!body.is_empty());
            for (b, h) in &w.leaves {
                shadow.set_leaf(*b, *h);
            }
            let bytes = body.encode();
            let (e, m) = self.chain.next(shadow.root(), &bytes);
            self.follower.accept(&self.chain, &e, &m, &bytes).unwrap();
            assert_eq!(self.follower.root(), shadow.root());
        }
        assert_eq!(self.follower.root(), self.leader.core.tree_root());
        assert_eq!(self.follower.root(), self.leader.core.anchor().root);
        nonempty
    }

    fn assert_same_state(&self) {
        let (l, f) = (&self.leader.store, &self.follower.realm.store);
        assert_eq!(f.records, l.records, "bucket bytes differ");
        assert_eq!(f.leaves, l.leaves, "leaves differ");
        assert_eq!(
            Tree::build(f.leaves.clone()).root(),
            self.leader.core.tree_root()
        );
    }

    /// One batch of KE1 open frames (each spends an attempt of its record).
    fn ke1_batch(&mut self, records: &[RecordId]) -> Vec<Result<Vec<u8>, String>> {
        let now = self.leader.platform.now_ms();
        let inputs = records
            .iter()
            .map(|r| {
                let (_login, ke1) = Login::start(&mut self.client.rng, b"whatever").unwrap();
                let (_ch, frame) =
                    ClientChannel::open(&self.client.realm, &ke1, now, &mut self.client.rng)
                        .unwrap();
                Input::Open { record: *r, frame }
            })
            .collect();
        self.leader
            .batch(inputs)
            .unwrap()
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

#[test]
fn follower_replays_real_registrations_and_logins_byte_for_byte() {
    let mut p = Pair::new(7);
    let alice = p.leader.core.record_id("app", "alice");
    // Bob shares alice's bucket; carol is elsewhere.
    let mut bob = alice;
    bob[31] ^= 0xff;
    let carol = p.leader.core.record_id("app", "carol");
    let c = &mut p.client;
    let v = &mut p.leader;
    for (r, pw) in [(alice, &b"a-pw"[..]), (bob, b"b-pw"), (carol, b"c-pw")] {
        assert_eq!(
            c.register(v, r, pw, &K, 3, false).unwrap(),
            Outcome::Ok(None)
        );
    }
    assert_eq!(c.login(v, alice, b"a-pw").unwrap(), Outcome::Ok(Some(K)));
    assert_eq!(
        c.login(v, bob, b"nope").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(2))
    );
    let (o, kept) = c.login_keep(v, alice, b"a-pw").unwrap();
    assert_eq!(o, Outcome::Ok(Some(K)));
    let (mut ch, _) = kept.unwrap();
    assert_eq!(
        c.change_password(v, &mut ch, b"a-new", &K).unwrap(),
        Outcome::Ok(None)
    );
    let (_, kept) = c.login_keep(v, carol, b"c-pw").unwrap();
    let (mut ch, _) = kept.unwrap();
    assert_eq!(c.delete(v, &mut ch).unwrap(), Outcome::Ok(None));
    assert_eq!(
        c.login_abandon(v, bob, b"b-pw").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(1))
    );
    let journaled = p.leader.journal.as_ref().unwrap().len();
    let nonempty = p.replay();
    // Every batch is an entry, including the ones that change nothing
    // (RegisterStart, a wrong-password reply's unchanged count is re-sealed).
    assert_eq!(p.follower.accepted, 1 + journaled);
    assert!(
        nonempty > 0 && nonempty < journaled,
        "{nonempty}/{journaled}"
    );
    p.assert_same_state();

    // The follower's records are the real thing: its core serves them.
    let mut c2 = TestClient::new(99, p.follower.realm.descriptor());
    let f = &mut p.follower.realm;
    assert_eq!(c2.login(f, alice, b"a-new").unwrap(), Outcome::Ok(Some(K)));
    assert_eq!(
        c2.login(f, carol, b"c-pw").unwrap(),
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );
    assert_eq!(
        c2.login(f, bob, b"b-pw").unwrap(),
        Outcome::Ok(Some(K)),
        "bob had one attempt left"
    );
}

/// A leader and a follower in the same state with three registered users
/// (alice and bob share a bucket), and one more batch on the leader, not yet
/// replayed: KE1s for alice, bob and carol (three records, two buckets).
struct Fixture {
    p: Pair,
    body: Vec<u8>,
    records: Vec<(RecordId, Vec<u8>)>,
    root: [u8; 32],
    base: [u8; 32],
    users: [RecordId; 3],
}

fn fixture() -> Fixture {
    let mut p = Pair::new(11);
    let alice = rid(0x1234, 0xa1);
    let bob = rid(0x1234, 0xb0);
    let carol = rid(0x8000, 0xc0);
    for r in [alice, bob, carol] {
        let (c, v) = (&mut p.client, &mut p.leader);
        assert_eq!(
            c.register(v, r, b"pw", &K, 5, false).unwrap(),
            Outcome::Ok(None)
        );
    }
    p.replay();
    p.assert_same_state();
    let replies = p.ke1_batch(&[carol, bob, alice]);
    assert!(replies.iter().all(|r| r.is_ok()));
    let w = p.take().pop().unwrap();
    assert_eq!(w.records.len(), 3);
    assert_eq!(w.leaves.len(), 2);
    let body = Body::from_writes(&w).unwrap();
    assert_eq!(body.buckets(), vec![0x1234, 0x8000]);
    let ids: Vec<RecordId> = body.records().iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![alice, bob, carol], "sorted by id");
    Fixture {
        body: body.encode(),
        records: body.records().to_vec(),
        root: p.leader.core.tree_root(),
        base: p.follower.root(),
        users: [alice, bob, carol],
        p,
    }
}

impl Fixture {
    /// The next entry for `body` with the leader's root, chained but not
    /// consumed (so a refused entry leaves the chain where it was).
    fn entry(&self, body: &[u8]) -> Entry {
        let mut chain = Chain {
            secrets: RealmSecrets::derive(&self.p.leader.master, &self.p.leader.config.realm_id),
            realm_id: self.p.chain.realm_id,
            members: self.p.chain.members.clone(),
            index: self.p.chain.index,
            last: self.p.chain.last,
        };
        chain.next(self.root, body).0
    }

    fn check(&self, entry: &Entry, body: &[u8], buckets: Vec<Bucket>) -> TransitionError {
        let err = self
            .p
            .follower
            .realm
            .core
            .check_transition(entry, body, buckets)
            .expect_err("a bad transition was accepted");
        assert_eq!(
            self.p.follower.root(),
            self.base,
            "a refusal changed the tree"
        );
        err
    }

    fn buckets(&self) -> Vec<Bucket> {
        self.p.follower.buckets_for(&self.body)
    }

    /// The untampered transition is accepted (so each refusal above it is
    /// caused by the tampering alone).
    fn finish(mut self) {
        let body = self.body.clone();
        let (e, m) = self.p.chain.next(self.root, &body);
        self.p
            .follower
            .accept(&self.p.chain, &e, &m, &body)
            .unwrap();
        assert_eq!(self.p.follower.root(), self.root);
        self.p.assert_same_state();
    }

    fn body_with(&self, records: &[(RecordId, Vec<u8>)]) -> Vec<u8> {
        let mut out = (records.len() as u32).to_be_bytes().to_vec();
        for (id, s) in records {
            out.extend_from_slice(id);
            out.extend_from_slice(s);
        }
        out
    }
}

#[test]
fn the_untampered_fixture_is_accepted() {
    fixture().finish();
}

#[test]
fn wrong_body_hash_is_refused() {
    let f = fixture();
    let mut e = f.entry(&f.body);
    e.body_hash[7] ^= 1;
    assert_eq!(f.check(&e, &f.body, f.buckets()), TransitionError::BodyHash);
    // The right hash, another body (one byte of a sealed record changed).
    let e = f.entry(&f.body);
    let mut other = f.body.clone();
    other[4 + 40] ^= 1;
    assert_eq!(f.check(&e, &other, f.buckets()), TransitionError::BodyHash);
    f.finish();
}

#[test]
fn a_record_outside_the_range_is_refused_and_the_bounds_are_inclusive() {
    let f = fixture();
    let t = &f.p.follower.realm.core;
    for (lo, hi, bad) in [
        (0x1235, u16::MAX, 0x1234),
        (0, 0x7fff, 0x8000),
        (0x1234, 0x7fff, 0x8000),
        (0x1235, 0x8000, 0x1234),
        (0x9000, 0x9000, 0x1234),
    ] {
        let mut e = f.entry(&f.body);
        (e.range_lo, e.range_hi) = (lo, hi);
        assert_eq!(
            f.check(&e, &f.body, f.buckets()),
            TransitionError::OutOfRange {
                bucket: bad,
                lo,
                hi
            }
        );
    }
    // Exactly the touched range passes.
    let mut e = f.entry(&f.body);
    (e.range_lo, e.range_hi) = (0x1234, 0x8000);
    assert!(t.check_transition(&e, &f.body, f.buckets()).is_ok());
    // A malformed range is refused as an entry error.
    (e.range_lo, e.range_hi) = (0x8000, 0x1234);
    assert!(matches!(
        f.check(&e, &f.body, f.buckets()),
        TransitionError::Entry(_)
    ));
    f.finish();
}

#[test]
fn a_tampered_sealed_record_or_root_is_a_root_mismatch() {
    let f = fixture();
    for (i, pos) in [(0usize, 0usize), (1, 100), (2, SEALED_RECORD_LEN - 1)] {
        let mut records = f.records.clone();
        records[i].1[pos] ^= 0x80;
        let body = f.body_with(&records);
        let e = f.entry(&body);
        assert_eq!(
            f.check(&e, &body, f.buckets()),
            TransitionError::RootMismatch
        );
    }
    // A record dropped from the body (alice's spent attempt not applied).
    let body = f.body_with(&f.records[1..]);
    let e = f.entry(&body);
    let buckets = f.p.follower.buckets_for(&body);
    assert_eq!(f.check(&e, &body, buckets), TransitionError::RootMismatch);
    // The old sealed record for alice (a refund of her attempt).
    let mut records = f.records.clone();
    records[0].1 = f.p.follower.realm.store.records[&f.users[0]].clone();
    let body = f.body_with(&records);
    let e = f.entry(&body);
    assert_eq!(
        f.check(&e, &body, f.buckets()),
        TransitionError::RootMismatch
    );
    // The right body, a wrong root.
    let mut e = f.entry(&f.body);
    e.root[31] ^= 1;
    assert_eq!(
        f.check(&e, &f.body, f.buckets()),
        TransitionError::RootMismatch
    );
    // An empty body with the leader's root (the batch's changes withheld).
    let empty = Body::empty().encode();
    let e = f.entry(&empty);
    assert_eq!(f.check(&e, &empty, vec![]), TransitionError::RootMismatch);
    f.finish();
}

#[test]
fn host_supplied_buckets_must_match_the_tree() {
    let f = fixture();
    let e = f.entry(&f.body);
    let good = f.buckets();
    // A record injected into a bucket.
    let mut b = good.clone();
    let mut extra = b[0].records[0].clone();
    extra.0[31] = 0x01;
    b[0].records.push(extra);
    assert_eq!(
        f.check(&e, &f.body, b),
        TransitionError::BucketMismatch(0x1234)
    );
    // A record withheld from a bucket.
    let mut b = good.clone();
    b[0].records.pop();
    assert_eq!(
        f.check(&e, &f.body, b),
        TransitionError::BucketMismatch(0x1234)
    );
    // A record's bytes changed.
    let mut b = good.clone();
    b[1].records[0].1[50] ^= 4;
    assert_eq!(
        f.check(&e, &f.body, b),
        TransitionError::BucketMismatch(0x8000)
    );
    // A record of another bucket passed off as this one's.
    let mut b = good.clone();
    b[1].records = b[0].records.clone();
    assert_eq!(
        f.check(&e, &f.body, b),
        TransitionError::BucketMismatch(0x8000)
    );
    // Missing, extra and repeated buckets.
    assert_eq!(
        f.check(&e, &f.body, vec![]),
        TransitionError::MissingBucket(0x1234)
    );
    assert_eq!(
        f.check(&e, &f.body, vec![good[0].clone()]),
        TransitionError::MissingBucket(0x8000)
    );
    let mut b = good.clone();
    b.push(f.p.follower.realm.store.bucket(0x0001));
    assert_eq!(
        f.check(&e, &f.body, b),
        TransitionError::UnexpectedBucket(1)
    );
    let mut b = good.clone();
    b.push(good[1].clone());
    assert_eq!(
        f.check(&e, &f.body, b),
        TransitionError::DuplicateBucket(0x8000)
    );
    // Order of the supplied buckets does not matter.
    let mut b = good.clone();
    b.reverse();
    assert!(f
        .p
        .follower
        .realm
        .core
        .check_transition(&e, &f.body, b)
        .is_ok());
    f.finish();
}

#[test]
fn a_rolled_back_store_is_refused() {
    let mut f = fixture();
    let alice = f.users[0];
    // The follower takes the fixture's batch, then the leader spends another
    // attempt of alice's.
    let old: MemStore = f.p.follower.realm.store.clone();
    let (e, m) = f.p.chain.next(f.root, &f.body);
    let body = f.body.clone();
    f.p.follower.accept(&f.p.chain, &e, &m, &body).unwrap();
    f.p.ke1_batch(&[alice]);
    let w = f.p.take().pop().unwrap();
    let body = Body::from_writes(&w).unwrap().encode();
    let (e, m) = f.p.chain.next(f.p.leader.core.tree_root(), &body);
    let base = f.p.follower.root();
    // The host reads alice's bucket from the store as it was one batch ago.
    let stale = vec![old.bucket(0x1234)];
    assert_eq!(
        f.p.follower
            .realm
            .core
            .check_transition(&e, &body, stale)
            .err(),
        Some(TransitionError::BucketMismatch(0x1234))
    );
    assert_eq!(f.p.follower.root(), base);
    f.p.follower.accept(&f.p.chain, &e, &m, &body).unwrap();
    assert_eq!(f.p.follower.root(), f.p.leader.core.tree_root());
    f.p.assert_same_state();
}

#[test]
fn non_canonical_and_malformed_bodies_are_refused() {
    let f = fixture();
    let r = &f.records;
    let cases: Vec<(Vec<u8>, TransitionError)> = vec![
        // Duplicated record id (the same record twice; also the same id with
        // another sealed value).
        (
            f.body_with(&[r[0].clone(), r[0].clone(), r[1].clone()]),
            TransitionError::Body(BodyError::NotCanonical(1)),
        ),
        (
            f.body_with(&[r[0].clone(), r[1].clone(), (r[1].0, r[2].1.clone())]),
            TransitionError::Body(BodyError::NotCanonical(2)),
        ),
        // Unsorted.
        (
            f.body_with(&[r[1].clone(), r[0].clone(), r[2].clone()]),
            TransitionError::Body(BodyError::NotCanonical(1)),
        ),
        (
            f.body_with(&[r[2].clone(), r[1].clone(), r[0].clone()]),
            TransitionError::Body(BodyError::NotCanonical(1)),
        ),
        // Truncated: one byte short, the count only, nothing.
        (
            f.body[..f.body.len() - 1].to_vec(),
            TransitionError::Body(BodyError::Truncated),
        ),
        (
            f.body[..3].to_vec(),
            TransitionError::Body(BodyError::Truncated),
        ),
        (vec![], TransitionError::Body(BodyError::Truncated)),
        // A count larger than the records present.
        (
            {
                let mut b = f.body.clone();
                b[3] = 4;
                b
            },
            TransitionError::Body(BodyError::Truncated),
        ),
        // Oversized: one byte more, a count too small, a count too large.
        (
            [&f.body[..], &[0]].concat(),
            TransitionError::Body(BodyError::TrailingBytes),
        ),
        (
            {
                let mut b = f.body.clone();
                b[3] = 2;
                b
            },
            TransitionError::Body(BodyError::TrailingBytes),
        ),
        (
            {
                let mut b = f.body.clone();
                b[..4].copy_from_slice(&(MAX_BODY_RECORDS as u32 + 1).to_be_bytes());
                b
            },
            TransitionError::Body(BodyError::TooManyRecords(MAX_BODY_RECORDS as u64 + 1)),
        ),
        (
            {
                let mut b = f.body.clone();
                b[..4].copy_from_slice(&u32::MAX.to_be_bytes());
                b
            },
            TransitionError::Body(BodyError::TooManyRecords(u64::from(u32::MAX))),
        ),
    ];
    for (body, want) in cases {
        // The entry's hash covers the bad body, so the refusal is the format's.
        let e = f.entry(&body);
        assert_eq!(
            f.check(&e, &body, f.buckets()),
            want,
            "{} bytes",
            body.len()
        );
    }
    f.finish();
}

#[test]
fn the_tree_changes_only_on_apply_and_only_from_the_checked_state() {
    let mut f = fixture();
    let e = f.entry(&f.body);
    let buckets = f.buckets();
    let core = &mut f.p.follower.realm.core;
    let t = core.check_transition(&e, &f.body, buckets.clone()).unwrap();
    assert_eq!((t.base_root(), t.root()), (f.base, f.root));
    assert_eq!(t.writes().records, f.records);
    assert_eq!(t.writes().leaves.len(), 2);
    assert!(t.writes().marker.is_none());
    // Checking twice gives the same answer; nothing moved.
    let again = core.check_transition(&e, &f.body, buckets).unwrap();
    assert_eq!(again.writes().leaves, t.writes().leaves);
    assert_eq!(core.tree_root(), f.base);
    let stale = t.clone();
    core.apply_transition(t).unwrap();
    assert_eq!(core.tree_root(), f.root);
    // The same transition again: the tree is no longer the one it was checked on.
    assert_eq!(
        core.apply_transition(stale),
        Err(TransitionError::TreeMoved)
    );
    assert_eq!(core.tree_root(), f.root);
}

#[test]
fn no_transition_while_a_prepared_batch_awaits_its_commit() {
    let f = fixture();
    let e = f.entry(&f.body);
    let mut follower = f.p.follower;
    let core = &mut follower.realm.core;
    let t = core.check_transition(&e, &f.body, vec![]).err();
    assert_eq!(t, Some(TransitionError::MissingBucket(0x1234)));
    let good = {
        let store = &follower.realm.store;
        vec![store.bucket(0x1234), store.bucket(0x8000)]
    };
    let t = follower
        .realm
        .core
        .check_transition(&e, &f.body, good.clone())
        .unwrap();
    follower.realm.core.prepare(vec![], vec![]).unwrap();
    assert_eq!(
        follower
            .realm
            .core
            .check_transition(&e, &f.body, good.clone())
            .err(),
        Some(TransitionError::Busy)
    );
    assert_eq!(
        follower.realm.core.apply_transition(t.clone()),
        Err(TransitionError::Busy)
    );
    follower.realm.core.commit().unwrap();
    follower.realm.core.apply_transition(t).unwrap();
    assert_eq!(follower.realm.core.tree_root(), f.root);
}

#[test]
fn a_refusing_core_checks_no_transition() {
    let mut f = fixture();
    // Restart the follower over a store that does not match its NVRAM
    // anchor (a tampered leaf): it refuses to serve.
    let mut bad = f.p.follower.realm.store.clone();
    bad.leaves.insert(3, [3; 32]);
    let state = f.p.follower.realm.restart_with(bad).unwrap();
    assert!(matches!(state, coffer_vault_core::StartState::Refusing(_)));
    let e = f.entry(&f.body);
    assert!(matches!(
        f.p.follower
            .realm
            .core
            .check_transition(&e, &f.body, vec![]),
        Err(TransitionError::Refusing(_))
    ));
}

#[test]
fn seeded_random_batches_replay_to_the_same_root() {
    for seed in 1u64..=6 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut p = Pair::new(100 + seed);
        // Eight users in three buckets (two crowded ones), one elsewhere.
        let mut users: Vec<RecordId> = Vec::new();
        for i in 0..3u8 {
            users.push(rid(0x00ff, 0x10 + i));
            users.push(rid(0xabcd, 0x20 + i));
        }
        users.push(rid(0xffff, 0x30));
        users.push(p.leader.core.record_id("t", &format!("u{seed}")));
        let pw = |r: &RecordId| r[31].to_be_bytes();
        let mut batches = 0;
        let mut nonempty = 0;
        let mut registered = 0;
        for _step in 0..60 {
            let pick = |rng: &mut ChaCha20Rng| users[(rng.next_u32() as usize) % users.len()];
            match rng.next_u32() % 6 {
                0 | 1 => {
                    let r = pick(&mut rng);
                    let n = 1 + (rng.next_u32() % 4) as u8;
                    let replace = rng.next_u32() % 2 == 0;
                    let (c, v) = (&mut p.client, &mut p.leader);
                    let outcome = if replace {
                        // Replacing needs a login in the session; where
                        // there is nothing to log in to, a plain register.
                        match c.login_keep(v, r, &pw(&r)).unwrap() {
                            (Outcome::Ok(_), Some((mut ch, _))) => {
                                c.change_password(v, &mut ch, &pw(&r), &K).unwrap()
                            }
                            (Outcome::Refused(ErrorCode::NotRegistered, _), _) => {
                                c.register(v, r, &pw(&r), &K, n, false).unwrap()
                            }
                            (other, _) => other,
                        }
                    } else {
                        c.register(v, r, &pw(&r), &K, n, false).unwrap()
                    };
                    if outcome == Outcome::Ok(None) {
                        registered += 1;
                    }
                }
                2 => {
                    let r = pick(&mut rng);
                    let right = rng.next_u32() % 2 == 0;
                    let word = if right { pw(&r) } else { [0xee] };
                    let (c, v) = (&mut p.client, &mut p.leader);
                    c.login(v, r, &word).unwrap();
                }
                _ => {
                    // 1 to 6 KE1s in one batch, a record possibly twice.
                    let n = 1 + (rng.next_u32() % 6) as usize;
                    let rs: Vec<RecordId> = (0..n).map(|_| pick(&mut rng)).collect();
                    p.ke1_batch(&rs);
                }
            }
            batches += p.leader.journal.as_ref().unwrap().len();
            nonempty += p.replay();
        }
        p.assert_same_state();
        assert_eq!(p.follower.accepted, 1 + batches);
        assert!(registered > 3, "seed {seed}: {registered} registrations");
        assert!(nonempty > 10, "seed {seed}: {nonempty} non-empty bodies");
        let multi = p
            .leader
            .store
            .leaves
            .keys()
            .filter(|b| {
                p.leader
                    .store
                    .records
                    .keys()
                    .filter(|r| bucket_of(r) == **b)
                    .count()
                    > 1
            })
            .count();
        assert!(multi >= 1, "seed {seed}: no bucket held two records");
    }
}

#[test]
fn body_encoding_is_canonical_and_bounded() {
    let s = |x: u8| vec![x; SEALED_RECORD_LEN];
    let b = Body::new(vec![
        (rid(2, 1), s(1)),
        (rid(1, 9), s(2)),
        (rid(1, 3), s(3)),
    ])
    .unwrap();
    let ids: Vec<RecordId> = b.records().iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, vec![rid(1, 3), rid(1, 9), rid(2, 1)]);
    assert_eq!(b.buckets(), vec![1, 2]);
    let bytes = b.encode();
    assert_eq!(bytes.len(), 4 + 3 * BODY_RECORD_LEN);
    assert_eq!(&bytes[..4], &[0, 0, 0, 3]);
    assert_eq!(Body::decode(&bytes).unwrap(), b);
    assert_eq!(b.hash(), coffer_vault_core::log::body_hash(&bytes));
    assert_eq!(Body::empty().encode(), vec![0, 0, 0, 0]);
    assert_eq!(Body::empty().hash(), empty_body_hash());
    assert_eq!(Body::decode(&[0, 0, 0, 0]).unwrap(), Body::empty());

    assert_eq!(
        Body::new(vec![(rid(1, 1), s(1)), (rid(1, 1), s(2))]),
        Err(BodyError::DuplicateRecord)
    );
    assert_eq!(
        Body::new(vec![(rid(1, 1), vec![0; SEALED_RECORD_LEN - 1])]),
        Err(BodyError::SealedLength(SEALED_RECORD_LEN - 1))
    );
    assert_eq!(
        Body::from_writes(&StoreWrites {
            records: vec![(rid(1, 1), vec![])],
            ..Default::default()
        }),
        Err(BodyError::SealedLength(0))
    );
    let many = |n: usize| -> Vec<(RecordId, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                (id, s(i as u8))
            })
            .collect()
    };
    let full = Body::new(many(MAX_BODY_RECORDS)).unwrap();
    let bytes = full.encode();
    assert_eq!(bytes.len(), MAX_BODY_LEN);
    assert_eq!(Body::decode(&bytes).unwrap(), full);
    assert_eq!(
        Body::new(many(MAX_BODY_RECORDS + 1)),
        Err(BodyError::TooManyRecords(MAX_BODY_RECORDS as u64 + 1))
    );
    let mut over = full.encode();
    over[..4].copy_from_slice(&(MAX_BODY_RECORDS as u32 + 1).to_be_bytes());
    over.extend_from_slice(&[7; BODY_RECORD_LEN]);
    assert_eq!(
        Body::decode(&over),
        Err(BodyError::TooManyRecords(MAX_BODY_RECORDS as u64 + 1))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(b) = Body::decode(&bytes) {
            prop_assert_eq!(b.encode(), bytes);
        }
    }

    #[test]
    fn built_bodies_round_trip(ids in proptest::collection::btree_set(any::<[u8; 32]>(), 0..6), fill in any::<u8>()) {
        let records: Vec<(RecordId, Vec<u8>)> = ids.iter().rev().map(|i| (*i, vec![fill; SEALED_RECORD_LEN])).collect();
        let b = Body::new(records).unwrap();
        let bytes = b.encode();
        prop_assert_eq!(bytes.len(), 4 + ids.len() * BODY_RECORD_LEN);
        prop_assert_eq!(Body::decode(&bytes).unwrap(), b);
        // Any two adjacent records swapped is refused.
        if ids.len() >= 2 {
            let mut swapped = bytes.clone();
            let (a, c) = (4, 4 + BODY_RECORD_LEN);
            let first = swapped[a..c].to_vec();
            swapped.copy_within(c..c + BODY_RECORD_LEN, a);
            swapped[c..c + BODY_RECORD_LEN].copy_from_slice(&first);
            prop_assert_eq!(Body::decode(&swapped), Err(BodyError::NotCanonical(1)));
        }
    }
}
