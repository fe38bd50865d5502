//! The daemon for real: `coffer-vault` processes on loopback, spoken to over
//! HTTP through the end-to-end channel, killed with SIGKILL, their store
//! rolled back on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use coffer_vault_proto::ErrorCode;
use common::{json_error, post, Outcome, Vault};

const K: [u8; 32] = [0x6b; 32];

#[test]
fn register_login_wrong_password_and_token_checks() {
    let v = Vault::new(&[], &[], &[]);
    // The default engine is a thread of its own (the inline test checks
    // the opposite).
    let threads = v.thread_names();
    assert!(threads.iter().any(|t| t == "vault-core"), "{threads:?}");
    let alice = v.client("chat", "+15550100");
    assert_eq!(alice.register(b"hunter2", &K, 10), Outcome::Ok(None));
    assert_eq!(alice.login(b"hunter2").outcome, Outcome::Ok(Some(K)));
    let wrong = alice.login(b"hunter3");
    assert_eq!(
        wrong.outcome,
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
    assert_eq!(wrong.ke2_attempts_remaining, Some(9));

    // Tokens: none, garbage, tampered, another vault's tenant key.
    let mut bad = v.client("chat", "+15550100");
    for token in ["", "garbage", "a.b.c"] {
        bad.token = token.into();
        assert_eq!(
            bad.login(b"hunter2").outcome,
            Outcome::Http(401, "unauthorized".into()),
            "{token:?}"
        );
    }
    let mut t = alice.token.clone().into_bytes();
    let n = t.len() - 3;
    t[n] = if t[n] == b'A' { b'B' } else { b'A' };
    bad.token = String::from_utf8(t).unwrap();
    assert_eq!(
        bad.login(b"hunter2").outcome,
        Outcome::Http(401, "unauthorized".into())
    );
    let other = Vault::new(&[], &[], &[]);
    bad.token = other.token("chat", "+15550100");
    assert_eq!(
        bad.login(b"hunter2").outcome,
        Outcome::Http(401, "unauthorized".into())
    );
    // None of that spent an attempt.
    assert_eq!(
        alice.login(b"hunter3").outcome,
        Outcome::Refused(ErrorCode::WrongPassword, Some(8))
    );
    assert_eq!(alice.login(b"hunter2").outcome, Outcome::Ok(Some(K)));
    // A user id is never written to the store.
    let store = std::fs::read(v.store_path()).unwrap();
    assert!(!store.windows(9).any(|w| w == b"+15550100"));
}

/// Serve flags that keep the rate limits out of the way, plus `extra`.
fn unlimited(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["--user-burst", "1000", "--user-rate-per-minute", "100000"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn two_hundred_concurrent_wrong_logins_get_at_most_ten_evaluations() {
    concurrent_wrong_logins(&[]);
}

/// The single-threaded engine (`--engine inline`, HTTP and the core taking
/// turns on one thread) under the same tests as the default one.
#[test]
fn the_inline_engine_keeps_the_guess_limit_under_concurrency_and_sigkill() {
    let v = Vault::new(&[], &["--engine", "inline"], &[]);
    // The start-up line names the engine (the realm id is hex; nothing else
    // in it says "inline").
    assert!(v.log_text().contains("inline"), "{}", v.log_text());
    // And no engine thread runs beside the runtime's one.
    let threads = v.thread_names();
    assert!(!threads.iter().any(|t| t == "vault-core"), "{threads:?}");
    let alice = v.client("chat", "alice");
    assert_eq!(alice.register(b"hunter2", &K, 10), Outcome::Ok(None));
    assert_eq!(alice.login(b"hunter2").outcome, Outcome::Ok(Some(K)));
    assert_eq!(
        alice.login(b"hunter3").outcome,
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
    drop(v);
    concurrent_wrong_logins(&["--engine", "inline"]);
    sigkill_rounds(&["--engine", "inline"], 10);
}

fn concurrent_wrong_logins(extra: &[&'static str]) {
    let v = Vault::new(&[], &unlimited(extra), &[]);
    let c = v.client("chat", "bob");
    assert_eq!(c.register(b"right", &K, 10), Outcome::Ok(None));
    let barrier = Arc::new(Barrier::new(200));
    let c = Arc::new(c);
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let (b, c) = (barrier.clone(), c.clone());
            std::thread::spawn(move || {
                b.wait();
                c.login(b"wrong")
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let evaluations: Vec<u8> = results
        .iter()
        .filter_map(|r| r.ke2_attempts_remaining)
        .collect();
    assert!(evaluations.len() <= 10, "{} evaluations", evaluations.len());
    let mut seen = evaluations.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        evaluations.len(),
        "an attempt count was handed out twice: {evaluations:?}"
    );
    for r in &results {
        assert!(
            matches!(
                r.outcome,
                Outcome::Refused(ErrorCode::WrongPassword, _)
                    | Outcome::Refused(ErrorCode::NotRegistered, None)
            ),
            "{:?}",
            r.outcome
        );
    }
    // Whatever is left is spent by further wrong logins; then the key is gone.
    loop {
        let r = c.login(b"wrong");
        if r.outcome == Outcome::Refused(ErrorCode::NotRegistered, None) {
            break;
        }
        assert!(r.ke2_attempts_remaining.is_some());
    }
    assert!(v.metric("coffer_vault_logins_started_total") <= 10);
    assert_eq!(v.metric("coffer_vault_records_erased_total"), 1);
    assert_eq!(
        c.login(b"right").outcome,
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );
    println!(
        "200 concurrent wrong logins: {} evaluations",
        evaluations.len()
    );
}

#[test]
fn sigkill_at_random_points_during_logins_never_yields_an_extra_guess() {
    sigkill_rounds(&[], 25);
}

fn sigkill_rounds(extra: &[&'static str], rounds: usize) {
    let mut v = Vault::new(&[], &unlimited(extra), &[]);
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut evaluations = Vec::new();
    for round in 0..rounds {
        // Fresh users each round, logging in with wrong passwords in parallel
        // while the vault is killed at a random moment.
        let users: Vec<_> = (0..3)
            .map(|i| Arc::new(v.client("chat", &format!("r{round}u{i}"))))
            .collect();
        for u in &users {
            assert_eq!(u.register(b"right", &K, 10), Outcome::Ok(None));
        }
        let threads: Vec<_> = users
            .iter()
            .map(|u| {
                let u = u.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let r = u.login(b"wrong");
                        got.extend(r.ke2_attempts_remaining);
                        if matches!(
                            r.outcome,
                            Outcome::Down(_) | Outcome::Refused(ErrorCode::NotRegistered, _)
                        ) {
                            return got;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(next() % 120_000));
        v.kill9();
        let seen: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        v.start();
        assert_eq!(
            v.health_status(),
            Some(200),
            "after a SIGKILL the vault must come back consistent: {}",
            v.log_text()
        );
        for (u, s) in users.iter().zip(seen) {
            assert!(
                s.windows(2).all(|w| w[1] < w[0]),
                "attempts went back up: {s:?}"
            );
            let mut all = s.clone();
            // Spend what is left: never more than 10 evaluations in all.
            loop {
                let r = u.login(b"wrong");
                if r.outcome == Outcome::Refused(ErrorCode::NotRegistered, None) {
                    break;
                }
                let left = r.ke2_attempts_remaining.expect("an evaluation");
                assert!(all.iter().all(|&x| left < x), "{left} after {all:?}");
                all.push(left);
            }
            assert!(all.len() <= 10, "{} evaluations: {all:?}", all.len());
            assert_eq!(
                u.login(b"right").outcome,
                Outcome::Refused(ErrorCode::NotRegistered, None)
            );
            evaluations.push((s.len(), all.len()));
        }
    }
    println!("{rounds} SIGKILLs; (evaluations before the kill, in all) per user: {evaluations:?}");
}

#[test]
fn restoring_an_old_copy_of_the_store_is_refused_never_a_fresh_budget() {
    let mut v = Vault::new(&[], &[], &[]);
    let c = v.client("chat", "carol");
    assert_eq!(c.register(b"right", &K, 10), Outcome::Ok(None));
    v.stop();
    let old = v.dir.path().join("records.old");
    std::fs::copy(v.store_path(), &old).unwrap();
    v.start();
    for left in [9u8, 8, 7] {
        assert_eq!(
            c.login(b"wrong").outcome,
            Outcome::Refused(ErrorCode::WrongPassword, Some(left))
        );
    }
    v.stop();
    let latest = v.dir.path().join("records.latest");
    std::fs::copy(v.store_path(), &latest).unwrap();
    // The dishonest operator: the old store back, NVRAM untouched.
    std::fs::copy(&old, v.store_path()).unwrap();
    v.start();
    assert_eq!(v.health_status(), Some(503));
    assert!(v.log_text().contains("REFUSING TO SERVE"));
    assert_eq!(v.metric("coffer_vault_refusing"), 1);
    assert_eq!(
        c.login(b"wrong").outcome,
        Outcome::Refused(ErrorCode::StoreIntegrity, None)
    );
    assert_eq!(
        c.login(b"right").outcome,
        Outcome::Refused(ErrorCode::StoreIntegrity, None)
    );
    v.stop();
    // The latest store back: serving again, and the count carries on.
    std::fs::copy(&latest, v.store_path()).unwrap();
    v.start();
    assert_eq!(v.health_status(), Some(200));
    assert_eq!(
        c.login(b"wrong").outcome,
        Outcome::Refused(ErrorCode::WrongPassword, Some(6))
    );
    assert_eq!(c.login(b"right").outcome, Outcome::Ok(Some(K)));
}

#[test]
fn malformed_oversized_and_replayed_messages_change_nothing() {
    let v = Vault::new(&[], &[], &[]);
    let c = v.client("chat", "dave");
    assert_eq!(c.register(b"right", &K, 10), Outcome::Ok(None));
    let open = v.url("/v1/open");
    let send = v.url("/v1/send");
    let gen = v.metric("coffer_vault_nvram_generation");
    let started = v.metric("coffer_vault_logins_started_total");
    let tok = Some(c.token.as_str());
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (&open, tok, vec![], 400, "bad_frame"),
        (&open, tok, vec![1, 1, 0], 400, "bad_frame"),
        (&open, tok, vec![9; 498], 400, "bad_frame"),
        (
            &open,
            tok,
            [1u8, 1].into_iter().chain([7u8; 496]).collect(),
            400,
            "channel",
        ),
        (
            &open,
            tok,
            [1u8, 1].into_iter().chain([7u8; 400]).collect(),
            400,
            "bad_frame",
        ),
        (
            &open,
            tok,
            [1u8, 2].into_iter().chain([7u8; 480]).collect(),
            400,
            "bad_frame",
        ),
        (
            &send,
            None,
            [1u8, 2].into_iter().chain([7u8; 480]).collect(),
            404,
            "unknown_session",
        ),
        (
            &send,
            None,
            [1u8, 1].into_iter().chain([7u8; 496]).collect(),
            400,
            "bad_frame",
        ),
        (&send, None, vec![1u8; 499], 413, "too_large"),
    ];
    for (url, token, body, status, code) in &cases {
        let (s, b) = post(url, *token, body).unwrap();
        assert_eq!(
            (s, json_error(&b).as_str()),
            (*status, *code),
            "{url} {} bytes",
            body.len()
        );
    }
    // Oversized: refused before anything reads it.
    let (s, _) = post(&open, tok, &vec![1u8; 64 * 1024]).unwrap();
    assert_eq!(s, 413);

    // A replayed open frame (a captured KE1) spends nothing.
    let (_login, ke1) =
        coffer_vault_proto::client::Login::start(&mut rand_core::OsRng, b"right").unwrap();
    let (_ch, frame) = coffer_vault_proto::ClientChannel::open(
        &c.realm,
        &ke1,
        common::now_ms(),
        &mut rand_core::OsRng,
    )
    .unwrap();
    assert_eq!(post(&open, tok, &frame).unwrap().0, 200);
    let gen1 = v.metric("coffer_vault_nvram_generation");
    assert_eq!(v.metric("coffer_vault_logins_started_total"), started + 1);
    let (s, _) = post(&open, tok, &frame).unwrap();
    assert_eq!(s, 200, "answered inside the channel");
    assert_eq!(v.metric("coffer_vault_replays_total"), 1);
    assert_eq!(v.metric("coffer_vault_logins_started_total"), started + 1);
    assert_eq!(v.metric("coffer_vault_nvram_generation"), gen1);
    assert!(gen1 > gen);

    // A replayed data frame: the session's channel refuses it.
    let (mut login, ke1) =
        coffer_vault_proto::client::Login::start(&mut rand_core::OsRng, b"right").unwrap();
    let (mut ch, resp) = c.open(&ke1).unwrap();
    let (ke3, _) = login
        .finish(&mut rand_core::OsRng, &c.realm, b"right", &resp)
        .unwrap();
    let data = ch.send(&ke3, common::now_ms()).unwrap();
    assert_eq!(post(&send, None, &data).unwrap().0, 200);
    let gen2 = v.metric("coffer_vault_nvram_generation");
    // (The session stays open after a correct login, for a password change
    // or a delete; its channel refuses the replayed frame.)
    let (s, b) = post(&send, None, &data).unwrap();
    assert_eq!((s, json_error(&b).as_str()), (400, "channel"));
    assert_eq!(v.metric("coffer_vault_nvram_generation"), gen2);
    // The user's count is intact: 10 after the correct login, minus this one.
    assert_eq!(
        c.login(b"wrong").outcome,
        Outcome::Refused(ErrorCode::WrongPassword, Some(9))
    );
}

#[test]
fn rate_limits_are_separate_from_the_guess_limit() {
    let v = Vault::new(&[], &[], &[]);
    // Defaults: one user gets at least 30 attempts a minute.
    let eve = v.client("chat", "eve");
    assert_eq!(eve.register(b"right", &K, 10), Outcome::Ok(None));
    let mut limited = None;
    for i in 1..=40 {
        let (login, ke1) =
            coffer_vault_proto::client::Login::start(&mut rand_core::OsRng, b"x").unwrap();
        drop(login);
        match eve.open(&ke1) {
            Ok(_) => {}
            Err(Outcome::Http(429, code)) => {
                assert_eq!(code, "rate_limited");
                limited = Some(i);
                break;
            }
            Err(o) => panic!("{o:?}"),
        }
    }
    let n = limited.expect("the user rate limit never applied");
    // The registration was one open too.
    assert!(n >= 30, "limited after {n} opens");
    let (s, body) = {
        let (_l, ke1) =
            coffer_vault_proto::client::Login::start(&mut rand_core::OsRng, b"x").unwrap();
        let (_ch, frame) = coffer_vault_proto::ClientChannel::open(
            &eve.realm,
            &ke1,
            common::now_ms(),
            &mut rand_core::OsRng,
        )
        .unwrap();
        post(&v.url("/v1/open"), Some(&eve.token), &frame).unwrap()
    };
    assert_eq!(s, 429);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["scope"], "user");
    assert!(j["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(v.metric("coffer_vault_rate_limited_total{scope=\"user\"}") >= 1);
    // Another user of the same tenant is not affected.
    let frank = v.client("chat", "frank");
    assert_eq!(
        frank.login(b"x").outcome,
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );

    // A tenant limit, separate error.
    let t = Vault::new(
        &[],
        &["--tenant-burst", "3", "--tenant-rate-per-second", "0.01"],
        &[],
    );
    for i in 0..3 {
        assert_eq!(
            t.client("chat", &format!("u{i}")).login(b"x").outcome,
            Outcome::Refused(ErrorCode::NotRegistered, None)
        );
    }
    let c = t.client("chat", "u9");
    let (_l, ke1) = coffer_vault_proto::client::Login::start(&mut rand_core::OsRng, b"x").unwrap();
    let (_ch, frame) = coffer_vault_proto::ClientChannel::open(
        &c.realm,
        &ke1,
        common::now_ms(),
        &mut rand_core::OsRng,
    )
    .unwrap();
    let (s, body) = post(&t.url("/v1/open"), Some(&c.token), &frame).unwrap();
    assert_eq!(s, 429);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["scope"], "tenant");
    assert_eq!(
        t.client("other-app", "u9").login(b"x").outcome,
        Outcome::Refused(ErrorCode::NotRegistered, None)
    );
}

#[test]
fn metrics_health_and_realm_endpoints() {
    let v = Vault::new(&[], &[], &[]);
    let c = v.client("chat", "gina");
    c.register(b"pw", &K, 5);
    c.login(b"pw");
    assert_eq!(v.health_status(), Some(200));
    assert_eq!(v.metric("coffer_vault_registrations_total"), 1);
    assert_eq!(v.metric("coffer_vault_logins_ok_total"), 1);
    assert!(v.metric("coffer_vault_batches_total") >= 3);
    let (s, body) = common::get(&v.url("/v1/realm")).unwrap();
    assert_eq!(s, 200);
    let served =
        coffer_vault_proto::RealmDescriptor::from_json(std::str::from_utf8(&body).unwrap())
            .unwrap();
    assert_eq!(served, v.realm);
    // No secrets or user ids in the metrics or the log.
    let (_, m) = common::get(&v.url("/metrics")).unwrap();
    let m = String::from_utf8(m).unwrap();
    assert!(!m.contains("gina"));
    assert!(!v.log_text().contains("gina"));
    assert!(!v.log_text().contains(&c.token));
    // stderr is a file, not a terminal: plain text, no ANSI colour codes.
    assert!(!v.log_text().is_empty());
    assert!(!v.log_text().contains('\x1b'), "{:?}", v.log_text());
}

#[test]
fn init_refuses_an_address_or_ksf_no_client_would_accept() {
    let dir = tempfile::tempdir().unwrap();
    let init = |name: &str, extra: &[&str]| {
        let o = std::process::Command::new(common::BIN)
            .args(["init", "--data"])
            .arg(dir.path().join(name))
            .arg("--nvram")
            .arg(dir.path().join(format!("{name}.nvram")))
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let small = ["--ksf-memory-kib", "19456", "--ksf-iterations", "1"];
    for (name, address, text) in [
        (
            "a",
            "notaurl",
            "\"notaurl\" is not an http:// or https:// URL",
        ),
        ("b", "127.0.0.1:8420", "is not an http:// or https:// URL"),
        ("c", "http://user@127.0.0.1:8420", "credentials"),
        ("d", "http://127.0.0.1:99999", "invalid port"),
    ] {
        let (ok, err) = init(name, &[&["--address", address][..], &small].concat());
        assert!(!ok, "{address} accepted");
        assert!(
            err.contains("--address") && err.contains(text),
            "{address}: {err}"
        );
        assert!(!dir.path().join(name).exists(), "{address}: data created");
        assert!(!dir.path().join(format!("{name}.nvram")).exists());
    }
    // The KSF bounds clients enforce.
    for (name, ksf, text) in [
        (
            "e",
            ["--ksf-memory-kib", "4194304", "--ksf-iterations", "1"],
            "memory",
        ),
        (
            "f",
            ["--ksf-memory-kib", "65536", "--ksf-iterations", "1000"],
            "passes",
        ),
        (
            "g",
            ["--ksf-memory-kib", "1048576", "--ksf-iterations", "8"],
            "memory × passes",
        ),
    ] {
        let (ok, err) = init(
            name,
            &[&["--address", "http://127.0.0.1:8420"][..], &ksf].concat(),
        );
        assert!(!ok, "{ksf:?} accepted");
        assert!(
            err.contains("above the client's maximum") && err.contains(text),
            "{err}"
        );
        assert!(!dir.path().join(name).exists());
    }
    let (ok, err) = init(
        "h",
        &[
            "--address",
            "http://127.0.0.1:8420",
            "--ksf-parallelism",
            "64",
        ],
    );
    assert!(!ok && err.contains("lanes"), "{err}");
    // Within bounds: created.
    let (ok, err) = init(
        "i",
        &[&["--address", "https://vault.example/coffer"][..], &small].concat(),
    );
    assert!(ok, "{err}");
}
