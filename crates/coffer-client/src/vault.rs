//! The client of the key vault (DESIGN.md §6): escrows `K` behind a password,
//! with a guess limit enforced by the vault's trusted core.
//!
//! Every operation is one channel session to the trusted core, pinned to the
//! realm's public key ([`RealmDescriptor`]); the vault's HTTP host relays
//! frames it cannot read. The password never leaves this process: OPAQUE
//! (RFC 9807) proves it, and `K` travels wrapped under the OPAQUE export key.
//!
//! A replicated realm (descriptor format 2) lists several nodes, any of which
//! serves any session: a session opens on one node, moving on to the next
//! when a node cannot be reached or answers 503, and all its later frames go
//! to the node that answered (ADR 0011, "Clients and tenants").
//!
//! ```no_run
//! use coffer_client::vault::{Password, VaultClient};
//! use coffer_vault_proto::RealmDescriptor;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let realm = RealmDescriptor::from_json(&std::fs::read_to_string("realm.json")?)?;
//! let vault = VaultClient::new(realm, std::env::var("COFFER_VAULT_TOKEN")?)?;
//! let k = coffer_client::BackupKey::generate()?;
//! vault.register(&Password::from("correct horse"), &k, 10)?;
//! let again = vault.fetch_key(&Password::from("correct horse"))?;
//! assert_eq!(again.expose_secret(), k.expose_secret());
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_crypto::BackupKey;
use coffer_vault_proto::client::{FlowError, Login, Registration};
use coffer_vault_proto::{
    ClientChannel, ErrorCode, RealmDescriptor, RealmError, Request, Response,
};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// Timeout of one HTTP exchange with the vault (connect, send, answer).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of connecting to one vault node (TCP, then TLS). Shorter than
/// [`HTTP_TIMEOUT`] so that a node that is down costs little before the
/// next one is tried, and reported apart from a timeout awaiting an answer
/// (nothing was sent, so moving on is always safe).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The order in which a client tries a realm's nodes when it opens a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NodeOrder {
    /// From a random node, then on around the list (the default). Every
    /// node's host serves any session, so spreading clients spreads the
    /// hosts' load; and a node that hangs after taking a login's first
    /// frame, where the client stops rather than risk spending a second
    /// attempt (see [`VaultClient::login`]), then fails only the sessions
    /// that start there, not every one. Per-user rate limits are per node
    /// (ADR 0011), so an order chosen by honest clients protects nothing.
    #[default]
    Random,
    /// From the first node listed, then in order: for an operator who lists
    /// the nearest node first, and for tests.
    AsListed,
}

/// Largest HTTP answer read from the vault (a reply frame is under 1 KiB).
const MAX_ANSWER: u64 = 64 * 1024;

/// A password: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password.
    pub fn new(password: Zeroizing<String>) -> Self {
        Self(password)
    }

    /// The password's text.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Self(Zeroizing::new(s.to_string()))
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self(Zeroizing::new(s))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a vault operation failed, grouped by what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The password was wrong. `attempts_remaining` is what the vault
    /// counts; `0` means that was the last attempt and the key is erased.
    #[error("{}", wrong_password_message(*attempts_remaining))]
    WrongPassword {
        /// Attempts left before the vault erases the key (0: erased now).
        attempts_remaining: u8,
    },
    /// The vault has no key for this user. It answers the same whether the
    /// key was never registered, disabled, or erased after too many wrong
    /// passwords, so nothing tells these apart.
    #[error("the vault has no key for this user: it was erased after too many wrong passwords, disabled, or never registered")]
    NotRegistered,
    /// A key is already registered for this user.
    #[error("the vault already holds a key for this user; registering another would destroy it (a vault user holds one key)")]
    AlreadyRegistered,
    /// The vault's host throttles this user or tenant; retry after the delay.
    #[error("the vault is rate limiting this {scope}: retry in {}", retry_in(*retry_after_ms))]
    RateLimited {
        /// `user` or `tenant`.
        scope: String,
        /// How long to wait, in milliseconds.
        retry_after_ms: u64,
    },
    /// The vault refused the user token (bad, expired, or unknown tenant).
    #[error("the vault refused the user token: {0}")]
    Unauthorized(String),
    /// The vault refuses to serve for now (its store does not match its
    /// trusted state, it is busy, or it failed); nothing was changed.
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
    /// The vault could not be reached, or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The answer did not follow the protocol (wrong realm key, a proxy in
    /// the way, a vault speaking another version).
    #[error("vault protocol error: {0}")]
    Protocol(String),
    /// The realm descriptor is unusable or names another realm.
    #[error(transparent)]
    Realm(#[from] RealmError),
    /// The requested guess limit is outside the realm's bounds.
    #[error("max attempts {asked} is outside the realm's bounds (1..={limit})")]
    Policy {
        /// What was asked.
        asked: u8,
        /// The realm's highest guess limit.
        limit: u8,
    },
    /// This machine's clock is so far from the vault's that the vault refused
    /// the request even after one retry with the vault's time.
    #[error("this machine's clock is {}s away from the vault's; fix the clock and retry", offset_ms / 1000)]
    ClockSkew {
        /// Vault time minus local time, in milliseconds.
        offset_ms: i64,
    },
    /// The released key does not unwrap (a corrupted registration).
    #[error("the key the vault released does not unwrap: the registration is corrupted")]
    Unwrap,
    /// The OS random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
}

fn wrong_password_message(n: u8) -> String {
    match n {
        0 => "wrong password; that was the last attempt: the key has been erased for good".into(),
        1 => "wrong password: 1 attempt remaining".into(),
        n => format!("wrong password: {n} attempts remaining"),
    }
}

fn retry_in(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{} s", ms.div_ceil(1000))
    }
}

impl VaultError {
    /// Attempts left, where the error is about a failed attempt.
    pub fn attempts_remaining(&self) -> Option<u8> {
        match self {
            VaultError::WrongPassword { attempts_remaining } => Some(*attempts_remaining),
            _ => None,
        }
    }

    /// Whether the key is gone from the vault (erased, disabled, or never there).
    pub fn key_gone(&self) -> bool {
        matches!(
            self,
            VaultError::NotRegistered
                | VaultError::WrongPassword {
                    attempts_remaining: 0
                }
        )
    }

    fn refused(code: ErrorCode, attempts_remaining: Option<u8>, server_time_ms: u64) -> Self {
        match code {
            ErrorCode::NotRegistered => VaultError::NotRegistered,
            // The core always sends the count with a wrong password; should it
            // be missing, 0 is the answer that loses nothing (it says "erased").
            ErrorCode::WrongPassword => VaultError::WrongPassword {
                attempts_remaining: attempts_remaining.unwrap_or(0),
            },
            ErrorCode::AlreadyRegistered => VaultError::AlreadyRegistered,
            ErrorCode::ClockSkew => VaultError::ClockSkew {
                offset_ms: server_time_ms as i64 - now_ms() as i64,
            },
            ErrorCode::StoreIntegrity | ErrorCode::Busy => {
                VaultError::Unavailable(code.describe().into())
            }
            ErrorCode::PolicyRejected => VaultError::Protocol(code.describe().into()),
            ErrorCode::BadRequest
            | ErrorCode::OutOfOrder
            | ErrorCode::NotAuthenticated
            | ErrorCode::Replayed => VaultError::Protocol(code.describe().into()),
        }
    }
}

impl From<FlowError> for VaultError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::Refused {
                code,
                attempts_remaining,
                server_time_ms,
            } => VaultError::refused(code, attempts_remaining, server_time_ms),
            // The vault gives the final answer with the count; this is only
            // seen if it did not.
            FlowError::WrongPasswordLocal => VaultError::WrongPassword {
                attempts_remaining: 0,
            },
            FlowError::Unexpected(s) => VaultError::Protocol(s),
            FlowError::Unwrap => VaultError::Unwrap,
            FlowError::Realm(r) => VaultError::Realm(r),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A client of one vault realm, for one user (the tenant's token names the user).
pub struct VaultClient {
    realm: RealmDescriptor,
    /// The nodes' base URLs, without a trailing `/`; one for format 1.
    nodes: Vec<String>,
    order: NodeOrder,
    token: Zeroizing<String>,
    agent: ureq::Agent,
    /// Vault time minus local time, learnt from a clock-skew refusal.
    clock_offset_ms: AtomicI64,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("realm_id", &hex::encode(self.realm.realm_id))
            .field("nodes", &self.nodes)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A session after a successful login: the key, and the channel kept open
/// for a follow-up in the same session (a password change, a delete).
pub struct LoggedIn<'a> {
    client: &'a VaultClient,
    session: Session,
    key: BackupKey,
    max_attempts: u8,
}

impl std::fmt::Debug for LoggedIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIn")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

struct Session {
    channel: ClientChannel,
    /// Index of the node that answered the open frame: the session lives in
    /// that node's core (or is relayed by its host), so every later frame
    /// goes there and never to another node.
    node: usize,
}

/// A failed HTTP exchange with one node.
struct Failure {
    /// The error as the caller sees it when this node is the last word.
    error: VaultError,
    /// The reason alone, without the node's URL, for a list of nodes tried.
    why: String,
    reach: Reach,
}

/// How far a failed request got: whether the next node may be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// No connection was made (name resolution, refused, unreachable, TLS
    /// handshake, connect timeout): the request was never sent.
    NotSent,
    /// The host answered 503: it refuses to serve for now, and a vault
    /// changes nothing before refusing that way.
    Unavailable,
    /// The connection broke or timed out once the request may have been
    /// sent: the vault may have handled it.
    MaybeSent,
    /// The node answered with another error: the answer stands.
    Answered,
}

impl Failure {
    /// Whether opening the session on the next node is safe. A login's
    /// first frame spends one attempt when a core handles it; if it may have
    /// been handled, sending another to the next node could spend a second
    /// one for a single try, and a run of lost replies could spend the
    /// record down to its erasure. A registration's first frame changes
    /// nothing, so it moves on after any timeout.
    fn try_next(&self, spends_attempt: bool) -> bool {
        match self.reach {
            Reach::NotSent | Reach::Unavailable => true,
            Reach::MaybeSent => !spends_attempt,
            Reach::Answered => false,
        }
    }
}

impl VaultClient {
    /// A client of `realm`, authenticated to its host by the tenant's `token`
    /// for one user. Plain `http://` is for loopback and tests; use
    /// `https://` elsewhere (the channel inside is end-to-end encrypted to
    /// the realm key either way, but the token is not).
    ///
    /// A replicated realm's nodes are tried from a random one
    /// ([`NodeOrder::Random`]); see [`VaultClient::with_node_order`].
    pub fn new(realm: RealmDescriptor, token: String) -> Result<Self, VaultError> {
        let token = Zeroizing::new(token);
        let listed = realm.nodes();
        if listed.is_empty() {
            return Err(VaultError::Realm(RealmError::Invalid(
                "the realm descriptor lists no vault node".into(),
            )));
        }
        let mut nodes = Vec::with_capacity(listed.len());
        for (i, url) in listed.iter().enumerate() {
            let base = url.trim_end_matches('/').to_string();
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                let what = if listed.len() == 1 {
                    "the vault address".to_string()
                } else {
                    format!("vault node {}", i + 1)
                };
                return Err(VaultError::Realm(RealmError::Invalid(format!(
                    "{what} {url:?} is not an http:// or https:// URL"
                ))));
            }
            nodes.push(base);
        }
        if token.trim().is_empty() {
            return Err(VaultError::Unauthorized("the user token is empty".into()));
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            // Reported as a connect timeout (nothing sent), not a global one.
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            // The token must never follow a redirect somewhere else.
            .max_redirects(0)
            .user_agent(concat!("coffer/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            realm,
            nodes,
            order: NodeOrder::default(),
            token,
            agent: config.into(),
            clock_offset_ms: AtomicI64::new(0),
        })
    }

    /// The same client, trying the nodes of a replicated realm in `order`.
    pub fn with_node_order(mut self, order: NodeOrder) -> Self {
        self.order = order;
        self
    }

    /// The pinned realm.
    pub fn realm(&self) -> &RealmDescriptor {
        &self.realm
    }

    /// Vault time minus local time (ms), as learnt from a clock-skew
    /// refusal; 0 until one is seen.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// Registers `k` under `password` with a guess limit of `max_attempts`;
    /// returns the limit in force. A user with a live registration gets
    /// [`VaultError::AlreadyRegistered`]: overwriting it would destroy the
    /// key it holds, so the vault allows that only after a correct login
    /// ([`LoggedIn::change_password`], or [`VaultClient::delete`] and then
    /// `register`).
    pub fn register(
        &self,
        password: &Password,
        k: &BackupKey,
        max_attempts: u8,
    ) -> Result<u8, VaultError> {
        if max_attempts == 0 || max_attempts > self.realm.max_attempts_limit {
            return Err(VaultError::Policy {
                asked: max_attempts,
                limit: self.realm.max_attempts_limit,
            });
        }
        self.retry_on_skew(|| {
            let (reg, req) =
                Registration::start(&mut OsRng, password.bytes(), max_attempts, false)?;
            let (mut session, resp) = self.open(&req)?;
            let upload = reg.finish(
                &mut OsRng,
                &self.realm,
                password.bytes(),
                &resp,
                k.expose_secret(),
            )?;
            match self.send(&mut session, &upload)? {
                Response::Registered { max_attempts } => Ok(max_attempts),
                other => Err(unexpected(&other, "Registered")),
            }
        })
    }

    /// Logs in with `password` and returns `K`. Spends one attempt; a
    /// correct password gives them all back.
    pub fn fetch_key(&self, password: &Password) -> Result<BackupKey, VaultError> {
        let session = self.login(password)?;
        Ok(session.key)
    }

    /// Logs in and keeps the session open for a follow-up.
    ///
    /// In a replicated realm, the login moves on to the next node when a
    /// node cannot be reached or answers 503, but not when a node took the
    /// first frame and then timed out or dropped the connection: that node
    /// may have spent an attempt, and trying another would spend a second
    /// for one try. The error then says so; retrying is the caller's call.
    pub fn login(&self, password: &Password) -> Result<LoggedIn<'_>, VaultError> {
        self.retry_on_skew(|| {
            let (mut login, ke1) = Login::start(&mut OsRng, password.bytes())?;
            let (mut session, resp) = self.open(&ke1)?;
            // With a wrong password `finish` still sends a (random) KE3 so the
            // vault records the failure and answers with the attempts left.
            let (ke3, _wrong) = login.finish(&mut OsRng, &self.realm, password.bytes(), &resp)?;
            let resp = self.send(&mut session, &ke3)?;
            let max_attempts = match &resp {
                Response::LoginOk { max_attempts, .. } => *max_attempts,
                other => return Err(unexpected(other, "LoginOk")),
            };
            let k = login.key(&self.realm, &resp)?;
            Ok(LoggedIn {
                client: self,
                session,
                key: BackupKey::from_bytes(*k),
                max_attempts,
            })
        })
    }

    /// Proves `old`, then registers the same `K` under `new` in the same
    /// session, keeping the guess limit. Returns `K` (unchanged): nothing
    /// encrypted under it needs to change.
    pub fn change_password(&self, old: &Password, new: &Password) -> Result<BackupKey, VaultError> {
        self.login(old)?.change_password(new)
    }

    /// Proves `password`, then erases the record: `K` is gone from the vault
    /// for good. Returns `K` as the vault released it before erasing.
    pub fn delete(&self, password: &Password) -> Result<BackupKey, VaultError> {
        self.login(password)?.delete()
    }

    /// Runs a flow; after a clock-skew refusal (which only an opening frame
    /// gets, before the vault changes anything), retries once with the
    /// vault's clock.
    fn retry_on_skew<T>(&self, flow: impl Fn() -> Result<T, VaultError>) -> Result<T, VaultError> {
        match flow() {
            Err(VaultError::ClockSkew { offset_ms }) => {
                tracing::info!(
                    offset_ms,
                    "clock skew with the vault; retrying with its time"
                );
                self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
                flow()
            }
            other => other,
        }
    }

    fn client_time_ms(&self) -> u64 {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        (now_ms() as i64).saturating_add(offset).max(0) as u64
    }

    /// The order in which to try the nodes for a new session: one pass.
    fn node_order(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let start = match self.order {
            // n <= 16: the modulo's bias is far below anything that matters.
            NodeOrder::Random if n > 1 => OsRng.next_u32() as usize % n,
            _ => 0,
        };
        (start..n).chain(0..start).collect()
    }

    /// Opens a session with its first request on the first node that takes
    /// it; a refusal becomes an error.
    fn open(&self, first: &Request) -> Result<(Session, Response), VaultError> {
        let spends_attempt = matches!(first, Request::LoginStart { .. });
        let order = self.node_order();
        let mut failed: Vec<(usize, Failure)> = Vec::new();
        for (tried, &node) in order.iter().enumerate() {
            // A fresh channel for each node: were the first frame to reach a
            // core after all, the same frame again would be a replay.
            let (mut channel, frame) =
                ClientChannel::open(&self.realm, first, self.client_time_ms(), &mut OsRng)
                    .map_err(|e| VaultError::Protocol(e.to_string()))?;
            let reply = match self.post(node, "open", &frame, true) {
                Ok(reply) => reply,
                Err(f) if f.try_next(spends_attempt) => {
                    if tried + 1 < order.len() {
                        tracing::warn!(node = %self.nodes[node], error = %f.error, "vault node failed; trying the next one");
                    }
                    failed.push((node, f));
                    continue;
                }
                Err(f) if f.reach == Reach::MaybeSent && tried + 1 < order.len() => {
                    return Err(VaultError::Transport(format!(
                        "{}; the login may have reached it and spent one attempt, so it was \
                         not sent to another node: retry",
                        f.error
                    )));
                }
                Err(f) => return Err(f.error),
            };
            let resp = channel
                .receive(&reply)
                .map_err(|e| self.channel_error(node, e))?;
            refusal(&resp)?;
            return Ok((Session { channel, node }, resp));
        }
        Err(self.all_failed(failed))
    }

    /// The error once every node failed: a single node's own error, or the
    /// list of the nodes tried, each with its reason.
    fn all_failed(&self, mut failed: Vec<(usize, Failure)>) -> VaultError {
        if failed.len() == 1 {
            if let Some((_, f)) = failed.pop() {
                return f.error;
            }
        }
        let unavailable = failed.iter().any(|(_, f)| f.reach == Reach::Unavailable);
        let list = failed
            .iter()
            .map(|(node, f)| format!("{}: {}", self.nodes[*node], f.why))
            .collect::<Vec<_>>()
            .join("; ");
        if unavailable {
            VaultError::Unavailable(format!(
                "none of its {} nodes would serve ({list})",
                failed.len()
            ))
        } else {
            VaultError::Transport(format!(
                "cannot reach any of the vault's {} nodes ({list})",
                failed.len()
            ))
        }
    }

    /// Sends a further request of the session; a refusal becomes an error.
    fn send(&self, session: &mut Session, req: &Request) -> Result<Response, VaultError> {
        let frame = session
            .channel
            .send(req, self.client_time_ms())
            .map_err(|e| VaultError::Protocol(e.to_string()))?;
        let reply = self
            .post(session.node, "send", &frame, false)
            .map_err(|f| f.error)?;
        let resp = session
            .channel
            .receive(&reply)
            .map_err(|e| self.channel_error(session.node, e))?;
        refusal(&resp)?;
        Ok(resp)
    }

    fn channel_error(&self, node: usize, e: coffer_vault_proto::ChannelError) -> VaultError {
        VaultError::Protocol(format!(
            "the answer from {} does not come from realm {}: {e}",
            self.nodes[node],
            hex::encode(self.realm.realm_id)
        ))
    }

    /// One HTTP exchange with `node`: the frame out, the reply frame back.
    fn post(
        &self,
        node: usize,
        endpoint: &str,
        frame: &[u8],
        auth: bool,
    ) -> Result<Vec<u8>, Failure> {
        let url = format!("{}/v1/{endpoint}", self.nodes[node]);
        let mut req = self
            .agent
            .post(&url)
            .content_type("application/octet-stream");
        if auth {
            let bearer = Zeroizing::new(format!("Bearer {}", self.token.as_str()));
            req = req.header("authorization", bearer.as_str());
        }
        let mut resp = req.send(frame).map_err(|e| self.transport(node, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            // The status came back, so the request arrived: whatever broke
            // while reading the answer, the vault may have handled it.
            .map_err(|e| Failure {
                reach: Reach::MaybeSent,
                ..self.transport(node, e)
            })?;
        if status == 200 {
            return Ok(body);
        }
        let error = self.http_error(node, status, &body);
        Err(Failure {
            why: format!("HTTP {status}: {error}"),
            error,
            reach: if status == 503 {
                Reach::Unavailable
            } else {
                Reach::Answered
            },
        })
    }

    fn transport(&self, node: usize, e: ureq::Error) -> Failure {
        use std::io::ErrorKind;
        let reach = match &e {
            ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::ConnectProxyFailed(_)
            | ureq::Error::Timeout(ureq::Timeout::Resolve | ureq::Timeout::Connect) => {
                Reach::NotSent
            }
            // What `connect` itself fails with (ureq moves on to the host's
            // next address on exactly these).
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                        | ErrorKind::NetworkDown
                        | ErrorKind::AddrNotAvailable
                ) =>
            {
                Reach::NotSent
            }
            // The handshake comes before the request: a node whose
            // certificate does not verify was sent nothing.
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) => Reach::NotSent,
            _ => Reach::MaybeSent,
        };
        let why = match e {
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => e.to_string(),
            ureq::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        Failure {
            error: VaultError::Transport(format!(
                "cannot reach the vault at {}: {why}",
                self.nodes[node]
            )),
            why,
            reach,
        }
    }

    /// Maps the host's JSON error body (`{"error", "message", "scope",
    /// "retry_after_ms"}`) to an error.
    fn http_error(&self, node: usize, status: u16, body: &[u8]) -> VaultError {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let Some(code) = field("error") else {
            return VaultError::Protocol(format!(
                "{} answered HTTP {status} without a vault error body: is this the vault's address?",
                self.nodes[node]
            ));
        };
        let message = field("message").unwrap_or_else(|| code.clone());
        match code.as_str() {
            "rate_limited" => VaultError::RateLimited {
                scope: field("scope").unwrap_or_else(|| "user".into()),
                retry_after_ms: parsed
                    .as_ref()
                    .and_then(|v| v.get("retry_after_ms"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(1000),
            },
            "unauthorized" => VaultError::Unauthorized(message),
            "unavailable" => VaultError::Unavailable(message),
            "internal" => VaultError::Unavailable(format!("internal error: {message}")),
            "unknown_session" => VaultError::Protocol(format!(
                "the vault no longer knows this session ({message}); retry"
            )),
            _ => VaultError::Protocol(format!("HTTP {status} {code}: {message}")),
        }
    }
}

impl LoggedIn<'_> {
    /// The key the vault released.
    pub fn key(&self) -> &BackupKey {
        &self.key
    }

    /// The registration's guess limit (all attempts are available again).
    pub fn max_attempts(&self) -> u8 {
        self.max_attempts
    }

    /// Registers the same `K` under `new`, keeping the guess limit; returns `K`.
    pub fn change_password(mut self, new: &Password) -> Result<BackupKey, VaultError> {
        let c = self.client;
        // `replace` is implied by the login in this session.
        let (reg, req) = Registration::start(&mut OsRng, new.bytes(), self.max_attempts, false)?;
        let resp = c.send(&mut self.session, &req)?;
        let upload = reg.finish(
            &mut OsRng,
            &c.realm,
            new.bytes(),
            &resp,
            self.key.expose_secret(),
        )?;
        match c.send(&mut self.session, &upload)? {
            Response::Registered { .. } => Ok(self.key),
            other => Err(unexpected(&other, "Registered")),
        }
    }

    /// Erases the record; returns `K` as released before.
    pub fn delete(mut self) -> Result<BackupKey, VaultError> {
        let c = self.client;
        match c.send(&mut self.session, &Request::Delete)? {
            Response::Deleted => Ok(self.key),
            other => Err(unexpected(&other, "Deleted")),
        }
    }
}

fn refusal(resp: &Response) -> Result<(), VaultError> {
    match resp {
        Response::Error {
            code,
            attempts_remaining,
            server_time_ms,
        } => Err(VaultError::refused(
            *code,
            *attempts_remaining,
            *server_time_ms,
        )),
        _ => Ok(()),
    }
}

fn unexpected(resp: &Response, wanted: &str) -> VaultError {
    VaultError::Protocol(format!("expected {wanted}, the vault answered {resp:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realm(address: &str) -> RealmDescriptor {
        RealmDescriptor {
            format: coffer_vault_proto::realm::REALM_FORMAT.into(),
            realm_id: [7; 16],
            public_key: [9; 32],
            ksf: coffer_vault_proto::KsfParams::default(),
            max_attempts_limit: 10,
            address: address.into(),
        }
    }

    #[test]
    fn messages_name_the_count_and_the_erasure() {
        let e = VaultError::WrongPassword {
            attempts_remaining: 9,
        };
        assert_eq!(e.to_string(), "wrong password: 9 attempts remaining");
        assert_eq!(e.attempts_remaining(), Some(9));
        assert!(!e.key_gone());
        let last = VaultError::WrongPassword {
            attempts_remaining: 0,
        };
        assert!(last.to_string().contains("last attempt"));
        assert!(last.key_gone());
        assert!(VaultError::NotRegistered.key_gone());
        let r = VaultError::RateLimited {
            scope: "user".into(),
            retry_after_ms: 2500,
        };
        assert_eq!(
            r.to_string(),
            "the vault is rate limiting this user: retry in 3 s"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let c = VaultClient::new(realm("http://127.0.0.1:1"), "secret-token".into()).unwrap();
        assert!(!format!("{c:?}").contains("secret-token"));
        assert!(!format!("{:?}", Password::from("hunter2")).contains("hunter2"));
    }

    #[test]
    fn address_and_token_are_checked() {
        assert!(matches!(
            VaultClient::new(realm("ftp://x"), "t".into()),
            Err(VaultError::Realm(_))
        ));
        assert!(matches!(
            VaultClient::new(realm("http://x"), " ".into()),
            Err(VaultError::Unauthorized(_))
        ));
    }

    #[test]
    fn policy_is_checked_before_any_network() {
        let c = VaultClient::new(realm("http://127.0.0.1:1"), "t".into()).unwrap();
        let k = BackupKey::from_bytes([1; 32]);
        let e = c.register(&Password::from("pw"), &k, 11).unwrap_err();
        assert!(
            matches!(
                e,
                VaultError::Policy {
                    asked: 11,
                    limit: 10
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn unreachable_vault_names_its_address() {
        // Port 1 on loopback: nothing listens there.
        let c = VaultClient::new(realm("http://127.0.0.1:1"), "t".into()).unwrap();
        let f = c.post(0, "open", b"x", true).err().unwrap();
        assert_eq!(f.reach, Reach::NotSent);
        let e = f.error;
        assert!(matches!(e, VaultError::Transport(_)), "{e}");
        assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}");
    }

    fn realm_v2(nodes: &[&str]) -> RealmDescriptor {
        let r = realm("unused");
        RealmDescriptor::new_v2(
            r.realm_id,
            r.public_key,
            r.ksf,
            r.max_attempts_limit,
            nodes.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn every_node_is_tried_once_per_session() {
        let c = VaultClient::new(
            realm_v2(&["http://a:1", "http://b:1/", "http://c:1"]),
            "t".into(),
        )
        .unwrap();
        assert_eq!(c.nodes, ["http://a:1", "http://b:1", "http://c:1"]);
        let mut starts = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let order = c.node_order();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "{order:?}");
            // Round the list from where it starts.
            assert!(
                order.windows(2).all(|w| w[1] == (w[0] + 1) % 3),
                "{order:?}"
            );
            starts.insert(order[0]);
        }
        assert_eq!(starts.len(), 3, "random starts");
        let c = c.with_node_order(NodeOrder::AsListed);
        assert_eq!(c.node_order(), [0, 1, 2]);
        // One node: always that one.
        let one = VaultClient::new(realm("http://a:1"), "t".into()).unwrap();
        assert_eq!(one.node_order(), [0]);
    }

    #[test]
    fn a_hand_built_node_list_is_checked_by_position() {
        let mut r = realm_v2(&["http://a:1"]);
        r.address = "http://a:1 ftp://b".into();
        let e = VaultClient::new(r, "t".into()).unwrap_err();
        assert!(e.to_string().contains("vault node 2 \"ftp://b\""), "{e}");
        let mut r = realm_v2(&["http://a:1"]);
        r.address = String::new();
        assert!(matches!(
            VaultClient::new(r, "t".into()),
            Err(VaultError::Realm(_))
        ));
    }

    #[test]
    fn one_node_failing_keeps_its_own_error() {
        // Format 1, or a realm of one node: the error is the node's own, as before.
        let c = VaultClient::new(realm("http://127.0.0.1:1"), "t".into()).unwrap();
        let e = c.open(&Request::Delete).err().unwrap();
        assert!(
            e.to_string()
                .starts_with("cannot reach the vault at http://127.0.0.1:1: "),
            "{e}"
        );
        assert!(format!("{c:?}").contains("http://127.0.0.1:1"));
    }

    #[test]
    fn host_errors_become_structured() {
        let c = VaultClient::new(realm("http://127.0.0.1:1"), "t".into()).unwrap();
        let e = c.http_error(
            0,
            429,
            br#"{"error":"rate_limited","message":"slow down","scope":"tenant","retry_after_ms":1200}"#,
        );
        assert!(
            matches!(&e, VaultError::RateLimited { scope, retry_after_ms: 1200 } if scope == "tenant"),
            "{e}"
        );
        let e = c.http_error(
            0,
            401,
            br#"{"error":"unauthorized","message":"token expired"}"#,
        );
        assert!(matches!(&e, VaultError::Unauthorized(m) if m == "token expired"));
        let e = c.http_error(
            0,
            503,
            br#"{"error":"unavailable","message":"store rolled back"}"#,
        );
        assert!(matches!(e, VaultError::Unavailable(_)));
        let e = c.http_error(0, 404, b"<html>not found</html>");
        assert!(matches!(e, VaultError::Protocol(_)));
    }
}
