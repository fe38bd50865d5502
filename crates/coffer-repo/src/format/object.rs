//! Sealed metadata objects: index files, snapshots, condemnation records.
//!
//! `bytes = header(kind) || AES-256-GCM(object_key(kind, id), nonce = 0,
//! aad = header || id, plaintext)`. Each object has its own key derived from
//! its random id, so the fixed nonce is never reused under one key.

use coffer_crypto::RepoKeys;

use super::{check_header, header, Kind};
use crate::id::Id;
use crate::{RepoError, Result};

fn aad(kind: Kind, id: &Id) -> Vec<u8> {
    [&header(kind)[..], &id.0[..]].concat()
}

/// Seals `plaintext` as object `id` of `kind`.
pub fn seal(keys: &RepoKeys, kind: Kind, id: &Id, plaintext: Vec<u8>) -> Vec<u8> {
    let mut buf = plaintext;
    keys.object_key(kind as u8, &id.0)
        .seal([0; 12], &aad(kind, id), &mut buf);
    let mut out = Vec::with_capacity(6 + buf.len());
    out.extend_from_slice(&header(kind));
    out.extend_from_slice(&buf);
    out
}

/// Opens object `id` of `kind`; `name` is used in errors.
pub fn open(keys: &RepoKeys, kind: Kind, id: &Id, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    check_header(bytes, kind, name)?;
    let mut buf = bytes[6..].to_vec();
    let n = keys
        .object_key(kind as u8, &id.0)
        .open([0; 12], &aad(kind, id), &mut buf)
        .map_err(|_| {
            RepoError::integrity(name, "authentication failed: the object was altered, truncated, renamed or comes from another repository")
        })?
        .len();
    buf.truncate(n);
    Ok(buf)
}
