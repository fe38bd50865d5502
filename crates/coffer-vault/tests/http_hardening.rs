//! The HTTP layer under hostile clients: bodies refused before they are
//! read, stalled connections closed, a bounded shutdown, every error in the
//! JSON shape and counted, and one user's rate limit kept off the tenant's.
//!
//! Two kinds of test: against the real daemon on loopback (`common::Vault`)
//! and, for the connection deadlines whose defaults are seconds long,
//! against [`coffer_vault::http::serve_with`] in this process with short
//! limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_vault::http::{serve_with, AppState, ServerLimits};
use common::Vault;

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client: what ureq will not send (partial requests, lying
// Content-Lengths, bad chunking).

/// An HTTP answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}\n{}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the documented error shape and returns its code.
    fn error_code(&self) -> String {
        assert!(
            self.headers
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{}: {}",
            self.status,
            self.headers
        );
        let v = self.json();
        assert!(v["message"].is_string(), "{v}");
        v["error"].as_str().unwrap().to_string()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads one answer (a `Content-Length` body), or None if the connection
/// closed or timed out first.
fn read_answer(s: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let headers = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = headers.split(' ').nth(1)?.parse().ok()?;
    let len = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Sends `raw` on a new connection and reads the answer.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    read_answer(&mut s).unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(raw)))
}

/// Whether the server closed `s` (EOF or reset) within `within`; reading
/// nothing at all counts as closed only if the read ends, not times out.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => continue, // an error answer (e.g. 408) before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(t0.elapsed()),
        }
    }
}

fn vault_addr(v: &Vault) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], v.port))
}

/// `name{labels}`'s value in the daemon's metrics, 0 if absent.
fn series(v: &Vault, name_and_labels: &str) -> u64 {
    let (_, body) = common::get(&v.url("/metrics")).unwrap();
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The real daemon.

/// A single-node vault answers `/v1/peer` from the headers alone;
/// the 256 MiB it was promised is never sent.
#[test]
fn peer_on_a_single_node_is_refused_before_its_body() {
    let v = Vault::new(&[], &[], &[]);
    let addr = vault_addr(&v);
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /v1/peer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
          Content-Length: 268435456\r\n\r\n",
    )
    .unwrap();
    let a = read_answer(&mut s).expect("answered before the body was sent");
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.error_code(), "not_replicated");
    // Chunked (no length) too.
    let a = exchange(
        addr,
        b"POST /v1/peer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
    );
    assert_eq!((a.status, a.error_code().as_str()), (404, "not_replicated"));
}

/// The router's own refusals in the JSON shape, with stable codes.
#[test]
fn router_refusals_have_the_json_shape() {
    let v = Vault::new(&[], &[], &[]);
    let addr = vault_addr(&v);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            b"POST /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            b"GET /v1/open HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        // 499 bytes: one more than the largest frame. No token: the size is
        // checked first (413 before 401, as documented).
        (
            [
                b"POST /v1/open HTTP/1.1\r\nHost: x\r\nContent-Length: 499\r\n\r\n".to_vec(),
                vec![0u8; 499],
            ]
            .concat(),
            413,
            "too_large",
        ),
        (
            [
                b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 499\r\n\r\n".to_vec(),
                vec![0u8; 499],
            ]
            .concat(),
            413,
            "too_large",
        ),
        // Chunked past the limit.
        (
            [
                b"POST /v1/send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n"
                    .to_vec(),
                vec![0u8; 500],
                b"\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            413,
            "too_large",
        ),
        // Bad chunked framing.
        (
            b"POST /v1/send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            400,
            "bad_body",
        ),
        // A well-formed but empty frame: the handler's own code.
        (
            b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            400,
            "bad_frame",
        ),
    ];
    for (raw, status, code) in cases {
        let a = exchange(addr, &raw);
        let what = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        assert_eq!(a.status, status, "{what:?}: {a:?}");
        assert_eq!(a.error_code(), code, "{what:?}");
    }
    // Through an ordinary client that sends the whole 64 KiB body.
    let (s, b) = common::post(&v.url("/v1/open"), None, &vec![1u8; 64 * 1024]).unwrap();
    assert_eq!((s, common::json_error(&b).as_str()), (413, "too_large"));
    // A 405 still says what is allowed.
    let a = exchange(addr, b"GET /v1/open HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        a.headers.to_ascii_lowercase().contains("allow: post"),
        "{}",
        a.headers
    );
}

/// A huge declared body on a client route is refused from the
/// headers alone.
#[test]
fn a_huge_declared_body_is_refused_unread() {
    let v = Vault::new(&[], &[], &[]);
    let mut s = connect(vault_addr(&v));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /v1/open HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s).expect("answered before the body was sent");
    assert_eq!((a.status, a.error_code().as_str()), (413, "too_large"));
}

/// Answers that never reach a handler are counted by status.
#[test]
fn refusals_before_the_handler_are_counted() {
    let v = Vault::new(&[], &[], &[]);
    let addr = vault_addr(&v);
    let big = [
        b"POST /v1/open HTTP/1.1\r\nHost: x\r\nContent-Length: 499\r\n\r\n".to_vec(),
        vec![0u8; 499],
    ]
    .concat();
    for _ in 0..3 {
        assert_eq!(exchange(addr, &big).status, 413);
    }
    assert_eq!(
        exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").status,
        404
    );
    assert_eq!(
        exchange(addr, b"GET /v1/send HTTP/1.1\r\nHost: x\r\n\r\n").status,
        405
    );
    let m = "coffer_vault_http_requests_total";
    assert_eq!(
        series(&v, &format!("{m}{{route=\"open\",status=\"413\"}}")),
        3
    );
    assert_eq!(
        series(&v, &format!("{m}{{route=\"other\",status=\"404\"}}")),
        1
    );
    assert_eq!(
        series(&v, &format!("{m}{{route=\"send\",status=\"405\"}}")),
        1
    );
}

/// Headers and part of a body, then nothing: answered 408
/// `timeout` and closed after the body timeout (10 s), not held.
#[test]
fn a_stalled_body_is_answered_and_closed() {
    let v = Vault::new(&[], &[], &[]);
    let mut s = connect(vault_addr(&v));
    s.write_all(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let a = read_answer(&mut s).expect("a 408 within the body timeout");
    assert_eq!((a.status, a.error_code().as_str()), (408, "timeout"));
    let t = t0.elapsed();
    assert!(
        t >= Duration::from_secs(9) && t < Duration::from_secs(15),
        "{t:?}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(5)).is_some());
}

/// A user over their own limit spends none of the tenant's budget: user a's
/// 50 opens used to take the tenant's 40 and lock user b out.
#[test]
fn one_user_over_their_limit_does_not_lock_out_the_tenant() {
    let v = Vault::new(
        &[],
        &[
            "--user-burst",
            "2",
            "--user-rate-per-minute",
            "1",
            "--tenant-burst",
            "40",
            "--tenant-rate-per-second",
            "0.01",
        ],
        &[],
    );
    let open = |user: &str| -> (u16, String) {
        let c = v.client("chat", user);
        let (_, ke1) =
            coffer_vault_proto::client::Login::start(&mut rand_core::OsRng, b"pw").unwrap();
        let (_, frame) = coffer_vault_proto::ClientChannel::open(
            &c.realm,
            &ke1,
            common::now_ms(),
            &mut rand_core::OsRng,
        )
        .unwrap();
        let (status, body) = common::post(&v.url("/v1/open"), Some(&c.token), &frame).unwrap();
        let scope = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j["scope"].as_str().map(str::to_string))
            .unwrap_or_default();
        (status, scope)
    };
    let mut ok = 0;
    for i in 0..50 {
        match open("a") {
            (200, _) => ok += 1,
            (429, scope) => assert_eq!(scope, "user", "open {i}"),
            other => panic!("open {i}: {other:?}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(open("b"), (200, String::new()), "user b is not locked out");
}

/// Through the daemon: a connection with half a request
/// head is closed after the header timeout, and SIGTERM exits within the
/// drain bound while one is held open.
#[test]
fn the_daemon_closes_stalled_heads_and_stops_within_the_drain_bound() {
    let mut v = Vault::new(&[], &[], &[]);
    let addr = vault_addr(&v);
    let mut half = connect(addr);
    half.write_all(b"POST /v1/open HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let mut silent = connect(addr);
    let t = closed_within(&mut half, Duration::from_secs(20)).expect("closed");
    assert!(t < Duration::from_secs(12), "{t:?}");
    assert!(closed_within(&mut silent, Duration::from_secs(5)).is_some());

    // SIGTERM with a partial head and a partial body held open.
    let mut head = connect(addr);
    head.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let mut body = connect(addr);
    body.write_all(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    v.stop();
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// In this process, with short limits.

/// An `AppState` with no tenants and engines that never answer; `peers`:
/// whether it plays a replicated node (its peer events go nowhere).
fn app(dir: &std::path::Path, replicated: bool) -> Arc<AppState> {
    let (engine, rx) = tokio::sync::mpsc::channel(16);
    std::mem::forget(rx);
    let peers = if replicated {
        let (tx, rx) = crossbeam_channel::bounded(16);
        std::mem::forget(rx);
        vec![tx]
    } else {
        Vec::new()
    };
    Arc::new(AppState {
        engines: vec![engine],
        peers,
        leaders: Vec::new(),
        router: None,
        tenants: coffer_vault::tenants::Tenants::open(dir).unwrap(),
        limits: coffer_vault::ratelimit::RateLimiter::new(Default::default()),
        metrics: Arc::new(coffer_vault::metrics::Metrics::default()),
        realm_json: "{}".into(),
    })
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
    _thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn start(limits: ServerLimits, replicated: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = app(dir.path(), replicated);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                serve_with(
                    l,
                    state,
                    async move {
                        let _ = stopped.await;
                    },
                    limits,
                )
                .await
                .unwrap();
            });
            let _ = done_tx.send(());
            // Dropping the runtime here cancels the connections left.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            addr: addr_rx.recv().unwrap(),
            stop: Some(stop),
            done,
            _dir: dir,
            _thread: thread,
        }
    }

    /// Signals shutdown; how long `serve_with` took to return.
    fn shutdown(&mut self, wait: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        self.done.recv_timeout(wait).ok().map(|()| t0.elapsed())
    }
}

fn short() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1500),
        write_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_millis(800),
        max_connections: 64,
        peer_budget_kib: coffer_vault::http::PEER_BODY_BUDGET_KIB,
    }
}

/// A partial request line, partial headers, or nothing at all: the
/// connection is closed at the header timeout.
#[test]
fn stalled_heads_and_silent_connections_are_closed() {
    let s = Server::start(short(), false);
    let mut conns = Vec::new();
    for raw in [
        &b""[..],
        b"GE",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a",
    ] {
        let mut c = connect(s.addr);
        c.write_all(raw).unwrap();
        conns.push(c);
    }
    for c in &mut conns {
        let t = closed_within(c, Duration::from_secs(5)).expect("closed");
        assert!(t < Duration::from_millis(1500), "{t:?}");
    }
    // Trickling the head a byte at a time does not extend it.
    let mut c = connect(s.addr);
    let t0 = Instant::now();
    let mut closed = false;
    for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if c.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed || closed_within(&mut c, Duration::from_secs(2)).is_some(),
        "still open after {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // A prompt request is served.
    let a = exchange(s.addr, b"GET /v1/realm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(a.status, 200);
}

/// A keep-alive connection is served, then closed when idle.
#[test]
fn idle_keep_alive_connections_are_closed() {
    let s = Server::start(short(), false);
    let mut c = connect(s.addr);
    for _ in 0..3 {
        c.write_all(b"GET /v1/realm HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_answer(&mut c).unwrap().status, 200);
        // Less than the idle timeout apart (longer than the header one).
        std::thread::sleep(Duration::from_millis(900));
    }
    let t = closed_within(&mut c, Duration::from_secs(5)).expect("closed when idle");
    assert!(t < Duration::from_millis(1500), "{t:?}");
}

/// The connection cap: beyond it, connections wait (unserved)
/// until a slot frees.
#[test]
fn connections_beyond_the_cap_wait() {
    let s = Server::start(
        ServerLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(2),
            ..short()
        },
        false,
    );
    let _a = connect(s.addr);
    let _b = connect(s.addr);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let a = exchange(s.addr, b"GET /v1/realm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(a.status, 200);
    // Served only once a silent one was closed (header timeout 2 s).
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
}

/// Shutdown returns within the drain bound although clients hold a
/// partial head and a partial body open (timeouts far longer than it).
#[test]
fn shutdown_is_bounded_by_the_drain() {
    let mut s = Server::start(
        ServerLimits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..short()
        },
        false,
    );
    let mut head = connect(s.addr);
    head.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let mut body = connect(s.addr);
    body.write_all(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = s.shutdown(Duration::from_secs(10)).expect("serve returned");
    assert!(t < Duration::from_millis(2000), "{t:?}");
    assert!(t >= Duration::from_millis(700), "{t:?}");
}

/// On a replicated node, peer bodies take a memory budget as their bytes
/// arrive, never waiting for it: bodies promised and not sent hold nothing
/// (a small message is still answered at once), and a body whose bytes find
/// the budget full is refused 503 at once.
#[test]
fn peer_bodies_are_bounded_on_a_replicated_node() {
    let s = Server::start(
        ServerLimits {
            body_timeout: Duration::from_secs(2),
            // 256 KiB: a body of 64 KiB + 128 KiB fits (it counts twice).
            peer_budget_kib: 256,
            ..short()
        },
        true,
    );
    let small = b"POST /v1/peer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nzzzz";
    // Largest messages promised and not sent...
    let huge = b"POST /v1/peer HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n";
    let mut h1 = connect(s.addr);
    h1.write_all(huge).unwrap();
    let mut h2 = connect(s.addr);
    h2.write_all(huge).unwrap();
    // (one over the largest message is refused outright)
    let a = exchange(
        s.addr,
        b"POST /v1/peer HTTP/1.1\r\nHost: x\r\nContent-Length: 268435457\r\n\r\n",
    );
    assert_eq!((a.status, a.error_code().as_str()), (413, "too_large"));
    std::thread::sleep(Duration::from_millis(200));
    // ...hold nothing: a small message is answered at once.
    let t0 = Instant::now();
    let a = exchange(s.addr, small);
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (400, "bad_peer_message")
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // A body that fits is read whole (and refused as garbage by the core).
    let fits = 64 * 1024 + 100 * 1024;
    let mut req =
        format!("POST /v1/peer HTTP/1.1\r\nHost: x\r\nContent-Length: {fits}\r\n\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'z', fits));
    let a = exchange(s.addr, &req);
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (400, "bad_peer_message")
    );
    // One whose bytes do not fit is refused at once, while they arrive.
    let over = 64 * 1024 + 200 * 1024;
    let mut req =
        format!("POST /v1/peer HTTP/1.1\r\nHost: x\r\nContent-Length: {over}\r\n\r\n").into_bytes();
    req.extend(std::iter::repeat_n(b'z', over));
    let mut c = connect(s.addr);
    // The server stops reading when it refuses; the rest may not go out.
    let _ = c.write_all(&req);
    if let Some(a) = read_answer(&mut c) {
        assert_eq!((a.status, a.error_code().as_str()), (503, "unavailable"));
    }
    let m = exchange(s.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("coffer_vault_http_requests_total{route=\"peer\",status=\"503\"} 1"),
        "{text}"
    );
    for h in [&mut h1, &mut h2] {
        let a = read_answer(h).unwrap();
        assert_eq!((a.status, a.error_code().as_str()), (408, "timeout"));
    }
}
