//! A real `coffer-vault` process on loopback, and a client that speaks to it
//! over HTTP through the real channel and OPAQUE messages.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_vault_proto::client::{Login, Registration};
use coffer_vault_proto::{ClientChannel, ErrorCode, RealmDescriptor, Response};

pub const BIN: &str = env!("CARGO_BIN_EXE_coffer-vault");

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct Vault {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub nvram: PathBuf,
    pub port: u16,
    pub serve_args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    pub realm: RealmDescriptor,
    pub log: PathBuf,
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Vault {
    /// `coffer-vault init` (test KSF: the smallest Argon2id clients accept) and `serve`.
    pub fn new(init_args: &[&str], serve_args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let nvram = dir.path().join("nvram").join("anchor.bin");
        std::fs::create_dir_all(nvram.parent().unwrap()).unwrap();
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.args(["init", "--data"])
            .arg(&data)
            .arg("--nvram")
            .arg(&nvram)
            .args(["--address", &format!("http://127.0.0.1:{port}")])
            .args(["--ksf-memory-kib", "19456", "--ksf-iterations", "1"])
            .args(init_args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_ok(&mut cmd);
        let realm =
            RealmDescriptor::from_json(&std::fs::read_to_string(data.join("realm.json")).unwrap())
                .unwrap();
        let log = dir.path().join("vault.log");
        let mut v = Self {
            dir,
            data,
            nvram,
            port,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            realm,
            log,
        };
        v.start();
        v
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--data"])
            .arg(&self.data)
            .arg("--nvram")
            .arg(&self.nvram)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.serve_args)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.health_status() {
                let _ = status;
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("coffer-vault exited early ({st}): {}", self.log_text());
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "vault did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The names of the running daemon's threads (`/proc/<pid>/task/*/comm`).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.as_ref().expect("running").id();
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        names.sort();
        names
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let st = c.wait().unwrap();
            assert!(st.success(), "vault exit {st}: {}", self.log_text());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn health_status(&self) -> Option<u16> {
        get(&self.url("/healthz")).map(|(s, _)| s)
    }

    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = get(&self.url("/metrics")).unwrap();
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    pub fn token(&self, tenant: &str, user: &str) -> String {
        run_ok(
            Command::new(BIN)
                .args(["token", "--data"])
                .arg(&self.data)
                .args(["--tenant", tenant, "--user", user]),
        )
        .trim()
        .to_string()
    }

    pub fn client(&self, tenant: &str, user: &str) -> Client {
        Client {
            realm: self.realm.clone(),
            token: self.token(tenant, user),
            base: self.url(""),
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.data.join("records.redb")
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Requests' overall timeout (ms); a test of a realm with a frozen node
/// lowers it, as a client facing a node that never answers would.
pub static TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30_000);

fn agent() -> ureq::Agent {
    let ms = TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed);
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(ms)))
        .build()
        .into()
}

pub fn get(url: &str) -> Option<(u16, Vec<u8>)> {
    let mut r = agent().get(url).call().ok()?;
    let status = r.status().as_u16();
    Some((status, r.body_mut().read_to_vec().ok()?))
}

/// POST; Err(connection error text).
pub fn post(url: &str, token: Option<&str>, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut req = agent()
        .post(url)
        .header("Content-Type", "application/octet-stream");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body).map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

pub fn json_error(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Option<[u8; 32]>),
    Refused(ErrorCode, Option<u8>),
    /// HTTP status and the JSON error code.
    Http(u16, String),
    /// The connection failed (vault down).
    Down(String),
}

pub struct Client {
    pub realm: RealmDescriptor,
    pub token: String,
    pub base: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn refused(r: &Response) -> Option<Outcome> {
    match r {
        Response::Error {
            code,
            attempts_remaining,
            ..
        } => Some(Outcome::Refused(*code, *attempts_remaining)),
        _ => None,
    }
}

/// A login's result and the KE2 it saw (attempts_remaining), if any.
pub struct LoginResult {
    pub outcome: Outcome,
    pub ke2_attempts_remaining: Option<u8>,
}

impl Client {
    pub fn open(
        &self,
        req: &coffer_vault_proto::Request,
    ) -> Result<(ClientChannel, Response), Outcome> {
        let (mut ch, frame) =
            ClientChannel::open(&self.realm, req, now_ms(), &mut rand_core::OsRng).unwrap();
        let (status, body) = post(&format!("{}/v1/open", self.base), Some(&self.token), &frame)
            .map_err(Outcome::Down)?;
        if status != 200 {
            return Err(Outcome::Http(status, json_error(&body)));
        }
        let resp = ch.receive(&body).unwrap();
        Ok((ch, resp))
    }

    pub fn send(
        &self,
        ch: &mut ClientChannel,
        req: &coffer_vault_proto::Request,
    ) -> Result<Response, Outcome> {
        let frame = ch.send(req, now_ms()).unwrap();
        let (status, body) =
            post(&format!("{}/v1/send", self.base), None, &frame).map_err(Outcome::Down)?;
        if status != 200 {
            return Err(Outcome::Http(status, json_error(&body)));
        }
        Ok(ch.receive(&body).unwrap())
    }

    pub fn register(&self, password: &[u8], k: &[u8; 32], max_attempts: u8) -> Outcome {
        let (reg, req) =
            Registration::start(&mut rand_core::OsRng, password, max_attempts, false).unwrap();
        let (mut ch, resp) = match self.open(&req) {
            Ok(x) => x,
            Err(o) => return o,
        };
        if let Some(o) = refused(&resp) {
            return o;
        }
        let up = reg
            .finish(&mut rand_core::OsRng, &self.realm, password, &resp, k)
            .unwrap();
        match self.send(&mut ch, &up) {
            Ok(r) => refused(&r).unwrap_or(Outcome::Ok(None)),
            Err(o) => o,
        }
    }

    pub fn login(&self, password: &[u8]) -> LoginResult {
        let (mut login, ke1) = Login::start(&mut rand_core::OsRng, password).unwrap();
        let (mut ch, resp) = match self.open(&ke1) {
            Ok(x) => x,
            Err(o) => {
                return LoginResult {
                    outcome: o,
                    ke2_attempts_remaining: None,
                }
            }
        };
        let ke2 = match &resp {
            Response::LoginStarted {
                attempts_remaining, ..
            } => Some(*attempts_remaining),
            _ => None,
        };
        if let Some(o) = refused(&resp) {
            return LoginResult {
                outcome: o,
                ke2_attempts_remaining: ke2,
            };
        }
        let (ke3, _) = login
            .finish(&mut rand_core::OsRng, &self.realm, password, &resp)
            .unwrap();
        let outcome = match self.send(&mut ch, &ke3) {
            Ok(r) => match refused(&r) {
                Some(o) => o,
                None => Outcome::Ok(Some(*login.key(&self.realm, &r).unwrap())),
            },
            Err(o) => o,
        };
        LoginResult {
            outcome,
            ke2_attempts_remaining: ke2,
        }
    }
}

pub fn copy_file(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}
