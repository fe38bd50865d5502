//! The HTTP API (axum). The host relays frames it cannot read; what it can
//! check (token, rate limits, frame shape) it checks before the core.
//!
//! - `POST /v1/open`  `Authorization: Bearer <token>`, body = open frame → reply frame
//! - `POST /v1/send`  body = data frame → reply frame
//! - `GET  /v1/realm` the realm descriptor
//! - `GET  /healthz`, `GET /metrics`
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
    /// The engine's queue.
    pub engine: mpsc::Sender<Job>,
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
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_FRAME_LEN))
        .with_state(state)
}

async fn run_job(state: &AppState, input: JobInput) -> Response {
    let (tx, rx) = oneshot::channel();
    if state.engine.try_send(Job { input, reply: tx }).is_err() {
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
        JobInput::Open {
            tenant,
            user,
            frame: body.to_vec(),
        },
    )
    .await
}

async fn send(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let resp = match check_frame(&body, FrameKind::Data) {
        Err(m) => error(StatusCode::BAD_REQUEST, "bad_frame", m),
        Ok(()) => {
            run_job(
                &state,
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
