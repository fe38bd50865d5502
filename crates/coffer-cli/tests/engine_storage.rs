//! The engine (coffer-repo's API, as the SDK and the CLI call it) on stores
//! that misbehave the way remote storage does — reproduced with
//! `FaultStore` and small wrappers, since the real servers here (moto,
//! WsgiDAV) are well-behaved:
//!
//! * backup, incremental backup, restore, verify and prune through a drive
//!   on a bad day (transient errors, lost responses, 403 rate limits with
//!   `Retry-After`, writes cut short, latency, a lagging listing, duplicate
//!   names, check-then-write creates), byte-identical at the end;
//! * two concurrent `init`s on a check-then-write store: exactly one wins;
//! * a pack size the store cannot take in one upload is refused;
//! * read-only credentials: the conditional-write probe cannot write, the
//!   repository opens anyway and restores;
//! * prune under a lagging listing: a backup session the condemnation pass
//!   could not see is honoured (the listing grace of ADR 0004).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use coffer_crypto::BackupKey;
use coffer_repo::backup::{backup, BackupOptions, BackupSources};
use coffer_repo::progress::Progress;
use coffer_repo::prune::{forget, prune, KeepPolicy};
use coffer_repo::repo::{default_listing_grace, max_pack_bytes, DEFAULT_PACK_SIZE};
use coffer_repo::restore::{restore, RestoreOptions};
use coffer_repo::session::Session;
use coffer_repo::verify::verify;
use coffer_repo::{init, Id, InitOptions, RepoError, Repository};
use coffer_storage::{
    BlobStore, CreateMode, FaultConfig, FaultStore, MemStore, ObjectInfo, PutOutcome, RetryPolicy,
    RetryStore, StorageError,
};
use coffer_testkit::{
    assert_same_tree, db_dump, make_chat_db, random_bytes, rng, snapshot_tree, write_tree,
};

fn key() -> BackupKey {
    BackupKey::from_bytes([7; 32])
}

fn options(dir: &Path) -> BackupOptions {
    BackupOptions {
        force_full: false,
        hostname: "backup-host".into(),
        workers: 2,
        staging_dir: dir.join("staging"),
    }
}

fn restore_to(repo: &Repository, id: &Id, target: &Path) {
    let snap = repo.read_snapshot(id).unwrap();
    let opts = RestoreOptions {
        path: None,
        databases_only: false,
        workers: 2,
    };
    let s = restore(repo, id, &snap, target, &opts, &Progress::default()).unwrap();
    assert!(s.failures.is_empty(), "{:?}", s.failures);
}

fn restored(target: &Path, original: &Path) -> PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

#[test]
fn backup_and_restore_through_a_drive_on_a_bad_day() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultConfig {
        // Every fault of a consumer drive, often; creates are check-then-write.
        check_then_write: true,
        latency: (Duration::ZERO, Duration::from_micros(200)),
        partial_write: 0.15,
        lost_response: 0.1,
        ..FaultConfig::drive_like(0x5eed)
    };
    // Retries without sleeping (the 7 s Retry-After of the rate limits too).
    let store = Arc::new(
        RetryStore::new(
            FaultStore::new(MemStore::default(), faults),
            RetryPolicy {
                max_attempts: 16,
                ..RetryPolicy::default()
            },
        )
        .with_clock(1, |_| {}),
    );
    let dyn_store: Arc<dyn BlobStore> = store.clone();
    // Small packs: more objects, more faults.
    let init_opts = InitOptions {
        pack_size: 128 << 10,
        ..InitOptions::default()
    };
    init(dyn_store.as_ref(), &key(), &init_opts).unwrap();
    let mut repo = Repository::open(dyn_store.clone(), &key(), &dir.path().join("cache")).unwrap();
    assert!(!repo.conditional_writes().enforced());

    let src = dir.path().join("src");
    write_tree(&src, 11, 60, 200_000);
    let db = dir.path().join("chat.db");
    make_chat_db(&db, 3000, 12);
    let sources = BackupSources {
        paths: vec![src.clone()],
        databases: vec![db.clone()],
    };
    let opts = options(dir.path());
    let first = backup(&mut repo, &sources, &opts, &Progress::default()).unwrap();
    let first_files = snapshot_tree(&src);
    let first_db = db_dump(&db);

    std::fs::write(
        src.join("a/changed.bin"),
        random_bytes(&mut rng(13), 700_000),
    )
    .unwrap();
    std::fs::remove_file(src.join("file-0000.txt")).unwrap();
    make_chat_db(&db, 500, 14);
    let second = backup(&mut repo, &sources, &opts, &Progress::default()).unwrap();

    // Another device: its own cache, only the store and the key.
    let other = Repository::open(dyn_store.clone(), &key(), &dir.path().join("cache-2")).unwrap();
    let t2 = dir.path().join("restore-2");
    restore_to(&other, &second.id, &t2);
    assert_same_tree(&src, &restored(&t2, &src));
    assert_eq!(db_dump(&db), db_dump(&restored(&t2, &db)));
    let t1 = dir.path().join("restore-1");
    restore_to(&other, &first.id, &t1);
    assert_eq!(snapshot_tree(&restored(&t1, &src)), first_files);
    assert_eq!(first_db, db_dump(&restored(&t1, &db)));

    let v = verify(&other, Some(100.0), &Progress::default()).unwrap();
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert!(v.packs_read > 4, "{v:?}");

    // Forget the first snapshot and prune: the second still restores.
    forget(
        &repo,
        &KeepPolicy {
            last: 1,
            ..KeepPolicy::default()
        },
        false,
    )
    .unwrap();
    let p = prune(&mut repo, "backup-host").unwrap();
    assert!(p.packs_deleted > 0, "{p:?}");
    let other = Repository::open(dyn_store.clone(), &key(), &dir.path().join("cache-3")).unwrap();
    let t3 = dir.path().join("restore-3");
    restore_to(&other, &second.id, &t3);
    assert_same_tree(&src, &restored(&t3, &src));
    let v = verify(&other, Some(100.0), &Progress::default()).unwrap();
    assert!(v.errors.is_empty(), "{:?}", v.errors);

    let stats = store.inner().stats();
    println!("faults injected: {stats:?}");
    assert!(stats.transient > 0, "{stats:?}");
    assert!(stats.lost_responses > 0, "{stats:?}");
    assert!(stats.rate_limited > 0, "{stats:?}");
    assert!(stats.partial_writes > 0, "{stats:?}");
    assert!(stats.hidden_in_listing > 0, "{stats:?}");
    assert!(stats.duplicated_in_listing > 0, "{stats:?}");
}

/// A store over another, with a limit, a location, write refusal, or a rival
/// `init` racing ours.
struct Custom {
    inner: Arc<dyn BlobStore>,
    max: u64,
    location: Option<String>,
    read_only: bool,
    /// On the first create of `config`: our bytes land, then a rival's
    /// (which checked before ours landed), and we are told `Created`.
    rival_config: Option<Vec<u8>>,
}

impl Custom {
    fn over(inner: Arc<dyn BlobStore>) -> Self {
        Self {
            inner,
            max: u64::MAX,
            location: None,
            read_only: false,
            rival_config: None,
        }
    }

    fn refuse(&self, name: &str) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::PermissionDenied {
                name: name.into(),
                location: self.location(),
                detail: "HTTP 403: AccessDenied (a read-only key)".into(),
            });
        }
        Ok(())
    }
}

impl BlobStore for Custom {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.refuse(name)?;
        self.inner.put(name, data)
    }
    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        self.refuse(name)?;
        if let (Some(rival), "config") = (&self.rival_config, name) {
            if self.inner.put_if_absent(name, data)? == PutOutcome::AlreadyExists {
                return Ok(PutOutcome::AlreadyExists);
            }
            self.inner.put(name, rival)?;
            return Ok(PutOutcome::Created);
        }
        self.inner.put_if_absent(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.inner.get_range(name, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.refuse(name)?;
        self.inner.delete(name)
    }
    fn location(&self) -> String {
        self.location
            .clone()
            .unwrap_or_else(|| self.inner.location())
    }
    fn create_mode(&self) -> CreateMode {
        if self.rival_config.is_some() {
            CreateMode::CheckThenWrite
        } else {
            self.inner.create_mode()
        }
    }
    fn max_object_size(&self) -> u64 {
        self.max
    }
}

#[test]
fn two_concurrent_inits_on_a_check_then_write_store() {
    // Deterministic: the rival's config lands right after ours.
    let mut store = Custom::over(Arc::new(MemStore::default()));
    store.rival_config = Some(b"the rival's config".to_vec());
    match init(&store, &key(), &InitOptions::default()) {
        Err(RepoError::AlreadyExists { .. }) => {}
        other => panic!("the init whose config was overwritten must fail: {other:?}"),
    }

    // Racing for real: two threads through a check-then-write store with
    // latency, so both check before either writes. Exactly one wins, and
    // its key opens the repository.
    let shared: Arc<FaultStore<MemStore>> = Arc::new(FaultStore::new(
        MemStore::default(),
        FaultConfig {
            check_then_write: true,
            latency: (Duration::from_millis(30), Duration::from_millis(30)),
            ..FaultConfig::quiet(3)
        },
    ));
    let barrier = Barrier::new(2);
    let results: Vec<(u8, Result<[u8; 16], RepoError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|k| {
                let (shared, barrier) = (&shared, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (
                        k,
                        init(
                            shared.as_ref(),
                            &BackupKey::from_bytes([k; 32]),
                            &InitOptions::default(),
                        ),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (k, r) in &results {
        if !winners.contains(k) {
            assert!(matches!(r, Err(RepoError::AlreadyExists { .. })), "{r:?}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = shared.clone();
    Repository::open(
        store.clone(),
        &BackupKey::from_bytes([winners[0]; 32]),
        dir.path(),
    )
    .unwrap();
    let loser = if winners[0] == 1 { 2 } else { 1 };
    assert!(matches!(
        Repository::open(store, &BackupKey::from_bytes([loser; 32]), dir.path()),
        Err(RepoError::WrongKey { .. })
    ));
}

#[test]
fn a_pack_size_the_store_cannot_take_is_refused() {
    // Dropbox's single-upload limit: the default pack size is well under it.
    const DROPBOX: u64 = 150_000_000;
    let worst = max_pack_bytes(DEFAULT_PACK_SIZE);
    println!("16 MiB packs: at most {worst} bytes");
    assert!(worst < DROPBOX * 3 / 4, "{worst}");
    let mut store = Custom::over(Arc::new(MemStore::default()));
    store.max = DROPBOX;
    let big = InitOptions {
        pack_size: 128 << 20,
        ..InitOptions::default()
    };
    match init(&store, &key(), &big) {
        Err(e @ RepoError::PackSize { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("150000000"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(store.list("").unwrap().is_empty(), "nothing written");
    init(&store, &key(), &InitOptions::default()).unwrap();
}

#[test]
fn read_only_credentials_open_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mem: Arc<dyn BlobStore> = Arc::new(MemStore::default());
    init(mem.as_ref(), &key(), &InitOptions::default()).unwrap();
    let mut repo = Repository::open(mem.clone(), &key(), &dir.path().join("c1")).unwrap();
    assert!(repo.conditional_writes().enforced());
    let src = dir.path().join("src");
    write_tree(&src, 21, 10, 50_000);
    let sources = BackupSources {
        paths: vec![src.clone()],
        databases: vec![],
    };
    let out = backup(
        &mut repo,
        &sources,
        &options(dir.path()),
        &Progress::default(),
    )
    .unwrap();

    let mut ro = Custom::over(mem);
    ro.read_only = true;
    let ro: Arc<dyn BlobStore> = Arc::new(ro);
    let mut repo = Repository::open(ro, &key(), &dir.path().join("c2")).unwrap();
    let cw = repo.conditional_writes().clone();
    assert!(!cw.enforced());
    assert!(format!("{cw:?}").contains("read-only"), "{cw:?}");
    let target = dir.path().join("restore");
    restore_to(&repo, &out.id, &target);
    assert_same_tree(&src, &restored(&target, &src));
    let v = verify(&repo, Some(100.0), &Progress::default()).unwrap();
    assert!(v.errors.is_empty() && !v.conditional_writes, "{v:?}");
    assert!(v.conditional_writes_reason.is_some(), "{v:?}");
    // Writing is what fails, and says why.
    let e = backup(
        &mut repo,
        &sources,
        &options(dir.path()),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
}

#[test]
fn drives_get_a_listing_grace_and_object_stores_none() {
    let mem: Arc<dyn BlobStore> = Arc::new(MemStore::default());
    for (location, lagging) in [
        ("gdrive://Backups/phone", true),
        ("onedrive://Backups", true),
        ("dropbox://Backups", true),
        ("s3://bucket/prefix", false),
        ("webdav://host/dav", false),
        ("/var/backups/repo", false),
    ] {
        let mut s = Custom::over(mem.clone());
        s.location = Some(location.into());
        assert_eq!(!default_listing_grace(&s).is_zero(), lagging, "{location}");
    }
}

/// A repository where forgetting the first snapshot leaves one big file's
/// packs unreferenced, on a store whose listings lag by `lag` listings.
struct Lagging {
    _dir: tempfile::TempDir,
    store: Arc<FaultStore<MemStore>>,
    pruner: Repository,
    backup: Repository,
    kept: Id,
    src: PathBuf,
}

impl Lagging {
    fn new(lag: u32, grace: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultStore::new(
            MemStore::default(),
            FaultConfig {
                list_lag: lag,
                ..FaultConfig::quiet(5)
            },
        ));
        let dyn_store: Arc<dyn BlobStore> = store.clone();
        init(dyn_store.as_ref(), &key(), &InitOptions::default()).unwrap();
        let mut pruner =
            Repository::open(dyn_store.clone(), &key(), &dir.path().join("p")).unwrap();
        let src = dir.path().join("src");
        write_tree(&src, 31, 6, 20_000);
        std::fs::write(src.join("big.bin"), random_bytes(&mut rng(32), 3 << 20)).unwrap();
        let sources = BackupSources {
            paths: vec![src.clone()],
            databases: vec![],
        };
        let opts = options(dir.path());
        backup(&mut pruner, &sources, &opts, &Progress::default()).unwrap();
        std::fs::remove_file(src.join("big.bin")).unwrap();
        let kept = backup(&mut pruner, &sources, &opts, &Progress::default())
            .unwrap()
            .id;
        Self::settle(&store);
        forget(
            &pruner,
            &KeepPolicy {
                last: 1,
                ..KeepPolicy::default()
            },
            false,
        )
        .unwrap();
        Self::settle(&store);
        pruner.set_listing_grace(grace);
        let mut backup_repo =
            Repository::open(dyn_store.clone(), &key(), &dir.path().join("b")).unwrap();
        backup_repo.set_listing_grace(grace);
        Self {
            _dir: dir,
            store,
            pruner,
            backup: backup_repo,
            kept,
            src,
        }
    }

    /// Lists until everything written so far shows.
    fn settle(store: &FaultStore<MemStore>) {
        for _ in 0..64 {
            store.list("").unwrap();
        }
    }

    fn prune(&mut self) -> coffer_repo::prune::PruneSummary {
        prune(&mut self.pruner, "prune-host").unwrap()
    }

    fn check(&self) {
        Self::settle(&self.store);
        let v = verify(&self.pruner, Some(100.0), &Progress::default()).unwrap();
        assert!(v.errors.is_empty(), "{:?}", v.errors);
        let target = self._dir.path().join(format!("r-{}", rand_suffix()));
        restore_to(&self.pruner, &self.kept, &target);
        assert_same_tree(&self.src, &restored(&target, &self.src));
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn prune_under_a_lagging_listing_honours_a_session_it_could_not_see() {
    const LAG: u32 = 12; // longer than a whole condemnation pass
    let grace = Duration::from_millis(400);

    // Without a grace, the danger: a backup session registered just before
    // the prune is not listed, and the unreferenced packs go at once, while
    // that backup may have deduplicated against them.
    let mut bare = Lagging::new(LAG, Duration::ZERO);
    let _unseen = Session::start(&bare.backup, "backup-host").unwrap();
    let p = bare.prune();
    assert!(
        p.packs_deleted > 0,
        "the control scenario no longer exercises the lag: {p:?}"
    );

    // With the grace: nothing is deleted in the condemning run, nor while
    // the record is younger than the grace.
    let mut lag = Lagging::new(LAG, grace);
    let session = Session::start(&lag.backup, "backup-host").unwrap();
    let p = lag.prune();
    assert_eq!((p.packs_deleted, p.packs_waiting > 0), (0, true), "{p:?}");
    let p = lag.prune();
    assert_eq!(p.packs_deleted, 0, "{p:?}");
    lag.check();

    // Later the session shows in listings: it is not named in the record,
    // and it still holds it.
    std::thread::sleep(grace);
    Lagging::settle(&lag.store);
    let p = lag.prune();
    assert_eq!((p.packs_deleted, p.packs_waiting > 0), (0, true), "{p:?}");

    // The backup ends: its session stays, marked ended, for the grace (its
    // snapshot may not be listed yet), then the packs go.
    session.end(&lag.backup);
    Lagging::settle(&lag.store);
    assert_eq!(lag.store.list("locks/").unwrap().len(), 1);
    let p = lag.prune();
    assert_eq!(p.packs_deleted, 0, "{p:?}");
    std::thread::sleep(grace);
    Lagging::settle(&lag.store);
    let p = lag.prune();
    assert!(p.packs_deleted > 0 && p.packs_waiting == 0, "{p:?}");
    assert!(
        lag.store.list("locks/").unwrap().is_empty(),
        "ended session removed"
    );
    lag.check();
}
