//! Known-answer vectors for the format, reproduced in `docs/format.md`.
//! If one of these changes, existing repositories become unreadable: do not
//! update the expected values, find what changed.

use coffer_crypto::{BackupKey, RepoKeys};

use super::config::{encode_config, open_config, ConfigBody, KeyMode};
use super::object;
use super::pack::{open_blob, read_trailer, PackWriter};
use super::types::{encode, BlobKind, Compression, IndexFile, IndexPack};
use super::Kind;
use crate::chunker::{DB_PARAMS, FILE_PARAMS};
use crate::id::Id;

fn k() -> BackupKey {
    BackupKey::from_bytes([0x42; 32])
}

fn keys() -> RepoKeys {
    RepoKeys::derive(&k(), &[0x07; 16])
}

fn body(keys: &RepoKeys) -> ConfigBody {
    ConfigBody {
        repo_id: [0x07; 16],
        created_ns: 1_700_000_000_000_000_000,
        key_mode: KeyMode::RecoveryKey,
        file_chunker: FILE_PARAMS,
        db_chunker: DB_PARAMS,
        pack_size: 16 << 20,
        zstd_level: 3,
        key_check: keys.key_check(),
    }
}

pub(crate) fn vector_pack() -> (Id, Vec<u8>) {
    let keys = keys();
    let blob = b"hello, coffer".to_vec();
    let id = Id(keys.chunk_id_key().id(&blob));
    let mut w = PackWriter::with_id(&keys, Id([0x11; 32]), 0);
    w.add(
        id,
        BlobKind::Data,
        Compression::None,
        blob.len() as u32,
        blob,
    );
    let (pid, bytes, _) = w.finish();
    (pid, bytes.into_vec())
}

#[test]
fn config_vector() {
    let keys = keys();
    let bytes = encode_config(&keys, &body(&keys));
    assert_eq!(hex::encode(&bytes), CONFIG_HEX);
    let (b, _) = open_config(&bytes, &k(), "test").unwrap();
    assert_eq!(b, body(&keys));
}

#[test]
fn pack_vector() {
    let (pid, bytes) = vector_pack();
    assert_eq!(hex::encode(&bytes), PACK_HEX);
    let keys = keys();
    let blobs = read_trailer(&keys, &pid, &bytes).unwrap();
    assert_eq!(blobs.len(), 1);
    let b = &blobs[0];
    let data = bytes[b.offset as usize..(b.offset + b.length) as usize].to_vec();
    assert_eq!(open_blob(&keys, &pid, b, data).unwrap(), b"hello, coffer");
}

#[test]
fn index_object_vector() {
    let keys = keys();
    let index = IndexFile {
        supersedes: vec![],
        packs: vec![IndexPack {
            id: Id([0x11; 32]),
            size: 123,
            blobs: vec![],
        }],
    };
    let bytes = object::seal(&keys, Kind::Index, &Id([0x22; 32]), encode(&index));
    assert_eq!(hex::encode(&bytes), INDEX_HEX);
}

const CONFIG_HEX: &str = "434f46520101070707070707070707070707070707078080d0e2c6bfce972f008080208080408080800480800180800480801080808008062d191747e61b1d721e9f47ff6dfe909875d24e626e0167593786fd051bfcb35ec8558044abb6e192cfd1b5998a583e05f7ca291b5ed941d1b743a8eef3dfc51473bbe77b77a1b4fdfcc9796a20e474e51e4ada2fc6e541a4d6b5da21e35da119";
const PACK_HEX: &str = "434f4652011040a27778abddb96043ba4172e409101c3758fdb9aa3394a53ad63f9c50b772301bd32173fff1c44991d38c7ca847c512085475454b88366c2b46fbd1bdc77259c3076f3b90c83549783c40e38f1df61f633b353e637633e373b8caabfb4c41000000";
const INDEX_HEX: &str = "434f4652012054955160fb7bbae142b978b555ff84ce2743e566217ab206552eb1135bfdcaa58263eb6dd52d844ae876f2384af83070bc2342ea";
