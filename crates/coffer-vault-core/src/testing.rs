//! An in-memory platform and record store: drives the core the way the
//! daemon does, for tests, fuzzing and simulation (feature `testing`).

pub mod group;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::merkle::bucket_of;
use crate::{
    Bucket, Core, CoreError, Input, Platform, PlatformError, RealmConfig, RecordId, StartState,
    StoreWrites,
};

/// A platform with a seeded RNG, a settable clock and NVRAM in shared memory
/// (so a test can keep NVRAM while it rolls the store back).
#[derive(Clone)]
pub struct MemPlatform {
    rng: Arc<Mutex<ChaCha20Rng>>,
    /// Milliseconds since the epoch.
    pub clock: Arc<Mutex<u64>>,
    /// NVRAM contents.
    pub nvram: Arc<Mutex<Option<Vec<u8>>>>,
}

impl MemPlatform {
    /// A platform at time `now_ms` with RNG seed `seed`.
    pub fn new(seed: u64, now_ms: u64) -> Self {
        Self {
            rng: Arc::new(Mutex::new(ChaCha20Rng::seed_from_u64(seed))),
            clock: Arc::new(Mutex::new(now_ms)),
            nvram: Arc::new(Mutex::new(None)),
        }
    }

    /// Moves the clock.
    pub fn advance(&self, ms: u64) {
        if let Ok(mut c) = self.clock.lock() {
            *c += ms;
        }
    }
}

impl Platform for MemPlatform {
    fn now_ms(&self) -> u64 {
        self.clock.lock().map(|c| *c).unwrap_or(0)
    }
    fn fill_random(&mut self, buf: &mut [u8]) {
        if let Ok(mut r) = self.rng.lock() {
            r.fill_bytes(buf);
        }
    }
    fn nvram_read(&self) -> Result<Option<Vec<u8>>, PlatformError> {
        self.nvram
            .lock()
            .map(|n| n.clone())
            .map_err(|_| PlatformError("poisoned".into()))
    }
    fn nvram_write(&mut self, data: &[u8]) -> Result<(), PlatformError> {
        let mut n = self
            .nvram
            .lock()
            .map_err(|_| PlatformError("poisoned".into()))?;
        *n = Some(data.to_vec());
        Ok(())
    }
}

/// The untrusted record store, in memory.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct MemStore {
    /// Sealed records.
    pub records: BTreeMap<RecordId, Vec<u8>>,
    /// Leaf hashes.
    pub leaves: BTreeMap<u16, [u8; 32]>,
    /// Roll-forward marker.
    pub marker: Option<Vec<u8>>,
}

impl MemStore {
    /// The records of one bucket.
    pub fn bucket(&self, index: u16) -> Bucket {
        let lo = {
            let mut k = [0u8; 32];
            k[..2].copy_from_slice(&index.to_be_bytes());
            k
        };
        Bucket {
            index,
            records: self
                .records
                .range(lo..)
                .take_while(|(k, _)| bucket_of(k) == index)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        }
    }

    /// Applies a batch's writes.
    pub fn apply(&mut self, w: &StoreWrites) {
        for (k, v) in &w.records {
            self.records.insert(*k, v.clone());
        }
        for (b, h) in &w.leaves {
            self.leaves.insert(*b, *h);
        }
        if let Some(m) = &w.marker {
            self.marker = Some(m.clone());
        }
    }
}

/// A core with its store and platform, run batch by batch like the daemon.
pub struct MemRealm {
    /// The core.
    pub core: Core<MemPlatform>,
    /// Its store.
    pub store: MemStore,
    /// Its platform (shared NVRAM and clock).
    pub platform: MemPlatform,
    /// Master secret.
    pub master: [u8; 32],
    /// Realm config.
    pub config: RealmConfig,
    /// Sealed server setup.
    pub sealed_setup: Vec<u8>,
    /// When `Some`, every batch's writes are appended here (for replaying a
    /// leader's batches on a follower, ADR 0011).
    pub journal: Option<Vec<StoreWrites>>,
}

/// A test realm's master secret and configuration (limit 10), drawn from
/// `platform`'s RNG.
pub(crate) fn realm_keys(platform: &MemPlatform) -> ([u8; 32], RealmConfig) {
    let mut p = platform.clone();
    let mut master = [0u8; 32];
    p.fill_random(&mut master);
    let mut realm_id = [0u8; 16];
    p.fill_random(&mut realm_id);
    let config = RealmConfig {
        realm_id,
        max_attempts_limit: 10,
    };
    (master, config)
}

impl MemRealm {
    /// A fresh realm.
    pub fn new(seed: u64) -> Result<Self, CoreError> {
        let platform = MemPlatform::new(seed, 1_800_000_000_000);
        let (master, config) = realm_keys(&platform);
        let created = Core::init(platform.clone(), &master, config.clone())?;
        let (core, _) = Core::start(
            platform.clone(),
            &master,
            config.clone(),
            &created.sealed_setup,
            vec![],
            None,
        )?;
        Ok(Self {
            core,
            store: MemStore::default(),
            platform,
            master,
            config,
            sealed_setup: created.sealed_setup,
            journal: None,
        })
    }

    /// Restarts the core over a store (e.g. a rolled-back copy), NVRAM kept.
    pub fn restart_with(&mut self, store: MemStore) -> Result<StartState, CoreError> {
        let leaves = store.leaves.iter().map(|(b, h)| (*b, *h)).collect();
        let (core, state) = Core::start(
            self.platform.clone(),
            &self.master,
            self.config.clone(),
            &self.sealed_setup,
            leaves,
            store.marker.as_deref(),
        )?;
        self.core = core;
        self.store = store;
        Ok(state)
    }

    /// The realm descriptor a client would pin.
    pub fn descriptor(&self) -> coffer_vault_proto::RealmDescriptor {
        coffer_vault_proto::RealmDescriptor {
            format: coffer_vault_proto::realm::REALM_FORMAT.into(),
            realm_id: self.config.realm_id,
            public_key: self.core.public_key(),
            // Tests use the smallest Argon2id a client accepts.
            ksf: coffer_vault_proto::KsfParams {
                memory_kib: coffer_vault_proto::realm::MIN_KSF_MEMORY_KIB,
                iterations: 1,
                ..Default::default()
            },
            max_attempts_limit: self.config.max_attempts_limit,
            address: "mem:".into(),
        }
    }

    /// Runs one batch: read buckets, prepare, commit to the store, commit.
    pub fn batch(
        &mut self,
        inputs: Vec<Input>,
    ) -> Result<Vec<Result<Vec<u8>, CoreError>>, CoreError> {
        let buckets = self
            .core
            .buckets_for(&inputs)
            .into_iter()
            .map(|b| self.store.bucket(b))
            .collect();
        let writes = self.core.prepare(inputs, buckets)?;
        self.store.apply(&writes);
        if let Some(j) = &mut self.journal {
            j.push(writes);
        }
        self.core.commit()
    }

    /// Runs one input alone.
    pub fn one(&mut self, input: Input) -> Result<Vec<u8>, CoreError> {
        self.batch(vec![input])?
            .pop()
            .unwrap_or(Err(CoreError::Batch("no reply")))
    }
}

/// Something a [`TestClient`] can talk to: one core or a replicated group.
pub trait Vault {
    /// The vault's clock.
    fn now_ms(&self) -> u64;
    /// Runs one frame and returns its reply.
    fn one(&mut self, input: Input) -> Result<Vec<u8>, CoreError>;
}

impl Vault for MemRealm {
    fn now_ms(&self) -> u64 {
        self.platform.now_ms()
    }
    fn one(&mut self, input: Input) -> Result<Vec<u8>, CoreError> {
        MemRealm::one(self, input)
    }
}

/// What a test client saw at the end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The flow completed (login: the released key).
    Ok(Option<[u8; 32]>),
    /// The vault refused.
    Refused(coffer_vault_proto::ErrorCode, Option<u8>),
}

/// A session kept open after a login: the channel and the export key.
pub type KeptSession = (coffer_vault_proto::ClientChannel, Vec<u8>);

/// A test client speaking through the real channel and OPAQUE messages.
pub struct TestClient {
    /// Its RNG.
    pub rng: ChaCha20Rng,
    /// The pinned realm.
    pub realm: coffer_vault_proto::RealmDescriptor,
}

fn refused(resp: &coffer_vault_proto::Response) -> Option<Outcome> {
    match resp {
        coffer_vault_proto::Response::Error {
            code,
            attempts_remaining,
            ..
        } => Some(Outcome::Refused(*code, *attempts_remaining)),
        _ => None,
    }
}

impl TestClient {
    /// A client pinned to `realm`.
    pub fn new(seed: u64, realm: coffer_vault_proto::RealmDescriptor) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            realm,
        }
    }

    fn open(
        &mut self,
        vault: &mut impl Vault,
        record: RecordId,
        req: &coffer_vault_proto::Request,
    ) -> Result<
        (
            coffer_vault_proto::ClientChannel,
            coffer_vault_proto::Response,
        ),
        String,
    > {
        let now = vault.now_ms();
        let (mut ch, frame) =
            coffer_vault_proto::ClientChannel::open(&self.realm, req, now, &mut self.rng)
                .map_err(|e| e.to_string())?;
        let reply = vault
            .one(Input::Open { record, frame })
            .map_err(|e| e.to_string())?;
        let resp = ch.receive(&reply).map_err(|e| e.to_string())?;
        Ok((ch, resp))
    }

    fn send(
        &mut self,
        vault: &mut impl Vault,
        ch: &mut coffer_vault_proto::ClientChannel,
        req: &coffer_vault_proto::Request,
    ) -> Result<coffer_vault_proto::Response, String> {
        let frame = ch.send(req, vault.now_ms()).map_err(|e| e.to_string())?;
        let reply = vault
            .one(Input::Data { frame })
            .map_err(|e| e.to_string())?;
        ch.receive(&reply).map_err(|e| e.to_string())
    }

    /// Opens a session for `record` with `req` and returns the answer: for
    /// tests that send messages a real client would not.
    pub fn request(
        &mut self,
        vault: &mut impl Vault,
        record: RecordId,
        req: &coffer_vault_proto::Request,
    ) -> Result<coffer_vault_proto::Response, String> {
        Ok(self.open(vault, record, req)?.1)
    }

    /// Registers `k` under `password`.
    pub fn register(
        &mut self,
        vault: &mut impl Vault,
        record: RecordId,
        password: &[u8],
        k: &[u8; 32],
        max_attempts: u8,
        replace: bool,
    ) -> Result<Outcome, String> {
        let (reg, req) = coffer_vault_proto::client::Registration::start(
            &mut self.rng,
            password,
            max_attempts,
            replace,
        )
        .map_err(|e| e.to_string())?;
        let (mut ch, resp) = self.open(vault, record, &req)?;
        if let Some(o) = refused(&resp) {
            return Ok(o);
        }
        let realm = self.realm.clone();
        let up = reg
            .finish(&mut self.rng, &realm, password, &resp, k)
            .map_err(|e| e.to_string())?;
        let resp = self.send(vault, &mut ch, &up)?;
        Ok(refused(&resp).unwrap_or(Outcome::Ok(None)))
    }

    /// Logs in; on success returns the released key. Keeps the channel for
    /// follow-up requests (password change, delete) when `keep` is given.
    pub fn login_keep(
        &mut self,
        vault: &mut impl Vault,
        record: RecordId,
        password: &[u8],
    ) -> Result<(Outcome, Option<KeptSession>), String> {
        let (mut login, ke1) = coffer_vault_proto::client::Login::start(&mut self.rng, password)
            .map_err(|e| e.to_string())?;
        let (mut ch, resp) = self.open(vault, record, &ke1)?;
        if let Some(o) = refused(&resp) {
            return Ok((o, None));
        }
        let realm = self.realm.clone();
        let (ke3, _) = login
            .finish(&mut self.rng, &realm, password, &resp)
            .map_err(|e| e.to_string())?;
        let resp = self.send(vault, &mut ch, &ke3)?;
        if let Some(o) = refused(&resp) {
            return Ok((o, None));
        }
        let k = login.key(&realm, &resp).map_err(|e| e.to_string())?;
        let export = login.export_key().map(|e| e.to_vec()).unwrap_or_default();
        Ok((Outcome::Ok(Some(*k)), Some((ch, export))))
    }

    /// Logs in.
    pub fn login(
        &mut self,
        vault: &mut impl Vault,
        record: RecordId,
        password: &[u8],
    ) -> Result<Outcome, String> {
        Ok(self.login_keep(vault, record, password)?.0)
    }

    /// Sends KE1 only (an abandoned login); returns the answer.
    pub fn login_abandon(
        &mut self,
        vault: &mut impl Vault,
        record: RecordId,
        password: &[u8],
    ) -> Result<Outcome, String> {
        let (_login, ke1) = coffer_vault_proto::client::Login::start(&mut self.rng, password)
            .map_err(|e| e.to_string())?;
        let (_ch, resp) = self.open(vault, record, &ke1)?;
        Ok(match resp {
            coffer_vault_proto::Response::LoginStarted {
                attempts_remaining, ..
            } => Outcome::Refused(
                coffer_vault_proto::ErrorCode::WrongPassword,
                Some(attempts_remaining),
            ),
            other => refused(&other).unwrap_or(Outcome::Ok(None)),
        })
    }

    /// Sends `req` in an open session `ch` and returns the answer: for tests
    /// that send messages a real client would not.
    pub fn request_in(
        &mut self,
        vault: &mut impl Vault,
        ch: &mut coffer_vault_proto::ClientChannel,
        req: &coffer_vault_proto::Request,
    ) -> Result<coffer_vault_proto::Response, String> {
        self.send(vault, ch, req)
    }

    /// After a successful `login_keep`: re-register `k` under a new password in the same session.
    pub fn change_password(
        &mut self,
        vault: &mut impl Vault,
        ch: &mut coffer_vault_proto::ClientChannel,
        new_password: &[u8],
        k: &[u8; 32],
    ) -> Result<Outcome, String> {
        let (reg, req) =
            coffer_vault_proto::client::Registration::start(&mut self.rng, new_password, 10, false)
                .map_err(|e| e.to_string())?;
        let resp = self.send(vault, ch, &req)?;
        if let Some(o) = refused(&resp) {
            return Ok(o);
        }
        let realm = self.realm.clone();
        let up = reg
            .finish(&mut self.rng, &realm, new_password, &resp, k)
            .map_err(|e| e.to_string())?;
        let resp = self.send(vault, ch, &up)?;
        Ok(refused(&resp).unwrap_or(Outcome::Ok(None)))
    }

    /// After a successful `login_keep`: delete the record.
    pub fn delete(
        &mut self,
        vault: &mut impl Vault,
        ch: &mut coffer_vault_proto::ClientChannel,
    ) -> Result<Outcome, String> {
        let resp = self.send(vault, ch, &coffer_vault_proto::Request::Delete)?;
        Ok(refused(&resp).unwrap_or(Outcome::Ok(None)))
    }
}
