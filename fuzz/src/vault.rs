//! Shared pieces of the vault targets (`vault_*`).
//!
//! A fuzzer cannot forge an HPKE open frame or an AEAD tag, so, as for the
//! repository formats, the harness also plays the *client*: [`RawClient`]
//! rebuilds the channel of `docs/protocol.md` (HPKE base mode to the realm
//! key, replies under the exported `s2c` key) and seals any plaintext the
//! fuzzer chose, so the core's request parsing and state machine behind the
//! channel are reached too. The real core accepting those frames (and the
//! real `ClientChannel` opening [`seal_reply`]'s replies, in `vault_frame`)
//! checks that the rebuilt channel has not drifted from the protocol.
//!
//! [`VaultWorld`] is one in-memory realm (`MemRealm`) with two registered
//! users, kept across fuzz runs and restored to the same pristine state after
//! every run that changed anything, so each input runs against the same
//! state and a crash replays from its input alone.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use coffer_vault_core::testing::{MemPlatform, MemRealm, MemStore, TestClient};
use coffer_vault_core::{Anchor, Core, Input, Platform, RecordId, StartState, Stats};
use coffer_vault_proto::channel::{frame_kind, FrameKind, SessionId, DATA_FRAME_LEN};
use coffer_vault_proto::client::{Login, Registration};
use coffer_vault_proto::messages::MESSAGE_LEN;
use coffer_vault_proto::{ClientChannel, ErrorCode, Request, Response, PROTOCOL_VERSION};
use hpke::aead::{AeadCtxS, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

type Kem = X25519HkdfSha256;
type Aead = ChaCha20Poly1305;
type Kdf = HkdfSha256;

/// The HPKE `info` of a realm's channel.
pub fn channel_info(realm_id: &[u8; 16]) -> Vec<u8> {
    [&b"coffer/v1/channel"[..], &realm_id[..]].concat()
}

fn reply_nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The reply key `Export("coffer/v1/channel/s2c", 32)` of an HPKE context.
pub fn s2c_key(export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>) -> LessSafeKey {
    let mut k = [0u8; 32];
    export(&mut k).expect("HPKE export");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("AES-256 key"))
}

/// Seals `plaintext` (any bytes) as reply number `counter` of `session`.
pub fn seal_reply(
    s2c: &LessSafeKey,
    counter: u64,
    session: &SessionId,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut frame = vec![PROTOCOL_VERSION, 0x03];
    frame.extend_from_slice(session);
    let mut buf = plaintext.to_vec();
    s2c.seal_in_place_append_tag(reply_nonce(counter), Aad::from(&frame[..]), &mut buf)
        .expect("AES-GCM seal");
    frame.extend_from_slice(&buf);
    frame
}

/// The server side of the channel rebuilt from an open frame with the realm's
/// private key: the reply key. (For `vault_frame`'s sealed replies.)
pub fn accept_s2c(
    sk: &<Kem as hpke::Kem>::PrivateKey,
    realm_id: &[u8; 16],
    open: &[u8],
) -> LessSafeKey {
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&open[2..34]).expect("enc");
    let ctx =
        hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, sk, &enc, &channel_info(realm_id))
            .expect("HPKE receiver");
    s2c_key(|out| ctx.export(b"coffer/v1/channel/s2c", out))
}

/// A realm channel key pair from `ikm` (RFC 9180 DeriveKeyPair, as the core's `ChannelKey`).
pub fn channel_keypair(ikm: &[u8]) -> (<Kem as hpke::Kem>::PrivateKey, [u8; 32]) {
    let (sk, pk) = <Kem as hpke::Kem>::derive_keypair(ikm);
    let mut pkb = [0u8; 32];
    pkb.copy_from_slice(&pk.to_bytes());
    (sk, pkb)
}

/// The client's end of a channel, rebuilt from `docs/protocol.md`, that
/// seals any plaintext (the real `ClientChannel` only seals well-formed
/// requests).
pub struct RawClient {
    ctx: AeadCtxS<Aead, Kdf, Kem>,
    s2c: LessSafeKey,
    /// Fixed by the first reply.
    pub session: Option<SessionId>,
    replies: u64,
}

impl RawClient {
    /// An open frame carrying `plaintext`, and the channel.
    pub fn open(
        public_key: &[u8; 32],
        realm_id: &[u8; 16],
        plaintext: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> (Self, Vec<u8>) {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key).expect("realm key");
        let (enc, mut ctx) = hpke::setup_sender::<Aead, Kdf, Kem, _>(
            &OpModeS::Base,
            &pk,
            &channel_info(realm_id),
            rng,
        )
        .expect("HPKE sender");
        let mut frame = vec![PROTOCOL_VERSION, 0x01];
        frame.extend_from_slice(&enc.to_bytes());
        let ct = ctx.seal(plaintext, &frame[..2]).expect("HPKE seal");
        frame.extend_from_slice(&ct);
        let s2c = s2c_key(|out| ctx.export(b"coffer/v1/channel/s2c", out));
        let client = Self {
            ctx,
            s2c,
            session: None,
            replies: 0,
        };
        (client, frame)
    }

    /// A data frame carrying `plaintext` (session id zero before the first reply).
    pub fn send(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let mut frame = vec![PROTOCOL_VERSION, 0x02];
        frame.extend_from_slice(&self.session.unwrap_or_default());
        let ct = self.ctx.seal(plaintext, &frame).expect("HPKE seal");
        frame.extend_from_slice(&ct);
        frame
    }

    /// Opens a reply frame: its plaintext.
    pub fn receive(&mut self, frame: &[u8]) -> Result<Vec<u8>, &'static str> {
        if frame.len() != DATA_FRAME_LEN || frame[0] != PROTOCOL_VERSION || frame[1] != 0x03 {
            return Err("not a reply frame");
        }
        let mut session = SessionId::default();
        session.copy_from_slice(&frame[2..18]);
        if self.session.is_some_and(|s| s != session) {
            return Err("reply for another session");
        }
        let mut buf = frame[18..].to_vec();
        let n = self
            .s2c
            .open_in_place(reply_nonce(self.replies), Aad::from(&frame[..18]), &mut buf)
            .map_err(|_| "reply does not authenticate")?
            .len();
        buf.truncate(n);
        self.replies += 1;
        self.session = Some(session);
        Ok(buf)
    }
}

/// What the harness knows of a user's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Registered with this many attempts left.
    Live(u8),
    /// Not registered, or erased.
    Gone,
    /// The harness cannot tell (e.g. a refused KE1 that may have spent one).
    Unknown,
}

/// Request templates (valid plaintexts, `client_time_ms` = the realm's clock),
/// in this order: RegisterStart (3 attempts, no replace), RegisterFinish,
/// LoginStart, LoginFinish (a wrong KE3), Delete.
const REGISTER_START: usize = 0;
const REGISTER_FINISH: usize = 1;
const LOGIN_START: usize = 2;
const LOGIN_FINISH: usize = 3;
/// Offset of `max_attempts` in a RegisterStart plaintext.
const MAX_ATTEMPTS_AT: usize = 11;

const SEED: u64 = 0xC0FFE;
/// Most frames per input.
pub const MAX_FRAMES: usize = 8;
/// Most frames per batch.
pub const MAX_BATCH: usize = 4;
/// Slots registered at a time.
const SLOTS_AT_ONCE: usize = 16;
/// Restart the core when this many sessions linger (the core's limit is
/// 100 000) or this many buckets are taken (of 65 536): rare, and the
/// restarted world is the initial one.
const MAX_LINGERING_SESSIONS: usize = 20_000;
const MAX_USED_BUCKETS: usize = 48_000;
/// ... or after this many harness frames (the replay cache holds 2 000 000).
const MAX_OPENS: u64 = 400_000;

/// One set of fresh users for one input: alice (3 attempts, 2 left: an open
/// login session, KE1 answered, KE3 expected, is part of the slot), bob (10
/// attempts, same Merkle bucket as alice), carol and dave (never registered);
/// every bucket is the slot's alone. An input that changes anything about its
/// slot retires it, so every input runs against an equivalent fresh slot.
struct Slot {
    users: [RecordId; 4],
    /// The pristine session's client is rebuilt from this seed (HPKE
    /// contexts cannot be cloned); its open frame and the reply it got.
    pristine_seed: u64,
    pristine_open: Vec<u8>,
    pristine_reply: Vec<u8>,
    /// A valid data frame of the pristine session (a wrong KE3), never sent.
    data_frame: Vec<u8>,
    /// A valid open frame (KE1), never sent, and its client's seed.
    open_seed: u64,
    open_frame: Vec<u8>,
}

/// What the realm is restarted from.
struct Base {
    store: MemStore,
    nvram: Vec<u8>,
    now: u64,
    public_key: [u8; 32],
    realm_id: [u8; 16],
    templates: [Vec<u8>; 5],
    /// Buckets of the base store's records.
    taken: Vec<u16>,
}

/// What an input must leave unchanged for its slot to stay fresh (record
/// changes move the anchor).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    anchor: Anchor,
    stats: Stats,
    sessions: usize,
    records: usize,
    leaves: usize,
    marker: Option<Vec<u8>>,
}

impl Snapshot {
    fn of(realm: &MemRealm) -> Self {
        Self {
            anchor: realm.core.anchor(),
            stats: realm.core.stats(),
            sessions: realm.core.sessions(),
            records: realm.store.records.len(),
            leaves: realm.store.leaves.len(),
            marker: realm.store.marker.clone(),
        }
    }
}

/// A client the harness opened (or replayed) during one input.
struct Client {
    /// `None`: a captured frame's client, rebuilt when first needed.
    raw: Option<RawClient>,
    seed: u64,
    record: RecordId,
    /// Its open frame waits in the current batch.
    awaiting: bool,
    /// The slot's own (captured) frames: an answer retires the slot.
    captured: bool,
}

/// Where a frame of the batch came from, for checking its reply.
enum Origin {
    /// Fuzzer bytes: must never authenticate.
    Raw,
    /// Sealed or replayed by the harness through `clients[i]`, with the
    /// request it carries if the plaintext decodes, and whether the core
    /// must accept it (a well-sealed 448-byte open frame).
    Client(usize, Option<Request>, bool),
}

/// One realm, a queue of fresh slots, and what the harness knows.
pub struct VaultWorld {
    realm: MemRealm,
    base: Base,
    slot: Slot,
    fresh: std::collections::VecDeque<Slot>,
    used: HashSet<u16>,
    /// Next user name to try, and slots made, since the last restart.
    next_name: u64,
    slots_made: u64,
    /// Frames the harness sealed or replayed since the last restart (at
    /// least as many as the entries they can leave in the replay cache).
    opens: u64,
    known: HashMap<RecordId, Known>,
    rng: ChaCha20Rng,
}

fn xor_into(target: &mut [u8], payload: &[u8]) {
    if payload.len() < 2 || target.is_empty() {
        return;
    }
    let pos = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
    for (i, x) in payload[2..].iter().enumerate() {
        let at = (pos + i) % target.len();
        target[at] ^= x;
    }
}

fn bucket(r: &RecordId) -> u16 {
    u16::from_be_bytes([r[0], r[1]])
}

impl VaultWorld {
    /// Builds the realm: one registration through the real client (Argon2id,
    /// tens of ms) gives the request templates; then the first slots.
    pub fn new() -> Self {
        let mut realm = MemRealm::new(SEED).expect("MemRealm");
        let desc = realm.descriptor();
        let now = realm.platform.now_ms();
        let mut tc = TestClient::new(SEED + 1, desc.clone());
        let owner = realm.core.record_id("app", "template-owner");
        let (reg, register_start) =
            Registration::start(&mut tc.rng, b"a password", 3, false).expect("reg start");
        let (mut ch, frame) =
            ClientChannel::open(&desc, &register_start, now, &mut tc.rng).expect("open");
        let reply = realm
            .one(Input::Open {
                record: owner,
                frame,
            })
            .expect("reply");
        let resp = ch.receive(&reply).expect("RegisterStarted");
        let register_finish = reg
            .finish(&mut tc.rng, &desc, b"a password", &resp, &[0x4b; 32])
            .expect("reg finish");
        let frame = ch.send(&register_finish, now).expect("send");
        let reply = realm.one(Input::Data { frame }).expect("reply");
        assert_eq!(
            ch.receive(&reply).expect("reply"),
            Response::Registered { max_attempts: 3 }
        );
        let (_, login_start) = Login::start(&mut tc.rng, b"a password").expect("KE1");
        let templates = [
            register_start.encode(now),
            register_finish.encode(now),
            login_start.encode(now),
            // Not a valid KE3 for any session: the harness never holds one.
            Request::LoginFinish {
                ke3: Box::new([0x33; 64]),
            }
            .encode(now),
            Request::Delete.encode(now),
        ];
        let nvram = realm
            .platform
            .nvram
            .lock()
            .expect("nvram")
            .clone()
            .expect("NVRAM written");
        let base = Base {
            store: realm.store.clone(),
            nvram,
            now,
            public_key: desc.public_key,
            realm_id: desc.realm_id,
            templates,
            taken: realm.store.leaves.keys().copied().collect(),
        };
        let mut world = Self {
            realm,
            base,
            slot: placeholder_slot(),
            fresh: Default::default(),
            used: HashSet::new(),
            next_name: 0,
            slots_made: 0,
            opens: 0,
            known: HashMap::new(),
            rng: ChaCha20Rng::seed_from_u64(SEED + 2),
        };
        world.restart();
        world
    }

    /// Restarts the core over the base store (the initial world again).
    fn restart(&mut self) {
        let platform = MemPlatform::new(SEED + 3, self.base.now);
        *platform.nvram.lock().expect("nvram") = Some(self.base.nvram.clone());
        let leaves = self
            .base
            .store
            .leaves
            .iter()
            .map(|(b, h)| (*b, *h))
            .collect();
        let (core, state) = Core::start(
            platform.clone(),
            &self.realm.master,
            self.realm.config.clone(),
            &self.realm.sealed_setup,
            leaves,
            self.base.store.marker.as_deref(),
        )
        .expect("restart");
        assert_eq!(state, StartState::Ready);
        self.realm.core = core;
        self.realm.store = self.base.store.clone();
        self.realm.platform = platform;
        self.used = self.base.taken.iter().copied().collect();
        self.next_name = 0;
        self.slots_made = 0;
        self.opens = 0;
        self.fresh.clear();
        self.next_slot();
    }

    /// Moves to a fresh slot (making some, or restarting, when none is left).
    fn next_slot(&mut self) {
        if self.fresh.is_empty() {
            if self.realm.core.sessions() > MAX_LINGERING_SESSIONS
                || self.used.len() > MAX_USED_BUCKETS
                || self.opens > MAX_OPENS
            {
                return self.restart();
            }
            self.make_slots();
        }
        self.slot = self.fresh.pop_front().expect("a fresh slot");
        let [alice, bob, carol, dave] = self.slot.users;
        self.known = [
            (alice, Known::Live(2)),
            (bob, Known::Live(10)),
            (carol, Known::Gone),
            (dave, Known::Gone),
        ]
        .into_iter()
        .collect();
    }

    fn user(&mut self) -> RecordId {
        self.next_name += 1;
        self.realm
            .core
            .record_id("app", &format!("user{}", self.next_name))
    }

    /// Picks user ids: `SLOTS_AT_ONCE` pairs sharing a bucket and two
    /// singles per slot, each in a bucket nobody else uses (deterministic:
    /// names are numbered, and candidates kept in the order they came).
    fn pick_users(&mut self) -> Vec<[RecordId; 4]> {
        let mut seen: HashMap<u16, RecordId> = HashMap::new();
        let mut order = Vec::new();
        let mut pairs = Vec::new();
        while pairs.len() < SLOTS_AT_ONCE {
            let r = self.user();
            let b = bucket(&r);
            if self.used.contains(&b) {
                continue;
            }
            match seen.remove(&b) {
                Some(first) => {
                    self.used.insert(b);
                    pairs.push((first, r));
                }
                None => {
                    seen.insert(b, r);
                    order.push(b);
                }
            }
        }
        let mut singles = order.into_iter().filter_map(|b| seen.get(&b).copied());
        pairs
            .into_iter()
            .map(|(a, b)| {
                let mut single = || {
                    let r = singles.next().expect("enough single buckets");
                    self.used.insert(bucket(&r));
                    r
                };
                [a, b, single(), single()]
            })
            .collect()
    }

    /// Registers `SLOTS_AT_ONCE` new slots in the running core.
    fn make_slots(&mut self) {
        let users = self.pick_users();
        let t = self.base.templates.clone();
        let mut bob_start = t[REGISTER_START].clone();
        bob_start[MAX_ATTEMPTS_AT] = 10;
        // Register alice and bob of every slot: RegisterStart, then RegisterFinish.
        let mut clients = Vec::new();
        let mut inputs = Vec::new();
        for u in &users {
            for (record, start) in [(u[0], &t[REGISTER_START]), (u[1], &bob_start)] {
                let (c, frame) = self.seal_open(start, None);
                clients.push(c);
                inputs.push(Input::Open { record, frame });
            }
        }
        let replies = self.realm.batch(inputs).expect("batch");
        let inputs = clients
            .iter_mut()
            .zip(replies)
            .map(|(c, r)| {
                let plain = c.receive(&r.expect("reply")).expect("reply opens");
                assert!(matches!(
                    Response::decode(&plain),
                    Ok(Response::RegisterStarted { .. })
                ));
                Input::Data {
                    frame: c.send(&t[REGISTER_FINISH]),
                }
            })
            .collect();
        for (c, r) in clients
            .iter_mut()
            .zip(self.realm.batch(inputs).expect("batch"))
        {
            let plain = c.receive(&r.expect("reply")).expect("reply opens");
            assert!(matches!(
                Response::decode(&plain),
                Ok(Response::Registered { .. })
            ));
        }
        // Open every slot's pristine session.
        let mut slots: Vec<Slot> = users
            .into_iter()
            .map(|users| {
                self.slots_made += 1;
                let pristine_seed = SEED ^ (self.slots_made << 16);
                let open_seed = pristine_seed ^ 1;
                Slot {
                    users,
                    pristine_open: self.seeded(pristine_seed).1,
                    pristine_seed,
                    pristine_reply: Vec::new(),
                    data_frame: Vec::new(),
                    open_frame: self.seeded(open_seed).1,
                    open_seed,
                }
            })
            .collect();
        let inputs = slots
            .iter()
            .map(|s| Input::Open {
                record: s.users[0],
                frame: s.pristine_open.clone(),
            })
            .collect();
        for (s, r) in slots
            .iter_mut()
            .zip(self.realm.batch(inputs).expect("batch"))
        {
            s.pristine_reply = r.expect("pristine session");
            let mut c = self.rebuild(s.pristine_seed, s);
            s.data_frame = c.send(&t[LOGIN_FINISH]);
        }
        self.fresh.extend(slots);
    }

    fn seal_open(&mut self, plain: &[u8], seed: Option<u64>) -> (RawClient, Vec<u8>) {
        match seed {
            Some(s) => {
                let mut rng = ChaCha20Rng::seed_from_u64(s);
                RawClient::open(&self.base.public_key, &self.base.realm_id, plain, &mut rng)
            }
            None => RawClient::open(
                &self.base.public_key,
                &self.base.realm_id,
                plain,
                &mut self.rng,
            ),
        }
    }

    /// A captured KE1 open frame's client, from its seed, fresh.
    fn seeded(&mut self, seed: u64) -> (RawClient, Vec<u8>) {
        let plain = self.base.templates[LOGIN_START].clone();
        self.seal_open(&plain, Some(seed))
    }

    /// A captured frame's client as it was when the frame was made (the
    /// pristine session's: after the pristine reply).
    fn rebuild(&mut self, seed: u64, slot: &Slot) -> RawClient {
        let (mut c, frame) = self.seeded(seed);
        if seed == slot.pristine_seed {
            assert_eq!(frame, slot.pristine_open);
            let plain = c.receive(&slot.pristine_reply).expect("pristine reply");
            assert!(
                matches!(
                    Response::decode(&plain),
                    Ok(Response::LoginStarted {
                        attempts_remaining: 2,
                        ..
                    })
                ),
                "the rebuilt channel drifted from the protocol, or the core changed"
            );
        } else {
            assert_eq!(frame, slot.open_frame);
        }
        c
    }

    fn client<'a>(&mut self, clients: &'a mut [Client], i: usize) -> &'a mut RawClient {
        if clients[i].raw.is_none() {
            let slot = std::mem::replace(&mut self.slot, placeholder_slot());
            clients[i].raw = Some(self.rebuild(clients[i].seed, &slot));
            self.slot = slot;
        }
        clients[i].raw.as_mut().expect("client")
    }

    /// Runs one input (format in `fuzz_targets/vault_core.rs`) against the
    /// current slot; retires the slot if the input changed anything.
    pub fn run(&mut self, data: &[u8]) {
        let start = Snapshot::of(&self.realm);
        let mut clients = vec![Client {
            raw: None,
            seed: self.slot.pristine_seed,
            record: self.slot.users[0],
            awaiting: false,
            captured: true,
        }];
        let mut batch: Vec<(Input, Origin)> = Vec::new();
        let mut retire = false;
        let mut rest = data;
        let mut frames = 0;
        while frames < MAX_FRAMES && rest.len() >= 3 {
            let ctl = rest[0];
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            let payload = &rest[3..3 + len.min(rest.len() - 3)];
            rest = &rest[3 + payload.len()..];
            frames += 1;
            let how = ctl & 3;
            let data_frame = ctl & 4 != 0;
            let who = usize::from((ctl >> 3) & 3);
            let template = usize::from(ctl >> 5) % 5;
            let record = self.slot.users[who];
            let (input, origin) = match (how, data_frame) {
                (0, false) => (
                    Input::Open {
                        record,
                        frame: payload.to_vec(),
                    },
                    Origin::Raw,
                ),
                (0, true) => (
                    Input::Data {
                        frame: payload.to_vec(),
                    },
                    Origin::Raw,
                ),
                (1, false) => {
                    let mut frame = self.slot.open_frame.clone();
                    xor_into(&mut frame, payload);
                    clients.push(Client {
                        raw: None,
                        seed: self.slot.open_seed,
                        record,
                        awaiting: true,
                        captured: true,
                    });
                    let req = Request::decode(&self.base.templates[LOGIN_START])
                        .ok()
                        .map(|r| r.0);
                    (
                        Input::Open { record, frame },
                        Origin::Client(clients.len() - 1, req, false),
                    )
                }
                (1, true) => {
                    let mut frame = self.slot.data_frame.clone();
                    xor_into(&mut frame, payload);
                    let req = Request::decode(&self.base.templates[LOGIN_FINISH])
                        .ok()
                        .map(|r| r.0);
                    (Input::Data { frame }, Origin::Client(0, req, false))
                }
                (how, open_or_data) => {
                    let plain = if how == 2 {
                        let mut p = self.base.templates[template].clone();
                        xor_into(&mut p, payload);
                        p
                    } else {
                        // The channel only carries 448-byte plaintexts.
                        let mut p = payload.to_vec();
                        p.resize(MESSAGE_LEN, 0);
                        p
                    };
                    let req = Request::decode(&plain).ok().map(|r| r.0);
                    if !open_or_data {
                        let (raw, frame) = self.seal_open(&plain, None);
                        clients.push(Client {
                            raw: Some(raw),
                            seed: 0,
                            record,
                            awaiting: true,
                            captured: false,
                        });
                        (
                            Input::Open { record, frame },
                            Origin::Client(clients.len() - 1, req, true),
                        )
                    } else {
                        let i = who % clients.len();
                        if clients[i].awaiting {
                            retire |= self.flush(&mut batch, &mut clients);
                        }
                        let frame = self.client(&mut clients, i).send(&plain);
                        (Input::Data { frame }, Origin::Client(i, req, false))
                    }
                }
            };
            batch.push((input, origin));
            if batch.len() == MAX_BATCH {
                retire |= self.flush(&mut batch, &mut clients);
            }
        }
        retire |= self.flush(&mut batch, &mut clients);
        if retire || Snapshot::of(&self.realm) != start {
            self.next_slot();
        }
    }

    /// Relays a batch and checks the replies; true if one of the slot's
    /// captured frames was answered.
    fn flush(&mut self, batch: &mut Vec<(Input, Origin)>, clients: &mut [Client]) -> bool {
        if batch.is_empty() {
            return false;
        }
        if trace() {
            eprintln!("batch of {}", batch.len());
        }
        let before = Snapshot::of(&self.realm);
        let (inputs, origins): (Vec<Input>, Vec<Origin>) =
            std::mem::take(batch).into_iter().unzip();
        let replies = self.realm.batch(inputs).expect("batch");
        assert_eq!(replies.len(), origins.len(), "one reply per frame");
        self.opens += origins
            .iter()
            .filter(|o| matches!(o, Origin::Client(..)))
            .count() as u64;
        for c in clients.iter_mut() {
            c.awaiting = false;
        }
        let mut captured = false;
        for (origin, reply) in origins.into_iter().zip(&replies) {
            if trace() {
                match (&origin, reply) {
                    (Origin::Client(i, req, _), Ok(_)) => eprint!("  channel {i}, {req:?}: "),
                    (Origin::Client(i, req, _), Err(e)) => eprintln!("  channel {i}, {req:?}: {e}"),
                    (Origin::Raw, r) => eprintln!("  raw: {:?}", r.as_ref().map(|_| "answered")),
                }
            }
            match (origin, reply) {
                (Origin::Raw, Ok(_)) => panic!("a frame the fuzzer wrote authenticated (forgery)"),
                (Origin::Raw, Err(_)) => {}
                (Origin::Client(_, _, must_open), Err(e)) => {
                    assert!(!must_open, "a well-sealed open frame was refused: {e}")
                }
                (Origin::Client(i, req, _), Ok(frame)) => {
                    captured |= clients[i].captured;
                    assert_eq!(frame_kind(frame), Ok(FrameKind::Reply), "reply frame");
                    let plain = self
                        .client(clients, i)
                        .receive(frame)
                        .expect("the reply opens");
                    let resp = Response::decode(&plain).expect("the reply decodes");
                    if trace() {
                        eprintln!("{resp:?}");
                    }
                    self.check(clients[i].record, req, &resp);
                }
            }
        }
        let after = Snapshot::of(&self.realm);
        let g = before.anchor.generation;
        assert!(
            after.anchor.generation == g || after.anchor.generation == g + 1,
            "anchor generation went from {g} to {}",
            after.anchor.generation
        );
        if replies.iter().all(|r| r.is_err()) {
            assert_eq!(before, after, "refused frames changed the vault's state");
        }
        let stats = after.stats;
        assert_eq!(stats.logins_ok, 0, "a login succeeded without the password");
        assert_eq!(
            stats.integrity_failures, 0,
            "an honest store failed the integrity check"
        );
        assert_eq!(
            self.realm.core.refusing(),
            None,
            "the core refuses to serve"
        );
        captured
    }

    /// Checks a reply against what the harness knows of the user's record.
    fn check(&mut self, record: RecordId, req: Option<Request>, resp: &Response) {
        let known = self.known.get(&record).copied().unwrap_or(Known::Unknown);
        let err = |code| matches!(resp, Response::Error { code: c, .. } if *c == code);
        match (&req, resp) {
            (_, Response::LoginOk { .. }) => panic!("a key was released without the password"),
            (_, Response::Deleted) => panic!("a record was deleted without a login"),
            (
                Some(Request::LoginStart { .. }),
                Response::LoginStarted {
                    attempts_remaining, ..
                },
            ) => {
                if let Known::Live(n) = known {
                    assert_eq!(
                        n.checked_sub(1),
                        Some(*attempts_remaining),
                        "a KE1 must spend exactly one attempt ({n} left before)"
                    );
                }
                assert_ne!(known, Known::Gone, "KE2 for a user that is not registered");
                self.known.insert(record, Known::Live(*attempts_remaining));
            }
            (Some(Request::LoginStart { .. }), _) if err(ErrorCode::NotRegistered) => match known {
                Known::Live(0) | Known::Unknown => {
                    self.known.insert(record, Known::Gone);
                }
                Known::Live(n) => panic!("a user with {n} attempts left answered NotRegistered"),
                Known::Gone => {}
            },
            (Some(Request::LoginStart { .. }), _) if err(ErrorCode::BadRequest) => {
                // The attempt may have been spent before the KE1 was refused.
                if matches!(known, Known::Live(_)) {
                    self.known.insert(record, Known::Unknown);
                }
            }
            (
                Some(Request::LoginFinish { .. }),
                Response::Error {
                    code: ErrorCode::WrongPassword,
                    attempts_remaining,
                    ..
                },
            ) => {
                let n = attempts_remaining.expect("WrongPassword carries the attempts left");
                if known != Known::Unknown {
                    assert_eq!(known, Known::Live(n), "attempts left after a wrong KE3");
                }
                self.known
                    .insert(record, if n == 0 { Known::Gone } else { Known::Live(n) });
            }
            (Some(Request::LoginFinish { .. }), _) if err(ErrorCode::NotRegistered) => {
                assert!(
                    !matches!(known, Known::Live(_)),
                    "a pending login found its live record gone ({known:?})"
                );
            }
            (
                Some(Request::RegisterStart { replace: false, .. }),
                Response::RegisterStarted { .. },
            ) => {
                assert!(
                    !matches!(known, Known::Live(_)),
                    "registration without `replace` started over a live record ({known:?})"
                );
            }
            (Some(Request::RegisterStart { replace: false, .. }), _)
                if err(ErrorCode::AlreadyRegistered) =>
            {
                assert_ne!(
                    known,
                    Known::Gone,
                    "AlreadyRegistered for a user that is not"
                );
            }
            (Some(Request::RegisterFinish { .. }), Response::Registered { max_attempts }) => {
                self.known.insert(record, Known::Live(*max_attempts));
            }
            _ => {}
        }
    }
}

/// `VAULT_FUZZ_TRACE=1`: print every batch and reply (to see what an input does).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("VAULT_FUZZ_TRACE").is_some())
}

fn placeholder_slot() -> Slot {
    Slot {
        users: [[0; 32]; 4],
        pristine_seed: 0,
        pristine_open: Vec::new(),
        pristine_reply: Vec::new(),
        data_frame: Vec::new(),
        open_seed: 0,
        open_frame: Vec::new(),
    }
}

impl Default for VaultWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's world, built on first use.
pub fn world() -> &'static Mutex<VaultWorld> {
    static WORLD: OnceLock<Mutex<VaultWorld>> = OnceLock::new();
    WORLD.get_or_init(|| Mutex::new(VaultWorld::new()))
}
