//! The same contract on every backend: a local directory, memory, a real S3
//! server (moto) and a real WebDAV server (WsgiDAV) — the last two started by
//! `eval "$(scripts/storage-servers.sh start)"`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_storage::{LocalStore, MemStore};
use common::{clean, conformance, server_env, unique, Expect};

#[test]
fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("repo"));
    conformance(
        &store,
        Expect {
            conditional_writes: true,
            temporaries: true,
        },
    );
}

#[test]
fn memory() {
    conformance(
        &MemStore::default(),
        Expect {
            conditional_writes: true,
            temporaries: false,
        },
    );
}

#[test]
fn s3_moto() {
    let url = unique(&server_env("COFFER_TEST_S3_URL"));
    let store = coffer_storage::open(&url).unwrap();
    assert_eq!(store.location(), url);
    conformance(
        &*store,
        Expect {
            // moto enforces If-None-Match: * (research notes §6.1).
            conditional_writes: true,
            temporaries: false,
        },
    );
    clean(&*store);
}

#[test]
fn webdav_wsgidav() {
    let url = unique(&server_env("COFFER_TEST_WEBDAV_URL"));
    let store = coffer_storage::open(&url).unwrap();
    conformance(
        &*store,
        Expect {
            // No conditional create in OpenDAL's WebDAV: emulated, not enforced.
            conditional_writes: false,
            temporaries: true,
        },
    );
    clean(&*store);
}
