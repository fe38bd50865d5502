//! The trusted core of the Coffer key vault: a sans-io state machine.
//!
//! The core runs the OPAQUE server (RFC 9807 via opaque-ke), keeps the guess
//! counters, releases wrapped keys, seals records and detects a rolled-back
//! store. It does no I/O: clock, randomness and NVRAM come through
//! [`Platform`]; records come in from the host with each batch and go back
//! out as [`StoreWrites`]. Written to run inside an HSM or TEE; here it runs
//! in the `coffer-vault` process ("software HSM").
//!
//! A batch is two steps, so that nothing leaves before it is durable:
//!
//! 1. [`Core::prepare`] handles a batch of frames against the records the host
//!    read and returns the writes (sealed records, leaf hashes, marker).
//! 2. The host commits those writes to its store, then calls [`Core::commit`],
//!    which writes the new root to NVRAM and only then returns the replies.
//!
//! Guess limit (DESIGN.md §6): an attempt is spent at KE1 in step 1, so KE2
//! cannot leave before the spent attempt is in the store and in NVRAM.

#![deny(missing_docs)]

pub mod anchor;
pub mod log;
pub mod merkle;
pub mod peer;
mod platform;
mod record;
pub mod replica;
mod secrets;
mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transition;

use std::collections::{BTreeMap, HashMap};

use coffer_vault_proto::channel::{frame_kind, frame_session, FrameKind, ServerChannel, SessionId};
use coffer_vault_proto::messages::{Request, Response};
use coffer_vault_proto::suite::opaque_context;
use coffer_vault_proto::{ChannelError, CofferSuite, DecodeError, ErrorCode};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, Identifiers, RegistrationRequest,
    RegistrationUpload, ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};

pub use anchor::Anchor;
pub use log::{Ack, Certificate, CommitTracker, Entry, GroupSlot, NvramV2};
pub use platform::{Platform, PlatformError};
pub use record::SEALED_RECORD_LEN;
pub use secrets::{RealmSecrets, SEALED_SETUP_LEN};
pub use session::{CLOCK_WINDOW_MS, MAX_SESSIONS, SESSION_TTL_MS};
pub use transition::{Body, BodyError, Transition, TransitionError};

use anchor::{check_marker, make_marker};
use merkle::{bucket_of, leaf_hash, Tree};
use platform::PlatformRng;
use record::Record;
use session::{Phase, ReplayCache, ReplayCheck, Session, Sessions};

/// A record id: a keyed hash of (tenant, user).
pub type RecordId = [u8; 32];

/// Fixed realm parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmConfig {
    /// The realm id (HKDF salt, channel and OPAQUE context).
    pub realm_id: [u8; 16],
    /// Highest guess limit a registration may ask for.
    pub max_attempts_limit: u8,
}

/// Why the core could not handle a frame or a batch. Frame-level errors are
/// for the host to report (it relays them as HTTP errors); everything about
/// a user's record travels inside the channel as a [`Response::Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A frame that does not parse.
    #[error("malformed frame: {0}")]
    Frame(#[from] DecodeError),
    /// A frame that does not authenticate.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A data frame for a session the core does not hold.
    #[error("unknown or expired session; open a new one")]
    UnknownSession,
    /// The store disagrees with the core's tree.
    #[error("store integrity: {0}")]
    Integrity(String),
    /// NVRAM missing or unreadable.
    #[error("NVRAM: {0}")]
    Nvram(String),
    /// The platform failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The sealed server setup is unusable.
    #[error("realm setup: {0}")]
    Setup(String),
    /// The core refuses to serve until an operator acts.
    #[error("the vault refuses to serve: {0}")]
    Refusing(String),
    /// Host misuse of the batch API.
    #[error("batch: {0}")]
    Batch(&'static str),
}

/// A frame for the core, as the host relays it.
#[derive(Debug, Clone)]
pub enum Input {
    /// An open frame, with the record the host's tenant check resolved.
    Open {
        /// `record_id(tenant, user)`.
        record: RecordId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A data frame (routed by its session id).
    Data {
        /// The frame.
        frame: Vec<u8>,
    },
}

/// One bucket of the store, as the host read it.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    /// Bucket number.
    pub index: u16,
    /// Every record in the bucket: (id, sealed bytes).
    pub records: Vec<(RecordId, Vec<u8>)>,
}

/// What the host must commit (in one transaction) before [`Core::commit`].
#[derive(Debug, Clone, Default)]
pub struct StoreWrites {
    /// Records to put (sealed).
    pub records: Vec<(RecordId, Vec<u8>)>,
    /// Leaf hashes to put.
    pub leaves: Vec<(u16, [u8; 32])>,
    /// The roll-forward marker to put.
    pub marker: Option<Vec<u8>>,
}

impl StoreWrites {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.leaves.is_empty() && self.marker.is_none()
    }
}

/// What [`Core::init`] produces for the host to keep.
pub struct Created {
    /// The sealed OPAQUE server setup (keep next to the store).
    pub sealed_setup: Vec<u8>,
    /// The channel public key (goes into `realm.json`).
    pub public_key: [u8; 32],
}

/// How the core came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartState {
    /// Store and NVRAM agree.
    Ready,
    /// The store was one committed batch ahead (a crash before the NVRAM
    /// write); NVRAM was rolled forward.
    RolledForward,
    /// Store and NVRAM disagree: every request is refused.
    Refusing(String),
    /// A replicated member whose store is behind its NVRAM: it serves and
    /// acks nothing until it has fetched its log from a peer
    /// ([`Core::resync`]).
    Resyncing(String),
}

struct Pending {
    replies: Vec<Result<Vec<u8>, CoreError>>,
    new_anchor: Option<Anchor>,
}

/// Per-batch view of the buckets: verified against the tree on first use.
struct BatchBuckets {
    given: HashMap<u16, Vec<(RecordId, Vec<u8>)>>,
    open: HashMap<u16, Result<BTreeMap<RecordId, Vec<u8>>, String>>,
    dirty: BTreeMap<u16, BTreeMap<RecordId, Vec<u8>>>,
}

/// Counters for metrics (no secrets, no identities).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Logins started (attempts spent).
    pub logins_started: u64,
    /// Logins with a correct KE3.
    pub logins_ok: u64,
    /// Wrong KE3s.
    pub logins_failed: u64,
    /// Records erased by the guess limit.
    pub erased: u64,
    /// Registrations stored.
    pub registrations: u64,
    /// Deletes.
    pub deletes: u64,
    /// Replayed open frames refused.
    pub replays: u64,
    /// Reads refused because the store did not match the tree.
    pub integrity_failures: u64,
}

/// The trusted core.
pub struct Core<P: Platform> {
    platform: P,
    secrets: RealmSecrets,
    config: RealmConfig,
    setup: ServerSetup<CofferSuite>,
    context: Vec<u8>,
    tree: Tree,
    anchor: Anchor,
    refusing: Option<String>,
    sessions: Sessions,
    replays: ReplayCache,
    boot_ms: u64,
    pending: Option<Pending>,
    stats: Stats,
    /// A group member's session ids start with its group number, so a
    /// host can route data frames (ADR 0014).
    session_prefix: Option<u8>,
    repl: Option<replica::Replica>,
}

impl<P: Platform> Core<P> {
    /// Creates a realm: a fresh OPAQUE server setup and the first NVRAM anchor
    /// (empty tree). Refuses if NVRAM already holds an anchor.
    pub fn init(
        mut platform: P,
        master: &[u8; 32],
        config: RealmConfig,
    ) -> Result<Created, CoreError> {
        if platform.nvram_read()?.is_some() {
            return Err(CoreError::Nvram(
                "NVRAM already holds a realm anchor; refusing to overwrite it".into(),
            ));
        }
        let secrets = RealmSecrets::derive(master, &config.realm_id);
        let setup = ServerSetup::<CofferSuite>::new(&mut PlatformRng(&mut platform));
        let mut nonce = [0u8; 24];
        platform.fill_random(&mut nonce);
        let sealed_setup = secrets.seal_setup(nonce, &config.realm_id, &setup);
        let anchor = Anchor {
            generation: 0,
            root: Tree::build([]).root(),
        };
        platform.nvram_write(&anchor.encode())?;
        Ok(Created {
            sealed_setup,
            public_key: secrets.channel_public_key(),
        })
    }

    /// Starts the core over an existing store: its leaf hashes and marker.
    pub fn start(
        mut platform: P,
        master: &[u8; 32],
        config: RealmConfig,
        sealed_setup: &[u8],
        leaves: Vec<(u16, [u8; 32])>,
        marker: Option<&[u8]>,
    ) -> Result<(Self, StartState), CoreError> {
        let secrets = RealmSecrets::derive(master, &config.realm_id);
        let setup = secrets.open_setup(&config.realm_id, sealed_setup)?;
        let nv = platform.nvram_read()?.ok_or_else(|| {
            CoreError::Nvram(
                "NVRAM is empty: this realm was not initialised with this --nvram file".into(),
            )
        })?;
        let mut anchor = Anchor::decode(&nv)?;
        let tree = Tree::build(leaves);
        let root = tree.root();
        let mut refusing = None;
        let state = if root == anchor.root {
            StartState::Ready
        } else {
            match marker.and_then(|m| check_marker(&secrets, m)) {
                Some((old, new)) if old == anchor && new.root == root => {
                    platform.nvram_write(&new.encode())?;
                    anchor = new;
                    StartState::RolledForward
                }
                _ => {
                    let why = format!(
                        "the record store does not match NVRAM (generation {}, root {}…): the store was rolled back, replaced or tampered with; restore the latest store, or the NVRAM file that belongs to it",
                        anchor.generation,
                        hex8(&anchor.root)
                    );
                    refusing = Some(why.clone());
                    StartState::Refusing(why)
                }
            }
        };
        let boot_ms = platform.now_ms();
        Ok((
            Self {
                platform,
                context: opaque_context(&config.realm_id),
                secrets,
                config,
                setup,
                tree,
                anchor,
                refusing,
                sessions: Sessions::default(),
                replays: ReplayCache::default(),
                boot_ms,
                pending: None,
                stats: Stats::default(),
                session_prefix: None,
                repl: None,
            },
            state,
        ))
    }

    /// The record id of a (tenant, user) pair.
    pub fn record_id(&self, tenant: &str, user: &str) -> RecordId {
        self.secrets.record_id(tenant, user)
    }

    /// The channel public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.secrets.channel_public_key()
    }

    /// Why the core refuses to serve, if it does.
    pub fn refusing(&self) -> Option<&str> {
        self.refusing.as_deref()
    }

    /// The current NVRAM anchor.
    pub fn anchor(&self) -> Anchor {
        self.anchor
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The bucket the host must read for this input (None: none needed,
    /// e.g. an unknown session or a malformed frame; the core will say why).
    pub fn bucket_for(&self, input: &Input) -> Option<u16> {
        match input {
            Input::Open { record, .. } => Some(bucket_of(record)),
            Input::Data { frame } => {
                let id = frame_session(frame).ok()?;
                self.sessions.record_of(&id).map(|r| bucket_of(&r))
            }
        }
    }

    /// The buckets the host must read for a batch: [`Core::bucket_for`] of
    /// each input, sorted, each once.
    pub fn buckets_for(&self, inputs: &[Input]) -> Vec<u16> {
        let mut wanted: Vec<u16> = inputs.iter().filter_map(|i| self.bucket_for(i)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// Step 1: handles a batch against the buckets the host read. Returns the
    /// writes to commit; the replies wait in the core until [`Core::commit`].
    pub fn prepare(
        &mut self,
        inputs: Vec<Input>,
        buckets: Vec<Bucket>,
    ) -> Result<StoreWrites, CoreError> {
        if self.pending.is_some() {
            return Err(CoreError::Batch("prepare called twice without commit"));
        }
        if self.repl.is_some() {
            return Err(CoreError::Batch(
                "a replicated core takes batches through propose, not prepare",
            ));
        }
        let (replies, mut writes, _old, changed) = self.run_batch(inputs, buckets);
        let mut new_anchor = None;
        if changed {
            let new = Anchor {
                generation: self.anchor.generation + 1,
                root: self.tree.root(),
            };
            writes.marker = Some(make_marker(&self.secrets, &self.anchor, &new));
            new_anchor = Some(new);
        }
        self.pending = Some(Pending {
            replies,
            new_anchor,
        });
        Ok(writes)
    }

    /// Runs a batch against the buckets the host read: the replies, the
    /// writes (changed records and new leaves, no marker), the old leaf of
    /// every bucket changed (to revert the tree), and whether anything
    /// changed. The tree is updated.
    #[allow(clippy::type_complexity)]
    fn run_batch(
        &mut self,
        inputs: Vec<Input>,
        buckets: Vec<Bucket>,
    ) -> (
        Vec<Result<Vec<u8>, CoreError>>,
        StoreWrites,
        Vec<(u16, [u8; 32])>,
        bool,
    ) {
        let mut bb = BatchBuckets {
            given: buckets.into_iter().map(|b| (b.index, b.records)).collect(),
            open: HashMap::new(),
            dirty: BTreeMap::new(),
        };
        let replies = inputs
            .into_iter()
            .map(|input| self.handle(input, &mut bb))
            .collect();
        let mut writes = StoreWrites::default();
        let mut old = Vec::new();
        for (b, records) in &bb.dirty {
            let list: Vec<(&[u8; 32], &[u8])> =
                records.iter().map(|(k, v)| (k, v.as_slice())).collect();
            let h = leaf_hash(&list);
            old.push((*b, self.tree.leaf(*b)));
            self.tree.set_leaf(*b, h);
            writes.leaves.push((*b, h));
        }
        let changed = !bb.dirty.is_empty();
        // Only the records this batch changed go back to the store.
        for (b, records) in bb.dirty {
            let original: HashMap<_, _> = bb
                .given
                .remove(&b)
                .unwrap_or_default()
                .into_iter()
                .collect();
            for (id, sealed) in records {
                if original.get(&id) != Some(&sealed) {
                    writes.records.push((id, sealed));
                }
            }
        }
        (replies, writes, old, changed)
    }

    /// Step 2, after the host committed the writes: NVRAM, then the replies
    /// (one per input, in order: a reply frame or a frame-level error).
    pub fn commit(&mut self) -> Result<Vec<Result<Vec<u8>, CoreError>>, CoreError> {
        let pending = self
            .pending
            .take()
            .ok_or(CoreError::Batch("commit without prepare"))?;
        if let Some(new) = pending.new_anchor {
            if let Err(e) = self.platform.nvram_write(&new.encode()) {
                let why = format!("NVRAM write failed: {e}");
                self.refusing = Some(why.clone());
                return Err(CoreError::Refusing(why));
            }
            self.anchor = new;
        }
        Ok(pending.replies)
    }

    /// The root of the core's tree as it is now (after a [`Core::prepare`]
    /// and before its [`Core::commit`], already the batch's new root).
    pub fn tree_root(&self) -> [u8; 32] {
        self.tree.root()
    }

    /// A follower's transition check (ADR 0011, "Accept rule"), for an entry
    /// whose MAC and place in the log the caller has already checked: see
    /// [`transition::check_transition`]. `buckets` are this node's own store's
    /// contents of every bucket the body touches ([`Body::buckets`]). Changes
    /// nothing: the host commits [`Transition::writes`] (with the entry), then
    /// hands the transition to [`Core::apply_transition`]. Refused while the
    /// core refuses to serve or a prepared batch awaits its commit.
    pub fn check_transition(
        &self,
        entry: &log::Entry,
        body: &[u8],
        buckets: Vec<Bucket>,
    ) -> Result<Transition, TransitionError> {
        if let Some(why) = &self.refusing {
            return Err(TransitionError::Refusing(why.clone()));
        }
        if self.pending.is_some() {
            return Err(TransitionError::Busy);
        }
        transition::check_transition(&self.tree, entry, body, buckets)
    }

    /// After the host durably committed a checked transition's writes: moves
    /// the core's tree to the entry's root. Refused if the tree is no longer
    /// the one the transition was checked against. Does not write NVRAM (in
    /// a replicated realm that is the group slot's job, `persisted`).
    pub fn apply_transition(&mut self, t: Transition) -> Result<(), TransitionError> {
        if self.pending.is_some() {
            return Err(TransitionError::Busy);
        }
        t.apply(&mut self.tree)
    }

    /// Drops a prepared batch whose store commit failed. The core's tree is
    /// ahead of the store now, so it refuses until restarted over the store.
    pub fn abort(&mut self, why: &str) {
        self.pending = None;
        self.refusing = Some(format!(
            "a store commit failed ({why}); restart the vault to resynchronise"
        ));
    }

    fn now(&self) -> u64 {
        self.platform.now_ms()
    }

    fn error(&self, code: ErrorCode, attempts: Option<u8>) -> Response {
        Response::Error {
            code,
            attempts_remaining: attempts,
            server_time_ms: self.now(),
        }
    }

    fn new_session_id(&mut self) -> SessionId {
        let mut id = [0u8; 16];
        self.platform.fill_random(&mut id);
        if let Some(p) = self.session_prefix {
            id[0] = p;
        }
        id
    }

    fn handle(&mut self, input: Input, bb: &mut BatchBuckets) -> Result<Vec<u8>, CoreError> {
        let now = self.now();
        match input {
            Input::Open { record, frame } => {
                let accepted =
                    ServerChannel::accept(&self.secrets.channel, &self.config.realm_id, &frame)?;
                let (mut channel, enc, plain) = (accepted.channel, accepted.enc, accepted.request);
                let id = self.new_session_id();
                let (request, client_ms) = match Request::decode(&plain) {
                    Ok(r) => r,
                    Err(_) => {
                        return Ok(channel.seal_reply(&id, &self.error(ErrorCode::BadRequest, None)))
                    }
                };
                if client_ms < self.boot_ms || now.abs_diff(client_ms) > CLOCK_WINDOW_MS {
                    return Ok(channel.seal_reply(&id, &self.error(ErrorCode::ClockSkew, None)));
                }
                match self.replays.check_and_insert(now, enc) {
                    ReplayCheck::Fresh => {}
                    ReplayCheck::Replayed => {
                        self.stats.replays += 1;
                        return Ok(channel.seal_reply(&id, &self.error(ErrorCode::Replayed, None)));
                    }
                    ReplayCheck::Full => {
                        return Ok(channel.seal_reply(&id, &self.error(ErrorCode::Busy, None)));
                    }
                }
                if !self.sessions.has_room(now) {
                    return Ok(channel.seal_reply(&id, &self.error(ErrorCode::Busy, None)));
                }
                let mut session = Session {
                    channel,
                    record,
                    phase: Phase::Fresh,
                };
                let resp = self.process(&mut session, request, bb);
                let reply = session.channel.seal_reply(&id, &resp);
                if !matches!(session.phase, Phase::Done) {
                    self.sessions.insert(now, id, session);
                }
                Ok(reply)
            }
            Input::Data { frame } => {
                if frame_kind(&frame)? != FrameKind::Data {
                    return Err(DecodeError::Malformed("expected an open or data frame").into());
                }
                let id = frame_session(&frame)?;
                let mut session = self
                    .sessions
                    .take(now, &id)
                    .ok_or(CoreError::UnknownSession)?;
                let plain = match session.channel.open_data(&frame) {
                    Ok(p) => p,
                    Err(e) => {
                        // A forged or replayed frame changes nothing.
                        self.sessions.put_back(id, session);
                        return Err(e.into());
                    }
                };
                let resp = match Request::decode(&plain) {
                    Ok((request, _)) => self.process(&mut session, request, bb),
                    Err(_) => self.error(ErrorCode::BadRequest, None),
                };
                let reply = session.channel.seal_reply(&id, &resp);
                if !matches!(session.phase, Phase::Done) {
                    self.sessions.put_back(id, session);
                }
                Ok(reply)
            }
        }
    }

    /// Verifies a bucket against the trusted tree the first time a batch
    /// touches it. Every read and every write goes through here: a write
    /// into a bucket starts from its verified content, never from nothing.
    fn open_bucket(&mut self, bb: &mut BatchBuckets, b: u16) -> Result<(), ErrorCode> {
        if !bb.open.contains_key(&b) {
            let verdict = match bb.given.get(&b) {
                None => Err(format!("the host did not supply bucket {b}")),
                Some(records) => {
                    if self.tree.bucket_matches(b, records) {
                        Ok(records.iter().cloned().collect())
                    } else {
                        Err(format!("bucket {b} does not match the trusted tree"))
                    }
                }
            };
            bb.open.insert(b, verdict);
        }
        if bb.dirty.contains_key(&b) || matches!(bb.open.get(&b), Some(Ok(_))) {
            Ok(())
        } else {
            self.stats.integrity_failures += 1;
            Err(ErrorCode::StoreIntegrity)
        }
    }

    /// Reads a record through the verified bucket view.
    fn load(&mut self, bb: &mut BatchBuckets, id: &RecordId) -> Result<Option<Record>, ErrorCode> {
        let b = bucket_of(id);
        self.open_bucket(bb, b)?;
        let sealed = match bb.dirty.get(&b) {
            Some(d) => d.get(id),
            None => match bb.open.get(&b) {
                Some(Ok(m)) => m.get(id),
                _ => return Err(ErrorCode::StoreIntegrity),
            },
        };
        match sealed {
            None => Ok(None),
            Some(sealed) => {
                let plain = self
                    .secrets
                    .open_record(id, sealed)
                    .map_err(|_| ErrorCode::StoreIntegrity)?;
                Record::decode(&plain)
                    .map(Some)
                    .map_err(|_| ErrorCode::StoreIntegrity)
            }
        }
    }

    /// Seals and writes a record into its (verified) bucket.
    fn store(
        &mut self,
        bb: &mut BatchBuckets,
        id: &RecordId,
        record: &Record,
    ) -> Result<(), ErrorCode> {
        let b = bucket_of(id);
        self.open_bucket(bb, b)?;
        if let std::collections::btree_map::Entry::Vacant(e) = bb.dirty.entry(b) {
            match bb.open.get(&b) {
                Some(Ok(m)) => {
                    e.insert(m.clone());
                }
                _ => return Err(ErrorCode::StoreIntegrity),
            }
        }
        let mut nonce = [0u8; 24];
        self.platform.fill_random(&mut nonce);
        let sealed = self.secrets.seal_record(nonce, id, &record.encode());
        if let Some(bucket) = bb.dirty.get_mut(&b) {
            bucket.insert(*id, sealed);
        }
        Ok(())
    }

    fn process(
        &mut self,
        session: &mut Session,
        request: Request,
        bb: &mut BatchBuckets,
    ) -> Response {
        if self.refusing.is_some() {
            session.phase = Phase::Done;
            return self.error(ErrorCode::StoreIntegrity, None);
        }
        let id = session.record;
        let phase = std::mem::replace(&mut session.phase, Phase::Done);
        let result = match (phase, request) {
            (
                phase @ (Phase::Fresh | Phase::Authenticated),
                Request::RegisterStart {
                    replace,
                    max_attempts,
                    request,
                },
            ) => self.register_start(session, phase, replace, max_attempts, &request, bb),
            (
                Phase::Registering {
                    max_attempts,
                    replace,
                    authenticated,
                    salt,
                },
                Request::RegisterFinish {
                    upload,
                    wrapped_key,
                },
            ) => self.register_finish(
                &id,
                (max_attempts, salt),
                replace || authenticated,
                &upload[..],
                wrapped_key,
                bb,
            ),
            (Phase::Fresh, Request::LoginStart { ke1 }) => self.login_start(session, &ke1[..], bb),
            (Phase::LoginPending(login), Request::LoginFinish { ke3 }) => {
                self.login_finish(session, *login, &ke3[..], bb)
            }
            (Phase::Authenticated, Request::Delete) => self
                .load(bb, &id)
                .and_then(|_| self.store(bb, &id, &Record::Erased))
                .map(|()| {
                    self.stats.deletes += 1;
                    Response::Deleted
                }),
            (_, Request::Delete) => Err(ErrorCode::NotAuthenticated),
            _ => Err(ErrorCode::OutOfOrder),
        };
        match result {
            Ok(r) => r,
            Err(ErrorCode::WrongPassword) => unreachable_wrong(),
            Err(code) => self.error(code, None),
        }
    }

    fn register_start(
        &mut self,
        session: &mut Session,
        phase: Phase,
        replace: bool,
        max_attempts: u8,
        request: &[u8],
        bb: &mut BatchBuckets,
    ) -> Result<Response, ErrorCode> {
        if max_attempts == 0 || max_attempts > self.config.max_attempts_limit {
            return Err(ErrorCode::PolicyRejected);
        }
        let authenticated = matches!(phase, Phase::Authenticated);
        // Overwriting a live registration destroys the escrowed K, so it
        // needs the same proof as Delete: a correct login in this session
        // (DESIGN.md §6). A token alone may only register where nothing
        // live is.
        if !authenticated && replace {
            return Err(ErrorCode::NotAuthenticated);
        }
        if !authenticated && matches!(self.load(bb, &session.record)?, Some(Record::Live { .. })) {
            return Err(ErrorCode::AlreadyRegistered);
        }
        let request = RegistrationRequest::<CofferSuite>::deserialize(request)
            .map_err(|_| ErrorCode::BadRequest)?;
        // A fresh salt, so a fresh OPRF key: evaluating under the live
        // record's key here, without spending an attempt, would be an
        // oracle for offline guessing (record.rs).
        let mut salt = [0u8; record::SALT_LEN];
        self.platform.fill_random(&mut salt);
        let start = ServerRegistration::<CofferSuite>::start(
            &self.setup,
            request,
            &record::credential_identifier(&session.record, &salt),
        )
        .map_err(|_| ErrorCode::BadRequest)?;
        let mut response = [0u8; coffer_vault_proto::suite::sizes::REGISTRATION_RESPONSE];
        response.copy_from_slice(&start.message.serialize());
        session.phase = Phase::Registering {
            max_attempts,
            replace,
            authenticated,
            salt,
        };
        Ok(Response::RegisterStarted { response })
    }

    fn register_finish(
        &mut self,
        id: &RecordId,
        (max_attempts, salt): (u8, [u8; record::SALT_LEN]),
        may_replace: bool,
        upload: &[u8],
        wrapped_key: Vec<u8>,
        bb: &mut BatchBuckets,
    ) -> Result<Response, ErrorCode> {
        let upload = RegistrationUpload::<CofferSuite>::deserialize(upload)
            .map_err(|_| ErrorCode::BadRequest)?;
        if !may_replace && matches!(self.load(bb, id)?, Some(Record::Live { .. })) {
            return Err(ErrorCode::AlreadyRegistered);
        }
        let file = ServerRegistration::<CofferSuite>::finish(upload);
        let mut password_file =
            Box::new([0u8; coffer_vault_proto::suite::sizes::REGISTRATION_UPLOAD]);
        password_file.copy_from_slice(&file.serialize());
        self.store(
            bb,
            id,
            &Record::Live {
                max_attempts,
                attempts_left: max_attempts,
                salt,
                password_file,
                wrapped_key,
            },
        )?;
        self.stats.registrations += 1;
        Ok(Response::Registered { max_attempts })
    }

    fn login_start(
        &mut self,
        session: &mut Session,
        ke1: &[u8],
        bb: &mut BatchBuckets,
    ) -> Result<Response, ErrorCode> {
        let id = session.record;
        let ke1 = CredentialRequest::<CofferSuite>::deserialize(ke1)
            .map_err(|_| ErrorCode::BadRequest)?;
        let (max_attempts, attempts_left, salt, password_file, wrapped_key) =
            match self.load(bb, &id)? {
                Some(Record::Live {
                    max_attempts,
                    attempts_left,
                    salt,
                    ref password_file,
                    ref wrapped_key,
                }) => (
                    max_attempts,
                    attempts_left,
                    salt,
                    password_file.clone(),
                    wrapped_key.clone(),
                ),
                _ => return Err(ErrorCode::NotRegistered),
            };
        if attempts_left == 0 {
            // The last attempt was spent and no correct KE3 followed: erase.
            self.store(bb, &id, &Record::Erased)?;
            self.stats.erased += 1;
            return Err(ErrorCode::NotRegistered);
        }
        let file = ServerRegistration::<CofferSuite>::deserialize(&password_file[..])
            .map_err(|_| ErrorCode::StoreIntegrity)?;
        let remaining = attempts_left - 1;
        // Spend the attempt. The write is committed before KE2 leaves.
        self.store(
            bb,
            &id,
            &Record::Live {
                max_attempts,
                attempts_left: remaining,
                salt,
                password_file,
                wrapped_key,
            },
        )?;
        let params = ServerLoginParameters {
            context: Some(&self.context),
            identifiers: Identifiers::default(),
        };
        let start = ServerLogin::start(
            &mut PlatformRng(&mut self.platform),
            &self.setup,
            Some(file),
            ke1,
            &record::credential_identifier(&id, &salt),
            params,
        )
        .map_err(|_| ErrorCode::BadRequest)?;
        let mut ke2 = Box::new([0u8; coffer_vault_proto::suite::sizes::KE2]);
        ke2.copy_from_slice(&start.message.serialize());
        session.phase = Phase::LoginPending(Box::new(start.state));
        self.stats.logins_started += 1;
        Ok(Response::LoginStarted {
            attempts_remaining: remaining,
            ke2,
        })
    }

    fn login_finish(
        &mut self,
        session: &mut Session,
        login: ServerLogin<CofferSuite>,
        ke3: &[u8],
        bb: &mut BatchBuckets,
    ) -> Result<Response, ErrorCode> {
        let id = session.record;
        let record = self.load(bb, &id)?;
        let Some(Record::Live {
            max_attempts,
            attempts_left,
            salt,
            password_file,
            wrapped_key,
        }) = record.clone()
        else {
            return Err(ErrorCode::NotRegistered);
        };
        let params = ServerLoginParameters {
            context: Some(&self.context),
            identifiers: Identifiers::default(),
        };
        let ok = match CredentialFinalization::<CofferSuite>::deserialize(ke3) {
            Ok(ke3) => login.finish(ke3, params).is_ok(),
            Err(_) => false,
        };
        if ok {
            self.store(
                bb,
                &id,
                &Record::Live {
                    max_attempts,
                    attempts_left: max_attempts,
                    salt,
                    password_file,
                    wrapped_key: wrapped_key.clone(),
                },
            )?;
            session.phase = Phase::Authenticated;
            self.stats.logins_ok += 1;
            return Ok(Response::LoginOk {
                max_attempts,
                wrapped_key,
            });
        }
        self.stats.logins_failed += 1;
        if attempts_left == 0 {
            self.store(bb, &id, &Record::Erased)?;
            self.stats.erased += 1;
        } else if let Some(r) = &record {
            // Re-sealed unchanged: the store sees a write either way.
            self.store(bb, &id, r)?;
        }
        Ok(self.error(ErrorCode::WrongPassword, Some(attempts_left)))
    }
}

/// `process` never receives `WrongPassword` as an `Err` (it is built with the
/// attempt count in `login_finish`); answer as a generic refusal if it did.
fn unreachable_wrong() -> Response {
    Response::error(ErrorCode::BadRequest, 0)
}

fn hex8(b: &[u8; 32]) -> String {
    b[..8].iter().map(|x| format!("{x:02x}")).collect()
}
