//! The channel's wire format against independent senders: hpke's stock
//! DHKEM(X25519, HKDF-SHA256) sender, frame by frame as `docs/protocol.md`
//! specifies it, must open at `ServerChannel::accept` (whose KEM caches the
//! realm's public key), and `ClientChannel` must still talk to it. The KEM
//! itself is checked against RFC 9180 Appendix A.2 in `src/kem.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_vault_proto::channel::{ChannelKey, ENC_LEN, OPEN_FRAME_LEN};
use coffer_vault_proto::realm::{KsfParams, REALM_FORMAT};
use coffer_vault_proto::{
    ChannelError, ClientChannel, RealmDescriptor, Request, Response, ServerChannel,
    PROTOCOL_VERSION,
};
use hpke::aead::{AeadCtxS, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeS, Serializable};
use rand_core::{OsRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

type Stock = X25519HkdfSha256;

/// hpke is on `rand_core` 0.9; the tests' generator is 0.6.
struct HpkeRng;

impl hpke::rand_core::RngCore for HpkeRng {
    fn next_u32(&mut self) -> u32 {
        OsRng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        OsRng.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        OsRng.fill_bytes(dst)
    }
}

impl hpke::rand_core::CryptoRng for HpkeRng {}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

fn realm(key: &ChannelKey, realm_id: [u8; 16]) -> RealmDescriptor {
    RealmDescriptor {
        format: REALM_FORMAT.into(),
        realm_id,
        public_key: key.public_key(),
        ksf: KsfParams::default(),
        max_attempts_limit: 10,
        address: "in-process".into(),
    }
}

fn info(realm_id: &[u8; 16]) -> Vec<u8> {
    let mut i = b"coffer/v1/channel".to_vec();
    i.extend_from_slice(realm_id);
    i
}

fn random_request() -> Request {
    match OsRng.next_u32() % 3 {
        0 => Request::LoginStart {
            ke1: Box::new(random()),
        },
        1 => Request::LoginFinish {
            ke3: Box::new(random()),
        },
        _ => Request::Delete,
    }
}

/// An open frame built by hpke's stock sender straight from the spec:
/// `version | 0x01 | enc | HPKE-seal(request, aad = header)`.
fn stock_open_frame(
    public_key: &[u8; 32],
    realm_id: &[u8; 16],
    plain: &[u8],
) -> (Vec<u8>, AeadCtxS<ChaCha20Poly1305, HkdfSha256, Stock>) {
    let pk = <Stock as Kem>::PublicKey::from_bytes(public_key).unwrap();
    let (enc, mut ctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Stock, _>(
        &OpModeS::Base,
        &pk,
        &info(realm_id),
        &mut HpkeRng,
    )
    .unwrap();
    let mut frame = vec![PROTOCOL_VERSION, 0x01];
    frame.extend_from_slice(&enc.to_bytes());
    let ct = ctx.seal(plain, &frame[..2]).unwrap();
    frame.extend_from_slice(&ct);
    assert_eq!(frame.len(), OPEN_FRAME_LEN);
    (frame, ctx)
}

#[test]
fn channel_key_derivation_matches_rfc9180_a2() {
    // RFC 9180 A.2 (DHKEM(X25519, HKDF-SHA256)): DeriveKeyPair(ikmR) → pkRm.
    let ikm_r =
        hex::decode("1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df").unwrap();
    let pk_rm = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    assert_eq!(hex::encode(ChannelKey::derive(&ikm_r).public_key()), pk_rm);
    // And the same as the stock KEM for other inputs.
    for _ in 0..50 {
        let ikm = random::<32>();
        let (_, pk) = Stock::derive_keypair(&ikm);
        assert_eq!(ChannelKey::derive(&ikm).public_key()[..], pk.to_bytes()[..]);
    }
}

#[test]
fn stock_hpke_sender_frames_open_at_the_server() {
    for _ in 0..64 {
        let key = ChannelKey::derive(&random::<32>());
        let realm_id = random::<16>();
        let req = random_request();
        let plain = req.encode(OsRng.next_u64());
        let (frame, mut sender) = stock_open_frame(&key.public_key(), &realm_id, &plain);

        let mut accepted = ServerChannel::accept(&key, &realm_id, &frame).unwrap();
        assert_eq!(&accepted.request[..], &plain[..]);
        assert_eq!(accepted.enc[..], frame[2..2 + ENC_LEN]);

        // A data frame sealed by the same stock context, in order.
        let session = random::<16>();
        let mut data = vec![PROTOCOL_VERSION, 0x02];
        data.extend_from_slice(&session);
        let plain2 = random_request().encode(OsRng.next_u64());
        let ct = sender.seal(&plain2, &data).unwrap();
        data.extend_from_slice(&ct);
        assert_eq!(&accepted.channel.open_data(&data).unwrap()[..], &plain2[..]);

        // The reply key is the stock sender's export: it opens the server's replies.
        let mut s2c = [0u8; 32];
        sender.export(b"coffer/v1/channel/s2c", &mut s2c).unwrap();
        let s2c = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &s2c).unwrap());
        for counter in 0u64..2 {
            let resp = Response::Deleted;
            let mut reply = accepted.channel.seal_reply(&session, &resp);
            let (header, body) = reply.split_at_mut(18);
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let plain = s2c
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&header[..]),
                    body,
                )
                .unwrap();
            assert_eq!(plain, &resp.encode()[..]);
        }
    }
}

#[test]
fn client_to_server_round_trips() {
    let key = ChannelKey::derive(&random::<32>());
    let realm_id = random::<16>();
    let realm = realm(&key, realm_id);
    for _ in 0..32 {
        let first = random_request();
        let t = OsRng.next_u64();
        let (mut client, open) = ClientChannel::open(&realm, &first, t, &mut OsRng).unwrap();
        let mut accepted = ServerChannel::accept(&key, &realm_id, &open).unwrap();
        assert_eq!(&accepted.request[..], &first.encode(t)[..]);
        assert_eq!(
            Request::decode(&accepted.request).unwrap(),
            (first.clone(), t)
        );
        let session = random::<16>();
        for n in 0..3u8 {
            let resp = Response::Registered { max_attempts: n };
            let reply = accepted.channel.seal_reply(&session, &resp);
            assert_eq!(client.receive(&reply).unwrap(), resp);
            let next = random_request();
            let t = OsRng.next_u64();
            let data = client.send(&next, t).unwrap();
            assert_eq!(
                &accepted.channel.open_data(&data).unwrap()[..],
                &next.encode(t)[..]
            );
        }
    }
}

#[test]
fn wrong_key_tampered_enc_or_ciphertext_fail_cleanly() {
    let key = ChannelKey::derive(&random::<32>());
    let other = ChannelKey::derive(&random::<32>());
    let realm_id = random::<16>();
    let (frame, _) = stock_open_frame(&key.public_key(), &realm_id, &Request::Delete.encode(1));
    assert!(ServerChannel::accept(&key, &realm_id, &frame).is_ok());

    let auth = |key: &ChannelKey, realm_id: &[u8; 16], frame: &[u8]| {
        assert!(matches!(
            ServerChannel::accept(key, realm_id, frame),
            Err(ChannelError::Auth)
        ));
    };
    // Sealed to another realm key, or for another realm id.
    auth(&other, &realm_id, &frame);
    auth(&key, &random::<16>(), &frame);
    // Every bit of enc, a byte of ciphertext, the tag, the header's AAD.
    for bit in 0..ENC_LEN * 8 {
        let mut bad = frame.clone();
        bad[2 + bit / 8] ^= 1 << (bit % 8);
        auth(&key, &realm_id, &bad);
    }
    for at in [2 + ENC_LEN, OPEN_FRAME_LEN / 2, OPEN_FRAME_LEN - 1] {
        let mut bad = frame.clone();
        bad[at] ^= 0x80;
        auth(&key, &realm_id, &bad);
    }
    // Low-order encapsulated keys (all-zero DH) and random ones.
    for enc in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let mut bad = frame.clone();
        bad[2..2 + ENC_LEN].copy_from_slice(&enc);
        auth(&key, &realm_id, &bad);
    }
    for _ in 0..32 {
        let mut bad = frame.clone();
        bad[2..2 + ENC_LEN].copy_from_slice(&random::<32>());
        auth(&key, &realm_id, &bad);
    }
    // Wrong kind or length is a decode error, not a panic.
    let mut bad = frame.clone();
    bad[1] = 0x02;
    assert!(matches!(
        ServerChannel::accept(&key, &realm_id, &bad),
        Err(ChannelError::Decode(_))
    ));
    assert!(matches!(
        ServerChannel::accept(&key, &realm_id, &frame[..frame.len() - 1]),
        Err(ChannelError::Decode(_))
    ));
}
