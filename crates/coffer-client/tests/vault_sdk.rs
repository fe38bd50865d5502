//! The SDK's password mode against the real trusted core (in memory), behind
//! a minimal HTTP relay speaking the daemon's API. The core's clock is weeks
//! away from this machine's, so every flow first meets a clock-skew refusal
//! and must recover from it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use coffer_client::keycache::{FileKeyCache, KeyCache};
use coffer_client::{
    AccessError, BackupKey, BackupSources, Coffer, Password, Progress, RecoveryKey, VaultClient,
    VaultError,
};
use coffer_vault_core::testing::MemRealm;
use coffer_vault_core::{CoreError, Input};

/// Serves `/v1/open` and `/v1/send` for `realm`. Token `user:<name>` is
/// user `<name>` of tenant `app`; token `limited` is rate limited.
fn serve(realm: Arc<Mutex<MemRealm>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let realm = realm.clone();
            std::thread::spawn(move || {
                if let Ok(c) = conn {
                    let _ = connection(c, &realm);
                }
            });
        }
    });
    addr
}

fn connection(stream: TcpStream, realm: &Mutex<MemRealm>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => len = value.trim().parse().unwrap(),
                "authorization" => auth = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let (status, answer) = handle(realm, &path, auth.as_deref(), body);
        write!(
            out,
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )?;
        out.write_all(&answer)?;
    }
}

fn json(code: &str, extra: &str) -> Vec<u8> {
    format!(r#"{{"error":"{code}","message":"{code} (test relay)"{extra}}}"#).into_bytes()
}

fn handle(
    realm: &Mutex<MemRealm>,
    path: &str,
    auth: Option<&str>,
    frame: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut realm = realm.lock().unwrap();
    let input = match path {
        "/v1/open" => {
            let user = match auth.and_then(|a| a.strip_prefix("Bearer ")) {
                Some("limited") => {
                    return (
                        429,
                        json("rate_limited", r#","scope":"user","retry_after_ms":42000"#),
                    )
                }
                Some(t) => match t.strip_prefix("user:") {
                    Some(u) => u.to_string(),
                    None => return (401, json("unauthorized", "")),
                },
                None => return (401, json("unauthorized", "")),
            };
            let record = realm.core.record_id("app", &user);
            Input::Open { record, frame }
        }
        "/v1/send" => Input::Data { frame },
        _ => return (404, b"not found".to_vec()),
    };
    match realm.one(input) {
        Ok(reply) => (200, reply),
        Err(CoreError::UnknownSession) => (404, json("unknown_session", "")),
        Err(_) => (400, json("channel", "")),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    vault: Arc<Mutex<MemRealm>>,
    address: String,
}

impl Fixture {
    fn new(seed: u64) -> Self {
        let vault = Arc::new(Mutex::new(MemRealm::new(seed).unwrap()));
        let address = serve(vault.clone());
        Self {
            dir: tempfile::tempdir().unwrap(),
            vault,
            address,
        }
    }

    fn client(&self, token: &str) -> VaultClient {
        let mut realm = self.vault.lock().unwrap().descriptor();
        realm.address = self.address.clone();
        VaultClient::new(realm, token.into()).unwrap()
    }

    fn location(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn cache(&self, device: &str) -> FileKeyCache {
        FileKeyCache::new(self.dir.path().join(device))
    }
}

#[test]
fn register_fetch_change_delete_through_clock_skew() {
    let f = Fixture::new(1);
    let vault = f.client("user:alice");
    let k = BackupKey::from_bytes([0x42; 32]);
    let pw = Password::from("correct horse");
    assert_eq!(vault.clock_offset_ms(), 0);
    assert_eq!(vault.register(&pw, &k, 5).unwrap(), 5);
    // The core's clock is weeks ahead: the first open was refused, the retry
    // with the learnt offset went through.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let core_ms = 1_800_000_000_000i64;
    assert!(
        (vault.clock_offset_ms() - (core_ms - now_ms)).abs() < 10_000,
        "offset {}",
        vault.clock_offset_ms()
    );
    // One user, one key: a second registration is refused unless replacing.
    let e = vault.register(&pw, &k, 5).unwrap_err();
    assert!(matches!(e, VaultError::AlreadyRegistered), "{e}");
    assert_eq!(vault.fetch_key(&pw).unwrap().expose_secret(), &[0x42; 32]);

    let e = vault.fetch_key(&Password::from("wrong")).unwrap_err();
    assert!(
        matches!(
            e,
            VaultError::WrongPassword {
                attempts_remaining: 4
            }
        ),
        "{e}"
    );
    let new = Password::from("battery staple");
    let same = vault.change_password(&pw, &new).unwrap();
    assert_eq!(same.expose_secret(), &[0x42; 32]);
    assert!(matches!(
        vault.fetch_key(&pw).unwrap_err(),
        VaultError::WrongPassword {
            attempts_remaining: 4
        }
    ));
    // The guess limit survives the password change.
    let s = vault.login(&new).unwrap();
    assert_eq!(s.max_attempts(), 5);
    assert_eq!(s.key().expose_secret(), &[0x42; 32]);
    assert_eq!(s.delete().unwrap().expose_secret(), &[0x42; 32]);
    assert!(matches!(
        vault.fetch_key(&new).unwrap_err(),
        VaultError::NotRegistered
    ));

    // Host refusals keep their structure.
    let e = f.client("limited").fetch_key(&new).unwrap_err();
    assert!(
        matches!(&e, VaultError::RateLimited { scope, retry_after_ms: 42000 } if scope == "user"),
        "{e}"
    );
    assert!(matches!(
        f.client("nobody").fetch_key(&new).unwrap_err(),
        VaultError::Unauthorized(_)
    ));
}

#[test]
fn the_last_wrong_password_erases() {
    let f = Fixture::new(2);
    let vault = f.client("user:bob");
    let pw = Password::from("pw");
    vault
        .register(&pw, &BackupKey::from_bytes([1; 32]), 3)
        .unwrap();
    for left in [2, 1, 0] {
        let e = vault.fetch_key(&Password::from("guess")).unwrap_err();
        assert_eq!(e.attempts_remaining(), Some(left), "{e}");
    }
    let e = vault.fetch_key(&pw).unwrap_err();
    assert!(matches!(e, VaultError::NotRegistered), "{e}");
    assert!(e.key_gone());
}

#[test]
fn sdk_init_open_switch_and_key_mismatch() {
    let f = Fixture::new(3);
    std::env::set_var("COFFER_CACHE_DIR", f.dir.path().join("local-cache"));
    let vault = f.client("user:carol");
    let pw = Password::from("pw-carol");
    let device = f.cache("device");
    let loc = f.location("repo");
    let id = Coffer::init_with_vault(&loc, &vault, &pw, 10, &device).unwrap();
    let info = Coffer::inspect(&loc).unwrap();
    assert!(info.is_password_mode());
    assert_eq!(info.repo_id, id);
    assert_eq!(&info.realm().unwrap().unwrap(), vault.realm());
    // A second init at the same place touches neither the vault nor the repository.
    assert!(matches!(
        Coffer::init_with_vault(&loc, &vault, &pw, 10, &device),
        Err(AccessError::Repo(
            coffer_client::RepoError::AlreadyExists { .. }
        ))
    ));

    // Cached on this device.
    let src = f.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("photo.jpg"), b"jpeg").unwrap();
    let mut c = Coffer::open_cached(&loc, &device).unwrap().unwrap();
    let sources = BackupSources {
        paths: vec![src],
        databases: vec![],
    };
    c.backup(&sources, false, &Progress::default()).unwrap();

    // A new device: nothing cached, the vault with the password, then cached.
    let phone = f.cache("phone");
    assert!(Coffer::open_cached(&loc, &phone).unwrap().is_none());
    let c = Coffer::open_with_vault(&loc, &vault, &pw, &phone).unwrap();
    assert_eq!(c.snapshots().unwrap().len(), 1);
    assert!(phone.load(&id).unwrap().is_some());

    // The vault record replaced by another key (deleted with the password,
    // registered anew): the repository is not opened with it, not cached,
    // not switched, not erased.
    vault.delete(&pw).unwrap();
    vault
        .register(&pw, &BackupKey::from_bytes([7; 32]), 10)
        .unwrap();
    let tablet = f.cache("tablet");
    let e = Coffer::open_with_vault(&loc, &vault, &pw, &tablet)
        .err()
        .unwrap();
    assert!(matches!(e, AccessError::KeyMismatch { .. }), "{e}");
    assert!(tablet.load(&id).unwrap().is_none());
    let e = Coffer::erase_vault_key(&loc, &vault, &pw, &tablet).unwrap_err();
    assert!(matches!(e, AccessError::KeyMismatch { .. }), "{e}");
    let e = Coffer::switch_to_recovery_key(&loc, &vault, &pw, &tablet).unwrap_err();
    assert!(matches!(e, AccessError::KeyMismatch { .. }), "{e}");
    assert!(Coffer::inspect(&loc).unwrap().is_password_mode());

    // Put the right key back (with the repository's K from the device cache),
    // then leave password mode.
    let k = device.load(&id).unwrap().unwrap();
    vault.delete(&pw).unwrap();
    vault.register(&pw, &k, 10).unwrap();
    let sw = Coffer::switch_to_recovery_key(&loc, &vault, &pw, &device).unwrap();
    assert!(sw.vault_erase.is_ok());
    assert!(device.load(&id).unwrap().is_none());
    assert!(!Coffer::inspect(&loc).unwrap().is_password_mode());
    let k2 = RecoveryKey::parse(sw.recovery_key.expose_secret()).unwrap();
    assert_eq!(k2.expose_secret(), k.expose_secret());
    assert_eq!(
        Coffer::open(&loc, &k2).unwrap().snapshots().unwrap().len(),
        1
    );
    assert!(matches!(
        vault.fetch_key(&pw).unwrap_err(),
        VaultError::NotRegistered
    ));
    // Password-mode entry points now refuse politely.
    assert!(matches!(
        Coffer::open_with_vault(&loc, &vault, &pw, &device),
        Err(AccessError::NotPasswordMode { .. })
    ));
}
