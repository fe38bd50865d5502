//! The replicated realm's log building blocks (ADR 0011, phase 2, with ADR
//! 0012's epochs): entry, ack, certificate and NVRAM v2 encodings, the accept
//! and segment rules of a group slot, elections and the leader's commit rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_vault_core::log::{
    body_hash, empty_body_hash, epoch_node, next_epoch, Accept, Ack, AckError, AckKey, AckOutcome,
    CertError, Certificate, CommitTracker, ElectError, Entry, EntryKind, GroupContext, GroupId,
    GroupSlot, LogError, LogKey, Mac, Members, NodeId, NvramV2, ProposeError, Reject, SlotState,
    ACK_LEN, ENTRY_HEADER_LEN, MAX_GROUPS, NVRAM_HEADER_LEN, NVRAM_MAX_LEN, SLOT_LEN,
};
use coffer_vault_core::RealmSecrets;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const REALM: [u8; 16] = [0x52; 16];
const G: GroupId = [0x47; 16];

/// The epoch of `counter` led by `node`.
fn ep(counter: u64, node: NodeId) -> u64 {
    counter << 8 | u64::from(node)
}

struct Fx {
    log: LogKey,
    ack: AckKey,
    members: Members,
}

impl Fx {
    fn new(nodes: &[NodeId]) -> Self {
        Self {
            log: LogKey::from_bytes(&[0x11; 32]),
            ack: AckKey::from_bytes(&[0x22; 32]),
            members: Members::new(nodes).unwrap(),
        }
    }

    fn ctx(&self) -> GroupContext<'_> {
        GroupContext {
            realm_id: &REALM,
            log_key: &self.log,
            ack_key: &self.ack,
            members: &self.members,
        }
    }

    fn mac(&self, e: &Entry) -> Mac {
        e.mac(&self.log, &REALM)
    }

    fn genesis(&self) -> (Entry, Mac) {
        let e = Entry {
            group: G,
            epoch: 0,
            index: 1,
            prev_mac: Mac::ZERO,
            leader: self.members.nodes()[0],
            kind: EntryKind::Genesis {
                members: self.members.clone(),
            },
            range_lo: 0,
            range_hi: u16::MAX,
            root: [0xee; 32],
            body_hash: empty_body_hash(),
        };
        let m = self.mac(&e);
        (e, m)
    }

    /// The first members' epoch 1: what [`Fx::chain`] and [`Fx::ack`] use.
    fn e1(&self) -> u64 {
        ep(1, self.members.nodes()[0])
    }

    /// A batch entry of `leader`'s epoch 1 after (index, mac); `tag` makes
    /// forks differ.
    fn batch(&self, index: u64, prev: Mac, leader: NodeId, tag: u64) -> (Entry, Mac) {
        self.batch_in(ep(1, leader), index, prev, tag)
    }

    /// A batch entry of `epoch` (led by its low byte).
    fn batch_in(&self, epoch: u64, index: u64, prev: Mac, tag: u64) -> (Entry, Mac) {
        let leader = epoch_node(epoch);
        let e = Entry {
            group: G,
            epoch,
            index,
            prev_mac: prev,
            leader,
            kind: EntryKind::Batch,
            range_lo: 0,
            range_hi: u16::MAX,
            root: body_hash(&tag.to_be_bytes()),
            body_hash: body_hash(&[&index.to_be_bytes()[..], &tag.to_be_bytes()].concat()),
        };
        let m = self.mac(&e);
        (e, m)
    }

    /// A current-epoch ack in [`Fx::e1`].
    fn ack(&self, node: NodeId, index: u64, mac: Mac) -> Ack {
        self.ack_in(node, self.e1(), self.e1(), index, mac)
    }

    fn ack_in(&self, node: NodeId, epoch: u64, entry_epoch: u64, index: u64, mac: Mac) -> Ack {
        Ack::sign(&self.ack, &REALM, node, G, epoch, entry_epoch, index, mac)
    }

    fn cert(&self, nodes: &[NodeId], index: u64, mac: Mac) -> Certificate {
        Certificate::new(nodes.iter().map(|&n| self.ack(n, index, mac)).collect())
    }

    /// A chain genesis..=n from the first member, in its epoch 1.
    fn chain(&self, n: u64) -> Vec<(Entry, Mac)> {
        let mut out = vec![self.genesis()];
        for i in 2..=n {
            let prev = out.last().unwrap().1;
            out.push(self.batch(i, prev, self.members.nodes()[0], 0));
        }
        out
    }
}

/// A slot that accepted `chain` up to and including `upto` (1-based).
fn slot_at(fx: &Fx, chain: &[(Entry, Mac)], upto: usize) -> GroupSlot {
    let mut slot = GroupSlot::new(G);
    for (e, m) in &chain[..upto] {
        assert_eq!(
            slot.check(&fx.ctx(), e, m, None),
            Ok(Accept::ChainStep),
            "{}",
            e.index
        );
        slot.advance(e, m).unwrap();
    }
    slot
}

// ---------------------------------------------------------------- encodings

#[test]
fn entries_round_trip_with_the_adr_layout() {
    let fx = Fx::new(&[3, 1, 2]);
    let (g, _) = fx.genesis();
    let gb = g.encode();
    assert_eq!(ENTRY_HEADER_LEN, 139);
    assert_eq!(gb.len(), ENTRY_HEADER_LEN + 1 + 3);
    assert_eq!(&gb[..5], b"CVLE\x02");
    assert_eq!(&gb[21..29], &0u64.to_be_bytes(), "genesis epoch 0");
    assert_eq!(&gb[29..37], &1u64.to_be_bytes());
    assert_eq!(gb[69], 1, "leader = lowest member");
    assert_eq!(gb[70], 1, "genesis kind code");
    assert_eq!(&gb[139..], &[3, 1, 2, 3]);
    assert_eq!(Entry::decode(&gb).unwrap(), g);

    let (b, bm) = fx.batch(2, fx.mac(&g), 2, 9);
    let bb = b.encode();
    assert_eq!(bb.len(), ENTRY_HEADER_LEN);
    assert_eq!(&bb[21..29], &ep(1, 2).to_be_bytes());
    assert_eq!(bb[69], 2);
    assert_eq!(bb[70], 3);
    assert_eq!(Entry::decode(&bb).unwrap(), b);
    assert!(b.verify_mac(&fx.log, &REALM, &bm));

    let mut l = b.clone();
    l.kind = EntryKind::Leader;
    l.body_hash = empty_body_hash();
    assert_eq!(l.encode()[70], 2);
    assert_eq!(Entry::decode(&l.encode()).unwrap(), l);
    assert_eq!(empty_body_hash(), body_hash(&[0, 0, 0, 0]));
}

fn with(mut bytes: Vec<u8>, at: usize, v: u8) -> Vec<u8> {
    bytes[at] = v;
    bytes
}

#[test]
fn entry_decode_is_strict() {
    let fx = Fx::new(&[1, 2, 3]);
    let (g, gm) = fx.genesis();
    let (b, _) = fx.batch(2, gm, 1, 0);
    let gb = g.encode();
    let bb = b.encode();

    for bytes in [&gb, &bb] {
        for len in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Entry::decode(&long), Err(LogError::TrailingBytes));
    }
    assert_eq!(
        Entry::decode(&with(bb.clone(), 0, b'X')),
        Err(LogError::BadMagic)
    );
    assert_eq!(
        Entry::decode(&with(bb.clone(), 4, 1)),
        Err(LogError::Version(1)),
        "entries without epochs (v1) are refused"
    );
    for code in [0u8, 9, 0x80, 255] {
        assert_eq!(
            Entry::decode(&with(bb.clone(), 70, code)),
            Err(LogError::UnknownKind(code))
        );
    }
    for code in 4u8..=8 {
        assert_eq!(
            Entry::decode(&with(bb.clone(), 70, code)),
            Err(LogError::NotYetSupported(code))
        );
    }

    let bad = |e: &Entry| {
        assert!(
            matches!(Entry::decode(&e.encode()), Err(LogError::Malformed(_))),
            "{e:?}"
        )
    };
    // Genesis: index 1, zero prev_mac, leader a member, empty body.
    let mut e = g.clone();
    e.index = 2;
    bad(&e);
    let mut e = g.clone();
    e.prev_mac = Mac([1; 32]);
    bad(&e);
    let mut e = g.clone();
    e.leader = 9;
    bad(&e);
    let mut e = g.clone();
    e.body_hash = [0; 32];
    bad(&e);
    let mut e = g.clone();
    e.epoch = ep(1, 1);
    bad(&e);
    // Epochs: counter >= 1, low byte = the entry's leader.
    let mut e = b.clone();
    e.epoch = ep(1, 2);
    bad(&e);
    e.epoch = 1;
    bad(&e);
    e.epoch = 0;
    bad(&e);
    e.epoch = ep(7, 1);
    assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
    // Member lists: sorted, distinct, 1..=9.
    for tail in [
        &[0u8][..],
        &[2, 2, 1],
        &[2, 1, 1],
        &[3, 1, 3, 2],
        &[10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    ] {
        let mut v = gb[..ENTRY_HEADER_LEN].to_vec();
        v.extend_from_slice(tail);
        assert!(Entry::decode(&v).is_err(), "{tail:?}");
    }
    // Non-genesis: index >= 2; leader entries are empty; ranges ordered.
    let mut e = b.clone();
    e.index = 1;
    bad(&e);
    e.index = 0;
    bad(&e);
    let mut e = b.clone();
    e.kind = EntryKind::Leader;
    bad(&e);
    let mut e = b.clone();
    e.range_lo = 5;
    e.range_hi = 4;
    bad(&e);
    e.range_hi = 5;
    assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
}

#[test]
fn every_bit_flip_of_an_entry_fails_decode_or_its_mac() {
    let fx = Fx::new(&[1, 2, 3, 4, 5]);
    let (g, gm) = fx.genesis();
    let (b, bm) = fx.batch(2, gm, 4, 7);
    for (e, m) in [(g, gm), (b, bm)] {
        let bytes = e.encode();
        let mut decoded = 0;
        for bit in 0..bytes.len() * 8 {
            let mut v = bytes.clone();
            v[bit / 8] ^= 1 << (bit % 8);
            if let Ok(f) = Entry::decode(&v) {
                decoded += 1;
                assert_ne!(f, e);
                assert_eq!(f.encode(), v, "decode is canonical");
                assert!(!f.verify_mac(&fx.log, &REALM, &m), "bit {bit}");
            }
        }
        assert!(decoded >= 300, "most flips still decode ({decoded})");
        // And every flip of the MAC.
        for bit in 0..256 {
            let mut mm = m;
            mm.0[bit / 8] ^= 1 << (bit % 8);
            assert!(!e.verify_mac(&fx.log, &REALM, &mm));
        }
        assert!(e.verify_mac(&fx.log, &REALM, &m));
        assert!(!e.verify_mac(&fx.log, &[0x53; 16], &m), "realm-bound");
        assert!(!e.verify_mac(&LogKey::from_bytes(&[0x22; 32]), &REALM, &m));
    }
}

#[test]
fn acks_round_trip_and_every_bit_flip_fails() {
    let fx = Fx::new(&[1, 2, 3]);
    let a = fx.ack(2, 7, Mac([0xab; 32]));
    let bytes = a.encode();
    assert_eq!(bytes.len(), ACK_LEN);
    assert_eq!(ACK_LEN, 105);
    assert_eq!(bytes[0], 2);
    assert_eq!(&bytes[17..25], &fx.e1().to_be_bytes());
    assert_eq!(&bytes[25..33], &fx.e1().to_be_bytes());
    assert_eq!(&bytes[33..41], &7u64.to_be_bytes());
    assert_eq!(Ack::decode(&bytes).unwrap(), a);
    assert!(a.verify(&fx.ack, &REALM));
    assert!(!a.verify(&fx.ack, &[0; 16]));
    assert!(!a.verify(&AckKey::from_bytes(&[0x11; 32]), &REALM));
    for len in 0..ACK_LEN {
        assert_eq!(Ack::decode(&bytes[..len]), Err(LogError::Truncated));
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert_eq!(Ack::decode(&long), Err(LogError::TrailingBytes));
    let zero = Ack::sign(&fx.ack, &REALM, 1, G, 0, 0, 0, Mac::ZERO).encode();
    assert!(Ack::decode(&zero).is_err(), "index 0");
    let ahead = fx.ack_in(1, ep(1, 1), ep(2, 1), 3, Mac([1; 32])).encode();
    assert!(
        Ack::decode(&ahead).is_err(),
        "an entry epoch above the promise"
    );
    let old = fx.ack_in(1, ep(3, 2), ep(1, 1), 3, Mac([1; 32]));
    assert_eq!(Ack::decode(&old.encode()).unwrap(), old);
    for bit in 0..ACK_LEN * 8 {
        let mut v = bytes;
        v[bit / 8] ^= 1 << (bit % 8);
        if let Ok(f) = Ack::decode(&v) {
            assert_eq!(f.encode(), v);
            assert!(!f.verify(&fx.ack, &REALM), "bit {bit}");
        }
    }
}

#[test]
fn certificates_round_trip_and_decode_strictly() {
    let fx = Fx::new(&[1, 2, 3]);
    let c = fx.cert(&[1, 3, 3], 9, Mac([5; 32]));
    let bytes = c.encode();
    assert_eq!(bytes.len(), 1 + 3 * ACK_LEN);
    assert_eq!(Certificate::decode(&bytes).unwrap(), c);
    assert!(Certificate::decode(&[0]).is_err(), "empty");
    for len in 0..bytes.len() {
        assert!(Certificate::decode(&bytes[..len]).is_err());
    }
    let mut long = bytes.clone();
    long.push(1);
    assert!(Certificate::decode(&long).is_err());
    let mixed = Certificate::new(vec![
        fx.ack(1, 9, Mac([5; 32])),
        fx.ack(2, 10, Mac([5; 32])),
    ]);
    assert!(Certificate::decode(&mixed.encode()).is_err());
    let ten = fx.cert(&[1; 10], 9, Mac([5; 32]));
    assert!(Certificate::decode(&ten.encode()).is_err());
}

#[test]
fn realm_secrets_derive_distinct_log_and_ack_keys() {
    let s = RealmSecrets::derive(&[7; 32], &REALM);
    let t = RealmSecrets::derive(&[8; 32], &REALM);
    let fx = Fx::new(&[1]);
    let (g, _) = fx.genesis();
    let m = g.mac(s.log_key(), &REALM);
    assert_eq!(
        m,
        g.mac(RealmSecrets::derive(&[7; 32], &REALM).log_key(), &REALM)
    );
    assert!(g.verify_mac(s.log_key(), &REALM, &m));
    assert!(!g.verify_mac(t.log_key(), &REALM, &m));
    let a = Ack::sign(s.ack_key(), &REALM, 1, G, 0, 0, 1, m);
    assert!(a.verify(s.ack_key(), &REALM));
    assert!(!a.verify(t.ack_key(), &REALM));
    assert_ne!(a.mac, m);
    assert_eq!(format!("{:?}", s.log_key()), "LogKey(REDACTED)");
}

// ---------------------------------------------------------------- accept rule

#[test]
fn a_chain_of_100_entries_is_accepted_in_order() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(100);
    let slot = slot_at(&fx, &chain, 100);
    assert_eq!(slot.index, 100);
    assert_eq!(slot.mac, chain[99].1);
    assert_eq!(slot.state, SlotState::Member);
}

#[test]
fn replays_and_older_entries_are_rejected() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(10);
    let mut slot = slot_at(&fx, &chain, 5);
    let before = slot;
    let (e5, m5) = &chain[4];
    assert_eq!(
        slot.check(&fx.ctx(), e5, m5, None),
        Err(Reject::Replay { index: 5 })
    );
    // Even with a valid certificate: never twice at one index.
    let c = fx.cert(&[1, 2, 3], 5, *m5);
    assert_eq!(
        slot.check(&fx.ctx(), e5, m5, Some(&c)),
        Err(Reject::Replay { index: 5 })
    );
    for (e, m) in &chain[..4] {
        assert_eq!(
            slot.check(&fx.ctx(), e, m, None),
            Err(Reject::Stale {
                index: e.index,
                held: 5
            })
        );
    }
    assert_eq!(slot.advance(e5, m5), Err(Reject::Replay { index: 5 }));
    assert_eq!(
        slot.advance(&chain[1].0, &chain[1].1),
        Err(Reject::Stale { index: 2, held: 5 })
    );
    assert_eq!(slot, before);
}

#[test]
fn out_of_order_entries_need_a_certificate() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(10);
    let slot = slot_at(&fx, &chain, 5);
    let (e7, m7) = &chain[6];
    assert_eq!(
        slot.check(&fx.ctx(), e7, m7, None),
        Err(Reject::Gap { index: 7, held: 5 })
    );
    assert_eq!(
        slot.check(&fx.ctx(), e7, m7, Some(&fx.cert(&[2, 3], 7, *m7))),
        Ok(Accept::Jump { from: 5 })
    );
}

#[test]
fn a_fork_at_an_acked_epoch_and_index_is_never_acked() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(5);
    let mut slot = slot_at(&fx, &chain, 4);
    let (e5, m5) = &chain[4];
    // Another entry at (epoch, index) = (e1, 5), chaining from the same 4
    // (no correct leader makes one; a forger with the key could): also a
    // valid chain step on its own.
    let (f5, fm5) = fx.batch(5, chain[3].1, 1, 99);
    assert_ne!(f5.body_hash, e5.body_hash);
    assert_eq!(
        slot.check(&fx.ctx(), &f5, &fm5, None),
        Ok(Accept::ChainStep)
    );
    assert_eq!(slot.check(&fx.ctx(), e5, m5, None), Ok(Accept::ChainStep));
    slot.advance(e5, m5).unwrap();
    // Once one is acked, the other is a conflict, certificate or not.
    assert_eq!(
        slot.check(&fx.ctx(), &f5, &fm5, None),
        Err(Reject::Conflict { index: 5 })
    );
    assert_eq!(
        slot.check(&fx.ctx(), &f5, &fm5, Some(&fx.cert(&[1, 2, 3], 5, fm5))),
        Err(Reject::Conflict { index: 5 })
    );
    assert_eq!(slot.advance(&f5, &fm5), Err(Reject::Conflict { index: 5 }));
    // The fork's successor does not chain from what this slot holds.
    let (f6, fm6) = fx.batch(6, fm5, 1, 99);
    assert_eq!(
        slot.check(&fx.ctx(), &f6, &fm6, None),
        Err(Reject::BrokenChain { index: 6 })
    );
    assert_eq!(slot.index, 5);
    assert_eq!(slot.mac, *m5);
    // A higher epoch's entry at 5 is not a double ack at one (epoch, index):
    // certified, it is a jump that replaces the uncommitted (e1, 5).
    let (h5, hm5) = fx.batch_in(ep(2, 2), 5, chain[3].1, 7);
    assert_eq!(
        slot.check(&fx.ctx(), &h5, &hm5, None),
        Err(Reject::Conflict { index: 5 })
    );
    let hc = Certificate::new(
        [2, 3]
            .iter()
            .map(|&n| fx.ack_in(n, ep(2, 2), ep(2, 2), 5, hm5))
            .collect(),
    );
    assert_eq!(
        slot.check(&fx.ctx(), &h5, &hm5, Some(&hc)),
        Ok(Accept::Jump { from: 5 })
    );
    slot.advance(&h5, &hm5).unwrap();
    assert_eq!(
        (slot.promised, slot.last_epoch, slot.index),
        (ep(2, 2), ep(2, 2), 5)
    );
    // And nothing of the lower epoch again, certified or not.
    let (g6, gm6) = fx.batch(6, *m5, 1, 5);
    assert_eq!(
        slot.check(&fx.ctx(), &g6, &gm6, Some(&fx.cert(&[1, 2, 3], 6, gm6))),
        Err(Reject::EpochRegress {
            epoch: fx.e1(),
            last: ep(2, 2)
        })
    );
}

#[test]
fn forged_entries_are_rejected() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(3);
    let slot = slot_at(&fx, &chain, 2);
    let (e3, m3) = &chain[2];
    let ctx = fx.ctx();
    // Bad MAC: a flipped bit, zero, another realm, another key.
    let mut bad = *m3;
    bad.0[31] ^= 1;
    assert_eq!(slot.check(&ctx, e3, &bad, None), Err(Reject::BadMac));
    assert_eq!(slot.check(&ctx, e3, &Mac::ZERO, None), Err(Reject::BadMac));
    let other_realm = e3.mac(&fx.log, &[0x53; 16]);
    assert_eq!(
        slot.check(&ctx, e3, &other_realm, None),
        Err(Reject::BadMac)
    );
    let other_key = e3.mac(&LogKey::from_bytes(&[0x33; 32]), &REALM);
    assert_eq!(slot.check(&ctx, e3, &other_key, None), Err(Reject::BadMac));
    // A changed field under the old MAC.
    let mut tampered = e3.clone();
    tampered.root[0] ^= 1;
    assert_eq!(slot.check(&ctx, &tampered, m3, None), Err(Reject::BadMac));
    // A forged prev_mac, even correctly MAC'd (another chain).
    let (f3, fm3) = fx.batch(3, Mac([9; 32]), 1, 0);
    assert_eq!(
        slot.check(&ctx, &f3, &fm3, None),
        Err(Reject::BrokenChain { index: 3 })
    );
    // Another group.
    let mut og = e3.clone();
    og.group = [0x48; 16];
    let ogm = fx.mac(&og);
    assert_eq!(slot.check(&ctx, &og, &ogm, None), Err(Reject::WrongGroup));
    let mut s2 = slot;
    assert_eq!(s2.advance(&og, &ogm), Err(Reject::WrongGroup));
    // A leader that is not a member.
    let (nm, nmm) = fx.batch(3, chain[1].1, 7, 0);
    assert_eq!(
        slot.check(&ctx, &nm, &nmm, None),
        Err(Reject::LeaderNotMember(7))
    );
    // A retired slot accepts nothing.
    let mut retired = slot;
    retired.state = SlotState::Retired;
    assert_eq!(retired.check(&ctx, e3, m3, None), Err(Reject::Retired));
    assert_eq!(retired.advance(e3, m3), Err(Reject::Retired));
    // The real one still goes through.
    assert_eq!(slot.check(&ctx, e3, m3, None), Ok(Accept::ChainStep));
}

#[test]
fn a_certified_jump_needs_a_majority_of_distinct_valid_member_acks() {
    for (nodes, majority) in [(&[1u8, 2, 3][..], 2usize), (&[1, 2, 3, 4, 5][..], 3)] {
        let fx = Fx::new(nodes);
        let chain = fx.chain(20);
        let slot = slot_at(&fx, &chain, 3);
        let (e, m) = &chain[11];
        let ctx = fx.ctx();
        let jump = |c: &Certificate| slot.check(&ctx, e, m, Some(c));
        let enough = &nodes[..majority];
        let short = &nodes[..majority - 1];
        assert_eq!(jump(&fx.cert(enough, 12, *m)), Ok(Accept::Jump { from: 3 }));
        assert_eq!(jump(&fx.cert(nodes, 12, *m)), Ok(Accept::Jump { from: 3 }));
        let no = |have: usize| -> Result<Accept, Reject> {
            Err(Reject::BadCertificate(CertError::NoMajority {
                have,
                need: majority,
            }))
        };
        assert_eq!(jump(&fx.cert(short, 12, *m)), no(majority - 1));
        // A repeated ack: one node counts once.
        let mut dup = short.to_vec();
        dup.push(short[0]);
        dup.push(short[0]);
        assert_eq!(jump(&fx.cert(&dup, 12, *m)), no(majority - 1));
        // Non-members do not count (signed with the realm's real ack key).
        let mut outsiders = short.to_vec();
        outsiders.extend([0u8, 9, 200]);
        assert_eq!(jump(&fx.cert(&outsiders, 12, *m)), no(majority - 1));
        // A bad MAC refuses the certificate, even alongside a majority.
        let mut c = fx.cert(enough, 12, *m);
        let mut forged = fx.ack(nodes[majority], 12, *m);
        forged.mac.0[0] ^= 1;
        c.acks.push(forged);
        assert_eq!(
            jump(&c),
            Err(Reject::BadCertificate(CertError::BadAckMac {
                node: nodes[majority]
            }))
        );
        // A majority whose last ack has a bad MAC is no majority.
        let mut c = fx.cert(enough, 12, *m);
        c.acks.last_mut().unwrap().mac.0[5] ^= 0x10;
        assert!(matches!(
            jump(&c),
            Err(Reject::BadCertificate(CertError::BadAckMac { .. }))
        ));
        // Acks under another key or realm.
        let other = AckKey::from_bytes(&[0x44; 32]);
        let c = Certificate::new(
            enough
                .iter()
                .map(|&n| Ack::sign(&other, &REALM, n, G, fx.e1(), fx.e1(), 12, *m))
                .collect(),
        );
        assert!(matches!(jump(&c), Err(Reject::BadCertificate(_))));
        // A valid certificate for another entry (another index, MAC or group).
        let (e13, m13) = &chain[12];
        assert_eq!(
            jump(&fx.cert(enough, 13, *m13)),
            Err(Reject::BadCertificate(CertError::OtherEntry))
        );
        let (f12, fm12) = fx.batch(12, chain[10].1, nodes[1], 5);
        assert_eq!(
            slot.check(&ctx, &f12, &fm12, Some(&fx.cert(enough, 12, *m))),
            Err(Reject::BadCertificate(CertError::OtherEntry))
        );
        let c = Certificate::new(
            enough
                .iter()
                .map(|&n| Ack::sign(&fx.ack, &REALM, n, [0x48; 16], fx.e1(), fx.e1(), 12, *m))
                .collect(),
        );
        assert_eq!(jump(&c), Err(Reject::BadCertificate(CertError::OtherEntry)));
        // Mixed triples and empty.
        let mut c = fx.cert(enough, 12, *m);
        c.acks.push(fx.ack(nodes[majority], 13, *m13));
        assert_eq!(jump(&c), Err(Reject::BadCertificate(CertError::Mixed)));
        assert_eq!(
            jump(&Certificate::new(vec![])),
            Err(Reject::BadCertificate(CertError::Empty))
        );
        // Acks under a later promise prove the entry is held, not committed
        // (Raft's figure 8): no certificate.
        let later = ep(2, nodes[1]);
        let c = Certificate::new(
            enough
                .iter()
                .map(|&n| fx.ack_in(n, later, fx.e1(), 12, *m))
                .collect(),
        );
        assert_eq!(
            jump(&c),
            Err(Reject::BadCertificate(CertError::OldEpoch {
                epoch: later,
                entry_epoch: fx.e1()
            }))
        );
        // Current-epoch acks for a mislabelled epoch: another entry.
        let c = Certificate::new(
            enough
                .iter()
                .map(|&n| fx.ack_in(n, later, later, 12, *m))
                .collect(),
        );
        assert_eq!(jump(&c), Err(Reject::BadCertificate(CertError::OtherEntry)));
        // A certificate lets a slot on an abandoned branch (here a forged
        // second entry at (e1, 11)) jump by one.
        let mut off = slot_at(&fx, &chain, 10);
        let (f11, fm11) = fx.batch(11, chain[9].1, nodes[0], 77);
        off.advance(&f11, &fm11).unwrap();
        let (e12, m12) = &chain[11];
        assert_eq!(
            off.check(&ctx, e12, m12, None),
            Err(Reject::BrokenChain { index: 12 })
        );
        assert_eq!(
            off.check(&ctx, e12, m12, Some(&fx.cert(enough, 12, *m12))),
            Ok(Accept::Jump { from: 11 })
        );
        // After the jump, the chain continues by steps.
        off.advance(e12, m12).unwrap();
        assert_eq!(off.check(&ctx, e13, m13, None), Ok(Accept::ChainStep));
    }
}

#[test]
fn members_and_majorities() {
    assert_eq!(Members::new(&[1]).unwrap().majority(), 1);
    assert_eq!(Members::new(&[1, 2]).unwrap().majority(), 2);
    assert_eq!(Members::new(&[3, 1, 2]).unwrap().majority(), 2);
    assert_eq!(Members::new(&[1, 2, 3, 4]).unwrap().majority(), 3);
    assert_eq!(Members::new(&[5, 4, 3, 2, 1]).unwrap().majority(), 3);
    assert_eq!(Members::new(&[3, 1, 2]).unwrap().nodes(), &[1, 2, 3]);
    assert!(Members::new(&[]).is_err());
    assert!(Members::new(&[1, 1]).is_err());
    assert!(Members::new(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).is_err());
    assert!(Members::new(&[1, 2, 3, 4, 5, 6, 7, 8, 9]).is_ok());
}

// ---------------------------------------------------------------- commit rule

fn tracker(fx: &Fx, chain: &[(Entry, Mac)], base: usize) -> CommitTracker {
    let (bi, bm) = if base == 0 {
        (0, Mac::ZERO)
    } else {
        (chain[base - 1].0.index, chain[base - 1].1)
    };
    let mut t = CommitTracker::new(G, fx.members.clone(), fx.e1(), bi, bm);
    for (e, m) in &chain[base..] {
        t.propose(e, *m).unwrap();
    }
    t
}

#[test]
fn commit_tracker_with_three_members() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(10);
    let mut t = tracker(&fx, &chain, 4); // leader's base (4, h4); proposes 5..=10
    assert_eq!(t.last_index(), 10);
    let on = |t: &mut CommitTracker, a: &Ack| t.on_ack(a, &fx.ack, &REALM);
    let m = |i: u64| chain[i as usize - 1].1;

    // Its own ack alone commits nothing.
    assert_eq!(
        on(&mut t, &fx.ack(1, 7, m(7))),
        Ok(AckOutcome::Counted { committed: 0 })
    );
    // The same ack again, or an older one from the same node: no effect.
    assert_eq!(on(&mut t, &fx.ack(1, 7, m(7))), Ok(AckOutcome::Duplicate));
    assert_eq!(on(&mut t, &fx.ack(1, 5, m(5))), Ok(AckOutcome::Duplicate));
    assert_eq!(t.committed(), 0);
    // Out of order: node 2 acks 9 first → majority at >= 7.
    assert_eq!(
        on(&mut t, &fx.ack(2, 9, m(9))),
        Ok(AckOutcome::Counted { committed: 7 })
    );
    assert_eq!(on(&mut t, &fx.ack(2, 6, m(6))), Ok(AckOutcome::Duplicate));
    assert_eq!(t.committed(), 7);
    // A forked chain's acks at the same indices do not count.
    let (f8, fm8) = fx.batch(8, m(7), 2, 42);
    let (_, fm9) = fx.batch(9, fm8, 2, 42);
    assert_eq!(f8.index, 8);
    assert_eq!(
        on(&mut t, &fx.ack(1, 8, fm8)),
        Ok(AckOutcome::OtherChain { index: 8 })
    );
    assert_eq!(
        on(&mut t, &fx.ack(3, 9, fm9)),
        Ok(AckOutcome::OtherChain { index: 9 })
    );
    assert_eq!(t.committed(), 7);
    // Past the chain's end: another chain, too.
    assert_eq!(
        on(&mut t, &fx.ack(3, 11, Mac([1; 32]))),
        Ok(AckOutcome::OtherChain { index: 11 })
    );
    // At or below the base: says nothing.
    assert_eq!(on(&mut t, &fx.ack(3, 4, m(4))), Ok(AckOutcome::Stale));
    assert_eq!(on(&mut t, &fx.ack(3, 2, m(2))), Ok(AckOutcome::Stale));
    // Refused outright: bad MAC, non-member, other group.
    let mut bad = fx.ack(3, 10, m(10));
    bad.mac.0[0] ^= 1;
    assert_eq!(on(&mut t, &bad), Err(AckError::BadMac));
    assert_eq!(
        on(&mut t, &fx.ack(4, 10, m(10))),
        Err(AckError::NotMember(4))
    );
    let other = Ack::sign(&fx.ack, &REALM, 3, [0x48; 16], fx.e1(), fx.e1(), 10, m(10));
    assert_eq!(on(&mut t, &other), Err(AckError::WrongGroup));
    assert_eq!(t.committed(), 7);
    // Only current-epoch acks count: the same entry acked under an older or
    // a later promise, or an older entry under this promise, never does.
    let older = ep(0, 1);
    assert_eq!(
        on(&mut t, &fx.ack_in(3, older, older, 10, m(10))),
        Ok(AckOutcome::OldEpoch)
    );
    assert_eq!(
        on(&mut t, &fx.ack_in(3, fx.e1(), older, 10, m(10))),
        Ok(AckOutcome::OldEpoch)
    );
    assert_eq!(
        on(&mut t, &fx.ack_in(3, ep(2, 3), fx.e1(), 10, m(10))),
        Ok(AckOutcome::HigherEpoch { epoch: ep(2, 3) })
    );
    assert_eq!(t.committed(), 7);
    // Node 3 acks 10: the majority-th highest of {7, 9, 10} is 9.
    assert_eq!(
        on(&mut t, &fx.ack(3, 10, m(10))),
        Ok(AckOutcome::Counted { committed: 9 })
    );
    assert_eq!(
        on(&mut t, &fx.ack(1, 10, m(10))),
        Ok(AckOutcome::Counted { committed: 10 })
    );
    // Forgetting committed MACs.
    assert_eq!(t.mac_at(6), Some(m(6)));
    t.forget_through(8);
    assert_eq!(t.mac_at(8), None);
    assert_eq!(t.mac_at(9), Some(m(9)));
    assert_eq!(on(&mut t, &fx.ack(2, 8, m(8))), Ok(AckOutcome::Stale));
    assert_eq!(t.committed(), 10);
}

#[test]
fn commit_tracker_with_five_members() {
    let fx = Fx::new(&[1, 2, 3, 4, 5]);
    let chain = fx.chain(6);
    let mut t = tracker(&fx, &chain, 1); // from genesis; proposes 2..=6
    let on = |t: &mut CommitTracker, a: &Ack| t.on_ack(a, &fx.ack, &REALM);
    let m = |i: u64| chain[i as usize - 1].1;
    on(&mut t, &fx.ack(5, 6, m(6))).unwrap();
    on(&mut t, &fx.ack(4, 3, m(3))).unwrap();
    // Duplicates of node 4 never make the third vote.
    for _ in 0..5 {
        assert_eq!(on(&mut t, &fx.ack(4, 3, m(3))), Ok(AckOutcome::Duplicate));
    }
    assert_eq!(t.committed(), 0);
    // Forked-chain acks from 1 and 2 do not either.
    let (_, f2) = fx.batch(2, m(1), 2, 1);
    assert_eq!(
        on(&mut t, &fx.ack(1, 2, f2)),
        Ok(AckOutcome::OtherChain { index: 2 })
    );
    assert_eq!(t.committed(), 0);
    // Genesis (the base) says nothing about this leader's chain.
    assert_eq!(
        on(&mut t, &fx.ack_in(2, 0, 0, 1, m(1))),
        Ok(AckOutcome::OldEpoch)
    );
    assert_eq!(on(&mut t, &fx.ack(2, 1, m(1))), Ok(AckOutcome::Stale));
    assert_eq!(
        on(&mut t, &fx.ack(2, 2, m(2))),
        Ok(AckOutcome::Counted { committed: 2 })
    );
    assert_eq!(
        on(&mut t, &fx.ack(2, 5, m(5))),
        Ok(AckOutcome::Counted { committed: 3 })
    );
    assert_eq!(
        on(&mut t, &fx.ack(4, 6, m(6))),
        Ok(AckOutcome::Counted { committed: 5 })
    );
    assert_eq!(
        on(&mut t, &fx.ack(1, 6, m(6))),
        Ok(AckOutcome::Counted { committed: 6 })
    );
}

#[test]
fn commit_tracker_refuses_proposals_off_its_chain() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(4);
    let mut t = CommitTracker::new(G, fx.members.clone(), fx.e1(), 2, chain[1].1);
    assert_eq!(t.epoch(), fx.e1());
    assert_eq!(
        t.propose(&chain[3].0, chain[3].1),
        Err(ProposeError::NotNext { index: 4, next: 3 })
    );
    let (o3, om3) = fx.batch_in(ep(1, 2), 3, chain[1].1, 0);
    assert_eq!(
        t.propose(&o3, om3),
        Err(ProposeError::WrongEpoch {
            epoch: ep(1, 2),
            leader: fx.e1()
        })
    );
    let (f3, fm3) = fx.batch(3, Mac([3; 32]), 1, 0);
    assert_eq!(t.propose(&f3, fm3), Err(ProposeError::BrokenChain));
    let mut og = chain[2].0.clone();
    og.group = [0; 16];
    assert_eq!(t.propose(&og, chain[2].1), Err(ProposeError::WrongGroup));
    t.propose(&chain[2].0, chain[2].1).unwrap();
    t.propose(&chain[3].0, chain[3].1).unwrap();
    assert_eq!(t.last_index(), 4);
}

// ---------------------------------------------------------------- NVRAM v2

fn nvram(n: usize) -> NvramV2 {
    NvramV2 {
        realm_id: REALM,
        node: 3,
        slots: (0..n)
            .map(|i| GroupSlot {
                group: [i as u8 + 1; 16],
                state: if i % 5 == 4 {
                    SlotState::Retired
                } else {
                    SlotState::Member
                },
                promised: if i == 0 { 5 } else { ep(i as u64 + 2, 3) },
                last_epoch: if i == 0 { 0 } else { ep(i as u64, 3) },
                index: (i as u64) * 1000,
                mac: if i == 0 {
                    Mac::ZERO
                } else {
                    Mac([i as u8; 32])
                },
            })
            .collect(),
    }
}

#[test]
fn nvram_v2_round_trips_within_its_budget() {
    assert_eq!(NVRAM_HEADER_LEN, 23);
    assert_eq!(SLOT_LEN, 73);
    assert_eq!(NVRAM_MAX_LEN, 1191);
    for n in [1, 2, 3, MAX_GROUPS] {
        let nv = nvram(n);
        let bytes = nv.encode();
        assert_eq!(bytes.len(), 23 + 73 * n);
        assert_eq!(&bytes[..5], b"CVNV\x02");
        assert_eq!(bytes[21], 3);
        assert_eq!(usize::from(bytes[22]), n);
        assert_eq!(NvramV2::decode(&bytes).unwrap(), nv);
        for len in 0..bytes.len() {
            assert!(NvramV2::decode(&bytes[..len]).is_err(), "n={n} len={len}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(NvramV2::decode(&long), Err(LogError::TrailingBytes));
    }
    let mut nv = nvram(2);
    let s = nv.slot_mut(&[2; 16]).unwrap();
    s.index += 1;
    assert_eq!(nv.slot(&[2; 16]).unwrap().index, 1001);
    assert!(nv.slot(&[9; 16]).is_none());
    let s = nvram(3).slots[2];
    assert_eq!(GroupSlot::decode(&s.encode()).unwrap(), s);
}

#[test]
fn nvram_v2_rejects_malformed_and_oversized_contents() {
    let good = nvram(2).encode();
    // Oversized: 17 slots (count byte 17 and the bytes to match), and any
    // input past the 16-slot maximum.
    let seventeen = nvram(17).encode();
    assert_eq!(seventeen.len(), 23 + 73 * 17);
    assert!(NvramV2::decode(&seventeen).is_err());
    assert!(NvramV2::decode(&vec![0u8; 4000]).is_err());
    let mut claim = good[..23].to_vec();
    claim[22] = 17;
    assert!(matches!(
        NvramV2::decode(&claim),
        Err(LogError::Malformed(_))
    ));
    claim[22] = 255;
    assert!(matches!(
        NvramV2::decode(&claim),
        Err(LogError::Malformed(_))
    ));
    // No groups.
    let mut empty = good[..23].to_vec();
    empty[22] = 0;
    assert!(NvramV2::decode(&empty).is_err());
    // The count disagrees with the length.
    assert!(NvramV2::decode(&with(good.clone(), 22, 1)).is_err());
    assert!(NvramV2::decode(&with(good.clone(), 22, 3)).is_err());
    // Magic and version: a v1 anchor is not a v2 NVRAM.
    assert_eq!(
        NvramV2::decode(&with(good.clone(), 0, b'X')),
        Err(LogError::BadMagic)
    );
    assert_eq!(
        NvramV2::decode(&with(good.clone(), 4, 1)),
        Err(LogError::Version(1))
    );
    let mut v1 = b"CVNV\x01".to_vec();
    v1.extend_from_slice(&[0; 40]);
    assert_eq!(NvramV2::decode(&v1), Err(LogError::Version(1)));
    // Slots: unknown state, index 0 with a MAC, one group twice.
    for state in [0u8, 3, 255] {
        assert!(NvramV2::decode(&with(good.clone(), 23 + 16, state)).is_err());
    }
    assert!(NvramV2::decode(&with(good.clone(), 23 + 73 - 1, 1)).is_err());
    // Index 0 with a last epoch; a last epoch above the promise.
    assert!(NvramV2::decode(&with(good.clone(), 23 + 32, 1)).is_err());
    let mut ahead = nvram(2);
    ahead.slots[1].last_epoch = ahead.slots[1].promised + 1;
    assert!(NvramV2::decode(&ahead.encode()).is_err());
    let mut twice = nvram(2);
    twice.slots[1].group = twice.slots[0].group;
    assert!(NvramV2::decode(&twice.encode()).is_err());
    assert!(GroupSlot::decode(&good[23..23 + 72]).is_err());
    assert!(GroupSlot::decode(&good[23..23 + 74]).is_err());
}

// ---------------------------------------------------------------- randomized

fn below(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// Drives random entries (valid steps, competing leaders' forks in random
/// epochs, replays, forged MACs and prev_macs, other groups, jumps with good,
/// bad and old-epoch certificates) and random promises (votes) against one
/// slot, checking every answer against an independent statement of the
/// accept rule and the invariants "never two MACs at one (epoch, index);
/// (last epoch, index) only goes up; the promise never goes down".
#[test]
fn randomized_slots_never_ack_twice_at_one_epoch_and_index() {
    // How often each answer came up over all seeds (every kind must occur).
    let mut tally: std::collections::BTreeMap<String, u32> = Default::default();
    for seed in 0..24u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let nodes: &[u8] = if seed % 2 == 0 {
            &[1, 2, 3]
        } else {
            &[1, 2, 3, 4, 5]
        };
        let fx = Fx::new(nodes);
        let ctx = fx.ctx();
        let mut slot = GroupSlot::new(G);
        // Every entry ever made: (entry, mac) across all branches.
        let mut seen: Vec<(Entry, Mac)> = vec![fx.genesis()];
        let mut acked: std::collections::BTreeMap<(u64, u64), Mac> = Default::default();
        let mut accepted = 0;
        let mut tag = 0u64;
        for step in 0..400 {
            tag += 1;
            let leader = nodes[below(&mut rng, nodes.len() as u64) as usize];
            if below(&mut rng, 25) == 0 {
                // A vote for some epoch around the promise.
                let c = ((slot.promised >> 8) + below(&mut rng, 3)).saturating_sub(1);
                let target = ep(c.max(1), leader);
                let before = slot.promised;
                let r = slot.promise(target);
                assert_eq!(r.is_ok(), target >= before, "seed {seed} step {step}");
                assert_eq!(slot.promised, before.max(target));
                continue;
            }
            // A base to build on: the slot's tip or any entry seen.
            let (base_i, base_m) = if below(&mut rng, 3) > 0 || seen.is_empty() {
                (slot.index, slot.mac)
            } else {
                let (e, m) = &seen[below(&mut rng, seen.len() as u64) as usize];
                (e.index, *m)
            };
            // An epoch around the slot's: mostly current or next, sometimes older.
            let counter = ((slot.promised >> 8) + below(&mut rng, 3))
                .saturating_sub(1)
                .max(1);
            let epoch = ep(counter, leader);
            let (mut e, mut m) = if base_i == 0 {
                fx.genesis()
            } else {
                fx.batch_in(epoch, base_i + 1, base_m, tag)
            };
            let mut cert = None;
            match below(&mut rng, 10) {
                0 => {
                    // Replay something seen.
                    let (se, sm) = seen[below(&mut rng, seen.len() as u64) as usize].clone();
                    e = se;
                    m = sm;
                }
                1 => m.0[below(&mut rng, 32) as usize] ^= 1 << below(&mut rng, 8),
                2 => {
                    let bits = rng.next_u64().to_be_bytes();
                    e.prev_mac.0[..8].copy_from_slice(&bits);
                    m = fx.mac(&e);
                }
                3 => {
                    e.group[0] ^= 1;
                    m = fx.mac(&e);
                }
                4 | 5 => {
                    // A jump: an entry some way ahead (or at the index, in
                    // another epoch), on this or another branch.
                    let ahead = below(&mut rng, 5);
                    if base_i > 0 {
                        let prev = Mac([rng.next_u64() as u8; 32]);
                        let p = if below(&mut rng, 2) == 0 {
                            base_m
                        } else {
                            prev
                        };
                        let (je, jm) = fx.batch_in(epoch, (base_i + ahead).max(2), p, tag);
                        e = je;
                        m = jm;
                    }
                    let mut acks = Vec::new();
                    for _ in 0..below(&mut rng, 7) {
                        let node = if below(&mut rng, 6) == 0 {
                            9
                        } else {
                            nodes[below(&mut rng, nodes.len() as u64) as usize]
                        };
                        let mut a = fx.ack_in(node, e.epoch, e.epoch, e.index, m);
                        match below(&mut rng, 14) {
                            0 => a.mac.0[3] ^= 4,
                            1 => a.index += 1,
                            2 => {
                                // Held under a later promise: not a commit.
                                a = fx.ack_in(node, e.epoch + 256, e.epoch, e.index, m);
                            }
                            _ => {}
                        }
                        acks.push(a);
                    }
                    cert = Some(Certificate::new(acks));
                }
                _ => {}
            }
            seen.push((e.clone(), m));

            // The rule, stated independently.
            let mac_ok = e.mac(&fx.log, &REALM) == m;
            let cert_ok = cert.as_ref().is_some_and(|c| {
                let all_good = !c.acks.is_empty()
                    && c.acks.iter().all(|a| {
                        a.group == G
                            && a.index == e.index
                            && a.entry_mac == m
                            && a.epoch == e.epoch
                            && a.entry_epoch == e.epoch
                            && a.verify(&fx.ack, &REALM)
                    });
                let distinct: std::collections::BTreeSet<u8> = c
                    .acks
                    .iter()
                    .map(|a| a.node)
                    .filter(|n| nodes.contains(n))
                    .collect();
                all_good && distinct.len() > nodes.len() / 2
            });
            let step_ok = e.index == slot.index + 1
                && e.prev_mac == slot.mac
                && e.epoch >= slot.promised
                && e.epoch >= slot.last_epoch;
            let newer = (e.epoch, e.index) > (slot.last_epoch, slot.index);
            let expect = e.group == G && mac_ok && (step_ok || (cert_ok && newer));

            let got = slot.check(&ctx, &e, &m, cert.as_ref());
            assert_eq!(got.is_ok(), expect, "seed {seed} step {step}: {got:?}");
            let name = format!("{got:?}");
            let name = name
                .split(['(', ')', ' ', '{'])
                .nth(1)
                .unwrap_or("")
                .to_string();
            *tally.entry(name).or_default() += 1;
            if let Ok(how) = got {
                assert_eq!(how == Accept::ChainStep, step_ok, "seed {seed} step {step}");
                let before = (slot.last_epoch, slot.index, slot.promised);
                slot.advance(&e, &m).unwrap();
                assert!((slot.last_epoch, slot.index) > (before.0, before.1));
                assert!(slot.promised >= before.2);
                assert!(slot.last_epoch <= slot.promised);
                if let Some(old) = acked.insert((e.epoch, e.index), m) {
                    assert_eq!(
                        old, m,
                        "seed {seed} step {step}: two MACs at ({}, {})",
                        e.epoch, e.index
                    );
                }
                accepted += 1;
            } else if (e.epoch, e.index) <= (slot.last_epoch, slot.index) {
                // A refused entry cannot be forced in by `advance` at or below (L, k).
                let mut s = slot;
                assert!(s.advance(&e, &m).is_err());
                assert_eq!(s, slot);
            }
            // NVRAM carries it unchanged.
            let nv = NvramV2 {
                realm_id: REALM,
                node: 1,
                slots: vec![slot],
            };
            assert_eq!(NvramV2::decode(&nv.encode()).unwrap(), nv);
        }
        assert!(accepted > 40, "seed {seed}: only {accepted} accepted");
    }
    for kind in [
        "ChainStep",
        "Jump",
        "BadMac",
        "WrongGroup",
        "Replay",
        "Conflict",
        "Stale",
        "BrokenChain",
        "Gap",
        "BadCertificate",
        "StaleEpoch",
        "EpochRegress",
    ] {
        assert!(
            tally.get(kind).copied().unwrap_or(0) > 0,
            "never saw {kind}: {tally:?}"
        );
    }
}

/// Random ack deliveries (reordered, duplicated, forked, from outsiders,
/// under older and later epochs) against a leader's tracker: the commit
/// index never goes down, never passes the chain, and is always backed by a
/// majority of members whose current-epoch acks are on this chain at or
/// above it.
#[test]
fn randomized_commit_tracking_is_backed_by_a_current_epoch_majority() {
    for seed in 0..16u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(1000 + seed);
        let nodes: &[u8] = if seed % 2 == 0 {
            &[1, 2, 3]
        } else {
            &[2, 4, 6, 8, 10]
        };
        let fx = Fx::new(nodes);
        let chain = fx.chain(30);
        let base = 1 + below(&mut rng, 10) as usize;
        let mut t = tracker(&fx, &chain, base);
        let mut highest: std::collections::BTreeMap<u8, u64> = Default::default();
        let mut last = 0;
        for _ in 0..300 {
            let node = if below(&mut rng, 10) == 0 {
                7
            } else {
                nodes[below(&mut rng, nodes.len() as u64) as usize]
            };
            let i = 1 + below(&mut rng, 32);
            let on_chain = below(&mut rng, 4) > 0 && i <= 30;
            let mac = if on_chain {
                chain[i as usize - 1].1
            } else {
                Mac([i as u8 ^ 0x5a; 32])
            };
            let e1 = fx.e1();
            let (pe, ee) = match below(&mut rng, 6) {
                0 => (e1 + 256, e1),
                1 => (e1, e1 - 256),
                _ => (e1, e1),
            };
            let r = t.on_ack(&fx.ack_in(node, pe, ee, i, mac), &fx.ack, &REALM);
            if !nodes.contains(&node) {
                assert_eq!(r, Err(AckError::NotMember(node)));
                continue;
            }
            if pe != e1 || ee != e1 {
                assert!(matches!(
                    r,
                    Ok(AckOutcome::OldEpoch) | Ok(AckOutcome::HigherEpoch { .. })
                ));
            }
            if on_chain && i > base as u64 && pe == e1 && ee == e1 {
                let h = highest.entry(node).or_insert(0);
                *h = (*h).max(i);
            }
            let c = t.committed();
            assert!(c >= last);
            assert!(c <= 30);
            last = c;
            if c > 0 {
                assert!(c > base as u64);
                let backing = highest.values().filter(|&&h| h >= c).count();
                assert!(backing > nodes.len() / 2, "seed {seed}");
            }
            // And it is the highest such index.
            let mut hs: Vec<u64> = highest.values().copied().collect();
            hs.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(c, hs.get(nodes.len() / 2).copied().unwrap_or(0));
        }
        assert!(last > base as u64, "seed {seed}: nothing committed");
    }
}

// ---------------------------------------------------------------- epochs (ADR 0012)

#[test]
fn epochs_name_their_leader_and_only_go_up() {
    assert_eq!(next_epoch(0, 3), Some(ep(1, 3)));
    assert_eq!(next_epoch(ep(1, 3), 3), Some(ep(2, 3)));
    assert_eq!(next_epoch(ep(4, 9), 2), Some(ep(5, 2)));
    assert_eq!(epoch_node(ep(5, 2)), 2);
    assert_eq!(next_epoch(u64::MAX, 1), None);
    assert_eq!(next_epoch(((1u64 << 56) - 1) << 8, 1), None);
    assert_eq!(
        next_epoch(((1u64 << 56) - 2) << 8, 1),
        Some(((1u64 << 56) - 1) << 8 | 1)
    );
}

#[test]
fn a_lower_epoch_is_refused_after_a_promise() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(6);
    let mut slot = slot_at(&fx, &chain, 4);
    assert_eq!((slot.promised, slot.last_epoch), (fx.e1(), fx.e1()));
    // A vote for node 3's epoch 2.
    slot.promise(ep(2, 3)).unwrap();
    slot.promise(ep(2, 3)).unwrap(); // again: a no-op
    assert_eq!(
        slot.promise(ep(2, 2)),
        Err(Reject::StaleEpoch {
            epoch: ep(2, 2),
            promised: ep(2, 3)
        })
    );
    // The old leader's next entry chains, but is of a lower epoch: refused.
    let (e5, m5) = &chain[4];
    assert_eq!(
        slot.check(&fx.ctx(), e5, m5, None),
        Err(Reject::StaleEpoch {
            epoch: fx.e1(),
            promised: ep(2, 3)
        })
    );
    // As a one-entry segment too.
    assert_eq!(
        slot.check_segment(&fx.ctx(), &[], &chain[4..5]),
        Err(Reject::StaleEpoch {
            epoch: fx.e1(),
            promised: ep(2, 3)
        })
    );
    // The new leader's entry at 5 goes through; then e1's entries never again.
    let (l5, lm5) = fx.batch_in(ep(2, 3), 5, chain[3].1, 1);
    assert_eq!(
        slot.check(&fx.ctx(), &l5, &lm5, None),
        Ok(Accept::ChainStep)
    );
    slot.advance(&l5, &lm5).unwrap();
    assert_eq!(
        slot.check_segment(&fx.ctx(), &[(l5.clone(), lm5)], &chain[4..6]),
        Err(Reject::StaleEpoch {
            epoch: fx.e1(),
            promised: ep(2, 3)
        })
    );
    // A vote below is refused, and the NVRAM keeps the promise.
    let nv = NvramV2 {
        realm_id: REALM,
        node: 1,
        slots: vec![slot],
    };
    let back = NvramV2::decode(&nv.encode()).unwrap();
    assert_eq!(back.slots[0].promised, ep(2, 3));
}

/// Member `m`'s log: entries `1..=k` as its host holds them.
type Log = Vec<(Entry, Mac)>;

/// Sends `leader_log` to a member (slot + log) the way a host would: from
/// the first index where they differ, with the member's own suffix as proof.
fn replicate(
    fx: &Fx,
    slot: &mut GroupSlot,
    log: &mut Log,
    leader_log: &Log,
) -> Result<Accept, Reject> {
    let d = log
        .iter()
        .zip(leader_log.iter())
        .take_while(|(a, b)| a.1 == b.1)
        .count();
    let own = &log[d..];
    let seg = &leader_log[d..];
    let how = slot.check_segment(&fx.ctx(), own, seg)?;
    let Accept::Segment { keep } = how else {
        panic!("{how:?}")
    };
    log.truncate(keep as usize);
    log.extend_from_slice(&leader_log[keep as usize..]);
    let (tip, tm) = log.last().unwrap();
    slot.advance(tip, tm).unwrap();
    Ok(how)
}

#[test]
fn a_higher_epoch_replaces_an_uncommitted_suffix() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(8);
    // The member holds 1..=8 of e1; 7 and 8 never committed.
    let mut slot = slot_at(&fx, &chain, 8);
    let mut log: Log = chain.clone();
    // Node 2 leads epoch 2 from 1..=6: its leader entry at 7, a batch at 8, 9.
    let e2 = ep(2, 2);
    let mut leader: Log = chain[..6].to_vec();
    for i in 7..=9u64 {
        let prev = leader.last().unwrap().1;
        leader.push(fx.batch_in(e2, i, prev, 100 + i));
    }
    // Without the member's own suffix as proof: refused.
    assert_eq!(
        slot.check_segment(&fx.ctx(), &[], &leader[6..]),
        Err(Reject::BadSegment("own suffix does not cover d+1..=k"))
    );
    // With a forged own suffix (another chain that does not end at h).
    let (x7, xm7) = fx.batch(7, chain[5].1, 1, 55);
    let (x8, xm8) = fx.batch(8, xm7, 1, 55);
    assert_eq!(
        slot.check_segment(&fx.ctx(), &[(x7, xm7), (x8, xm8)], &leader[6..]),
        Err(Reject::BadSegment("own suffix does not end at the slot"))
    );
    // A segment that does not chain from where the own suffix starts.
    assert_eq!(
        slot.check_segment(&fx.ctx(), &chain[6..], &leader[7..]),
        Err(Reject::BadSegment("own suffix does not cover d+1..=k"))
    );
    let mut bad = leader[6..].to_vec();
    bad[1].1 .0[0] ^= 1;
    assert_eq!(
        slot.check_segment(&fx.ctx(), &chain[6..], &bad),
        Err(Reject::BadMac)
    );
    // The real thing: keep 1..=6, replace 7..=8, append 9.
    assert_eq!(
        replicate(&fx, &mut slot, &mut log, &leader),
        Ok(Accept::Segment { keep: 6 })
    );
    assert_eq!(
        (slot.promised, slot.last_epoch, slot.index, slot.mac),
        (e2, e2, 9, leader[8].1)
    );
    assert_eq!(log.len(), 9);
    // The same segment again: nothing new.
    assert_eq!(
        slot.check_segment(&fx.ctx(), &log[6..], &leader[6..]),
        Err(Reject::Replay { index: 9 })
    );
    // An extension overlapping what it holds.
    let (l10, lm10) = fx.batch_in(e2, 10, leader[8].1, 110);
    leader.push((l10, lm10));
    assert_eq!(
        replicate(&fx, &mut slot, &mut log, &leader),
        Ok(Accept::Segment { keep: 9 })
    );
    assert_eq!(
        slot.check_segment(&fx.ctx(), &log[7..], &leader[7..]),
        Err(Reject::Replay { index: 10 })
    );
    // A conflicting segment of the same epoch (a forger's) replaces nothing.
    let (f10, fm10) = fx.batch_in(e2, 10, leader[8].1, 666);
    assert_eq!(
        slot.check_segment(&fx.ctx(), &log[9..], &[(f10, fm10)]),
        Err(Reject::NoReplace {
            epoch: e2,
            last: e2
        })
    );
    // A lower epoch's conflicting segment neither (and it is stale anyway).
    assert_eq!(
        slot.check_segment(&fx.ctx(), &log[6..], &chain[6..]),
        Err(Reject::StaleEpoch {
            epoch: fx.e1(),
            promised: e2
        })
    );
    // A higher epoch whose log is shorter also replaces the uncommitted tail:
    // node 3's epoch 3 from 1..=7 (it had the e2 leader entry at 7).
    let e3 = ep(3, 3);
    let mut l3: Log = leader[..7].to_vec();
    let prev = l3.last().unwrap().1;
    l3.push(fx.batch_in(e3, 8, prev, 3));
    assert_eq!(
        replicate(&fx, &mut slot, &mut log, &l3),
        Ok(Accept::Segment { keep: 7 })
    );
    assert_eq!((slot.last_epoch, slot.index), (e3, 8));
    assert_eq!(log.len(), 8);
}

#[test]
fn a_restarted_leader_cannot_reuse_its_epoch() {
    let fx = Fx::new(&[1, 2, 3]);
    let chain = fx.chain(3);
    let mut slot = slot_at(&fx, &chain, 3);
    let cand = slot.start_election(2).unwrap();
    let e = cand.epoch();
    assert_eq!(e, ep(2, 2));
    assert_eq!(slot.promised, e, "promised before any vote request leaves");
    let vote = Ack::of_slot(&fx.ack, &REALM, 3, &{
        let mut s = slot_at(&fx, &chain, 3);
        s.promise(e).unwrap();
        s
    });
    let mut t = cand
        .elect(&slot, &fx.ctx(), std::slice::from_ref(&vote))
        .unwrap();
    assert_eq!(t.epoch(), e);
    let (l4, lm4) = fx.batch_in(e, 4, chain[2].1, 0);
    t.propose(&l4, lm4).unwrap();
    // The core restarts: its NVRAM holds the promise; the candidacy and the
    // tracker are gone. Its next election is for a strictly higher epoch of
    // its own, so it can never propose a second entry at (e, 4).
    let nv = NvramV2 {
        realm_id: REALM,
        node: 2,
        slots: vec![slot],
    };
    let mut back = NvramV2::decode(&nv.encode()).unwrap().slots[0];
    let again = back.start_election(2).unwrap();
    assert_eq!(again.epoch(), ep(3, 2));
    assert!(again.epoch() > e);
    // The old votes (for e) do not elect the new candidacy.
    assert_eq!(
        again.elect(&back, &fx.ctx(), &[vote]).unwrap_err(),
        ElectError::NoMajority { have: 1, need: 2 }
    );
    // And a candidacy superseded by a vote for someone else is dead.
    let mut s = slot_at(&fx, &chain, 3);
    let c = s.start_election(1).unwrap();
    s.promise(ep(2, 3)).unwrap();
    let v = Ack::of_slot(&fx.ack, &REALM, 3, &s);
    assert_eq!(
        c.elect(&s, &fx.ctx(), &[v]).unwrap_err(),
        ElectError::Superseded
    );
}

#[test]
fn an_election_needs_a_majority_no_more_up_to_date_than_the_candidate() {
    let fx = Fx::new(&[1, 2, 3, 4, 5]);
    let chain = fx.chain(6);
    let mut cand_slot = slot_at(&fx, &chain, 4);
    let cand = cand_slot.start_election(5).unwrap();
    let e = cand.epoch();
    let voter = |node: NodeId, upto: usize| {
        let mut s = slot_at(&fx, &chain, upto);
        s.promise(e).unwrap();
        Ack::of_slot(&fx.ack, &REALM, node, &s)
    };
    // Votes from logs ahead of the candidate's do not count; behind or equal do.
    let ahead = [voter(1, 6), voter(2, 5)];
    let mut forged = voter(3, 3);
    forged.mac.0[0] ^= 1;
    let wrong_epoch = {
        let mut s = slot_at(&fx, &chain, 3);
        s.promise(e + 256).unwrap();
        Ack::of_slot(&fx.ack, &REALM, 4, &s)
    };
    let mut votes = ahead.to_vec();
    votes.push(forged);
    votes.push(wrong_epoch);
    votes.push(voter(3, 4));
    votes.push(voter(3, 2)); // node 3 twice: counted once
    assert_eq!(
        cand.elect(&cand_slot, &fx.ctx(), &votes).unwrap_err(),
        ElectError::NoMajority { have: 2, need: 3 }
    );
    // The same candidacy again (a fresh copy of its slot) with node 4, which
    // holds only genesis: elected, its first proposal at 5.
    votes.push(voter(4, 1));
    let mut s = slot_at(&fx, &chain, 4);
    let c = s.start_election(5).unwrap();
    assert_eq!(c.epoch(), e);
    let t = c.elect(&s, &fx.ctx(), &votes).unwrap();
    assert_eq!((t.epoch(), t.last_index()), (e, 4));
}

/// Raft's "figure 8" with cores: an entry of an old epoch that a later
/// leader replicated to a majority is not committed by that, and is
/// legitimately replaced; the tracker never counts it. Only once an entry
/// of the current epoch commits on top of it is it committed, and then no
/// candidate without it can be elected.
#[test]
fn figure_8_an_old_epoch_entry_on_a_majority_is_not_committed() {
    let fx = Fx::new(&[1, 2, 3, 4, 5]);
    let ctx = fx.ctx();
    let g = fx.genesis();
    // Node n (1..=5) at index n-1 of these.
    let mut slots: Vec<GroupSlot> = (0..5)
        .map(|_| slot_at(&fx, std::slice::from_ref(&g), 1))
        .collect();
    let mut logs: Vec<Log> = (0..5).map(|_| vec![g.clone()]).collect();
    let elect = |slots: &mut Vec<GroupSlot>, cand: NodeId, voters: &[NodeId]| {
        let c = slots[usize::from(cand) - 1].start_election(cand).unwrap();
        let votes: Vec<Ack> = voters
            .iter()
            .filter_map(|&v| {
                let s = &mut slots[usize::from(v) - 1];
                s.promise(c.epoch()).ok()?;
                Some(Ack::of_slot(&fx.ack, &REALM, v, s))
            })
            .collect();
        let s = slots[usize::from(cand) - 1];
        c.elect(&s, &ctx, &votes)
    };
    // Leader entries: each leader proposes onto its own log.
    let lead =
        |slots: &mut Vec<GroupSlot>, logs: &mut Vec<Log>, t: &mut CommitTracker, node: NodeId| {
            let ix = usize::from(node) - 1;
            let prev = logs[ix].last().unwrap().1;
            let (e, m) = fx.batch_in(t.epoch(), logs[ix].len() as u64 + 1, prev, t.epoch());
            t.propose(&e, m).unwrap();
            assert_eq!(slots[ix].check(&ctx, &e, &m, None), Ok(Accept::ChainStep));
            slots[ix].advance(&e, &m).unwrap();
            logs[ix].push((e, m));
            Ack::of_slot(&fx.ack, &REALM, node, &slots[ix])
        };
    let send = |slots: &mut Vec<GroupSlot>, logs: &mut Vec<Log>, from: NodeId, to: NodeId| {
        let leader_log = logs[usize::from(from) - 1].clone();
        let ix = usize::from(to) - 1;
        replicate(&fx, &mut slots[ix], &mut logs[ix], &leader_log)?;
        Ok::<Ack, Reject>(Ack::of_slot(&fx.ack, &REALM, to, &slots[ix]))
    };

    // (a) S1 leads epoch 2 (votes S2, S3); x2 = its entry at 2, on S1 and S2.
    let mut t2 = elect(&mut slots, 1, &[2, 3]).unwrap();
    let own = lead(&mut slots, &mut logs, &mut t2, 1);
    t2.on_ack(&own, &fx.ack, &REALM).unwrap();
    let a = send(&mut slots, &mut logs, 1, 2).unwrap();
    assert_eq!(
        t2.on_ack(&a, &fx.ack, &REALM),
        Ok(AckOutcome::Counted { committed: 0 })
    );
    let x2 = logs[0][1].1;
    // (b) S1 is cut off; S5 leads epoch 3 (votes S3, S4); y2 only on S5.
    let mut t3 = elect(&mut slots, 5, &[3, 4]).unwrap();
    lead(&mut slots, &mut logs, &mut t3, 5);
    // (c) S5 is cut off; S1 leads epoch 4 (votes S2, S3): its entry z3 goes
    // to S3 together with x2. Now x2 is on S1, S2, S3: a majority.
    let mut t4 = elect(&mut slots, 1, &[2, 3]).unwrap();
    let own = lead(&mut slots, &mut logs, &mut t4, 1);
    assert_eq!(t4.epoch(), ep(2, 1));
    t4.on_ack(&own, &fx.ack, &REALM).unwrap();
    let a3 = send(&mut slots, &mut logs, 1, 3).unwrap();
    t4.on_ack(&a3, &fx.ack, &REALM).unwrap();
    let holders = logs
        .iter()
        .filter(|l| l.get(1).is_some_and(|e| e.1 == x2))
        .count();
    assert_eq!(holders, 3, "x2 is on a majority");
    // S2's ack (promise 4, entry of epoch 2) is an old-epoch ack: not counted.
    let a2 = Ack::of_slot(&fx.ack, &REALM, 2, &slots[1]);
    assert_eq!(a2.entry_epoch, ep(1, 1));
    assert_eq!(t4.on_ack(&a2, &fx.ack, &REALM), Ok(AckOutcome::OldEpoch));
    assert_eq!(t4.committed(), 0, "x2 is NOT committed (figure 8)");
    // Nor do those acks make a certificate for x2.
    let acks_x2 = vec![
        fx.ack_in(1, ep(2, 1), ep(1, 1), 2, x2),
        fx.ack_in(2, ep(2, 1), ep(1, 1), 2, x2),
        fx.ack_in(3, ep(2, 1), ep(1, 1), 2, x2),
    ];
    assert!(matches!(
        Certificate::new(acks_x2).verify(&fx.members, &fx.ack, &REALM),
        Err(CertError::OldEpoch { .. })
    ));

    // (d) S1 is cut off again; S5 is elected for epoch 5 by S2, S4 (S3 holds
    // z3 of epoch 4, newer than S5's y2 of epoch 3, so its vote does not count).
    let mut branch_d = (slots.clone(), logs.clone());
    let mut t5 = elect(&mut branch_d.0, 5, &[2, 3, 4]).unwrap();
    lead(&mut branch_d.0, &mut branch_d.1, &mut t5, 5);
    // Its entries replace x2 on S2 and S3 (and z3 on S3): legitimately, as
    // x2 never committed. A leader that had counted x2 committed on the
    // majority S1, S2, S3 would now have released an answer for a lost entry.
    for to in [2, 3, 4] {
        let a = send(&mut branch_d.0, &mut branch_d.1, 5, to).unwrap();
        t5.on_ack(&a, &fx.ack, &REALM).unwrap();
    }
    assert_eq!(t5.committed(), 3);
    let holders = branch_d
        .1
        .iter()
        .filter(|l| l.get(1).is_some_and(|e| e.1 == x2))
        .count();
    assert_eq!(holders, 1, "x2 survives only on the cut-off S1");

    // (e) Instead: S1 gets z3 onto a majority (S2 too) before failing. Now
    // z3 and x2 under it are committed; S5 can no longer be elected, and
    // every later leader holds x2.
    let a2 = send(&mut slots, &mut logs, 1, 2).unwrap();
    assert_eq!(
        t4.on_ack(&a2, &fx.ack, &REALM),
        Ok(AckOutcome::Counted { committed: 3 })
    );
    assert_eq!(
        elect(&mut slots, 5, &[2, 3, 4]).unwrap_err(),
        ElectError::NoMajority { have: 2, need: 3 }
    );
    // S4 holds only genesis: nobody else's vote counts for it.
    assert_eq!(
        elect(&mut slots, 4, &[2, 3, 5]).unwrap_err(),
        ElectError::NoMajority { have: 1, need: 3 }
    );
    // S2 can be elected (by S3, S4), and its log holds x2 and z3.
    let t7 = elect(&mut slots, 2, &[3, 4]).unwrap();
    assert_eq!(t7.last_index(), 3);
    assert_eq!(logs[1][1].1, x2);
}
