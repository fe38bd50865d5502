//! A replicated realm of real `coffer-vault serve` processes on loopback
//! (issue 4, point 4): SIGKILL the leader, then a follower; freeze a node
//! (SIGSTOP: the closest to cutting it off that needs no root network
//! namespace; its peers see a node that accepts connections and never
//! answers); roll back one node's store. Under continuous register/login
//! load: no acknowledged registration is lost, attempt counters stay exact,
//! the service continues with a majority and serves no guess without one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_vault_proto::{ErrorCode, RealmDescriptor};
use common::{free_port, get, run_ok, Client, Outcome, BIN};

struct Node {
    data: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

struct Realm {
    good: Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    realm: RealmDescriptor,
}

/// `coffer-vault realm new` into `out`: a node per port on loopback, the
/// smallest Argon2id clients accept.
fn realm_new(out: &Path, ports: &[u16], groups: u8) {
    let mut cmd = Command::new(BIN);
    cmd.args(["realm", "new", "--out"]).arg(out).args([
        "--ksf-memory-kib",
        "19456",
        "--ksf-iterations",
        "1",
    ]);
    cmd.args(["--groups", &groups.to_string()]);
    for p in ports {
        cmd.args(["--node", &format!("http://127.0.0.1:{p}")]);
    }
    run_ok(&mut cmd);
}

impl Realm {
    fn new(n: usize) -> Self {
        Self::with_groups(n, 1)
    }

    fn with_groups(n: usize, groups: u8) -> Self {
        common::TIMEOUT_MS.store(4_000, Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("realm");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        realm_new(&out, &ports, groups);
        let realm =
            RealmDescriptor::from_json(&std::fs::read_to_string(out.join("realm.json")).unwrap())
                .unwrap();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Node {
                data: out.join(format!("node-{}", i + 1)),
                port,
                child: None,
                log: dir.path().join(format!("node-{}.log", i + 1)),
            })
            .collect();
        let mut r = Self {
            good: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            _dir: dir,
            nodes,
            realm,
        };
        for i in 0..n {
            r.start(i);
        }
        r
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--data"])
            .arg(&node.data)
            .arg("--nvram")
            .arg(node.data.join("nvram"))
            .args(["--listen", &format!("127.0.0.1:{}", node.port)])
            .args([
                "--user-burst",
                "100000",
                "--user-rate-per-minute",
                "1000000",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
        let t0 = Instant::now();
        while self.metric(i, "coffer_vault_realm_epoch").is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node {} did not start: {}",
                i + 1,
                self.log_text(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].child.as_ref().unwrap().id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[i].port)
    }

    /// A per-group gauge (`coffer_vault_group{group="g",gauge="..."}`).
    fn group_gauge(&self, i: usize, g: u8, gauge: &str) -> Option<u64> {
        self.metric(
            i,
            &format!("coffer_vault_group{{group=\"{g}\",gauge=\"{gauge}\"}}"),
        )
    }

    fn metric(&self, i: usize, name: &str) -> Option<u64> {
        self.nodes[i].child.as_ref()?;
        let (_, body) = get(&self.url(i, "/metrics"))?;
        let text = String::from_utf8(body).ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The node that leads with the highest epoch, once one does and a
    /// majority follow it (its applied index reached by a majority).
    fn wait_leader(&self, skip: &[usize]) -> usize {
        let t0 = Instant::now();
        loop {
            let leaders: Vec<(u64, usize)> = (0..self.nodes.len())
                .filter(|i| !skip.contains(i))
                .filter(|&i| self.metric(i, "coffer_vault_realm_leading") == Some(1))
                .filter_map(|i| Some((self.metric(i, "coffer_vault_realm_epoch")?, i)))
                .collect();
            if let Some(&(_, l)) = leaders.iter().max() {
                return l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no leader: {}",
                (0..self.nodes.len())
                    .map(|i| self.log_text(i))
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every node has applied the same index, and those in
    /// `followers` do not lead.
    fn wait_converged(&self, followers: &[usize]) {
        let t0 = Instant::now();
        loop {
            let idx: Vec<Option<u64>> = (0..self.nodes.len())
                .map(|i| self.metric(i, "coffer_vault_nvram_generation"))
                .collect();
            if idx.iter().all(|x| x.is_some() && *x == idx[0])
                && followers
                    .iter()
                    .all(|&f| self.metric(f, "coffer_vault_realm_leading") == Some(0))
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no convergence: {idx:?}\n{}",
                (0..self.nodes.len())
                    .map(|i| self.log_text(i))
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn token(&self, user: &str) -> String {
        // Minted from node 1's data directory; every node shares the
        // tenants file (realm-wide tenants).
        run_ok(
            Command::new(BIN)
                .args(["token", "--data"])
                .arg(&self.nodes[0].data)
                .args(["--tenant", "app", "--user", user]),
        )
        .trim()
        .to_string()
    }

    fn client(&self, user: &str) -> RealmClient {
        RealmClient {
            token: self.token(user),
            realm: self.realm.clone(),
            bases: (0..self.nodes.len()).map(|i| self.url(i, "")).collect(),
            good: self.good.clone(),
        }
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(self.nodes[i].child.as_ref().unwrap().id().to_string())
                    .status();
            }
            self.kill9(i);
        }
    }
}

/// A client that, like `coffer`, moves to the next node when one is down or
/// answers 503 (one pass over the nodes).
/// It starts at the node that answered last (shared by the realm's
/// clients), so a frozen node costs one timeout, not one per request.
#[derive(Clone)]
struct RealmClient {
    token: String,
    realm: RealmDescriptor,
    bases: Vec<String>,
    good: Arc<std::sync::atomic::AtomicUsize>,
}

fn unavailable(o: &Outcome) -> bool {
    matches!(o, Outcome::Down(_) | Outcome::Http(503, _))
}

/// Worth a retry: unavailable, or a frame made before the current leader
/// was elected (its core refuses frames older than its leadership, ADR
/// 0011; `coffer-client` retries these with a fresh frame).
fn retryable(o: &Outcome) -> bool {
    unavailable(o) || matches!(o, Outcome::Refused(ErrorCode::ClockSkew, _))
}

impl RealmClient {
    fn on(&self, i: usize) -> Client {
        Client {
            realm: self.realm.clone(),
            token: self.token.clone(),
            base: self.bases[i].clone(),
        }
    }

    fn order(&self) -> Vec<usize> {
        let n = self.bases.len();
        let g = self.good.load(Ordering::Relaxed);
        (0..n).map(|i| (g + i) % n).collect()
    }

    fn register(&self, password: &[u8], k: &[u8; 32]) -> Outcome {
        let mut last = Outcome::Down("no node".into());
        for i in self.order() {
            last = self.on(i).register(password, k, 10);
            if !unavailable(&last) {
                self.good.store(i, Ordering::Relaxed);
                return last;
            }
        }
        last
    }

    fn login(&self, password: &[u8]) -> (Outcome, Option<u8>) {
        let mut last = (Outcome::Down("no node".into()), None);
        for i in self.order() {
            let r = self.on(i).login(password);
            last = (r.outcome, r.ke2_attempts_remaining);
            if !unavailable(&last.0) {
                self.good.store(i, Ordering::Relaxed);
                return last;
            }
        }
        last
    }

    /// Retries while the realm is unavailable (e.g. during a failover).
    fn login_eventually(&self, password: &[u8]) -> (Outcome, Option<u8>) {
        let t0 = Instant::now();
        loop {
            let r = self.login(password);
            if !retryable(&r.0) || t0.elapsed() > Duration::from_secs(20) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn register_eventually(&self, password: &[u8], k: &[u8; 32]) -> Outcome {
        let t0 = Instant::now();
        loop {
            let r = self.register(password, k);
            if !retryable(&r) || t0.elapsed() > Duration::from_secs(20) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn key_of(n: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(n as u64).to_be_bytes());
    k[31] = 0x5a;
    k
}

/// Continuous load: registers new users and logs existing ones in. Records
/// every registration the realm acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(RealmClient, usize)>>>,
    bad: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(realm: &Realm, tag: &str, users: usize) -> Self {
        let clients: Vec<RealmClient> = (0..users)
            .map(|u| realm.client(&format!("{tag}-{u}")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (s, a, b) = (stop.clone(), acked.clone(), bad.clone());
        let handle = std::thread::spawn(move || {
            let mut next = 0;
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                if next < clients.len() && i.is_multiple_of(2) {
                    let c = &clients[next];
                    let pw = format!("pw-{next}");
                    match c.register(pw.as_bytes(), &key_of(next)) {
                        Outcome::Ok(_) | Outcome::Refused(ErrorCode::AlreadyRegistered, _) => {
                            a.lock().unwrap().push((c.clone(), next));
                            next += 1;
                        }
                        o if retryable(&o) => {}
                        // A failover between the two messages of one
                        // registration: the session lived in the old
                        // leader's core. The client starts over.
                        Outcome::Http(404, _) | Outcome::Http(400, _) => {}
                        o => b.lock().unwrap().push(format!("register {next}: {o:?}")),
                    }
                } else {
                    let done = a.lock().unwrap().clone();
                    if let Some((c, n)) = done.get(i % done.len().max(1)).cloned() {
                        let (o, _) = c.login(format!("pw-{n}").as_bytes());
                        match o {
                            Outcome::Ok(Some(k)) if k == key_of(n) => {}
                            o if retryable(&o) => {}
                            Outcome::Http(404, _) | Outcome::Http(400, _) => {}
                            o => b.lock().unwrap().push(format!("login {n}: {o:?}")),
                        }
                    }
                }
            }
        });
        Self {
            stop,
            acked,
            bad,
            handle: Some(handle),
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn wait_for_more(&self, more: usize) {
        let start = self.acked();
        let t0 = Instant::now();
        while self.acked() < start + more {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the load made no progress: {} of {more} more registrations",
                self.acked() - start
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<(RealmClient, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        let bad = self.bad.lock().unwrap().clone();
        assert!(bad.is_empty(), "wrong answers under load: {bad:?}");
        self.acked.lock().unwrap().clone()
    }
}

fn wrong_login_left(c: &RealmClient) -> Option<u8> {
    let (o, left) = c.login_eventually(b"wrong password");
    assert_eq!(
        o,
        Outcome::Refused(ErrorCode::WrongPassword, left),
        "a wrong password must be refused"
    );
    left
}

/// `--engine inline` is for a single-node vault: a realm node refuses it
/// with a clear error instead of starting without its event loops.
#[test]
fn a_realm_node_refuses_the_inline_engine() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("realm");
    realm_new(&out, &[free_port(), free_port(), free_port()], 1);
    let node = out.join("node-1");
    let o = Command::new(BIN)
        .args(["serve", "--engine", "inline", "--data"])
        .arg(&node)
        .arg("--nvram")
        .arg(node.join("nvram"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--engine inline serves a single-node vault"),
        "{err}"
    );
}

#[test]
fn three_nodes_survive_a_leader_kill_then_stop_without_a_majority() {
    let mut realm = Realm::new(3);
    let first = realm.wait_leader(&[]);
    // A user whose attempt counter we follow through everything.
    let w = realm.client("watched");
    assert_eq!(
        w.register_eventually(b"right", &key_of(999)),
        Outcome::Ok(None)
    );
    assert_eq!(wrong_login_left(&w), Some(9));
    assert_eq!(wrong_login_left(&w), Some(8));

    let load = Load::start(&realm, "a", 400);
    load.wait_for_more(5);
    // SIGKILL the leader under load.
    realm.kill9(first);
    let second = realm.wait_leader(&[first]);
    assert_ne!(second, first);
    load.wait_for_more(5);
    assert_eq!(
        wrong_login_left(&w),
        Some(7),
        "counters stay exact across a failover"
    );
    // Then a follower: one node left, no majority.
    let follower = (0..3).find(|&i| i != first && i != second).unwrap();
    realm.kill9(follower);
    let acked = load.finish();
    assert!(acked.len() >= 10);
    // Without a majority no guess is served: every login is refused as
    // unavailable and no KE2 leaves. (The lone leader may have spent an
    // attempt in an entry it could not commit; if that entry commits later,
    // the attempt stays spent without ever having been answered: spending
    // without answering is allowed, answering without spending is not.)
    let tries: u8 = 5;
    for _ in 0..tries {
        let (o, left) = w.login(b"wrong password");
        assert!(unavailable(&o), "no majority, yet: {o:?}");
        assert_eq!(left, None, "a KE2 left without a majority");
    }
    // The two come back; the realm serves again, from whichever leads.
    realm.start(first);
    realm.start(follower);
    realm.wait_leader(&[]);
    let left = wrong_login_left(&w).unwrap();
    assert!(
        (6 - tries..=6).contains(&left),
        "after 3 answered wrong logins and {tries} unanswered ones, the next one leaves {left}"
    );
    // Every acknowledged registration survived, with its key.
    for (c, n) in &acked {
        let (o, _) = c.login_eventually(format!("pw-{n}").as_bytes());
        assert_eq!(o, Outcome::Ok(Some(key_of(*n))), "registration {n} lost");
    }
    assert_eq!(
        w.login_eventually(b"right").0,
        Outcome::Ok(Some(key_of(999)))
    );
    // All three nodes converge on one log.
    realm.wait_converged(&[]);
}

#[test]
fn a_frozen_leader_is_replaced_and_a_rolled_back_store_catches_up() {
    let mut realm = Realm::new(3);
    let first = realm.wait_leader(&[]);
    let w = realm.client("watched");
    assert_eq!(
        w.register_eventually(b"right", &key_of(999)),
        Outcome::Ok(None)
    );
    assert_eq!(wrong_login_left(&w), Some(9));

    // Freeze the leader: the others elect a new one and serve on.
    let load = Load::start(&realm, "b", 400);
    load.wait_for_more(3);
    realm.signal(first, "STOP");
    let second = realm.wait_leader(&[first]);
    assert_ne!(second, first);
    load.wait_for_more(5);
    assert_eq!(wrong_login_left(&w), Some(8));
    // Thawed, the old leader finds a later epoch and steps down: one leader.
    realm.signal(first, "CONT");
    let t0 = Instant::now();
    while realm.metric(first, "coffer_vault_realm_leading") != Some(0) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the old leader did not step down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    load.wait_for_more(3);

    // Roll back one follower's store: copy it now, let the realm move on,
    // then put the old copy back.
    let victim = (0..3).find(|&i| i != second).unwrap();
    realm.kill9(victim);
    let store = realm.nodes[victim].data.join("records.redb");
    let old = store.with_extension("old");
    std::fs::copy(&store, &old).unwrap();
    realm.start(victim);
    load.wait_for_more(10);
    assert_eq!(wrong_login_left(&w), Some(7));
    let acked = load.finish();
    realm.kill9(victim);
    std::fs::copy(&old, &store).unwrap();
    realm.start(victim);
    // It resynchronises from the leader and applies what it missed.
    let t0 = Instant::now();
    loop {
        let l = realm.metric(second, "coffer_vault_nvram_generation");
        let v = realm.metric(victim, "coffer_vault_nvram_generation");
        if l.is_some() && l == v && realm.metric(victim, "coffer_vault_refusing") == Some(0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the rolled-back node did not catch up ({v:?} vs {l:?}): {}",
            realm.log_text(victim)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Now serve from the rolled-back node and one other: kill the third.
    let third = (0..3).find(|&i| i != second && i != victim).unwrap();
    realm.kill9(third);
    realm.wait_leader(&[third]);
    assert_eq!(
        wrong_login_left(&w),
        Some(6),
        "a rolled-back store never gives back spent attempts"
    );
    for (c, n) in &acked {
        let (o, _) = c.login_eventually(format!("pw-{n}").as_bytes());
        assert_eq!(o, Outcome::Ok(Some(key_of(*n))), "registration {n} lost");
    }
}

#[test]
fn three_groups_split_the_records_and_fail_over_independently() {
    let groups = 3u8;
    let mut realm = Realm::with_groups(3, groups);
    // Every group gets a leader; the tie-break spreads them over the nodes.
    let t0 = Instant::now();
    let leaders = loop {
        let l: Vec<Option<usize>> = (0..groups)
            .map(|g| (0..3).find(|&i| realm.group_gauge(i, g, "leading") == Some(1)))
            .collect();
        if l.iter().all(Option::is_some) {
            break l.into_iter().map(Option::unwrap).collect::<Vec<_>>();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "leaders: {l:?}\n{}",
            (0..3)
                .map(|i| realm.log_text(i))
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let before: Vec<u64> = (0..groups)
        .map(|g| {
            realm
                .group_gauge(leaders[g as usize], g, "applied")
                .unwrap()
        })
        .collect();
    // Thirty users land in all three groups (each owns a third of the ids).
    let users: Vec<RealmClient> = (0..30).map(|u| realm.client(&format!("s-{u}"))).collect();
    for (n, c) in users.iter().enumerate() {
        assert_eq!(
            c.register_eventually(format!("pw-{n}").as_bytes(), &key_of(n)),
            Outcome::Ok(None)
        );
    }
    for g in 0..groups {
        let after = realm
            .group_gauge(leaders[g as usize], g, "applied")
            .unwrap();
        assert!(after > before[g as usize], "group {g} got no records");
    }
    // A wrong login on one user spends in its own group only.
    assert_eq!(wrong_login_left(&users[0]), Some(9));
    // Kill the node leading group 1: group 1 fails over; the others carry on.
    let victim = leaders[1];
    realm.kill9(victim);
    for (n, c) in users.iter().enumerate() {
        let (o, _) = c.login_eventually(format!("pw-{n}").as_bytes());
        assert_eq!(o, Outcome::Ok(Some(key_of(n))), "user {n}");
    }
    assert_eq!(
        wrong_login_left(&users[0]),
        Some(9),
        "reset by the right login, spent once"
    );
}

/// A TCP forwarder on loopback that can be cut: connections are refused and
/// the open ones shut down. Between every ordered pair of nodes there is one,
/// so a cut is a real network partition of the nodes' HTTP connections
/// (what each node dials is the forwarder listed in its own realm.json).
struct Link {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Link {
    fn new(target: u16) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(a) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = a.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(b) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut o = o.lock().unwrap();
                    o.push(a.try_clone().unwrap());
                    o.push(b.try_clone().unwrap());
                }
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { port, cut, open }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Realm {
    /// Puts a cuttable link between every ordered pair of nodes: node i's
    /// realm.json names, for node j, the link i→j. Clients keep the direct
    /// addresses of `<out>/realm.json`. Restarts every node.
    fn with_links(n: usize) -> (Self, BTreeMap<(usize, usize), Link>) {
        let mut realm = Self::new(n);
        let mut links = BTreeMap::new();
        for i in 0..n {
            realm.kill9(i);
        }
        for i in 0..n {
            let mut nodes = Vec::new();
            for j in 0..n {
                if i == j {
                    nodes.push(format!("http://127.0.0.1:{}", realm.nodes[j].port));
                } else {
                    let link = Link::new(realm.nodes[j].port);
                    nodes.push(format!("http://127.0.0.1:{}", link.port));
                    links.insert((i, j), link);
                }
            }
            let d = &realm.realm;
            let own = RealmDescriptor::new_v2(
                d.realm_id,
                d.public_key,
                d.ksf,
                d.max_attempts_limit,
                nodes,
            )
            .unwrap();
            std::fs::write(realm.nodes[i].data.join("realm.json"), own.to_json()).unwrap();
        }
        for i in 0..n {
            realm.start(i);
        }
        (realm, links)
    }
}

fn cut_off(links: &BTreeMap<(usize, usize), Link>, node: usize, cut: bool) {
    for ((a, b), l) in links {
        if *a == node || *b == node {
            l.set_cut(cut);
        }
    }
}

#[test]
fn a_cut_off_leader_serves_no_guess_and_rejoins() {
    let (realm, links) = Realm::with_links(3);
    let l = realm.wait_leader(&[]);
    let w = realm.client("watched");
    assert_eq!(
        w.register_eventually(b"right", &key_of(999)),
        Outcome::Ok(None)
    );
    assert_eq!(wrong_login_left(&w), Some(9));
    // Cut the leader off from its peers; clients can still reach it.
    cut_off(&links, l, true);
    let on_leader = w.on(l);
    let t0 = Instant::now();
    let r = on_leader.login(b"wrong password");
    assert_eq!(
        r.ke2_attempts_remaining, None,
        "a cut-off leader released a KE2: {:?}",
        r.outcome
    );
    assert!(unavailable(&r.outcome), "{:?}", r.outcome);
    assert!(t0.elapsed() < Duration::from_secs(10));
    // The other two elect a leader and serve; the cut-off leader's
    // uncommitted attempt was never committed, so it counts nowhere.
    let second = realm.wait_leader(&[l]);
    assert_ne!(second, l);
    let mut others = w.clone();
    others.bases = (0..3)
        .filter(|&i| i != l)
        .map(|i| realm.url(i, ""))
        .collect();
    assert_eq!(wrong_login_left(&others), Some(8));
    // Healed, the old leader follows the new one and takes its log.
    cut_off(&links, l, false);
    realm.wait_converged(&[l]);
    assert_eq!(wrong_login_left(&w), Some(7));
    assert_eq!(
        w.login_eventually(b"right").0,
        Outcome::Ok(Some(key_of(999)))
    );
}
