//! The HTTP API (axum). The host relays frames it cannot read; what it can
//! check (token, rate limits, frame shape) it checks before the core.
//!
//! - `POST /v1/open`  `Authorization: Bearer <token>`, body = open frame → reply frame
//! - `POST /v1/send`  body = data frame → reply frame
//! - `GET  /v1/realm` the realm descriptor
//! - `GET  /healthz`, `GET /metrics`
//! - `POST /v1/peer`  a replicated realm's host-to-host messages (`peer.rs`)
//!
//! In a replicated realm a node that does not lead forwards `open` and
//! `send` to the leader (once: the header `x-coffer-forwarded` stops loops)
//! and relays its answer.
//!
//! Errors: JSON `{"error": code, "message": text}` plus `scope` and
//! `retry_after_ms` for `rate_limited`. Every error the router produces has
//! that shape, including its own refusals (`not_found`,
//! `method_not_allowed`, `too_large`, `bad_body`, `timeout`); what hyper
//! refuses before a request reaches the router (a malformed request line or
//! header, a bad or duplicate `Content-Length`, headers too large) is an
//! empty-bodied 400 or 431 (docs/protocol.md §7).
//!
//! Hardening (see [`serve`]): request bodies are read by [`gate`] under a
//! size limit and [`BODY_TIMEOUT`] before any handler runs; connections
//! carry a header-read, idle and write-stall deadline; the number of
//! connections is capped; shutdown drains for at most [`DRAIN_TIMEOUT`].

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use coffer_vault_core::CoreError;
use coffer_vault_proto::channel::{frame_kind, FrameKind, MAX_FRAME_LEN};

use crate::engine::{Job, JobInput};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::tenants::{Tenants, TokenError};

/// What the handlers share.
pub struct AppState {
    /// The engines' queues: one for a single-node vault, one per group for
    /// a replicated node.
    pub engines: Vec<mpsc::Sender<Job>>,
    /// A replicated node's per-group event loops (peer messages).
    pub peers: Vec<crossbeam_channel::Sender<crate::replication::Event>>,
    /// A replicated node's per-group view of the leader (client frames are
    /// forwarded to it).
    pub leaders: Vec<Arc<std::sync::Mutex<crate::replication::LeaderView>>>,
    /// Which group serves a user (a replicated node).
    pub router: Option<coffer_vault_core::replica::RecordRouter>,
    /// Tenants and their keys.
    pub tenants: Tenants,
    /// Rate limits.
    pub limits: RateLimiter,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// realm.json as served.
    pub realm_json: String,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn core_error(e: CoreError) -> Response {
    match e {
        CoreError::Frame(d) => error(StatusCode::BAD_REQUEST, "bad_frame", d.to_string()),
        CoreError::Channel(c) => error(StatusCode::BAD_REQUEST, "channel", c.to_string()),
        CoreError::UnknownSession => error(StatusCode::NOT_FOUND, "unknown_session", e.to_string()),
        other => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            other.to_string(),
        ),
    }
}

/// The router, with the default [`ServerLimits`].
pub fn router(state: Arc<AppState>) -> Router {
    router_with(state, ServerLimits::default())
}

/// The router; request bodies must arrive within `limits.body_timeout`, and
/// `/v1/peer` bodies share `limits.peer_budget_kib`.
pub fn router_with(state: Arc<AppState>, limits: ServerLimits) -> Router {
    let gate_state = Arc::new(Gate {
        app: state.clone(),
        body_timeout: limits.body_timeout,
        peer_budget: Arc::new(Semaphore::new(limits.peer_budget_kib)),
    });
    Router::new()
        .route("/v1/open", post(open))
        .route("/v1/send", post(send))
        .route("/v1/realm", get(realm))
        .route(
            "/v1/peer",
            post(peer).layer(DefaultBodyLimit::max(crate::peer::MAX_MESSAGE)),
        )
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_FRAME_LEN))
        .layer(axum::middleware::from_fn_with_state(gate_state, gate))
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Limits and timeouts. Constants for now; `serve` flags would need main.rs.

/// A request's head (request line and headers) must arrive within this
/// time of its first byte (of the connection's start for its first
/// request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body must arrive within this time of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no request in progress is closed after
/// this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection whose peer reads none of a response for this long is
/// closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGTERM/SIGINT: the longest the daemon waits for requests in
/// progress before it exits anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once (further capped below the process's
/// open-file limit); more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 8192;
const KIB: usize = 1024;
/// The memory all `/v1/peer` bodies being read or handled at once may hold
/// beyond their first [`PEER_FREE_BYTES`], in KiB: twice the largest
/// message, since a body counts twice its bytes (its buffer grows by
/// reallocation, and the message is decoded from it). A body takes its share
/// as its bytes arrive, never waiting: one that finds the budget full is
/// answered 503 `unavailable` at once (the sending node retries). So a
/// sender that promises a large body and sends nothing holds nothing, and
/// small peer messages (heartbeats, votes, most appends) never need it.
pub const PEER_BODY_BUDGET_KIB: usize = 2 * crate::peer::MAX_MESSAGE / KIB;
/// The bytes of a `/v1/peer` body that need no share of the budget: small
/// messages pass even while large ones fill it (bounded per connection, and
/// connections are capped).
pub const PEER_FREE_BYTES: usize = 64 * KIB;

/// The server's timeouts and limits ([`serve_with`]).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// [`HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// [`BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// [`DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`PEER_BODY_BUDGET_KIB`].
    pub peer_budget_kib: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            peer_budget_kib: PEER_BODY_BUDGET_KIB,
        }
    }
}

/// Serves `state` on `listener` with the default [`ServerLimits`] until
/// `shutdown` completes, then drains for at most [`DRAIN_TIMEOUT`].
pub async fn serve<F>(listener: TcpListener, state: Arc<AppState>, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(listener, state, shutdown, ServerLimits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with<F>(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: F,
    limits: ServerLimits,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let max = limits.max_connections.min(fd_budget()).max(1);
    let listener = GuardedListener {
        inner: listener,
        slots: Arc::new(Semaphore::new(max)),
        limits,
    };
    let app = router_with(state, limits).into_make_service_with_connect_info::<Conn>();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            // An error means the sender is gone: stop as well.
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .into_future();
    let bounded = async move {
        shutdown.await;
        tracing::info!(
            drain_ms = limits.drain_timeout.as_millis() as u64,
            "shutting down: draining connections"
        );
        let _ = stop_tx.send(true);
        tokio::time::sleep(limits.drain_timeout).await;
        // Keep the sender alive until here.
        drop(stop_tx);
    };
    tokio::select! {
        r = server => r,
        () = bounded => {
            tracing::warn!("connections still open after the drain bound; closing them");
            Ok(())
        }
    }
}

/// Connections the process's open-file limit leaves room for (its soft
/// limit less a reserve for the store, NVRAM, peers and logs). Read from
/// `/proc/self/limits`; unlimited where that cannot be read.
fn fd_budget() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l["Max open files".len()..].split_whitespace().next())
                .and_then(|v| v.parse::<usize>().ok())
        });
    match soft {
        Some(n) => n.saturating_sub(128).max(16),
        None => usize::MAX,
    }
}

/// A connection's shared state: whether a request is in the router (the
/// connection's read deadline is off meanwhile; [`gate`] times the body)
/// and how many it has answered.
#[derive(Default)]
struct ConnState {
    busy: AtomicUsize,
    answered: AtomicU64,
}

/// The connection a request came on ([`ConnectInfo`]).
#[derive(Clone)]
pub struct Conn(Arc<ConnState>);

impl Connected<axum::serve::IncomingStream<'_, GuardedListener>> for Conn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        Conn(stream.io().conn.clone())
    }
}

/// Marks a request in the router; on drop, answered.
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(c: Arc<ConnState>) -> Self {
        c.busy.fetch_add(1, Ordering::SeqCst);
        Busy(c)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TCP listener with a cap on open connections.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    limits: ServerLimits,
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, SocketAddr) {
        let slot = loop {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => break p,
                Err(_) => {
                    tracing::warn!("connection limit reached; new connections wait");
                    if let Ok(p) = self.slots.clone().acquire_owned().await {
                        break p;
                    }
                }
            }
        };
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = io.set_nodelay(true);
        let io = GuardedIo {
            io,
            conn: Arc::new(ConnState::default()),
            _slot: slot,
            limits: self.limits,
            // The first request's head is due HEADER_TIMEOUT after connect.
            deadline: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
            seen_answered: 0,
            head_started: false,
            write_deadline: None,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection with deadlines: while no request is in the router, reads
/// must bring a request head within [`HEADER_TIMEOUT`] of its first byte
/// and the first byte within [`IDLE_TIMEOUT`] of the last answer; a write
/// that makes no progress for [`WRITE_TIMEOUT`] fails. A missed deadline
/// fails the read or write, and hyper closes the connection.
pub struct GuardedIo {
    io: TcpStream,
    conn: Arc<ConnState>,
    _slot: OwnedSemaphorePermit,
    limits: ServerLimits,
    deadline: Pin<Box<Sleep>>,
    seen_answered: u64,
    head_started: bool,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl GuardedIo {
    fn write_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limits.write_timeout;
        let d = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match d.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(timed_out("write stalled"))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.write_stalled(cx),
            done => {
                self.write_deadline = None;
                done
            }
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.conn.busy.load(Ordering::SeqCst) > 0 {
            // A request is in the router: its body has its own timeout.
            return Pin::new(&mut me.io).poll_read(cx, buf);
        }
        let answered = me.conn.answered.load(Ordering::SeqCst);
        if answered != me.seen_answered {
            // Answered since we last looked: idle until the next request.
            me.seen_answered = answered;
            me.head_started = false;
            me.deadline
                .as_mut()
                .reset(Instant::now() + me.limits.idle_timeout);
        }
        let before = buf.filled().len();
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if !me.head_started && buf.filled().len() > before {
                    // A head has its own HEADER_TIMEOUT from its first
                    // byte, however late in the idle time it starts.
                    me.head_started = true;
                    me.deadline
                        .as_mut()
                        .reset(Instant::now() + me.limits.header_timeout);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match me.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(timed_out(if me.head_started {
                    "request head timed out"
                } else {
                    "idle connection timed out"
                }))),
                Poll::Pending => Poll::Pending,
            },
            err => err,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write(cx, buf);
        me.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_flush(cx);
        me.wrote(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_shutdown(cx);
        me.wrote(r, cx)
    }
}

// ---------------------------------------------------------------------------
// The gate: every request passes it before a handler.

/// What [`gate`] needs.
struct Gate {
    app: Arc<AppState>,
    body_timeout: Duration,
    /// KiB of `/v1/peer` bodies that may be held at once.
    peer_budget: Arc<Semaphore>,
}

/// The metrics label of a path (a fixed set: no client text in labels).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/open" => "open",
        "/v1/send" => "send",
        "/v1/peer" => "peer",
        "/v1/realm" => "realm",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        _ => "other",
    }
}

/// Runs before every handler: marks the connection busy, reads the body of
/// the POST routes (size limit, [`BODY_TIMEOUT`]; `/v1/peer`: refused
/// unread on a vault that is not replicated, its memory bounded by
/// [`PEER_BODY_BUDGET_KIB`]), gives bodiless errors the JSON shape and
/// counts every answer in `coffer_vault_http_requests_total`.
async fn gate(State(g): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let _busy = req
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|c| Busy::new(c.0 .0.clone()));
    let route = route_label(req.uri().path());
    let resp = match admit(&g, route, req).await {
        Ok((req, permit)) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err(resp) => resp,
    };
    let resp = json_shaped(resp);
    g.app.metrics.request(route, resp.status().as_u16());
    resp
}

/// The request with its body read, or the answer that refuses it.
async fn admit(
    g: &Gate,
    route: &'static str,
    req: Request,
) -> Result<(Request, Option<OwnedSemaphorePermit>), Response> {
    if req.method() != Method::POST || !matches!(route, "open" | "send" | "peer") {
        // Nothing reads the body: the router answers (405, 404, GETs).
        return Ok((req, None));
    }
    let declared = match declared_length(req.headers()) {
        Ok(n) => n,
        Err(m) => return Err(error(StatusCode::BAD_REQUEST, "bad_body", m)),
    };
    let mut budget = None;
    let limit = if route == "peer" {
        if g.app.peers.is_empty() {
            return Err(error(
                StatusCode::NOT_FOUND,
                "not_replicated",
                "this vault is not a node of a replicated realm".into(),
            ));
        }
        budget = Some(&g.peer_budget);
        crate::peer::MAX_MESSAGE
    } else {
        MAX_FRAME_LEN
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let (parts, body) = req.into_parts();
    let (bytes, permit) = read_body(body, limit, declared, g.body_timeout, budget).await?;
    Ok((Request::from_parts(parts, Body::from(bytes)), permit))
}

/// The request's `Content-Length`, if it has one (hyper has refused
/// malformed and conflicting ones already).
fn declared_length(h: &HeaderMap) -> Result<Option<usize>, String> {
    match h.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
            .ok_or_else(|| "invalid Content-Length".to_string()),
    }
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body is larger than this route's limit of {limit} bytes"),
    )
}

/// Reads a body of at most `limit` bytes within `timeout`. With a `budget`
/// (KiB permits), the bytes held take their share of it as they arrive, and
/// a body that finds it full is refused at once; the permits come back with
/// the bytes, to hold until they are handled.
async fn read_body(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
    timeout: Duration,
    budget: Option<&Arc<Semaphore>>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Response> {
    let read = async {
        // Without a budget the limit is small (a frame): reserve it whole.
        let reserve = if budget.is_some() {
            0
        } else {
            declared.unwrap_or(0).min(limit)
        };
        let mut buf = Vec::with_capacity(reserve);
        let mut held: Option<OwnedSemaphorePermit> = None;
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return Ok((Bytes::from(buf), held)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len().saturating_add(data.len()) > limit {
                            return Err(too_large(limit));
                        }
                        if let Some(b) = budget {
                            // Twice the bytes: the buffer may reallocate
                            // while it grows, and the message is decoded
                            // from it.
                            let want = 2
                                * (buf.len() + data.len())
                                    .saturating_sub(PEER_FREE_BYTES)
                                    .div_ceil(KIB);
                            let have = held.as_ref().map_or(0, |p| p.num_permits());
                            if want > have {
                                let more = u32::try_from(want - have).unwrap_or(u32::MAX);
                                match b.clone().try_acquire_many_owned(more) {
                                    Ok(p) => match held.as_mut() {
                                        Some(h) => h.merge(p),
                                        None => held = Some(p),
                                    },
                                    Err(_) => {
                                        return Err(error(
                                            StatusCode::SERVICE_UNAVAILABLE,
                                            "unavailable",
                                            "the peer messages in progress hold this node's memory budget; retry".into(),
                                        ))
                                    }
                                }
                            }
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("cannot read the request body: {e}"),
                    ))
                }
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )),
    }
}

/// An error answer without the JSON shape (the router's own 404, 405 and
/// rejections) gets it; other answers pass unchanged.
fn json_shaped(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::BAD_REQUEST => ("bad_body", "the request could not be read"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method (see Allow)",
        ),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request did not arrive in time"),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported body"),
        s if s.is_client_error() => ("bad_request", "the request was refused"),
        _ => ("internal", "the vault could not answer"),
    };
    let (mut parts, _) = resp.into_parts();
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route".into())
}

async fn run_job(state: &AppState, group: u8, input: JobInput) -> Response {
    let (tx, rx) = oneshot::channel();
    let Some(engine) = state.engines.get(usize::from(group)) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "unknown or expired session; open a new one".into(),
        );
    };
    if engine.try_send(Job { input, reply: tx }).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the vault is overloaded; retry shortly".into(),
        );
    }
    match rx.await {
        Ok(Ok(reply)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            reply,
        )
            .into_response(),
        Ok(Err(e)) => core_error(e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the vault core stopped".into(),
        ),
    }
}

/// Checks the frame's kind; the error is the `bad_frame` message.
fn check_frame(body: &[u8], want: FrameKind) -> Result<(), String> {
    match frame_kind(body) {
        Ok(k) if k == want => Ok(()),
        Ok(k) => Err(format!("expected a {want:?} frame, got {k:?}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn open(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    open_inner(&state, &headers, body).await
}

/// The leader's URL when this node follows `group`'s leader and knows it.
fn forward_to(state: &AppState, group: u8, headers: &HeaderMap) -> Option<String> {
    if headers.contains_key(FORWARDED) {
        return None;
    }
    let view = state.leaders.get(usize::from(group))?.lock().ok()?.clone();
    if view.me {
        return None;
    }
    view.url
}

/// The group of a data frame: its session id's first byte (a replicated
/// node; 0 otherwise).
fn data_group(state: &AppState, frame: &[u8]) -> u8 {
    if state.router.is_none() {
        return 0;
    }
    coffer_vault_proto::channel::frame_session(frame)
        .map(|id| id[0])
        .unwrap_or(0)
}

const FORWARDED: &str = "x-coffer-forwarded";

/// One pooled agent for every forwarded request (keep-alive to the leader).
fn forward_agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        crate::net::agent(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(10),
        )
    })
}

/// Relays a client request to the leader and its answer back.
async fn forward(url: String, path: &'static str, headers: &HeaderMap, body: Bytes) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let endpoint = format!("{}{path}", url.trim_end_matches('/'));
    let res = tokio::task::spawn_blocking(move || {
        let mut req = forward_agent()
            .post(&endpoint)
            .header(FORWARDED, "1")
            .header("content-type", "application/octet-stream");
        if let Some(a) = auth {
            req = req.header("authorization", &a);
        }
        let mut r = req.send(&body[..])?;
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let bytes = r
            .body_mut()
            .with_config()
            .limit(MAX_FRAME_LEN as u64 * 4)
            .read_to_vec()?;
        Ok::<_, ureq::Error>((status, ctype, bytes))
    })
    .await;
    match res {
        Ok(Ok((status, ctype, bytes))) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, ctype)],
            bytes,
        )
            .into_response(),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the leader did not answer; retry (another node may take over)".into(),
        ),
    }
}

async fn peer(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let (group, msg) = match crate::peer::PeerMsg::decode(&body) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_peer_message", e.to_string()),
    };
    let Some(events) = state.peers.get(usize::from(group)) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_replicated",
            format!("this vault has no group {group}"),
        );
    };
    let (tx, rx) = oneshot::channel();
    if events
        .try_send(crate::replication::Event::Peer(msg, tx))
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "busy".into(),
        );
    }
    match rx.await {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the vault core stopped".into(),
        ),
    }
}

async fn open_inner(state: &AppState, headers: &HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            TokenError::Malformed.to_string(),
        );
    };
    let (tenant, user) = match state.tenants.verify(token) {
        Ok(tu) => tu,
        Err(e) => {
            state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "token refused");
            return error(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
        }
    };
    if let Err(m) = check_frame(&body, FrameKind::Open) {
        return error(StatusCode::BAD_REQUEST, "bad_frame", m);
    }
    let group = state.router.as_ref().map_or(0, |r| r.group(&tenant, &user));
    if let Some(url) = forward_to(state, group, headers) {
        // The leader's host checks the token and the rate limits itself.
        return forward(url, "/v1/open", headers, body).await;
    }
    if let Err((scope, retry_after_ms)) = state.limits.check(&tenant, &user) {
        match scope {
            crate::ratelimit::Scope::User => state
                .metrics
                .rate_limited_user
                .fetch_add(1, Ordering::Relaxed),
            crate::ratelimit::Scope::Tenant => state
                .metrics
                .rate_limited_tenant
                .fetch_add(1, Ordering::Relaxed),
        };
        tracing::debug!(tenant = %tenant, scope = scope.as_str(), "rate limited");
        let body = serde_json::json!({
            "error": "rate_limited",
            "scope": scope.as_str(),
            "retry_after_ms": retry_after_ms,
            "message": format!(
                "too many requests for this {}; retry in {} ms (this is the service's rate limit, not the guess limit: no attempt was spent)",
                scope.as_str(), retry_after_ms
            ),
        });
        let secs = retry_after_ms.div_ceil(1000).to_string();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (header::RETRY_AFTER, secs),
            ],
            body.to_string(),
        )
            .into_response();
    }
    run_job(
        state,
        group,
        JobInput::Open {
            tenant,
            user,
            frame: body.to_vec(),
        },
    )
    .await
}

async fn send(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let group = data_group(&state, &body);
    if let Some(url) = forward_to(&state, group, &headers) {
        return forward(url, "/v1/send", &headers, body).await;
    }
    match check_frame(&body, FrameKind::Data) {
        Err(m) => error(StatusCode::BAD_REQUEST, "bad_frame", m),
        Ok(()) => {
            run_job(
                &state,
                group,
                JobInput::Data {
                    frame: body.to_vec(),
                },
            )
            .await
        }
    }
}

async fn realm(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        state.realm_json.clone(),
    )
        .into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.refusing() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
