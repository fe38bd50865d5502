//! Real cores as members of a replicated group (ADR 0013), in one process:
//! registration and login through a majority, failover, an uncommitted
//! suffix replaced by a later leader, a store rolled back and resynced, and
//! the calls a host could misuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_vault_core::log::Certificate;
use coffer_vault_core::replica::ReplicaError;
use coffer_vault_core::testing::group::MemGroup;
use coffer_vault_core::testing::{Outcome, TestClient};
use coffer_vault_core::{Input, StartState};
use coffer_vault_proto::ErrorCode;

const K: [u8; 32] = [0x4b; 32];

fn group(n: usize) -> (MemGroup, TestClient) {
    let mut g = MemGroup::new(7, n).unwrap();
    g.elect(0).unwrap();
    let c = TestClient::new(8, g.descriptor());
    (g, c)
}

fn applied(g: &MemGroup, i: usize) -> u64 {
    g.members[i].core.replica_status().unwrap().applied
}

#[test]
fn a_registration_is_on_every_member_and_survives_the_leader() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "alice");
    assert_eq!(
        c.register(&mut g, rid, b"right", &K, 10, false).unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut g, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
    // One more round so the followers learn the last commit and apply it.
    g.replicate().unwrap();
    let a0 = applied(&g, 0);
    assert_eq!(applied(&g, 1), a0);
    assert_eq!(applied(&g, 2), a0);
    assert_eq!(g.members[1].store, g.members[0].store, "same records");
    // The leader goes away; member 2 leads with member 3.
    g.members[0].up = false;
    g.elect(1).unwrap();
    assert_eq!(
        c.login(&mut g, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(8)),
        "the counter carried over"
    );
    assert_eq!(
        c.login(&mut g, rid, b"right").unwrap(),
        Outcome::Ok(Some(K))
    );
}

#[test]
fn without_a_majority_nothing_commits_and_no_reply_leaves() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "bob");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.members[1].up = false;
    g.members[2].up = false;
    let r = c.login(&mut g, rid, b"wrong");
    assert!(
        r.as_ref().is_err_and(|e| e.contains("not committed")),
        "{r:?}"
    );
    // No election either.
    assert!(g.elect(0).is_err());
}

#[test]
fn a_later_leader_replaces_an_uncommitted_entry() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "carol");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.replicate().unwrap();
    // The leader proposes a batch nobody else sees (a garbage frame: an
    // empty batch is still an entry).
    let x = g
        .propose_unsent(vec![Input::Data {
            frame: vec![1, 2, 3],
        }])
        .unwrap();
    let x_mac = g.members[0].log[(x - 1) as usize].mac;
    // It goes down; the others elect member 2 and move on.
    g.members[0].up = false;
    g.elect(1).unwrap();
    assert_eq!(
        c.login(&mut g, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
    // Back up, member 1 restarts and takes the new leader's log as a
    // segment: its entry at x is replaced, never applied.
    assert_eq!(g.restart(0).unwrap(), StartState::Ready);
    assert_eq!(
        applied(&g, 0),
        x - 1,
        "the uncommitted entry was never applied"
    );
    g.replicate().unwrap();
    let m0 = &g.members[0];
    assert_ne!(m0.log[(x - 1) as usize].mac, x_mac, "entry x replaced");
    assert_eq!(m0.log.len(), g.members[1].log.len());
    let st = m0.core.replica_status().unwrap();
    let lst = g.members[1].core.replica_status().unwrap();
    assert_eq!((st.index, st.mac), (lst.index, lst.mac));
    assert_eq!(applied(&g, 0), applied(&g, 1));
    assert_eq!(g.members[0].store, g.members[1].store);
}

#[test]
fn a_rolled_back_store_resyncs_and_never_refunds() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "dave");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.replicate().unwrap();
    // Copy member 3's store and log, spend two attempts, put the copy back.
    let old_store = g.members[2].store.clone();
    let old_log = g.members[2].log.clone();
    let old_applied = g.members[2].applied;
    for left in [9, 8] {
        assert_eq!(
            c.login(&mut g, rid, b"wrong").unwrap(),
            Outcome::Refused(ErrorCode::WrongPassword, Some(left))
        );
    }
    g.replicate().unwrap();
    g.members[2].store = old_store;
    g.members[2].log = old_log;
    g.members[2].applied = old_applied;
    let state = g.restart(2).unwrap();
    assert!(matches!(state, StartState::Resyncing(_)), "{state:?}");
    // Resyncing: it votes and acks nothing.
    let req = g.members[0].core.current_ack().unwrap();
    assert_eq!(
        g.members[2].core.vote(&req).err(),
        Some(ReplicaError::NotReady)
    );
    // The leader's log brings it back; then it and member 2 carry on alone.
    g.replicate().unwrap();
    assert!(g.members[2].core.replica_status().unwrap().ready);
    g.members[0].up = false;
    g.elect(2).unwrap();
    assert_eq!(
        c.login(&mut g, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(7)),
        "the rollback gave no attempt back"
    );
}

#[test]
fn a_tampered_store_is_refused_at_start() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "erin");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.replicate().unwrap();
    let m = &mut g.members[1];
    let (id, sealed) = m
        .store
        .records
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    let mut bad = sealed;
    bad[40] ^= 1;
    m.store.records.insert(id, bad);
    // The records no longer match their leaves: refused at the first read
    // or apply. Leaves changed too: refused at start.
    let b = *m.store.leaves.keys().next().unwrap();
    m.store.leaves.insert(b, [0u8; 32]);
    let state = g.restart(1).unwrap();
    assert!(matches!(state, StartState::Refusing(_)), "{state:?}");
}

#[test]
fn the_cores_refuse_what_a_host_could_forge() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "fay");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    // Member 3 misses the last entry's certificate: it may not apply it.
    g.members[2].up = false;
    let _ = c.login(&mut g, rid, b"wrong").unwrap();
    g.members[2].up = true;
    g.cert = None;
    let before = applied(&g, 2);
    let x = g.members[0].log.last().unwrap().clone();
    g.replicate().unwrap();
    // An entry with a flipped byte does not verify.
    let mut forged = x.entry.clone();
    forged.root[0] ^= 1;
    let m = &mut g.members[1];
    assert!(m.core.accept(&forged, &x.mac).is_err());
    // Apply without a certificate is refused for a follower.
    let st = m.core.replica_status().unwrap();
    if st.applied < st.index {
        let item = m.log[st.applied as usize].clone();
        let r = m
            .core
            .apply(&item.entry, &item.mac, &item.body, vec![], None);
        assert!(r.is_err());
    }
    // A certificate with too few acks is not one.
    let own = g.members[1].core.current_ack().unwrap();
    assert!(g.members[1]
        .core
        .check_certificate(&Certificate::new(vec![own]))
        .is_err());
    assert!(applied(&g, 2) >= before);
    // A follower cannot propose; a leader cannot propose twice in flight.
    assert!(g.members[1].core.propose(vec![], vec![]).is_err());
    g.propose_unsent(vec![]).unwrap();
    assert!(g.members[0].core.propose(vec![], vec![]).is_err());
}

#[test]
fn a_five_member_group_loses_two_and_serves_on() {
    let (mut g, mut c) = group(5);
    let rid = g.members[0].core.record_id("app", "gus");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.members[0].up = false;
    g.members[4].up = false;
    g.elect(2).unwrap();
    assert_eq!(
        c.login(&mut g, rid, b"right").unwrap(),
        Outcome::Ok(Some(K))
    );
    g.members[3].up = false;
    assert!(
        c.login(&mut g, rid, b"right").is_err(),
        "two of five cannot commit"
    );
}

#[test]
fn a_follower_applies_only_what_a_certificate_proves_committed() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "hal");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.replicate().unwrap();
    let old_cert = g.cert.clone().unwrap();
    // The leader proposes x; member 2 takes it (chain step, ack), but no
    // certificate for x exists yet.
    let x = g
        .propose_unsent(vec![Input::Data { frame: vec![9] }])
        .unwrap();
    let item = g.members[0].log[(x - 1) as usize].clone();
    let m = &mut g.members[1];
    m.core.accept(&item.entry, &item.mac).unwrap();
    m.log.push(item.clone());
    let ack = m.core.persisted().unwrap();
    assert_eq!(applied(&g, 1), x - 1);
    let m = &g.members[1];
    // No certificate, or one for an earlier entry: refused.
    assert!(m
        .core
        .apply(&item.entry, &item.mac, &item.body, vec![], None)
        .is_err());
    assert!(m
        .core
        .apply(&item.entry, &item.mac, &item.body, vec![], Some(&old_cert))
        .is_err());
    // Leader and member 2 acked x: that certificate proves it committed.
    let own = g.members[0].core.current_ack().unwrap();
    let cert = Certificate::new(vec![own, ack]);
    let t = g.members[1]
        .core
        .apply(&item.entry, &item.mac, &item.body, vec![], Some(&cert))
        .unwrap();
    g.members[1].core.applied(t).unwrap();
    assert_eq!(applied(&g, 1), x);
}

#[test]
fn a_leader_with_a_batch_in_flight_takes_its_successors_log() {
    let (mut g, mut c) = group(3);
    let rid = g.members[0].core.record_id("app", "ivy");
    c.register(&mut g, rid, b"right", &K, 10, false).unwrap();
    g.replicate().unwrap();
    let root_before = g.members[0].core.tree_root();
    // A real state change in flight on the old leader, never sent: a KE1
    // spends one of ivy's attempts.
    let mut c2 = TestClient::new(99, g.descriptor());
    let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut c2.rng, b"guess").unwrap();
    let now = coffer_vault_core::testing::Vault::now_ms(&g);
    let (_ch, frame) =
        coffer_vault_proto::ClientChannel::open(&c2.realm, &ke1, now, &mut c2.rng).unwrap();
    g.propose_unsent(vec![Input::Open { record: rid, frame }])
        .unwrap();
    assert_ne!(
        g.members[0].core.tree_root(),
        root_before,
        "the batch changed the tree"
    );
    // Cut off (not restarted): the others elect member 2 and commit more.
    g.members[0].up = false;
    g.elect(1).unwrap();
    assert_eq!(
        c.login(&mut g, rid, b"right").unwrap(),
        Outcome::Ok(Some(K))
    );
    // Reconnected, the old leader (still leading in its own eyes) takes the
    // new leader's segment: it steps down and its tree drops the batch.
    g.members[0].up = true;
    g.replicate().unwrap();
    let st = g.members[0].core.replica_status().unwrap();
    assert_eq!(st.leading, None);
    let lst = g.members[1].core.replica_status().unwrap();
    assert_eq!((st.index, st.mac), (lst.index, lst.mac));
    assert_eq!(applied(&g, 0), applied(&g, 1));
    assert_eq!(g.members[0].store, g.members[1].store);
    assert_eq!(g.members[0].core.tree_root(), g.members[1].core.tree_root());
}

#[test]
fn only_a_candidate_core_can_ask_for_a_vote() {
    let (mut g, _) = group(3);
    let before = g.members[2].core.replica_status().unwrap().promised;
    // A member's own ack (a vote it gave, or its slot) is not a request for
    // its epoch unless its core stood for that epoch.
    let ack1 = g.members[1].core.current_ack().unwrap();
    assert!(g.members[2].core.vote(&ack1).is_err(), "a follower's ack");
    // The leader's current ack names the leader's epoch, which it stood
    // for; but a forged higher epoch (say the last one) does not verify.
    let mut forged = g.members[0].core.current_ack().unwrap();
    forged.epoch = (u64::MAX >> 8) << 8 | 1;
    assert!(g.members[2].core.vote(&forged).is_err(), "a forged epoch");
    assert_eq!(
        g.members[2].core.replica_status().unwrap().promised,
        before,
        "nothing promised"
    );
    // A real candidacy gets the vote.
    g.members[1].core.start_election().unwrap();
    let req = g.members[1].core.current_ack().unwrap();
    let vote = g.members[2].core.vote(&req).unwrap();
    assert_eq!(vote.epoch, req.epoch);
}

#[test]
fn a_group_serves_only_its_share_of_the_records() {
    use coffer_vault_core::replica::{group_for_bucket, group_range};
    assert_eq!(group_range(0, 3), (0, 21845));
    assert_eq!(group_range(1, 3), (21846, 43690));
    assert_eq!(group_range(2, 3), (43691, 65535));
    assert_eq!(group_range(0, 1), (0, 65535));
    for b in [0u16, 21845, 21846, 43690, 43691, 65535] {
        let g = group_for_bucket(b, 3);
        let (lo, hi) = group_range(g, 3);
        assert!(
            (lo..=hi).contains(&b),
            "bucket {b} -> group {g} {lo}..={hi}"
        );
    }
    let mut g = MemGroup::new_in(11, 3, (1, 3)).unwrap();
    g.elect(0).unwrap();
    let mut c = TestClient::new(12, g.descriptor());
    let (lo, hi) = g.members[0].core.replica_status().unwrap().range;
    assert_eq!((lo, hi), (21846, 43690));
    // Find one user inside the range and one outside.
    let (mut inside, mut outside) = (None, None);
    for u in 0..200 {
        let id = g.members[0].core.record_id("app", &format!("u{u}"));
        let b = u16::from_be_bytes([id[0], id[1]]);
        if (lo..=hi).contains(&b) {
            inside.get_or_insert(id);
        } else {
            outside.get_or_insert(id);
        }
    }
    let (inside, outside) = (inside.unwrap(), outside.unwrap());
    assert_eq!(
        c.register(&mut g, inside, b"pw", &K, 10, false).unwrap(),
        Outcome::Ok(None)
    );
    let r = c.register(&mut g, outside, b"pw", &K, 10, false);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.contains("outside group 1's range")),
        "{r:?}"
    );
    let st = g.members[0].core.replica_status().unwrap();
    assert_eq!(st.group, 1);
    // Every bucket has exactly one group, for any number of groups.
    for groups in 1..=16u8 {
        let mut next = 0u32;
        for i in 0..groups {
            let (lo, hi) = group_range(i, groups);
            assert_eq!(u32::from(lo), next);
            assert!(hi >= lo);
            assert_eq!(group_for_bucket(lo, groups), i);
            assert_eq!(group_for_bucket(hi, groups), i);
            next = u32::from(hi) + 1;
        }
        assert_eq!(next, 65_536);
    }
}
