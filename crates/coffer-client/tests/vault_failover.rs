//! A client of a replicated realm (descriptor format 2): sessions open on
//! the first node that takes them, moving on past nodes that are down or
//! answer 503, and stay on the node that answered.
//!
//! Two kinds of node: a relay in this process in front of the real trusted
//! core (in memory; each relay keeps its own sessions, as each node's core
//! does, so a frame sent to the wrong node fails), and the real
//! `coffer-vault serve` binary on loopback, found next to this test's
//! directory (`cargo test --workspace` builds it; alone, run
//! `cargo build -p coffer-vault` first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_client::vault::NodeOrder;
use coffer_client::{BackupKey, Password, VaultClient, VaultError};
use coffer_vault_core::testing::MemRealm;
use coffer_vault_core::{CoreError, Input};
use coffer_vault_proto::channel::frame_session;
use coffer_vault_proto::RealmDescriptor;

/// What a relay node does with every request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Relays to the core.
    Serve,
    /// Answers 503 `unavailable`, as a node whose core is resyncing.
    Unavailable,
    /// Reads the request, then closes the connection without an answer.
    HangUp,
}

struct Node {
    mode: Mode,
    core: Arc<Mutex<MemRealm>>,
    /// Sessions this node opened: a data frame of another is unknown here.
    sessions: Mutex<HashSet<[u8; 16]>>,
    /// Requests received, whatever the answer.
    hits: AtomicUsize,
    opens: AtomicUsize,
    sends: AtomicUsize,
}

/// Starts a relay node on loopback; returns it and its URL.
fn relay(core: &Arc<Mutex<MemRealm>>, mode: Mode) -> (Arc<Node>, String) {
    let node = Arc::new(Node {
        mode,
        core: core.clone(),
        sessions: Mutex::new(HashSet::new()),
        hits: AtomicUsize::new(0),
        opens: AtomicUsize::new(0),
        sends: AtomicUsize::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let n = node.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let n = n.clone();
            std::thread::spawn(move || {
                if let Ok(c) = conn {
                    let _ = connection(c, &n);
                }
            });
        }
    });
    (node, url)
}

/// A loopback URL where nothing listens.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn connection(stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => len = value.trim().parse().unwrap(),
                "authorization" => auth = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        if node.mode == Mode::HangUp {
            node.hits.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let (status, answer) = handle(node, &path, auth.as_deref(), body);
        write!(
            out,
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )?;
        out.write_all(&answer)?;
    }
}

fn json(code: &str) -> Vec<u8> {
    format!(r#"{{"error":"{code}","message":"{code} (test relay)"}}"#).into_bytes()
}

fn handle(node: &Node, path: &str, auth: Option<&str>, frame: Vec<u8>) -> (u16, Vec<u8>) {
    node.hits.fetch_add(1, Ordering::SeqCst);
    if node.mode == Mode::Unavailable {
        return (503, json("unavailable"));
    }
    let mut core = node.core.lock().unwrap();
    match path {
        "/v1/open" => {
            node.opens.fetch_add(1, Ordering::SeqCst);
            let Some(user) = auth.and_then(|a| a.strip_prefix("Bearer user:")) else {
                return (401, json("unauthorized"));
            };
            let record = core.core.record_id("app", user);
            match core.one(Input::Open { record, frame }) {
                Ok(reply) => {
                    let id = frame_session(&reply).unwrap();
                    node.sessions.lock().unwrap().insert(id);
                    (200, reply)
                }
                Err(_) => (400, json("channel")),
            }
        }
        "/v1/send" => {
            node.sends.fetch_add(1, Ordering::SeqCst);
            let known = frame_session(&frame)
                .map(|id| node.sessions.lock().unwrap().contains(&id))
                .unwrap_or(false);
            if !known {
                return (404, json("unknown_session"));
            }
            match core.one(Input::Data { frame }) {
                Ok(reply) => (200, reply),
                Err(CoreError::UnknownSession) => (404, json("unknown_session")),
                Err(_) => (400, json("channel")),
            }
        }
        _ => (404, b"not found".to_vec()),
    }
}

/// A format 2 descriptor of `core`'s realm served by `nodes`.
fn descriptor(core: &Arc<Mutex<MemRealm>>, nodes: &[&str]) -> RealmDescriptor {
    let d = core.lock().unwrap().descriptor();
    RealmDescriptor::new_v2(
        d.realm_id,
        d.public_key,
        d.ksf,
        d.max_attempts_limit,
        nodes.iter().map(|s| s.to_string()).collect(),
    )
    .unwrap()
}

fn client(realm: RealmDescriptor, user: &str, order: NodeOrder) -> VaultClient {
    VaultClient::new(realm, format!("user:{user}"))
        .unwrap()
        .with_node_order(order)
}

#[test]
fn past_a_closed_port_and_a_503_to_a_node_that_serves() {
    let core = Arc::new(Mutex::new(MemRealm::new(11).unwrap()));
    let (busy, busy_url) = relay(&core, Mode::Unavailable);
    let (good, good_url) = relay(&core, Mode::Serve);
    let dead = closed_port();
    let realm = descriptor(&core, &[&dead, &busy_url, &good_url]);
    let vault = client(realm, "alice", NodeOrder::AsListed);
    let (pw, k) = (Password::from("pw"), BackupKey::from_bytes([5; 32]));
    assert_eq!(vault.register(&pw, &k, 5).unwrap(), 5);
    assert_eq!(vault.fetch_key(&pw).unwrap().expose_secret(), &[5; 32]);
    // A session of several frames (login, register, upload) stays on the
    // node that opened it.
    let new = Password::from("new");
    vault.change_password(&pw, &new).unwrap();
    assert_eq!(vault.fetch_key(&new).unwrap().expose_secret(), &[5; 32]);
    assert!(
        busy.hits.load(Ordering::SeqCst) >= 4,
        "tried before the third node"
    );
    assert_eq!(busy.sends.load(Ordering::SeqCst), 0);
    assert!(good.opens.load(Ordering::SeqCst) >= 4);
    assert!(good.sends.load(Ordering::SeqCst) >= 6);
}

#[test]
fn every_frame_of_a_session_goes_to_the_node_that_opened_it() {
    // Two serving nodes with sessions of their own: a frame sent to the
    // other node would come back `unknown_session`.
    let core = Arc::new(Mutex::new(MemRealm::new(12).unwrap()));
    let (a, a_url) = relay(&core, Mode::Serve);
    let (b, b_url) = relay(&core, Mode::Serve);
    let realm = descriptor(&core, &[&a_url, &b_url]);
    let vault = client(realm, "bob", NodeOrder::Random);
    let pw = Password::from("pw");
    vault
        .register(&pw, &BackupKey::from_bytes([6; 32]), 10)
        .unwrap();
    for _ in 0..24 {
        let s = vault.login(&pw).unwrap();
        assert_eq!(s.key().expose_secret(), &[6; 32]);
    }
    vault.delete(&pw).unwrap();
    // Random order: both nodes served some sessions (all on one: p = 2^-24).
    for n in [&a, &b] {
        assert!(n.opens.load(Ordering::SeqCst) > 0);
        assert!(n.sends.load(Ordering::SeqCst) > 0);
    }
}

#[test]
fn as_listed_keeps_to_the_first_node_while_it_serves() {
    let core = Arc::new(Mutex::new(MemRealm::new(13).unwrap()));
    let (a, a_url) = relay(&core, Mode::Serve);
    let (b, b_url) = relay(&core, Mode::Serve);
    let vault = client(
        descriptor(&core, &[&a_url, &b_url]),
        "carol",
        NodeOrder::AsListed,
    );
    let pw = Password::from("pw");
    vault
        .register(&pw, &BackupKey::from_bytes([7; 32]), 10)
        .unwrap();
    vault.fetch_key(&pw).unwrap();
    assert!(a.opens.load(Ordering::SeqCst) > 0);
    assert_eq!(b.opens.load(Ordering::SeqCst), 0);
}

#[test]
fn when_every_node_fails_the_error_names_each() {
    let core = Arc::new(Mutex::new(MemRealm::new(14).unwrap()));
    let (dead1, dead2) = (closed_port(), closed_port());
    let vault = client(
        descriptor(&core, &[&dead1, &dead2]),
        "dan",
        NodeOrder::Random,
    );
    let e = vault.fetch_key(&Password::from("pw")).unwrap_err();
    assert!(matches!(e, VaultError::Transport(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.starts_with("cannot reach any of the vault's 2 nodes ("),
        "{m}"
    );
    assert!(
        m.contains(&format!("{dead1}: ")) && m.contains(&format!("{dead2}: ")),
        "{m}"
    );

    // One refusing to serve: the realm is unavailable rather than unreachable.
    let (_busy, busy_url) = relay(&core, Mode::Unavailable);
    let vault = client(
        descriptor(&core, &[&dead1, &busy_url]),
        "dan",
        NodeOrder::AsListed,
    );
    let e = vault.fetch_key(&Password::from("pw")).unwrap_err();
    assert!(matches!(e, VaultError::Unavailable(_)), "{e}");
    let m = e.to_string();
    assert!(m.contains("none of its 2 nodes would serve"), "{m}");
    assert!(m.contains(&format!("{busy_url}: HTTP 503: ")), "{m}");
    assert!(m.contains("unavailable (test relay)"), "{m}");
}

#[test]
fn a_login_is_not_resent_after_a_node_may_have_taken_it() {
    // The first node reads the frame and hangs up: its core may have spent
    // an attempt. A registration moves on (its first frame changes
    // nothing); a login stops rather than spend a second attempt.
    let core = Arc::new(Mutex::new(MemRealm::new(15).unwrap()));
    let (gone, gone_url) = relay(&core, Mode::HangUp);
    let (good, good_url) = relay(&core, Mode::Serve);
    let vault = client(
        descriptor(&core, &[&gone_url, &good_url]),
        "erin",
        NodeOrder::AsListed,
    );
    let pw = Password::from("pw");
    vault
        .register(&pw, &BackupKey::from_bytes([8; 32]), 10)
        .unwrap();
    let opens = good.opens.load(Ordering::SeqCst);
    assert!(opens > 0);
    let e = vault.fetch_key(&pw).unwrap_err();
    assert!(matches!(e, VaultError::Transport(_)), "{e}");
    let m = e.to_string();
    assert!(m.contains(&gone_url), "{m}");
    assert!(
        m.contains("may have reached it and spent one attempt"),
        "{m}"
    );
    assert_eq!(good.opens.load(Ordering::SeqCst), opens, "not resent");
    assert!(gone.hits.load(Ordering::SeqCst) >= 2);
}

// ---- the real daemon ----

fn vault_bin() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/coffer-vault
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("coffer-vault");
    assert!(
        bin.is_file(),
        "the vault daemon {} is missing: build it first with `cargo build -p coffer-vault` \
         (`cargo test --workspace` builds it)",
        bin.display()
    );
    bin
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `coffer-vault serve`, killed on drop.
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    url: String,
}

impl Daemon {
    fn start() -> Self {
        let bin = vault_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let (data, nvram) = (dir.path().join("data"), dir.path().join("nvram"));
        let o = Command::new(&bin)
            .args(["init", "--data", data.to_str().unwrap()])
            .args(["--nvram", nvram.to_str().unwrap()])
            .args(["--address", &url])
            .args(["--ksf-memory-kib", "19456", "--ksf-iterations", "1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "coffer-vault init: {}", stderr(&o));
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(&bin)
            .args(["serve", "--data", data.to_str().unwrap()])
            .args(["--nvram", nvram.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("COFFER_PKCS11_MODULE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Self { dir, child, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("coffer-vault serve exited ({status}): {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not listen: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// The single-node descriptor `init` wrote (format 1).
    fn descriptor(&self) -> RealmDescriptor {
        let text = std::fs::read_to_string(self.dir.path().join("data/realm.json")).unwrap();
        RealmDescriptor::from_json(&text).unwrap()
    }

    fn token(&self, user: &str) -> String {
        let o = Command::new(vault_bin())
            .args(["token", "--data"])
            .arg(self.dir.path().join("data"))
            .args(["--tenant", "app", "--user", user])
            .output()
            .unwrap();
        assert!(o.status.success(), "coffer-vault token: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn real_daemon_behind_a_closed_port() {
    let daemon = Daemon::start();
    let v1 = daemon.descriptor();
    assert_eq!(v1.nodes(), [daemon.url.as_str()]);
    let dead = closed_port();
    let v2 = RealmDescriptor::new_v2(
        v1.realm_id,
        v1.public_key,
        v1.ksf,
        v1.max_attempts_limit,
        vec![dead.clone(), daemon.url.clone()],
    )
    .unwrap();
    // What an app would ship, read back.
    let v2 = RealmDescriptor::from_json(&v2.to_json()).unwrap();
    assert_eq!(v1.check_same_realm(&v2), Ok(()));
    let pw = Password::from("correct horse");
    let k = BackupKey::from_bytes([0x42; 32]);
    let vault = VaultClient::new(v2.clone(), daemon.token("frank"))
        .unwrap()
        .with_node_order(NodeOrder::AsListed);
    assert_eq!(vault.register(&pw, &k, 5).unwrap(), 5);
    assert_eq!(vault.fetch_key(&pw).unwrap().expose_secret(), &[0x42; 32]);
    let e = vault.fetch_key(&Password::from("wrong")).unwrap_err();
    assert_eq!(e.attempts_remaining(), Some(4), "{e}");
    // From a random node, whichever it is.
    let vault = VaultClient::new(v2, daemon.token("frank")).unwrap();
    for _ in 0..3 {
        assert_eq!(vault.fetch_key(&pw).unwrap().expose_secret(), &[0x42; 32]);
    }
    // The format 1 descriptor still works as before.
    let vault = VaultClient::new(v1, daemon.token("frank")).unwrap();
    assert_eq!(vault.fetch_key(&pw).unwrap().expose_secret(), &[0x42; 32]);
}
