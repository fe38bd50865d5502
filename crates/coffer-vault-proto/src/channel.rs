//! The end-to-end channel from a client to the trusted core, pinned to the
//! realm's public key. The untrusted host relays frames it cannot read.
//!
//! ```text
//! open  = version u8 | 0x01 | enc[32]        | HPKE-seal(request)          (client → core)
//! data  = version u8 | 0x02 | session_id[16] | HPKE-seal(request)          (client → core)
//! reply = version u8 | 0x03 | session_id[16] | AES-256-GCM(s2c, response)  (core → client)
//! ```
//!
//! HPKE is RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305, `info = "coffer/v1/channel" || realm_id`. Client
//! messages of one session are sealed by one HPKE context in order, so a
//! replayed, reordered or forged data frame fails to open. Replies use
//! `s2c = Export("coffer/v1/channel/s2c", 32)` with the reply counter as the
//! nonce (RFC 9180 §9.8). The frame header is the AEAD's associated data.
//!
//! The core decapsulates with the DHKEM of `kem.rs`: the same KEM, byte for
//! byte, whose private key keeps the realm's public key instead of
//! recomputing it for every session.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::kem::X25519HkdfSha256Cached;
use crate::messages::{Request, Response, MESSAGE_LEN};
use crate::realm::RealmDescriptor;
use crate::{DecodeError, PROTOCOL_VERSION};

/// The client's KEM: hpke's own DHKEM(X25519, HKDF-SHA256).
type Kem = X25519HkdfSha256;
/// The core's KEM: the same DHKEM (same `KEM_ID`, same bytes), with the
/// realm's public key computed once instead of in every decapsulation.
type ServerKem = X25519HkdfSha256Cached;
type Aead = ChaCha20Poly1305;
type Kdf = HkdfSha256;

/// A session id, chosen by the core.
pub type SessionId = [u8; 16];

/// Length of the HPKE encapsulated key.
pub const ENC_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Length of every open frame.
pub const OPEN_FRAME_LEN: usize = 2 + ENC_LEN + MESSAGE_LEN + TAG_LEN;
/// Length of every data and reply frame.
pub const DATA_FRAME_LEN: usize = 2 + 16 + MESSAGE_LEN + TAG_LEN;
/// Largest frame a host should accept from the network.
pub const MAX_FRAME_LEN: usize = OPEN_FRAME_LEN;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Opens a session (HPKE encapsulation + first request).
    Open,
    /// A further request in a session.
    Data,
    /// A reply.
    Reply,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The frame's layout is wrong.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Authentication failed: forged, replayed, reordered, or for another realm key.
    #[error("channel: message authentication failed (forged, replayed, out of order, or sealed to another realm key)")]
    Auth,
    /// A reply for another session.
    #[error("channel: reply for another session")]
    WrongSession,
    /// No session yet (data frame before the first reply).
    #[error("channel: no session established yet")]
    NoSession,
    /// Too many messages in one session.
    #[error("channel: message limit of this session reached")]
    Exhausted,
}

/// Parses a frame header: (kind, bytes after the header).
pub fn frame_kind(frame: &[u8]) -> Result<FrameKind, DecodeError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            limit: MAX_FRAME_LEN,
        });
    }
    if frame.len() < 2 {
        return Err(DecodeError::Truncated("frame header"));
    }
    if frame[0] != PROTOCOL_VERSION {
        return Err(DecodeError::Version(frame[0]));
    }
    let (kind, len) = match frame[1] {
        0x01 => (FrameKind::Open, OPEN_FRAME_LEN),
        0x02 => (FrameKind::Data, DATA_FRAME_LEN),
        0x03 => (FrameKind::Reply, DATA_FRAME_LEN),
        kind => {
            return Err(DecodeError::Kind {
                what: "frame",
                kind,
            })
        }
    };
    if frame.len() != len {
        return Err(DecodeError::Malformed(
            "frame length does not match its kind",
        ));
    }
    Ok(kind)
}

/// The session id of a data or reply frame.
pub fn frame_session(frame: &[u8]) -> Result<SessionId, DecodeError> {
    match frame_kind(frame)? {
        FrameKind::Open => Err(DecodeError::Malformed("open frames carry no session id")),
        _ => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&frame[2..18]);
            Ok(id)
        }
    }
}

/// Lets a `rand_core` 0.6 generator (opaque-ke's generation) drive hpke,
/// which is on `rand_core` 0.9.
pub(crate) struct Compat<'a, R>(pub(crate) &'a mut R);

impl<R: rand_core::RngCore> hpke::rand_core::RngCore for Compat<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

impl<R: rand_core::RngCore + rand_core::CryptoRng> hpke::rand_core::CryptoRng for Compat<'_, R> {}

fn info(realm_id: &[u8; 16]) -> Vec<u8> {
    let mut i = b"coffer/v1/channel".to_vec();
    i.extend_from_slice(realm_id);
    i
}

fn s2c_key(
    export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>,
) -> Result<LessSafeKey, ChannelError> {
    let mut k = Zeroizing::new([0u8; 32]);
    export(&mut k[..]).map_err(|_| ChannelError::Exhausted)?;
    let key = UnboundKey::new(&AES_256_GCM, &k[..]).map_err(|_| ChannelError::Auth)?;
    Ok(LessSafeKey::new(key))
}

fn reply_nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The client's end of a session.
pub struct ClientChannel {
    ctx: hpke::aead::AeadCtxS<Aead, Kdf, Kem>,
    s2c: LessSafeKey,
    session: Option<SessionId>,
    replies: u64,
}

impl ClientChannel {
    /// Opens a session to the pinned realm key with the first request.
    pub fn open<R: rand_core::CryptoRng + rand_core::RngCore>(
        realm: &RealmDescriptor,
        first: &Request,
        client_time_ms: u64,
        rng: &mut R,
    ) -> Result<(Self, Vec<u8>), ChannelError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&realm.public_key)
            .map_err(|_| ChannelError::Auth)?;
        let (enc, mut ctx) = hpke::setup_sender::<Aead, Kdf, Kem, _>(
            &OpModeS::Base,
            &pk,
            &info(&realm.realm_id),
            &mut Compat(rng),
        )
        .map_err(|_| ChannelError::Auth)?;
        let mut frame = vec![PROTOCOL_VERSION, 0x01];
        frame.extend_from_slice(&enc.to_bytes());
        let ct = ctx
            .seal(&first.encode(client_time_ms), &frame[..2])
            .map_err(|_| ChannelError::Exhausted)?;
        frame.extend_from_slice(&ct);
        let s2c = s2c_key(|out| ctx.export(b"coffer/v1/channel/s2c", out))?;
        Ok((
            Self {
                ctx,
                s2c,
                session: None,
                replies: 0,
            },
            frame,
        ))
    }

    /// Seals a further request of the session.
    pub fn send(&mut self, req: &Request, client_time_ms: u64) -> Result<Vec<u8>, ChannelError> {
        let session = self.session.ok_or(ChannelError::NoSession)?;
        let mut frame = vec![PROTOCOL_VERSION, 0x02];
        frame.extend_from_slice(&session);
        let ct = self
            .ctx
            .seal(&req.encode(client_time_ms), &frame)
            .map_err(|_| ChannelError::Exhausted)?;
        frame.extend_from_slice(&ct);
        Ok(frame)
    }

    /// Opens a reply. The first reply fixes the session id.
    pub fn receive(&mut self, frame: &[u8]) -> Result<Response, ChannelError> {
        if frame_kind(frame)? != FrameKind::Reply {
            return Err(DecodeError::Malformed("expected a reply frame").into());
        }
        let session = frame_session(frame)?;
        if let Some(s) = self.session {
            if s != session {
                return Err(ChannelError::WrongSession);
            }
        }
        let mut buf = frame[18..].to_vec();
        let plain = self
            .s2c
            .open_in_place(reply_nonce(self.replies), Aad::from(&frame[..18]), &mut buf)
            .map_err(|_| ChannelError::Auth)?;
        let resp = Response::decode(plain)?;
        self.replies += 1;
        self.session = Some(session);
        Ok(resp)
    }
}

/// An accepted open frame.
pub struct Accepted {
    /// The session's channel.
    pub channel: ServerChannel,
    /// The encapsulated key (for replay detection).
    pub enc: [u8; ENC_LEN],
    /// The first request's plaintext.
    pub request: Zeroizing<Vec<u8>>,
}

/// The core's end of a session.
pub struct ServerChannel {
    ctx: hpke::aead::AeadCtxR<Aead, Kdf, ServerKem>,
    s2c: LessSafeKey,
    replies: u64,
}

/// The realm's channel key pair, derived from key material inside the core.
/// The private key is zeroized on drop; there is no `Debug`.
pub struct ChannelKey {
    /// Carries its public key, computed once here rather than in every
    /// [`ServerChannel::accept`].
    sk: <ServerKem as hpke::Kem>::PrivateKey,
}

impl ChannelKey {
    /// Derives the key pair deterministically (RFC 9180 DeriveKeyPair).
    pub fn derive(ikm: &[u8]) -> Self {
        let (sk, _) = ServerKem::derive_keypair(ikm);
        Self { sk }
    }

    /// The public key clients pin.
    pub fn public_key(&self) -> [u8; 32] {
        *self.sk.public_key().as_bytes()
    }
}

impl ServerChannel {
    /// Accepts an open frame: returns the session's channel, the encapsulated
    /// key (for replay detection) and the first request's plaintext.
    pub fn accept(
        key: &ChannelKey,
        realm_id: &[u8; 16],
        frame: &[u8],
    ) -> Result<Accepted, ChannelError> {
        if frame_kind(frame)? != FrameKind::Open {
            return Err(DecodeError::Malformed("expected an open frame").into());
        }
        let mut enc_bytes = [0u8; ENC_LEN];
        enc_bytes.copy_from_slice(&frame[2..2 + ENC_LEN]);
        let enc = <ServerKem as hpke::Kem>::EncappedKey::from_bytes(&enc_bytes)
            .map_err(|_| ChannelError::Auth)?;
        let mut ctx = hpke::setup_receiver::<Aead, Kdf, ServerKem>(
            &OpModeR::Base,
            &key.sk,
            &enc,
            &info(realm_id),
        )
        .map_err(|_| ChannelError::Auth)?;
        let plain = ctx
            .open(&frame[2 + ENC_LEN..], &frame[..2])
            .map_err(|_| ChannelError::Auth)?;
        let s2c = s2c_key(|out| ctx.export(b"coffer/v1/channel/s2c", out))?;
        Ok(Accepted {
            channel: Self {
                ctx,
                s2c,
                replies: 0,
            },
            enc: enc_bytes,
            request: Zeroizing::new(plain),
        })
    }

    /// Opens a data frame of this session (the caller routed it by session id).
    pub fn open_data(&mut self, frame: &[u8]) -> Result<Zeroizing<Vec<u8>>, ChannelError> {
        if frame_kind(frame)? != FrameKind::Data {
            return Err(DecodeError::Malformed("expected a data frame").into());
        }
        let plain = self
            .ctx
            .open(&frame[18..], &frame[..18])
            .map_err(|_| ChannelError::Auth)?;
        Ok(Zeroizing::new(plain))
    }

    /// Seals a reply.
    pub fn seal_reply(&mut self, session: &SessionId, resp: &Response) -> Vec<u8> {
        let mut frame = vec![PROTOCOL_VERSION, 0x03];
        frame.extend_from_slice(session);
        let mut buf = resp.encode();
        // Cannot fail: the nonce is a counter and the key is valid; on the
        // impossible error the reply is empty and the client reports it.
        if self
            .s2c
            .seal_in_place_append_tag(reply_nonce(self.replies), Aad::from(&frame[..]), &mut buf)
            .is_err()
        {
            return Vec::new();
        }
        self.replies += 1;
        frame.extend_from_slice(&buf);
        frame
    }
}
