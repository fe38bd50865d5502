//! The conformance suite every store passes, and helpers for the real servers.
#![allow(dead_code)]

use std::time::Duration;

use coffer_storage::{probe_conditional_writes, BlobStore, PutOutcome, StorageError};

/// A URL from the environment the test servers' script prints; a test that
/// needs a server fails (never skips) when it is missing.
pub fn server_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs the local S3 and WebDAV servers. Start them with \
             `eval \"$(scripts/storage-servers.sh start)\"` (or, if they already run, \
             `eval \"$(scripts/storage-servers.sh env)\"`) in the shell that runs cargo test"
        ),
    }
}

/// A fresh sub-prefix, so runs against a long-lived server do not meet.
pub fn unique(url: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!("{}/run-{}", url.trim_end_matches('/'), hex::encode(b))
}

/// What a backend is expected to do beyond the common contract.
pub struct Expect {
    /// `probe_conditional_writes` reports enforcement.
    pub conditional_writes: bool,
    /// Writes go through `.tmp/` temporaries that `remove_stale_temporaries` sweeps.
    pub temporaries: bool,
}

fn names(store: &dyn BlobStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect()
}

fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i * 131 + j * 17 + j / 509) as u8)
        .collect()
}

/// The whole contract of `BlobStore`, on an empty store.
pub fn conformance(store: &(dyn BlobStore + Sync), expect: Expect) {
    // put / get / overwrite / empty objects.
    let pack = pattern(1, 3 << 20);
    store.put("data/ab/abcd", &pack).unwrap();
    assert_eq!(store.get("data/ab/abcd").unwrap(), pack);
    store.put("index/01", b"i").unwrap();
    store.put("index/01", b"i2").unwrap();
    assert_eq!(store.get("index/01").unwrap(), b"i2");
    store.put("empty", b"").unwrap();
    assert_eq!(store.get("empty").unwrap(), b"");

    // get_range, within and past the end.
    assert_eq!(
        store.get_range("data/ab/abcd", 1000, 4096).unwrap(),
        pack[1000..5096]
    );
    let size = pack.len() as u64;
    assert_eq!(
        store.get_range("data/ab/abcd", size - 4, 4).unwrap(),
        pack[pack.len() - 4..]
    );
    assert_eq!(store.get_range("data/ab/abcd", size, 0).unwrap(), b"");
    match store.get_range("data/ab/abcd", size - 4, 8) {
        Err(StorageError::ShortRead {
            size: s,
            offset,
            end,
            ..
        }) => assert_eq!((s, offset, end), (size, size - 4, size + 4)),
        other => panic!("read past the end: {other:?}"),
    }
    match store.get_range("data/ab/abcd", size + 10, 5) {
        Err(StorageError::ShortRead { size: s, .. }) => assert_eq!(s, size),
        other => panic!("read starting past the end: {other:?}"),
    }

    // put_if_absent twice: the first creates, the second leaves it alone.
    assert_eq!(
        store.put_if_absent("config", b"v1").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put_if_absent("config", b"v2").unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get("config").unwrap(), b"v1");
    assert_eq!(
        store.put_if_absent("index/01", b"x").unwrap(),
        PutOutcome::AlreadyExists
    );

    // Not found, named.
    match store.get("snapshots/none") {
        Err(e @ StorageError::NotFound { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("snapshots/none"), "{msg}");
            assert!(msg.contains(&store.location()), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.get_range("snapshots/none", 0, 1),
        Err(StorageError::NotFound { .. })
    ));
    store.delete("snapshots/none").unwrap();

    // list by prefix: whole directories, partial names, nothing.
    assert_eq!(names(store, "data/"), ["data/ab/abcd"]);
    assert_eq!(names(store, "index/"), ["index/01"]);
    assert_eq!(names(store, "data/a"), ["data/ab/abcd"]);
    assert!(names(store, "locks/").is_empty());
    assert!(names(store, "nothing-here").is_empty());
    let all = store.list("").unwrap();
    assert_eq!(
        all.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["config", "data/ab/abcd", "empty", "index/01"]
    );
    assert_eq!(all[1].size, size);

    // More than one page of listing (S3 pages hold 1000), written by eight
    // threads at once through the same store.
    const MANY: usize = 1005;
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                for i in (t..MANY).step_by(8) {
                    store
                        .put(&format!("many/{:02}/{i:05}", i % 3), &pattern(i, i % 50))
                        .unwrap();
                }
            });
        }
    });
    let many = store.list("many/").unwrap();
    assert_eq!(many.len(), MANY);
    assert!(many.windows(2).all(|w| w[0].name < w[1].name), "sorted");
    for o in &many {
        let i: usize = o.name.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(o.size, (i % 50) as u64, "{}", o.name);
    }
    assert_eq!(store.list("many/01/").unwrap().len(), MANY / 3);
    // Reads from several threads at once.
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                for i in (t..200).step_by(8) {
                    let got = store.get(&format!("many/{:02}/{i:05}", i % 3)).unwrap();
                    assert_eq!(got, pattern(i, i % 50));
                }
            });
        }
    });

    // delete: gone from reads and listings; twice is fine.
    store.delete("index/01").unwrap();
    store.delete("index/01").unwrap();
    assert!(matches!(
        store.get("index/01"),
        Err(StorageError::NotFound { .. })
    ));
    assert!(names(store, "index/").is_empty());

    // Temporaries of a dead writer are swept; nothing else is.
    if expect.temporaries {
        let dead = format!(".tmp/x.{}-4294967295.ab", hostname_tag());
        store.put(&dead, b"left by a killed process").unwrap();
        assert!(
            !names(store, "").contains(&dead),
            "temporaries are not listed"
        );
        assert_eq!(
            store
                .remove_stale_temporaries(Duration::from_secs(3600))
                .unwrap(),
            1
        );
        assert!(matches!(
            store.get(&dead),
            Err(StorageError::NotFound { .. })
        ));
    }
    assert_eq!(
        store
            .remove_stale_temporaries(Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(store.get("config").unwrap(), b"v1");

    // Conditional writes: probed, and the probe cleans up after itself.
    let probe = probe_conditional_writes(store).unwrap();
    assert_eq!(probe.enforced(), expect.conditional_writes, "{probe:?}");
    assert!(names(store, "probe/").is_empty());
}

/// Deletes everything a conformance run wrote (keeps long-lived servers small).
pub fn clean(store: &dyn BlobStore) {
    for o in store.list("").unwrap() {
        store.delete(&o.name).unwrap();
    }
}

/// The host tag temporaries carry (see LocalStore).
fn hostname_tag() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
