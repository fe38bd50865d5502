//! A real WebDAV server killed (SIGKILL) in the middle of an upload: the
//! write fails with a clear, transient error, nothing half-written appears
//! under the object's name, and once the server is back the same store
//! object carries on. WsgiDAV keeps its data on disk, so a restart loses
//! nothing (moto, in memory, would).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_storage::{
    BlobStore, CloudOptions, CloudStore, Location, RetryPolicy, RetryStore, StorageError,
};

/// A WsgiDAV process of this test's own (the shared one serves other tests).
struct Server {
    bin: String,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(bin: &str, root: &Path, port: u16) -> Self {
        let mut s = Self {
            bin: bin.to_string(),
            root: root.to_path_buf(),
            port,
            child: None,
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--root")
            .arg(&self.root)
            .args(["--auth", "anonymous", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "wsgidav did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bytes in files under `dir` (recursively).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[test]
fn webdav_server_killed_mid_write() {
    let bin = common::server_env("COFFER_TEST_WSGIDAV");
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(&bin, root.path(), port);
    let url = format!("webdav://127.0.0.1:{port}/repo");
    let cloud = CloudStore::open(
        &Location::parse(&url).unwrap(),
        CloudOptions {
            request_timeout: Duration::from_secs(10),
            ..CloudOptions::default()
        },
    )
    .unwrap();
    let store = RetryStore::new(
        cloud,
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
    );
    store.put("data/small", b"before the crash").unwrap();

    // Kill the server as soon as the upload's first bytes reach its disk.
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i ^ (i >> 13)) as u8).collect();
    let tmp_dir = root.path().join("repo/.tmp");
    let err = std::thread::scope(|s| {
        let upload = s.spawn(|| store.put("data/big", &big));
        let deadline = Instant::now() + Duration::from_secs(60);
        while bytes_under(&tmp_dir) == 0 {
            assert!(!upload.is_finished(), "the upload finished before the kill");
            assert!(Instant::now() < deadline, "the upload never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        server.kill();
        upload.join().unwrap().unwrap_err()
    });
    assert!(err.is_transient(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("data/big") && msg.contains(&url), "{msg}");
    assert!(msg.contains("temporary"), "{msg}");
    assert!(
        matches!(err, StorageError::Transient { attempts: 3, .. }),
        "{err:?}"
    );
    // Nothing half-written under the real name; the leftover is a temporary.
    assert!(!root.path().join("repo/data/big").exists());
    assert!(bytes_under(&tmp_dir) > 0);

    // Back up: the same store object works, and sweeps the leftover.
    server.restart();
    assert_eq!(store.get("data/small").unwrap(), b"before the crash");
    store.put("data/big", &big).unwrap();
    assert!(store.get("data/big").unwrap() == big);
    assert_eq!(store.remove_stale_temporaries(Duration::ZERO).unwrap(), 1);
    assert_eq!(bytes_under(&tmp_dir), 0);
    let listed: Vec<String> = store
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(listed, ["data/big", "data/small"]);
}
