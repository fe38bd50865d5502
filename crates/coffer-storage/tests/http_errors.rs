//! How real HTTP error responses are classified and retried: a minimal
//! HTTP server on loopback plays an S3 endpoint answering 503 / 429 with
//! `Retry-After`, or 403, before (or instead of) succeeding. (moto cannot be
//! made to rate-limit; consumer drives cannot run here.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_storage::{
    BlobStore, CloudOptions, CloudStore, Location, RetryPolicy, RetryStore, StorageError,
};

/// Serves `responses[i]` to the i-th request (the last one from then on);
/// returns the endpoint and the request counter.
fn serve(responses: Vec<&'static str>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let i = c.fetch_add(1, Ordering::SeqCst);
            let r = responses[i.min(responses.len() - 1)];
            let _ = stream.write_all(r.as_bytes());
        }
    });
    (endpoint, count)
}

const OK: &str = "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const SLOW_DOWN: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Type: application/xml\r\nContent-Length: 87\r\nConnection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
const TOO_MANY: &str = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const DENIED: &str = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: 65\r\nConnection: close\r\n\r\n<Error><Code>AccessDenied</Code><Message>Denied</Message></Error>";

type Delays = Arc<Mutex<Vec<Duration>>>;

fn s3_store(endpoint: &str) -> (RetryStore<CloudStore>, Delays) {
    let endpoint = endpoint.to_string();
    let env = move |k: &str| match k {
        "AWS_ENDPOINT_URL" => Some(endpoint.clone()),
        "AWS_ACCESS_KEY_ID" => Some("test".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("test-secret-key".into()),
        "AWS_REGION" => Some("us-east-1".into()),
        _ => None,
    };
    let cloud = CloudStore::open_with_env(
        &Location::parse("s3://bkt/repo").unwrap(),
        &env,
        CloudOptions {
            request_timeout: Duration::from_secs(10),
            ..CloudOptions::default()
        },
    )
    .unwrap();
    let delays: Delays = Arc::default();
    let d = delays.clone();
    let store = RetryStore::new(cloud, RetryPolicy::default())
        .with_clock(1, move |t| d.lock().unwrap().push(t));
    (store, delays)
}

#[test]
fn retry_after_of_a_503_is_honoured() {
    let (endpoint, count) = serve(vec![SLOW_DOWN, SLOW_DOWN, OK]);
    let (store, delays) = s3_store(&endpoint);
    store.put("data/00/x", b"pack").unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let delays = delays.lock().unwrap();
    assert_eq!(delays.len(), 2);
    assert!(
        delays.iter().all(|d| *d >= Duration::from_secs(3)),
        "{delays:?}"
    );
}

#[test]
fn retry_after_of_a_429_is_honoured() {
    let (endpoint, count) = serve(vec![TOO_MANY, OK]);
    let (store, delays) = s3_store(&endpoint);
    store.put("index/01", b"index").unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(delays.lock().unwrap()[0] >= Duration::from_secs(2));
}

#[test]
fn permission_denied_is_not_retried_and_says_what_to_check() {
    let (endpoint, count) = serve(vec![DENIED]);
    let (store, delays) = s3_store(&endpoint);
    let e = store.put("config", b"c").unwrap_err();
    assert!(matches!(e, StorageError::PermissionDenied { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("config") && msg.contains("s3://bkt/repo"),
        "{msg}"
    );
    assert!(msg.contains("check the credentials"), "{msg}");
    assert!(!msg.contains("test-secret-key"), "{msg}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(delays.lock().unwrap().is_empty());
}

#[test]
fn a_server_that_keeps_failing_is_given_up_on() {
    let (endpoint, count) = serve(vec![SLOW_DOWN]);
    let (store, delays) = s3_store(&endpoint);
    let e = store.get("snapshots/01").unwrap_err();
    assert!(
        matches!(e, StorageError::Transient { attempts: 8, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 8);
    assert_eq!(delays.lock().unwrap().len(), 7);
}
