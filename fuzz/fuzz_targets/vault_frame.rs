//! `vault_frame`: the channel's frame parsers, on both ends.
//!
//! - `frame_kind` / `frame_session` never panic, accept exactly the three
//!   kinds at their fixed lengths, and the session id is bytes 2..18.
//! - Raw bytes never authenticate: `ServerChannel::accept` (the core opening
//!   a session) and `ClientChannel::receive` (a client opening a reply)
//!   refuse them.
//! - Sealed: a 448-byte input is sealed as a reply with the channel's
//!   exported reply key (rebuilt in `coffer_fuzz::vault`); `receive` then
//!   returns exactly what `Response::decode` says of the plaintext.
#![no_main]

use std::sync::{Mutex, OnceLock};

use coffer_fuzz::vault::{accept_s2c, channel_keypair, seal_reply};
use coffer_vault_proto::channel::{
    frame_kind, frame_session, ChannelKey, FrameKind, DATA_FRAME_LEN, OPEN_FRAME_LEN,
};
use coffer_vault_proto::messages::MESSAGE_LEN;
use coffer_vault_proto::realm::{KsfParams, REALM_FORMAT};
use coffer_vault_proto::{
    ChannelError, ClientChannel, RealmDescriptor, Request, Response, ServerChannel,
    PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;
use ring::aead::LessSafeKey;

const IKM: &[u8] = b"coffer fuzz channel key";
const REALM_ID: [u8; 16] = [0x24; 16];
const SESSION: [u8; 16] = [0x5e; 16];

struct Ends {
    key: ChannelKey,
    client: ClientChannel,
    s2c: LessSafeKey,
    /// Replies the client accepted so far (the next reply's counter).
    replies: u64,
}

fn ends() -> &'static Mutex<Ends> {
    static ENDS: OnceLock<Mutex<Ends>> = OnceLock::new();
    ENDS.get_or_init(|| {
        let key = ChannelKey::derive(IKM);
        let (sk, pk) = channel_keypair(IKM);
        assert_eq!(
            pk,
            key.public_key(),
            "key derivation drifted from the core's"
        );
        let realm = RealmDescriptor {
            format: REALM_FORMAT.into(),
            realm_id: REALM_ID,
            public_key: pk,
            ksf: KsfParams::default(),
            max_attempts_limit: 10,
            address: "mem:".into(),
        };
        let mut rng = coffer_vault_core::testing::TestClient::new(7, realm.clone()).rng;
        let (client, open) =
            ClientChannel::open(&realm, &Request::Delete, 1, &mut rng).expect("open");
        assert!(ServerChannel::accept(&key, &REALM_ID, &open).is_ok());
        let s2c = accept_s2c(&sk, &REALM_ID, &open);
        Mutex::new(Ends {
            key,
            client,
            s2c,
            replies: 0,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let kind = frame_kind(data);
    let session = frame_session(data);
    match kind {
        Ok(k) => {
            assert_eq!(data[0], PROTOCOL_VERSION);
            let len = if k == FrameKind::Open {
                OPEN_FRAME_LEN
            } else {
                DATA_FRAME_LEN
            };
            assert_eq!(data.len(), len);
            match k {
                FrameKind::Open => assert!(session.is_err()),
                _ => assert_eq!(&session.expect("session id")[..], &data[2..18]),
            }
        }
        Err(_) => assert!(session.is_err()),
    }

    let mut ends = ends().lock().expect("ends");
    assert!(
        ServerChannel::accept(&ends.key, &REALM_ID, data).is_err(),
        "a forged open frame was accepted"
    );
    assert!(
        ends.client.receive(data).is_err(),
        "a forged reply was accepted"
    );

    if data.len() == MESSAGE_LEN {
        let frame = seal_reply(&ends.s2c, ends.replies, &SESSION, data);
        match (ends.client.receive(&frame), Response::decode(data)) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got, want);
                ends.replies += 1;
            }
            (Err(ChannelError::Decode(got)), Err(want)) => assert_eq!(got, want),
            (got, want) => panic!("receive gave {got:?}, Response::decode {want:?}"),
        }
    }
});
