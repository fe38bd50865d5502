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
//! `retry_after_ms` for `rate_limited`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{mpsc, oneshot};

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

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
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
        .layer(DefaultBodyLimit::max(MAX_FRAME_LEN))
        .with_state(state)
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
    let resp = open_inner(&state, &headers, body).await;
    state.metrics.request("open", resp.status().as_u16());
    resp
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
        let resp = forward(url, "/v1/send", &headers, body).await;
        state.metrics.request("send", resp.status().as_u16());
        return resp;
    }
    let resp = match check_frame(&body, FrameKind::Data) {
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
    };
    state.metrics.request("send", resp.status().as_u16());
    resp
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
