use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::{FaultConfig, FaultStore, MemStore};

type Delays = Arc<Mutex<Vec<Duration>>>;

/// A RetryStore that records its delays instead of sleeping.
fn retrying<S: BlobStore>(inner: S, max_attempts: u32) -> (RetryStore<S>, Delays) {
    let delays: Delays = Arc::default();
    let d = delays.clone();
    let policy = RetryPolicy {
        max_attempts,
        ..RetryPolicy::default()
    };
    let store = RetryStore::new(inner, policy).with_clock(7, move |t| d.lock().unwrap().push(t));
    (store, delays)
}

/// Deterministic object contents: a name-dependent pattern of `len` bytes.
fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7 + j / 251) as u8).collect()
}

/// Objects written, read back whole and in pieces, listed, deleted — from
/// four threads at once, through a store that fails on its own.
fn workload(store: &(dyn BlobStore + Sync)) -> Vec<(String, Vec<u8>)> {
    let objects: Vec<(String, Vec<u8>)> = (0..240)
        .map(|i| {
            let name = format!("data/{:02x}/{i:04}", i % 7);
            (name, content(i, (i * 397) % 9000 + 1))
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let objects = &objects;
            s.spawn(move || {
                for (i, (name, data)) in objects.iter().enumerate().filter(|(i, _)| i % 4 == t) {
                    if i % 2 == 0 {
                        store.put(name, data).unwrap();
                    } else {
                        assert_eq!(
                            store.put_if_absent(name, data).unwrap(),
                            PutOutcome::Created,
                            "{name}: a fresh name must be reported Created, even after a lost response"
                        );
                    }
                }
            });
        }
    });
    for (name, data) in &objects {
        assert_eq!(&store.get(name).unwrap(), data, "{name}");
        let (off, len) = (data.len() as u64 / 3, data.len() as u64 / 2);
        assert_eq!(
            store.get_range(name, off, len).unwrap(),
            data[off as usize..(off + len) as usize],
            "{name}"
        );
        assert!(matches!(
            store.get_range(name, off, data.len() as u64 - off + 1),
            Err(StorageError::ShortRead { .. })
        ));
        assert_eq!(
            store.put_if_absent(name, b"another writer").unwrap(),
            PutOutcome::AlreadyExists,
            "{name}"
        );
    }
    // Listings are eventually complete, sorted, each name once.
    let mut listed = Vec::new();
    for _ in 0..10 {
        listed = store.list("data/").unwrap();
        if listed.len() == objects.len() {
            break;
        }
    }
    let mut want: Vec<(String, u64)> = objects
        .iter()
        .map(|(n, d)| (n.clone(), d.len() as u64))
        .collect();
    want.sort();
    let got: Vec<(String, u64)> = listed.into_iter().map(|o| (o.name, o.size)).collect();
    assert_eq!(got, want);
    for (name, _) in objects.iter().step_by(2) {
        store.delete(name).unwrap();
    }
    objects.into_iter().skip(1).step_by(2).collect()
}

#[test]
fn a_workload_through_faults_ends_byte_identical() {
    let faulty = FaultStore::new(MemStore::default(), FaultConfig::drive_like(0x5eed));
    let (store, delays) = retrying(faulty, 12);
    let kept = workload(&store);
    // What is really stored is exactly what was written, nothing else.
    let mem = store.inner().inner();
    let stored: Vec<String> = mem.list("").unwrap().into_iter().map(|o| o.name).collect();
    let mut expected: Vec<String> = kept.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(stored, expected);
    for (name, data) in &kept {
        assert_eq!(&mem.get(name).unwrap(), data);
    }
    // Every kind of fault happened, so the test tested something.
    let s = store.inner().stats();
    assert!(s.transient > 0, "{s:?}");
    assert!(s.lost_responses > 0, "{s:?}");
    assert!(s.rate_limited > 0, "{s:?}");
    assert!(s.partial_writes > 0, "{s:?}");
    assert!(s.hidden_in_listing > 0, "{s:?}");
    assert!(s.duplicated_in_listing > 0, "{s:?}");
    // Rate limits were waited out for at least the Retry-After asked.
    let waited_7s = delays
        .lock()
        .unwrap()
        .iter()
        .filter(|d| **d >= Duration::from_secs(7))
        .count();
    assert!(waited_7s as u64 >= s.rate_limited.min(1), "{s:?}");
}

#[test]
fn lost_responses_to_put_if_absent_still_report_created() {
    // Every first attempt lands and loses its answer.
    let faulty = FaultStore::new(
        MemStore::default(),
        FaultConfig {
            lost_response: 0.5,
            ..FaultConfig::quiet(3)
        },
    );
    let (store, _) = retrying(faulty, 30);
    for i in 0..100 {
        let name = format!("snapshots/{i:03}");
        let data = content(i, 100 + i);
        assert_eq!(
            store.put_if_absent(&name, &data).unwrap(),
            PutOutcome::Created,
            "{name}"
        );
        assert_eq!(
            store.put_if_absent(&name, b"other").unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(store.inner().inner().get(&name).unwrap(), data);
    }
    assert!(store.inner().stats().lost_responses > 20);
}

#[test]
fn a_cut_short_put_if_absent_is_completed() {
    let faulty = FaultStore::new(
        MemStore::default(),
        FaultConfig {
            partial_write: 0.5,
            ..FaultConfig::quiet(4)
        },
    );
    let (store, _) = retrying(faulty, 30);
    for i in 0..50 {
        let name = format!("index/{i:03}");
        let data = content(i, 500);
        assert_eq!(
            store.put_if_absent(&name, &data).unwrap(),
            PutOutcome::Created
        );
        assert_eq!(store.inner().inner().get(&name).unwrap(), data);
    }
    assert!(store.inner().stats().partial_writes > 10);
}

#[test]
fn another_writers_object_is_already_exists_even_after_a_fault() {
    let mem = MemStore::default();
    mem.put("config", b"theirs").unwrap();
    let faulty = FaultStore::new(
        mem,
        FaultConfig {
            transient: 0.5,
            ..FaultConfig::quiet(5)
        },
    );
    let (store, _) = retrying(faulty, 30);
    for _ in 0..20 {
        assert_eq!(
            store.put_if_absent("config", b"mine").unwrap(),
            PutOutcome::AlreadyExists
        );
    }
    assert_eq!(store.inner().inner().get("config").unwrap(), b"theirs");
}

#[test]
fn retries_are_bounded_and_the_error_says_so() {
    let faulty = FaultStore::new(
        MemStore::default(),
        FaultConfig {
            transient: 1.0,
            ..FaultConfig::quiet(6)
        },
    );
    let (store, delays) = retrying(faulty, 5);
    let e = store.get("config").unwrap_err();
    assert!(
        matches!(e, StorageError::Transient { attempts: 5, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("gave up after 5 attempts"), "{e}");
    let delays = delays.lock().unwrap();
    assert_eq!(delays.len(), 4);
    // Full jitter under a doubling ceiling: 0.5 s, 1 s, 2 s, 4 s.
    for (i, d) in delays.iter().enumerate() {
        assert!(*d <= Duration::from_millis(500 << i), "{i}: {d:?}");
    }
}

#[test]
fn permanent_errors_are_not_retried() {
    let (store, delays) = retrying(MemStore::default(), 5);
    assert!(matches!(
        store.get("nope"),
        Err(StorageError::NotFound { .. })
    ));
    assert!(delays.lock().unwrap().is_empty());
}

#[test]
fn a_retry_after_beyond_the_limit_ends_the_retries_at_once() {
    let faulty = FaultStore::new(
        MemStore::default(),
        FaultConfig {
            rate_limit: 1.0,
            retry_after: Duration::from_secs(3600),
            ..FaultConfig::quiet(8)
        },
    );
    let (store, delays) = retrying(faulty, 5);
    let e = store.put("data/x", b"x").unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
    assert!(e.to_string().contains("asked to wait 3600 s"), "{e}");
    assert!(delays.lock().unwrap().is_empty());
}

#[test]
fn the_delay_honours_retry_after_and_its_ceiling() {
    let (store, _) = retrying(MemStore::default(), 5);
    for failures in 1..30 {
        let d = store.delay(failures, None);
        assert!(d <= Duration::from_secs(30), "{failures}: {d:?}");
        assert!(store.delay(failures, Some(Duration::from_secs(40))) >= Duration::from_secs(40));
    }
}
