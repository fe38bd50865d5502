//! Bytes per user in the record store, and the cost of a batch commit as the
//! store grows: for docs/capacity.md.
//!
//! ```sh
//! cargo run --release -p coffer-vault --example storesize -- 1000000 4000000
//! ```
//!
//! Fills a fresh redb store (in a temporary directory) through the daemon's
//! own `Store::commit`, in batches of 512 records with random 32-byte ids and
//! random sealed records of the real length, with the batch's leaf hashes as
//! the engine writes them. At each size given it prints the file size, bytes
//! per record, and the mean wall time of the last 100 batch commits (each
//! one durable redb transaction, fsync included) and of reading 100 random
//! buckets. Random bytes stand in for sealed records: sealed records are
//! indistinguishable from random to the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use coffer_vault::store::Store;
use coffer_vault_core::{StoreWrites, SEALED_RECORD_LEN};
use rand_core::{OsRng, RngCore};

const BATCH: usize = 512;

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are record counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.redb");
    let store = Store::create(&path, &[0u8; 64]).unwrap();
    let mut rng = OsRng;
    let mut n: u64 = 0;
    let mut commit_us: Vec<u128> = Vec::new();
    println!(
        "| records | file MiB | bytes/record | batch commit (512 records), ms | bucket read, µs |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for &target in &sizes {
        while n < target {
            let mut w = StoreWrites::default();
            for _ in 0..BATCH {
                let mut id = [0u8; 32];
                rng.fill_bytes(&mut id);
                let mut sealed = vec![0u8; SEALED_RECORD_LEN];
                rng.fill_bytes(&mut sealed);
                let mut leaf = [0u8; 32];
                rng.fill_bytes(&mut leaf);
                w.leaves.push((u16::from_be_bytes([id[0], id[1]]), leaf));
                w.records.push((id, sealed));
            }
            let t = Instant::now();
            store.commit(&w).unwrap();
            commit_us.push(t.elapsed().as_micros());
            n += BATCH as u64;
        }
        let last: Vec<u128> = commit_us.iter().rev().take(100).copied().collect();
        let commit_ms = last.iter().sum::<u128>() as f64 / last.len() as f64 / 1000.0;
        let t = Instant::now();
        for _ in 0..100 {
            let mut b = [0u8; 2];
            rng.fill_bytes(&mut b);
            store.buckets(&[u16::from_be_bytes(b)]).unwrap();
        }
        let read_us = t.elapsed().as_micros() as f64 / 100.0;
        let bytes = std::fs::metadata(&path).unwrap().len();
        println!(
            "| {n} | {:.1} | {:.0} | {commit_ms:.2} | {read_us:.0} |",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / n as f64
        );
    }
}
