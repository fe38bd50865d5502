//! Times the core's channel open, `ServerChannel::accept`, against the same
//! open with hpke's stock DHKEM(X25519, HKDF-SHA256) receiver (which
//! recomputes the realm's public key in every decapsulation), on the same
//! frames, in the same run, interleaved.
//!
//! ```text
//! cargo run --release -p coffer-vault-proto --example accept_bench [frames] [rounds]
//! ```
//!
//! Prints p50 and mean µs per open of both.

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use coffer_vault_proto::channel::{frame_kind, ChannelKey, FrameKind, ENC_LEN};
use coffer_vault_proto::realm::{KsfParams, REALM_FORMAT};
use coffer_vault_proto::{ClientChannel, RealmDescriptor, Request, ServerChannel};
use hpke::aead::{AeadCtxR, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR};
use rand_core::{OsRng, RngCore};
use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

type Stock = X25519HkdfSha256;

/// What the stock open keeps (the old `ServerChannel`).
struct StockAccepted {
    _ctx: AeadCtxR<ChaCha20Poly1305, HkdfSha256, Stock>,
    _s2c: LessSafeKey,
    request: Zeroizing<Vec<u8>>,
}

/// `ServerChannel::accept` as it was with hpke's stock KEM: the same steps,
/// only the receiver's KEM differs.
fn stock_accept(
    sk: &<Stock as Kem>::PrivateKey,
    info: &[u8],
    frame: &[u8],
) -> Result<StockAccepted, Box<dyn Error>> {
    if frame_kind(frame)? != FrameKind::Open {
        return Err("not an open frame".into());
    }
    let mut enc_bytes = [0u8; ENC_LEN];
    enc_bytes.copy_from_slice(&frame[2..2 + ENC_LEN]);
    let enc = <Stock as Kem>::EncappedKey::from_bytes(&enc_bytes).map_err(|e| e.to_string())?;
    let mut ctx =
        hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Stock>(&OpModeR::Base, sk, &enc, info)
            .map_err(|e| e.to_string())?;
    let plain = ctx
        .open(&frame[2 + ENC_LEN..], &frame[..2])
        .map_err(|e| e.to_string())?;
    let mut k = Zeroizing::new([0u8; 32]);
    ctx.export(b"coffer/v1/channel/s2c", &mut k[..])
        .map_err(|e| e.to_string())?;
    let s2c = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k[..]).map_err(|e| e.to_string())?);
    Ok(StockAccepted {
        _ctx: ctx,
        _s2c: s2c,
        request: Zeroizing::new(plain),
    })
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
    n: usize,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let n = ns.len();
    let at = |q: f64| ns[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0;
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        mean: ns.iter().sum::<u64>() as f64 / n as f64 / 1000.0,
        n,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let frames: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    if frames == 0 || rounds == 0 {
        return Err("frames and rounds must be positive".into());
    }

    let mut ikm = [0u8; 32];
    OsRng.fill_bytes(&mut ikm);
    let mut realm_id = [0u8; 16];
    OsRng.fill_bytes(&mut realm_id);
    let key = ChannelKey::derive(&ikm);
    let (stock_sk, stock_pk) = Stock::derive_keypair(&ikm);
    if hpke::Serializable::to_bytes(&stock_pk)[..] != key.public_key()[..] {
        return Err("stock and cached KEMs derive different keys".into());
    }
    let realm = RealmDescriptor {
        format: REALM_FORMAT.into(),
        realm_id,
        public_key: key.public_key(),
        ksf: KsfParams::default(),
        max_attempts_limit: 10,
        address: "in-process".into(),
    };
    let mut info = b"coffer/v1/channel".to_vec();
    info.extend_from_slice(&realm_id);

    // Login open frames, as the client sends them (KE1 in a LoginStart).
    let open_frames = (0..frames)
        .map(|_| {
            let mut ke1 = Box::new([0u8; 96]);
            OsRng.fill_bytes(&mut ke1[..]);
            ClientChannel::open(&realm, &Request::LoginStart { ke1 }, 1, &mut OsRng).map(|(_, f)| f)
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Both open every frame to the same plaintext.
    for f in &open_frames {
        let new = ServerChannel::accept(&key, &realm_id, f)?;
        let old = stock_accept(&stock_sk, &info, f)?;
        if new.request[..] != old.request[..] {
            return Err("the two opens disagree".into());
        }
    }

    let mut before = Vec::with_capacity(frames * rounds);
    let mut after = Vec::with_capacity(frames * rounds);
    for round in 0..rounds {
        // Alternate which goes first, frame by frame, so that drift and cache
        // state hit both alike.
        for (i, f) in open_frames.iter().enumerate() {
            let stock_first = (i + round) % 2 == 0;
            for pass in 0..2 {
                if (pass == 0) == stock_first {
                    let t = Instant::now();
                    let r = black_box(stock_accept(&stock_sk, &info, black_box(f)));
                    before.push(t.elapsed().as_nanos() as u64);
                    r?;
                } else {
                    let t = Instant::now();
                    let r = black_box(ServerChannel::accept(&key, &realm_id, black_box(f)));
                    after.push(t.elapsed().as_nanos() as u64);
                    r?;
                }
            }
        }
    }

    let (b, a) = (stats(before), stats(after));
    println!(
        "ServerChannel::accept of a login open frame ({} B), µs per open:",
        open_frames[0].len()
    );
    println!(
        "  before (hpke stock X25519HkdfSha256 setup_receiver): p50 {:.1}  mean {:.1}  p99 {:.1}  (N = {})",
        b.p50, b.mean, b.p99, b.n
    );
    println!(
        "  after  (cached public key, ServerChannel::accept):   p50 {:.1}  mean {:.1}  p99 {:.1}  (N = {})",
        a.p50, a.mean, a.p99, a.n
    );
    println!(
        "  saved: p50 {:.1} µs ({:.0}%), mean {:.1} µs",
        b.p50 - a.p50,
        100.0 * (b.p50 - a.p50) / b.p50,
        b.mean - a.mean
    );
    Ok(())
}
