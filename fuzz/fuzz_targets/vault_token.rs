//! `vault_token`: the daemon's user-token check (`Tenants::verify`: JWT
//! header, tenant lookup by `kid`, signature, `exp`/`iss`/`sub` claims),
//! through `coffer_vault::fuzzing`. Tokens come from any HTTP client.
//!
//! Tenants: `app` (HS256, a fixed secret) and `ed` (Ed25519).
//!
//! - Raw: the input as a bearer token never panics and never verifies (the
//!   fuzzer cannot forge an HMAC or a signature).
//! - Built: a token from the fuzzer's header `kid` and claims, signed with
//!   `app`'s secret or another one, verifies exactly when the claim rules
//!   hold (kid `app`, iss `app`, sub 1 to 256 bytes, not expired, the right
//!   secret), and then yields (`app`, sub); changed in one character of its
//!   signed part, it no longer verifies.
#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use coffer_vault::fuzzing::{ed25519_key, hs256_key, hs256_token, tenants};
use coffer_vault::tenants::{Claims, Tenants};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [0x5e; 32];

fn the_tenants() -> &'static Tenants {
    static T: OnceLock<Tenants> = OnceLock::new();
    T.get_or_init(|| {
        tenants(vec![
            ("app".into(), hs256_key(&SECRET)),
            ("ed".into(), ed25519_key(&[0x07; 32])),
        ])
        .expect("the fuzzing tenants")
    })
}

/// A string from the fuzzer: `len` bytes of `rest` (lossy UTF-8), advancing it.
fn take<'a>(rest: &mut &'a [u8], len: usize) -> String {
    let (s, r) = rest.split_at(len.min(rest.len()));
    *rest = r;
    String::from_utf8_lossy(s).into_owned()
}

fn name(choice: u8, rest: &mut &[u8]) -> String {
    match choice % 4 {
        0 | 1 => "app".into(),
        2 => "ed".into(),
        _ => {
            let len = usize::from(choice >> 2);
            take(rest, len)
        }
    }
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fuzz_target!(|data: &[u8]| {
    let t = the_tenants();

    // Raw.
    let text = String::from_utf8_lossy(data);
    assert!(
        t.verify(&text).is_err(),
        "a forged token verified: {text:?}"
    );

    // Built.
    let [kid_choice, iss_choice, flags, sub_len, e0, e1, tamper, rest @ ..] = data else {
        return;
    };
    let mut rest = rest;
    let kid = (flags & 1 == 0).then(|| name(*kid_choice, &mut rest));
    let iss = name(*iss_choice, &mut rest);
    let sub = take(&mut rest, usize::from(*sub_len) * 2);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Minutes from now, never within 2 minutes of it (the 30 s leeway and a
    // clock tick between here and the check stay out of the way).
    let minutes = i64::from(i16::from_be_bytes([*e0, *e1]));
    let minutes = if minutes >= 0 {
        minutes + 2
    } else {
        minutes - 2
    };
    let exp = now.saturating_add_signed(minutes * 60);
    let right_secret = flags & 2 == 0;
    let secret = if right_secret { SECRET } else { [0x5f; 32] };
    let claims = Claims {
        iss: iss.clone(),
        sub: sub.clone(),
        exp,
    };
    let Some(token) = hs256_token(&secret, kid.as_deref(), &claims) else {
        return;
    };
    let valid = kid.as_deref() == Some("app")
        && iss == "app"
        && (1..=256).contains(&sub.len())
        && exp > now
        && right_secret;
    match t.verify(&token) {
        Ok((tenant, user)) => {
            assert!(valid, "accepted: kid {kid:?}, iss {iss:?}, sub {sub:?}, exp {exp} (now {now}), right secret {right_secret}");
            assert_eq!(tenant, "app");
            assert_eq!(user, sub);
        }
        Err(e) => assert!(!valid, "refused ({e}): a valid token"),
    }
    if valid {
        // The signed part: header and claims, before the second '.'.
        let signed = token.rfind('.').unwrap_or(0);
        let pos = usize::from(*tamper) * signed / 256;
        let bytes = token.as_bytes();
        if bytes[pos] != b'.' {
            let i = BASE64URL.iter().position(|c| *c == bytes[pos]).unwrap_or(0);
            let mut changed = bytes.to_vec();
            changed[pos] = BASE64URL[(i + 1 + usize::from(flags >> 2)) % BASE64URL.len()];
            if changed[pos] != bytes[pos] {
                let changed = String::from_utf8(changed).expect("base64url is ASCII");
                assert!(t.verify(&changed).is_err(), "a tampered token verified");
            }
        }
    }
});
