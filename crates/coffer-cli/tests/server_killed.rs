//! The storage server killed mid-backup: the real `coffer` binary backs up
//! to a WsgiDAV server of the test's own (`COFFER_TEST_WSGIDAV`, exported by
//! `scripts/storage-servers.sh`), which is SIGKILLed once the backup has
//! written its first index checkpoint. The backup fails with a clear error
//! (after its retries); the server comes back (WsgiDAV keeps its files on
//! disk); the same backup, run again, completes without uploading again what
//! the checkpoint indexed; the snapshot restores byte-identical on another
//! device, `verify --read-data` is clean, and prune sweeps the temporaries
//! the interrupted uploads left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_testkit::{
    assert_same_tree, db_dump, make_chat_db, random_bytes, rng, server_env, write_tree, Backend,
    Cli,
};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

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

/// Files directly or indirectly under `dir`.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            _ => 1,
        })
        .sum()
}

#[test]
fn webdav_server_killed_mid_backup_then_the_next_run_completes() {
    let wsgidav = server_env("COFFER_TEST_WSGIDAV");
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(&wsgidav, root.path(), free_port());
    let url = format!("webdav://127.0.0.1:{}/repo", server.port);
    let cli = Cli::init_at(Path::new(BIN), Backend::WebDav, &url);
    let on_disk = root.path().join("repo");

    // ~330 MB: more than the 16 packs (256 MiB) of the first index checkpoint.
    let src = cli.path("data/media");
    write_tree(&src.join("tree"), 41, 40, 100_000);
    for i in 0..20 {
        let len = (16 << 20) + i * 100_000;
        std::fs::write(
            src.join(format!("video-{i:02}.mp4")),
            random_bytes(&mut rng(100 + i as u64), len),
        )
        .unwrap();
    }
    let db = cli.path("data/chat.db");
    make_chat_db(&db, 5_000, 42);
    let args = [
        "backup",
        "--db",
        db.to_str().unwrap(),
        src.to_str().unwrap(),
    ];

    let mut backup = cli
        .command(&args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once the first checkpoint is on its disk.
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&on_disk.join("index")) == 0 {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup ended before its first checkpoint"
        );
        assert!(Instant::now() < deadline, "no index checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let killed_at = Instant::now();
    let out = backup.wait_with_output().unwrap();
    let failed_after = killed_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The retries warn as they go; the error that ends the run says what
    // failed, where, that it was retried, and what to do.
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    println!("the backup gave up {failed_after:.1?} after the kill: {error}");
    for want in [
        "temporary storage failure",
        url.as_str(),
        "gave up after 8 attempts",
        "run the command again later",
    ] {
        assert!(error.contains(want), "{want:?} missing from {error}");
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exit_code"], 1, "{json}");

    // The server is back: the same backup completes, reusing the checkpoint.
    server.restart();
    let v = cli.json(&args);
    let total = v["total_bytes"].as_u64().unwrap();
    let added = v["bytes_added"].as_u64().unwrap();
    println!("the rerun added {} MB of {} MB", added >> 20, total >> 20);
    assert!(
        added + (200 << 20) < total,
        "the rerun uploaded again what the checkpoint indexed: {v}"
    );
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), 1);

    // Another device restores it byte-identical; a full read-back is clean.
    let target = cli.path("restore");
    let o = cli
        .command(&["restore", "latest", "--target", target.to_str().unwrap()])
        .env("COFFER_CACHE_DIR", cli.path("other-device"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tree(&src, &Cli::restored(&target, &src));
    assert_eq!(db_dump(&db), db_dump(&Cli::restored(&target, &db)));
    let v = cli.json(&["verify", "--read-data"]);
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    assert_eq!(v["packs_read"], v["packs"], "{v}");

    // The uploads cut by the kill left temporaries; prune sweeps those of
    // dead processes (and packs no index lists).
    let leftovers = files_under(&on_disk.join(".tmp"));
    cli.json(&["prune"]);
    println!(
        "temporaries: {leftovers} before the prune, {} after",
        files_under(&on_disk.join(".tmp"))
    );
    assert_eq!(files_under(&on_disk.join(".tmp")), 0);
    let v = cli.json(&["verify", "--read-data"]);
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
}
