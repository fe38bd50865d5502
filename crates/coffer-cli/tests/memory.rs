//! Memory stays bounded as the repository grows (ADR 0003): a backup into a
//! repository whose index holds a million chunks peaks at about the same RSS
//! as one into an empty repository.
//!
//! One test in this file on purpose: peak RSS is read with
//! getrusage(RUSAGE_CHILDREN), which is per test process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use coffer_repo::format::types::{BlobKind, BlobLocation, Compression, IndexFile, IndexPack};
use coffer_repo::{Id, Repository};
use coffer_testkit::{write_tree, Cli};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");
const CHUNKS: usize = 1_000_000;
const PER_INDEX: usize = 50_000;

fn children_peak_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss()
}

/// Adds `CHUNKS` synthetic index entries (fake packs that are never read).
fn grow_index(cli: &Cli) {
    let k = coffer_client::RecoveryKey::parse(&cli.key).unwrap();
    let store = coffer_storage::open(&cli.repo).unwrap();
    let repo = Repository::open(store, &k, &cli.path("writer-cache")).unwrap();
    let mut n = 0u64;
    for _ in 0..CHUNKS / PER_INDEX {
        let mut packs = Vec::new();
        for _ in 0..PER_INDEX / 100 {
            let mut blobs = Vec::new();
            for i in 0..100u32 {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&n.to_le_bytes());
                id[8] = 0xAB;
                n += 1;
                blobs.push(BlobLocation {
                    id: Id(id),
                    kind: BlobKind::Data,
                    index: i,
                    offset: 6 + i * 1000,
                    length: 1000,
                    raw_length: 984,
                    compression: Compression::None,
                });
            }
            packs.push(IndexPack {
                id: Id::random().unwrap(),
                size: 100_100,
                blobs,
            });
        }
        repo.write_index(
            &Id::random().unwrap(),
            &IndexFile {
                supersedes: vec![],
                packs,
            },
        )
        .unwrap();
    }
}

#[test]
fn backup_memory_does_not_grow_with_the_repository() {
    // Baseline: an empty repository.
    let small = Cli::init(Path::new(BIN));
    let src = small.path("media");
    write_tree(&src, 11, 40, 2_000_000);
    small.json(&["backup", src.to_str().unwrap()]);
    let baseline = children_peak_rss_kib();

    // The same backup into a repository that already indexes a million chunks.
    let big = Cli::init(Path::new(BIN));
    grow_index(&big);
    let src2 = big.path("media");
    write_tree(&src2, 11, 40, 2_000_000);
    let out = big.json(&["backup", src2.to_str().unwrap()]);
    assert!(out["files"].as_u64().unwrap() > 40);
    let snaps = big.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let with_big_index = children_peak_rss_kib();

    eprintln!(
        "peak RSS: empty repository {} MiB; repository with {CHUNKS} chunks {} MiB",
        baseline / 1024,
        with_big_index / 1024
    );
    // An in-memory index (restic-style, ~100 B/chunk) would add ~100 MiB here.
    assert!(
        with_big_index <= baseline + 24 * 1024,
        "peak RSS grew from {baseline} KiB to {with_big_index} KiB with the index size"
    );
}
