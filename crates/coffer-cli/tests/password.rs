//! Password mode end to end: the real `coffer` binary against a real
//! `coffer-vault` daemon on loopback (DESIGN.md §3, §6).
//!
//! The daemon is the workspace's `coffer-vault` binary, found next to the
//! `coffer` binary under test (`cargo test --workspace` builds both; alone,
//! run `cargo build -p coffer-vault` first). Its realm uses the smallest
//! Argon2id a client accepts (19 MiB, one pass) so the tests stay quick.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer_testkit::{
    assert_same_tree, db_dump, make_chat_db, snapshot_tree, write_tree, Backend, Cli, Entry,
};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

fn vault_bin() -> PathBuf {
    let bin = Path::new(BIN).with_file_name("coffer-vault");
    assert!(
        bin.is_file(),
        "the vault daemon {} is missing: build it first with `cargo build -p coffer-vault` \
         (`cargo test --workspace` builds it)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// A running `coffer-vault serve`, killed on drop.
struct Vault {
    dir: tempfile::TempDir,
    child: Child,
}

impl Vault {
    fn start(serve_args: &[&str]) -> Self {
        let bin = vault_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data = dir.path().join("data");
        let nvram = dir.path().join("nvram");
        let o = Command::new(&bin)
            .args(["init", "--data", data.to_str().unwrap()])
            .args(["--nvram", nvram.to_str().unwrap()])
            .args(["--address", &format!("http://127.0.0.1:{port}")])
            .args(["--ksf-memory-kib", "19456", "--ksf-iterations", "1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "coffer-vault init: {}", stderr(&o));
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(&bin)
            .args(["serve", "--data", data.to_str().unwrap()])
            .args(["--nvram", nvram.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(serve_args)
            .env_remove("COFFER_PKCS11_MODULE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut v = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = v.child.try_wait().unwrap() {
                panic!("coffer-vault serve exited ({status}): {}", v.log());
            }
            assert!(
                Instant::now() < deadline,
                "coffer-vault serve did not listen: {}",
                v.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        v
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn realm(&self) -> PathBuf {
        self.dir.path().join("data/realm.json")
    }

    /// A user token of tenant `app`.
    fn token(&self, user: &str) -> String {
        let o = Command::new(vault_bin())
            .args([
                "token",
                "--data",
                self.dir.path().join("data").to_str().unwrap(),
            ])
            .args(["--tenant", "app", "--user", user])
            .output()
            .unwrap();
        assert!(o.status.success(), "coffer-vault token: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One user's repository, driven through the real binary. Each "device" is
/// a key-cache directory (XDG_DATA_HOME) and a local cache directory.
struct User {
    cli: Cli,
    realm: PathBuf,
    token: String,
}

impl User {
    fn new(vault: &Vault, name: &str) -> Self {
        Self {
            cli: Cli::new_on(Path::new(BIN), Backend::Local),
            realm: vault.realm(),
            token: vault.token(name),
        }
    }

    /// The key-cache directory of a device.
    fn keys(&self, device: &str) -> PathBuf {
        self.cli.path(device).join("coffer/keys")
    }

    /// `coffer args` on `device`, with `password` in COFFER_PASSWORD (if
    /// any), the token, the realm descriptor in COFFER_VAULT (as an app ships
    /// it), no terminal, nothing else inherited.
    fn command(&self, device: &str, password: Option<&str>, args: &[&str]) -> Command {
        let mut c = self.cli.command(args);
        c.env("XDG_DATA_HOME", self.cli.path(device))
            .env(
                "COFFER_CACHE_DIR",
                self.cli.path(&format!("{device}-cache")),
            )
            .env("COFFER_VAULT_TOKEN", &self.token)
            .env_remove("COFFER_PASSWORD")
            .env_remove("COFFER_NEW_PASSWORD")
            .env("COFFER_VAULT", &self.realm)
            .env_remove("COFFER_RECOVERY_KEY")
            .stdin(Stdio::null());
        if let Some(p) = password {
            c.env("COFFER_PASSWORD", p);
        }
        c
    }

    fn run(&self, device: &str, password: Option<&str>, args: &[&str]) -> Output {
        self.command(device, password, args).output().unwrap()
    }

    /// Runs with `--json`, asserts success, returns stdout.
    fn ok(&self, device: &str, password: Option<&str>, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(device, password, &a);
        assert!(
            o.status.success(),
            "coffer {args:?} on {device} failed ({:?}): {}",
            o.status.code(),
            stderr(&o)
        );
        stdout_json(&o)
    }

    fn init(&self, password: &str) -> String {
        let v = self.ok(
            "device",
            Some(password),
            &["init", "--vault", self.realm.to_str().unwrap()],
        );
        assert_eq!(v["key_mode"], "password", "{v}");
        assert_eq!(v["max_attempts"], 10, "{v}");
        v["repo_id"].as_str().unwrap().to_string()
    }

    /// Every file of the repository, `config` aside.
    fn data_files(&self) -> BTreeMap<Vec<u8>, Entry> {
        let mut t = snapshot_tree(self.cli.local_repo());
        assert!(t.remove(b"config".as_slice()).is_some());
        t
    }

    fn config(&self) -> Vec<u8> {
        std::fs::read(self.cli.local_repo().join("config")).unwrap()
    }
}

/// Asserts exit `code` and that stderr says `text`.
fn assert_fails(o: &Output, code: i32, text: &str) {
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(o));
    assert!(
        stderr(o).contains(text),
        "stderr lacks {text:?}: {}",
        stderr(o)
    );
}

#[test]
fn password_mode_from_init_to_recovery_key() {
    let vault = Vault::start(&[]);
    let alice = User::new(&vault, "alice");
    let realm = alice.realm.to_str().unwrap();

    // No token: a usage error naming the variable, and nothing created.
    let mut c = alice.command("device", Some("pw"), &["init", "--vault", realm]);
    c.env_remove("COFFER_VAULT_TOKEN");
    assert_fails(&c.output().unwrap(), 2, "COFFER_VAULT_TOKEN");
    assert!(!alice.cli.local_repo().exists());

    let repo_id = alice.init("correct horse");
    // The device caches K: 0600 in a 0700 directory.
    let cached = alice.keys("device").join(format!("{repo_id}.key"));
    assert_eq!(
        std::fs::metadata(&cached).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(alice.keys("device"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // Daily backups on this device: neither password nor token nor vault.
    let src = alice.cli.path("data/media");
    write_tree(&src, 7, 30, 100_000);
    let db = alice.cli.path("data/msgstore.db");
    make_chat_db(&db, 2_000, 3);
    let mut c = alice.command(
        "device",
        None,
        &[
            "backup",
            "--json",
            "--db",
            db.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    c.env_remove("COFFER_VAULT_TOKEN");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout_json(&o)["bytes_added"].as_u64().unwrap() > 0);

    // `key forget` empties this device's cache; without a password now: usage error.
    let v = alice.ok("device", None, &["key", "forget"]);
    assert_eq!(v["forgotten"], true);
    assert!(!cached.exists());
    assert_fails(
        &alice.run("device", None, &["snapshots"]),
        2,
        "COFFER_PASSWORD",
    );

    // The same device, empty cache: the password from a file brings K back (and caches it).
    let pw_file = alice.cli.path("pw.txt");
    std::fs::write(&pw_file, "correct horse\n").unwrap();
    let target = alice.cli.path("restore-1");
    alice.ok(
        "device",
        None,
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &Cli::restored(&target, &src));
    assert!(cached.exists());

    // A new device (fresh key cache and local cache): the password restores
    // everything byte-identical.
    let target = alice.cli.path("restore-2");
    alice.ok(
        "phone",
        Some("correct horse"),
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_same_tree(&src, &Cli::restored(&target, &src));
    assert_eq!(db_dump(&db), db_dump(&Cli::restored(&target, &db)));
    assert!(alice.keys("phone").join(format!("{repo_id}.key")).exists());

    // Wrong passwords on yet another device: exit 3 and the count, as text
    // and as a JSON field.
    let o = alice.run("tablet", Some("wrong"), &["snapshots"]);
    assert_fails(&o, 3, "wrong password: 9 attempts remaining");
    let o = alice.run("tablet", Some("wrong"), &["snapshots", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    let v = stdout_json(&o);
    assert_eq!(v["error"], "wrong_password", "{v}");
    assert_eq!(v["attempts_remaining"], 8, "{v}");
    assert_eq!(v["exit_code"], 3, "{v}");
    // The right one gives every attempt back.
    alice.ok("tablet", Some("correct horse"), &["snapshots"]);
    assert!(alice
        .run("tablet", Some("wrong"), &["key", "forget"])
        .status
        .success());
    assert_fails(
        &alice.run("tablet", Some("wrong"), &["snapshots"]),
        3,
        "9 attempts remaining",
    );
    alice.ok("tablet", Some("correct horse"), &["snapshots"]);

    // Change the password: the same K, nothing in the repository written.
    let before = snapshot_tree(alice.cli.local_repo());
    let config = alice.config();
    let mut c = alice.command(
        "device",
        Some("correct horse"),
        &["key", "passwd", "--json"],
    );
    // This device caches K: the realm pinned in the config, authenticated
    // with it, serves without --vault / COFFER_VAULT.
    c.env("COFFER_NEW_PASSWORD", "battery staple")
        .env_remove("COFFER_VAULT");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["password_changed"], true);
    assert_eq!(snapshot_tree(alice.cli.local_repo()), before);
    assert_eq!(alice.config(), config);
    // On a new device the old password fails and the new one works.
    assert_fails(
        &alice.run("laptop", Some("correct horse"), &["snapshots"]),
        3,
        "wrong password",
    );
    let new_file = alice.cli.path("new-pw.txt");
    std::fs::write(&new_file, "battery staple").unwrap();
    alice.ok(
        "laptop",
        None,
        &["snapshots", "--password-file", new_file.to_str().unwrap()],
    );
    // The cached key on the first device still works, without asking.
    alice.ok("device", None, &["snapshots"]);

    // Leave password mode: the recovery key, once; the same K; data untouched.
    let data = alice.data_files();
    let v = alice.ok(
        "device",
        Some("battery staple"),
        &["key", "disable", "--to-recovery-key"],
    );
    assert_eq!(v["vault_erased"], true, "{v}");
    let rk = v["recovery_key"].as_str().unwrap().to_string();
    assert_eq!(rk.len(), 79);
    assert_eq!(alice.data_files(), data);
    assert_ne!(alice.config(), config);
    assert!(!cached.exists(), "the device's cached key is dropped");
    // The recovery key opens it, on a device that never saw it.
    let target = alice.cli.path("restore-3");
    let mut c = alice.command(
        "desktop",
        None,
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--json",
        ],
    );
    c.env("COFFER_RECOVERY_KEY", &rk);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&src, &Cli::restored(&target, &src));
    // Without it, a recovery-key prompt, not a password one.
    assert_fails(
        &alice.run("desktop", Some("battery staple"), &["snapshots"]),
        2,
        "COFFER_RECOVERY_KEY",
    );
    // The vault's copy is gone for good.
    let o = alice.run(
        "desktop",
        Some("battery staple"),
        &["key", "disable", "--to-recovery-key", "--vault", realm],
    );
    assert_fails(&o, 5, "the vault has no key for this user");
    // Key commands on a recovery-key repository are usage errors.
    assert_fails(
        &alice.run("desktop", Some("x"), &["key", "passwd"]),
        2,
        "recovery-key mode",
    );
}

#[test]
fn ten_wrong_passwords_erase_the_key_for_good() {
    let vault = Vault::start(&[]);
    let bob = User::new(&vault, "bob");
    bob.init("s3cret");
    let src = bob.cli.path("media");
    write_tree(&src, 11, 5, 10_000);
    bob.ok("device", None, &["backup", src.to_str().unwrap()]);

    for left in (1..=9u8).rev() {
        let o = bob.run("new-device", Some("guess"), &["snapshots"]);
        let text = if left == 1 {
            "wrong password: 1 attempt remaining".to_string()
        } else {
            format!("wrong password: {left} attempts remaining")
        };
        assert_fails(&o, 3, &text);
    }
    // The tenth: the last attempt, and the key is erased.
    let o = bob.run("new-device", Some("guess"), &["snapshots", "--json"]);
    assert_fails(
        &o,
        5,
        "wrong password; that was the last attempt: the key has been erased for good",
    );
    let v = stdout_json(&o);
    assert_eq!(v["error"], "key_erased", "{v}");
    assert_eq!(v["attempts_remaining"], 0, "{v}");
    // Now even the right password finds nothing.
    let o = bob.run("new-device", Some("s3cret"), &["snapshots"]);
    assert_fails(
        &o,
        5,
        "the vault has no key for this user: it was erased after too many wrong passwords, disabled, or never registered",
    );
    assert!(
        !bob.keys("new-device").exists()
            || std::fs::read_dir(bob.keys("new-device"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn make_unreadable_realm_pinning_and_rate_limits() {
    // One session a minute per user after a burst of three.
    let vault = Vault::start(&["--user-burst", "3", "--user-rate-per-minute", "1"]);
    let carol = User::new(&vault, "carol");
    carol.init("pw-carol"); // session 1
    let src = carol.cli.path("media");
    write_tree(&src, 5, 4, 5_000);
    carol.ok("device", None, &["backup", src.to_str().unwrap()]);

    // A descriptor of another realm is refused before anything is sent.
    let other = tempfile::tempdir().unwrap();
    let o = Command::new(vault_bin())
        .args(["init", "--data", other.path().join("d").to_str().unwrap()])
        .args(["--nvram", other.path().join("nv").to_str().unwrap()])
        .args([
            "--address",
            "http://127.0.0.1:9",
            "--ksf-memory-kib",
            "19456",
            "--ksf-iterations",
            "1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let other_realm = other.path().join("d/realm.json");
    let o = carol.run(
        "device",
        None,
        &["snapshots", "--vault", other_realm.to_str().unwrap()],
    );
    assert_fails(&o, 1, "realm mismatch");

    // --make-unreadable needs --yes.
    assert_fails(
        &carol.run(
            "device",
            Some("pw-carol"),
            &["key", "disable", "--make-unreadable"],
        ),
        2,
        "--yes",
    );
    // The cached key authenticates the config: its realm serves, no --vault.
    let mut c = carol.command(
        "device",
        Some("pw-carol"),
        &["key", "disable", "--make-unreadable", "--yes", "--json"],
    );
    c.env_remove("COFFER_VAULT");
    let o = c.output().unwrap(); // session 2
    assert!(o.status.success(), "{}", stderr(&o));
    let v = stdout_json(&o);
    assert_eq!(v["erased"], true);
    assert!(std::fs::read_dir(carol.keys("device"))
        .unwrap()
        .next()
        .is_none());
    let o = carol.run("device", Some("pw-carol"), &["snapshots"]); // session 3
    assert_fails(&o, 5, "the vault has no key for this user");

    // The fourth session within the minute: rate limited, exit 1, with the delay.
    let o = carol.run("device", Some("pw-carol"), &["snapshots", "--json"]);
    assert_fails(&o, 1, "rate limiting this user: retry in");
    let v = stdout_json(&o);
    assert_eq!(v["error"], "rate_limited", "{v}");
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["scope"], "user", "{v}");
    drop(vault);
}

/// A listener standing for a host the storage provider chose: it must never
/// be connected to.
struct Trap(std::net::TcpListener);

impl Trap {
    fn new() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Self(l)
    }

    fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().unwrap())
    }

    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("the client connected to the storage's address (from {from})"),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn a_realm_pinned_by_the_storage_is_not_trusted_before_the_key() {
    let vault = Vault::start(&[]);
    let dave = User::new(&vault, "dave");
    dave.init("pw-dave");

    // The storage rewrites the config: the same repository and realm keys,
    // but the vault's address is its own. It cannot MAC the result (no K).
    let trap = Trap::new();
    let mut realm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vault.realm()).unwrap()).unwrap();
    realm["address"] = trap.url().into();
    let config_path = dave.cli.local_repo().join("config");
    let mut body =
        coffer_repo::format::config::peek_config(&std::fs::read(&config_path).unwrap()).unwrap();
    body.key_mode = coffer_repo::format::config::KeyMode::Vault {
        realm: realm.to_string(),
    };
    let forger = coffer_crypto::RepoKeys::derive(
        &coffer_crypto::BackupKey::generate().unwrap(),
        &body.repo_id,
    );
    std::fs::write(
        &config_path,
        coffer_repo::format::config::encode_config(&forger, &body),
    )
    .unwrap();

    // A new device (empty key cache), no --vault / COFFER_VAULT: refused,
    // exit 2, saying why and what to pass, before any request is sent.
    for args in [
        &["snapshots"][..],
        &["restore", "latest", "--target", "/nonexistent"],
        &["key", "passwd"],
        &["key", "disable", "--make-unreadable", "--yes"],
        &["key", "disable", "--to-recovery-key"],
    ] {
        let mut c = dave.command("phone", Some("pw-dave"), args);
        c.env("COFFER_NEW_PASSWORD", "new")
            .env_remove("COFFER_VAULT");
        let o = c.output().unwrap();
        assert_fails(&o, 2, "--vault <realm.json> or set COFFER_VAULT");
        assert_fails(&o, 2, "cannot be checked before the key");
        trap.assert_untouched();
    }
    assert!(
        !dave.keys("phone").exists()
            || std::fs::read_dir(dave.keys("phone"))
                .unwrap()
                .next()
                .is_none()
    );

    // With the descriptor given, its address wins: the real vault releases
    // K, which shows the config was altered.
    let o = dave.run("phone", Some("pw-dave"), &["snapshots"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("MAC"), "{}", stderr(&o));
    trap.assert_untouched();

    // The device that caches K authenticates the config with it before
    // using its realm: the forgery is refused there too.
    let mut c = dave.command("device", Some("pw-dave"), &["key", "passwd"]);
    c.env("COFFER_NEW_PASSWORD", "new")
        .env_remove("COFFER_VAULT");
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("MAC"), "{}", stderr(&o));
    trap.assert_untouched();
}
