//! The trusted core end to end through the real channel and OPAQUE messages,
//! on an in-memory platform and store (the daemon tests do the same over
//! HTTP, redb and a real NVRAM file).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_vault_core::testing::{MemRealm, Outcome, TestClient};
use coffer_vault_core::{CoreError, Input, Platform, StartState};
use coffer_vault_proto::ErrorCode;

const K: [u8; 32] = [0x4b; 32];

fn setup() -> (MemRealm, TestClient, [u8; 32]) {
    let realm = MemRealm::new(1).unwrap();
    let client = TestClient::new(2, realm.descriptor());
    let rid = realm.core.record_id("app", "alice");
    (realm, client, rid)
}

#[test]
fn register_then_login_releases_the_key() {
    let (mut v, mut c, rid) = setup();
    assert_eq!(
        c.register(&mut v, rid, b"correct horse", &K, 10, false)
            .unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut v, rid, b"correct horse").unwrap(),
        Outcome::Ok(Some(K))
    );
    // Other users and tenants are separate records.
    assert_ne!(
        v.core.record_id("app", "alice"),
        v.core.record_id("app2", "alice")
    );
    assert_ne!(
        v.core.record_id("app", "alice"),
        v.core.record_id("ap", "palice")
    );
    let bob = v.core.record_id("app", "bob");
    assert_eq!(
        c.login(&mut v, bob, b"correct horse").unwrap(),
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );
}

#[test]
fn ten_wrong_passwords_erase_the_key_for_good() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    for left in (0..10u8).rev() {
        assert_eq!(
            c.login(&mut v, rid, b"wrong").unwrap(),
            Outcome::Refused(ErrorCode::WrongPassword, Some(left)),
            "attempt with {left} left"
        );
    }
    // Erased: the right password no longer works, and the answer is the one
    // an unknown user gets.
    let after = c.login(&mut v, rid, b"right").unwrap();
    let nobody = v.core.record_id("app", "nobody");
    let unknown = c.login(&mut v, nobody, b"right").unwrap();
    assert_eq!(after, Outcome::Refused(ErrorCode::NotRegistered, None));
    assert_eq!(after, unknown);
    assert_eq!(v.core.stats().erased, 1);
    // A new registration is possible (a new key), without `replace`.
    assert_eq!(
        c.register(&mut v, rid, b"new", &[7; 32], 10, false)
            .unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut v, rid, b"new").unwrap(),
        Outcome::Ok(Some([7; 32]))
    );
}

#[test]
fn a_correct_login_resets_the_count_and_the_last_attempt_can_succeed() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 3, false).unwrap();
    c.login(&mut v, rid, b"wrong").unwrap();
    c.login(&mut v, rid, b"wrong").unwrap();
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Ok(Some(K))
    );
    assert_eq!(
        c.login(&mut v, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(2))
    );
    c.login(&mut v, rid, b"wrong").unwrap();
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Ok(Some(K)),
        "the last attempt may succeed"
    );
}

#[test]
fn abandoned_logins_spend_attempts_and_the_next_ke1_after_the_last_erases() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 3, false).unwrap();
    for left in [2u8, 1, 0] {
        assert_eq!(
            c.login_abandon(&mut v, rid, b"right").unwrap(),
            Outcome::Refused(ErrorCode::WrongPassword, Some(left))
        );
    }
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );
}

#[test]
fn registration_policy_and_replace() {
    let (mut v, mut c, rid) = setup();
    assert_eq!(
        c.register(&mut v, rid, b"p", &K, 11, false).unwrap(),
        Outcome::Refused(ErrorCode::PolicyRejected, None)
    );
    assert_eq!(
        c.register(&mut v, rid, b"p", &K, 0, false).unwrap(),
        Outcome::Refused(ErrorCode::PolicyRejected, None)
    );
    c.register(&mut v, rid, b"p", &K, 10, false).unwrap();
    assert_eq!(
        c.register(&mut v, rid, b"q", &[1; 32], 10, false).unwrap(),
        Outcome::Refused(ErrorCode::AlreadyRegistered, None)
    );
    // Replacing a live registration destroys the escrowed K: a token alone
    // may not (DESIGN.md §6, like Delete), and the record is untouched.
    assert_eq!(
        c.register(&mut v, rid, b"q", &[1; 32], 10, true).unwrap(),
        Outcome::Refused(ErrorCode::NotAuthenticated, None)
    );
    assert_eq!(c.login(&mut v, rid, b"p").unwrap(), Outcome::Ok(Some(K)));
    // After a correct login in the same session it may.
    let (_, ch) = c.login_keep(&mut v, rid, b"p").unwrap();
    let (mut ch, _) = ch.unwrap();
    assert_eq!(
        c.change_password(&mut v, &mut ch, b"q", &[1; 32]).unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut v, rid, b"q").unwrap(),
        Outcome::Ok(Some([1; 32]))
    );
    // `replace` without a login is refused even where nothing is live: a
    // plain registration is the way there.
    let (mut v, mut c, rid) = setup();
    assert_eq!(
        c.register(&mut v, rid, b"p", &K, 10, true).unwrap(),
        Outcome::Refused(ErrorCode::NotAuthenticated, None)
    );
    assert_eq!(
        c.register(&mut v, rid, b"p", &K, 10, false).unwrap(),
        Outcome::Ok(None)
    );
}

/// A `RegisterStart` spends no attempt, so it must never evaluate the OPRF
/// under the key a live record's logins use: with one KE2 in hand, such an
/// evaluation per guess would test passwords offline, without limit.
/// Without a login, a RegisterStart for a live record is refused before any
/// evaluation (`replace` needs the login, a plain one finds the record). In
/// a logged-in session (change of password) the registration has its own
/// salt in the credential identifier, so its OPRF key is new. Shown on the
/// wire: the same blinded element evaluated by that RegisterStart and by a
/// LoginStart gives different elements.
#[test]
fn register_start_is_no_oprf_oracle_for_the_live_record() {
    use coffer_vault_proto::{Request, Response};
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"correct horse", &K, 10, false)
        .unwrap();
    let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut c.rng, b"guess").unwrap();
    let Request::LoginStart { ke1 } = ke1 else {
        panic!("Login::start did not make a LoginStart")
    };
    // KE1 = blinded element | nonce | key share: a RegistrationRequest is
    // the blinded element alone.
    let mut blinded = [0u8; 32];
    blinded.copy_from_slice(&ke1[..32]);
    let start = |replace| Request::RegisterStart {
        replace,
        max_attempts: 10,
        request: blinded,
    };
    for (replace, want) in [
        (true, ErrorCode::NotAuthenticated),
        (false, ErrorCode::AlreadyRegistered),
    ] {
        match c.request(&mut v, rid, &start(replace)).unwrap() {
            Response::Error { code, .. } => assert_eq!(code, want, "replace = {replace}"),
            other => panic!("RegisterStart without a login answered {other:?}"),
        }
    }
    let register_eval = |v: &mut MemRealm, c: &mut TestClient| {
        let (_, ch) = c.login_keep(v, rid, b"correct horse").unwrap();
        let (mut ch, _) = ch.unwrap();
        match c.request_in(v, &mut ch, &start(false)).unwrap() {
            Response::RegisterStarted { response } => response[..32].to_vec(),
            other => panic!("RegisterStart answered {other:?}"),
        }
    };
    let first = register_eval(&mut v, &mut c);
    let second = register_eval(&mut v, &mut c);
    let login_eval = match c
        .request(&mut v, rid, &Request::LoginStart { ke1 })
        .unwrap()
    {
        Response::LoginStarted {
            attempts_remaining,
            ke2,
        } => {
            assert_eq!(attempts_remaining, 9);
            ke2[..32].to_vec()
        }
        other => panic!("LoginStart answered {other:?}"),
    };
    assert_ne!(
        first, login_eval,
        "RegisterStart evaluated under the login OPRF key"
    );
    assert_ne!(first, second, "two registrations share an OPRF key");
    // The abandoned registrations changed nothing: the password still works.
    assert_eq!(
        c.login(&mut v, rid, b"correct horse").unwrap(),
        Outcome::Ok(Some(K))
    );
    // And a completed replacement logs in under its own salt.
    let (_, ch) = c.login_keep(&mut v, rid, b"correct horse").unwrap();
    let (mut ch, _) = ch.unwrap();
    c.change_password(&mut v, &mut ch, b"battery staple", &[7; 32])
        .unwrap();
    assert_eq!(
        c.login(&mut v, rid, b"battery staple").unwrap(),
        Outcome::Ok(Some([7; 32]))
    );
}

#[test]
fn change_password_keeps_k_and_delete_erases() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"old", &K, 10, false).unwrap();
    let (out, ch) = c.login_keep(&mut v, rid, b"old").unwrap();
    assert_eq!(out, Outcome::Ok(Some(K)));
    let (mut ch, _) = ch.unwrap();
    assert_eq!(
        c.change_password(&mut v, &mut ch, b"new", &K).unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut v, rid, b"old").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
    assert_eq!(c.login(&mut v, rid, b"new").unwrap(), Outcome::Ok(Some(K)));
    let (_, ch) = c.login_keep(&mut v, rid, b"new").unwrap();
    let (mut ch, _) = ch.unwrap();
    assert_eq!(c.delete(&mut v, &mut ch).unwrap(), Outcome::Ok(None));
    assert_eq!(
        c.login(&mut v, rid, b"new").unwrap(),
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );
}

#[test]
fn delete_without_a_login_is_refused() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"p", &K, 10, false).unwrap();
    // A fresh session that tries to delete straight away: open with a
    // LoginStart, then send Delete instead of KE3.
    let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut c.rng, b"p").unwrap();
    let now = v.platform.now_ms();
    let (mut ch, frame) =
        coffer_vault_proto::ClientChannel::open(&c.realm, &ke1, now, &mut c.rng).unwrap();
    let reply = v.one(Input::Open { record: rid, frame }).unwrap();
    ch.receive(&reply).unwrap();
    let frame = ch.send(&coffer_vault_proto::Request::Delete, now).unwrap();
    let reply = v.one(Input::Data { frame }).unwrap();
    match ch.receive(&reply).unwrap() {
        coffer_vault_proto::Response::Error { code, .. } => {
            assert_eq!(code, ErrorCode::NotAuthenticated)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.login(&mut v, rid, b"p").unwrap(), Outcome::Ok(Some(K)));
}

#[test]
fn a_rolled_back_store_is_refused_never_a_fresh_budget() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let old = v.store.clone();
    for _ in 0..3 {
        c.login(&mut v, rid, b"wrong").unwrap();
    }
    // The operator restores the store from before the wrong guesses; NVRAM stays.
    let state = v.restart_with(old).unwrap();
    assert!(matches!(state, StartState::Refusing(_)), "{state:?}");
    assert_eq!(
        c.login(&mut v, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::StoreIntegrity, None)
    );
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Refused(ErrorCode::StoreIntegrity, None)
    );
}

#[test]
fn a_record_swapped_for_an_older_copy_is_refused_while_running() {
    let (mut v, mut c, rid) = setup();
    let bob = v.core.record_id("app", "bob");
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    c.register(&mut v, bob, b"bob", &[2; 32], 10, false)
        .unwrap();
    let old_alice = v.store.records[&rid].clone();
    c.login(&mut v, rid, b"wrong").unwrap();
    v.store.records.insert(rid, old_alice);
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Refused(ErrorCode::StoreIntegrity, None)
    );
    // Records in other buckets still work.
    if coffer_vault_core::merkle::bucket_of(&rid) != coffer_vault_core::merkle::bucket_of(&bob) {
        assert_eq!(
            c.login(&mut v, bob, b"bob").unwrap(),
            Outcome::Ok(Some([2; 32]))
        );
    }
}

#[test]
fn crash_between_store_commit_and_nvram_rolls_forward_and_spends_the_attempt() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    // A KE1 whose batch reaches the store but not NVRAM (the vault dies).
    let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut c.rng, b"right").unwrap();
    let now = v.platform.now_ms();
    let (_ch, frame) =
        coffer_vault_proto::ClientChannel::open(&c.realm, &ke1, now, &mut c.rng).unwrap();
    let input = Input::Open { record: rid, frame };
    let b = v.core.bucket_for(&input).unwrap();
    let writes = v
        .core
        .prepare(vec![input], vec![v.store.bucket(b)])
        .unwrap();
    v.store.apply(&writes);
    let store = v.store.clone();
    assert_eq!(v.restart_with(store).unwrap(), StartState::RolledForward);
    // The attempt stayed spent (9 left after this next wrong one would be 8).
    assert_eq!(
        c.login(&mut v, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(8))
    );
}

#[test]
fn crash_before_the_store_commit_loses_nothing() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let before = v.store.clone();
    let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut c.rng, b"x").unwrap();
    let now = v.platform.now_ms();
    let (_ch, frame) =
        coffer_vault_proto::ClientChannel::open(&c.realm, &ke1, now, &mut c.rng).unwrap();
    let input = Input::Open { record: rid, frame };
    let b = v.core.bucket_for(&input).unwrap();
    let _ = v
        .core
        .prepare(vec![input], vec![v.store.bucket(b)])
        .unwrap();
    // Died before the store commit: the reply never left.
    assert_eq!(v.restart_with(before).unwrap(), StartState::Ready);
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Ok(Some(K))
    );
}

#[test]
fn a_forged_marker_is_not_rolled_forward() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let old = v.store.clone();
    c.login(&mut v, rid, b"wrong").unwrap();
    let mut forged = old.clone();
    let mut m = v.store.marker.clone().unwrap();
    m[100] ^= 1;
    forged.marker = Some(m);
    assert!(matches!(
        v.restart_with(forged).unwrap(),
        StartState::Refusing(_)
    ));
}

#[test]
fn replayed_open_and_data_frames_change_nothing() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let (mut login, ke1) = coffer_vault_proto::client::Login::start(&mut c.rng, b"wrong").unwrap();
    let now = v.platform.now_ms();
    let (mut ch, open) =
        coffer_vault_proto::ClientChannel::open(&c.realm, &ke1, now, &mut c.rng).unwrap();
    let reply = v
        .one(Input::Open {
            record: rid,
            frame: open.clone(),
        })
        .unwrap();
    let ke2 = ch.receive(&reply).unwrap();
    let gen = v.core.anchor().generation;
    // The open frame again: refused as a replay, no attempt spent, no write.
    let reply = v
        .one(Input::Open {
            record: rid,
            frame: open,
        })
        .unwrap();
    assert_eq!(v.core.anchor().generation, gen);
    assert_eq!(v.core.stats().replays, 1);
    assert!(reply.len() > 18);
    let realm = c.realm.clone();
    let (ke3, wrong) = login.finish(&mut c.rng, &realm, b"wrong", &ke2).unwrap();
    assert!(wrong);
    let data = ch.send(&ke3, now).unwrap();
    let reply = v
        .one(Input::Data {
            frame: data.clone(),
        })
        .unwrap();
    match ch.receive(&reply).unwrap() {
        coffer_vault_proto::Response::Error {
            code,
            attempts_remaining,
            ..
        } => {
            assert_eq!(
                (code, attempts_remaining),
                (ErrorCode::WrongPassword, Some(9))
            )
        }
        other => panic!("{other:?}"),
    }
    // The KE3 frame again: the session is closed; nothing changes.
    let gen = v.core.anchor().generation;
    assert_eq!(
        v.one(Input::Data { frame: data }).unwrap_err(),
        CoreError::UnknownSession
    );
    assert_eq!(v.core.anchor().generation, gen);
    assert_eq!(
        c.login(&mut v, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(8))
    );
}

#[test]
fn a_replayed_data_frame_inside_a_live_session_fails_authentication() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let (_, ch) = c.login_keep(&mut v, rid, b"right").unwrap();
    let (mut ch, _) = ch.unwrap();
    let (_reg, req) =
        coffer_vault_proto::client::Registration::start(&mut c.rng, b"n", 10, false).unwrap();
    let now = v.platform.now_ms();
    let frame = ch.send(&req, now).unwrap();
    v.one(Input::Data {
        frame: frame.clone(),
    })
    .unwrap();
    let gen = v.core.anchor().generation;
    assert!(matches!(
        v.one(Input::Data { frame }),
        Err(CoreError::Channel(_))
    ));
    assert_eq!(v.core.anchor().generation, gen);
}

#[test]
fn a_client_pinned_to_another_key_cannot_talk() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let mut other = v.descriptor();
    other.public_key = MemRealm::new(99).unwrap().core.public_key();
    let mut mallory = TestClient::new(3, other);
    let err = mallory.login(&mut v, rid, b"right").unwrap_err();
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(
        c.login(&mut v, rid, b"wrong").unwrap(),
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
}

#[test]
fn clock_skew_is_refused_with_the_server_time() {
    let (mut v, c, rid) = setup();
    let mut rng = c.rng.clone();
    let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut rng, b"p").unwrap();
    let now = v.platform.now_ms();
    let (mut ch, frame) =
        coffer_vault_proto::ClientChannel::open(&c.realm, &ke1, now - 120_000, &mut rng).unwrap();
    let reply = v.one(Input::Open { record: rid, frame }).unwrap();
    match ch.receive(&reply).unwrap() {
        coffer_vault_proto::Response::Error {
            code,
            server_time_ms,
            ..
        } => {
            assert_eq!(code, ErrorCode::ClockSkew);
            assert_eq!(server_time_ms, now);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_frames_are_refused_without_state_change() {
    let (mut v, mut c, rid) = setup();
    c.register(&mut v, rid, b"right", &K, 10, false).unwrap();
    let gen = v.core.anchor().generation;
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![2, 1],
        vec![1, 9, 0, 0],
        vec![1, 1, 0, 0],
        vec![1; 4096],
        vec![1, 2].into_iter().chain([0u8; 16 + 448 + 16]).collect(),
    ];
    for frame in cases {
        let r1 = v.one(Input::Open {
            record: rid,
            frame: frame.clone(),
        });
        let r2 = v.one(Input::Data { frame });
        assert!(r1.is_err() && r2.is_err());
    }
    assert_eq!(v.core.anchor().generation, gen);
    assert_eq!(
        c.login(&mut v, rid, b"right").unwrap(),
        Outcome::Ok(Some(K))
    );
}

/// Two users whose record ids share a Merkle bucket.
fn same_bucket_pair(v: &MemRealm) -> ([u8; 32], [u8; 32]) {
    let alice = v.core.record_id("app", "alice");
    let b = coffer_vault_core::merkle::bucket_of(&alice);
    for i in 0..2_000_000u32 {
        let other = v.core.record_id("app", &format!("user{i}"));
        if coffer_vault_core::merkle::bucket_of(&other) == b {
            return (alice, other);
        }
    }
    panic!("no bucket mate found");
}

/// Found by the `vault_core` fuzz target: a replacing registration used to
/// write its bucket from nothing, wiping the other users in it.
#[test]
fn replacing_or_changing_a_registration_keeps_the_other_users_of_its_bucket() {
    let (mut v, mut c, _) = setup();
    let (alice, bob) = same_bucket_pair(&v);
    c.register(&mut v, alice, b"a", &K, 10, false).unwrap();
    c.register(&mut v, bob, b"b", &[2; 32], 10, false).unwrap();
    let (_, ch) = c.login_keep(&mut v, alice, b"a").unwrap();
    let (mut ch, _) = ch.unwrap();
    assert_eq!(
        c.change_password(&mut v, &mut ch, b"a2", &[3; 32]).unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut v, bob, b"b").unwrap(),
        Outcome::Ok(Some([2; 32]))
    );
    assert_eq!(
        c.login(&mut v, alice, b"a2").unwrap(),
        Outcome::Ok(Some([3; 32]))
    );
    let (_, ch) = c.login_keep(&mut v, alice, b"a2").unwrap();
    let (mut ch, _) = ch.unwrap();
    assert_eq!(
        c.change_password(&mut v, &mut ch, b"a3", &[3; 32]).unwrap(),
        Outcome::Ok(None)
    );
    assert_eq!(
        c.login(&mut v, bob, b"b").unwrap(),
        Outcome::Ok(Some([2; 32]))
    );
    assert_eq!(
        c.login(&mut v, alice, b"a3").unwrap(),
        Outcome::Ok(Some([3; 32]))
    );
    assert_eq!(v.core.stats().integrity_failures, 0);
}
