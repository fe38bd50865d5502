//! What the core keeps in NVRAM (the trusted anchor) and the roll-forward
//! marker it hands the store with every state change.
//!
//! ```text
//! nvram  = "CVNV" | version u8 = 1 | generation u64 | root[32]                  (45 bytes)
//! marker = old_generation u64 | old_root[32] | new_generation u64 | new_root[32]
//!          | HMAC-SHA256(marker_key, "coffer/v1/marker" || the above)          (112 bytes)
//! ```
//!
//! The host commits the store (records, leaf hashes, marker) first, then the
//! core writes NVRAM, then replies leave. A crash between the two leaves the
//! store one generation ahead with a marker only the core could have made:
//! at start the core rolls NVRAM forward. That spends attempts whose replies
//! never left (never refunds one). A store behind NVRAM, or ahead without a
//! valid marker from the current generation, is refused.

use crate::secrets::RealmSecrets;
use crate::CoreError;

/// NVRAM length.
pub const NVRAM_LEN: usize = 45;
/// Marker length.
pub const MARKER_LEN: usize = 112;

/// The anchor: generation and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Increments with every committed state change.
    pub generation: u64,
    /// Root of the record tree.
    pub root: [u8; 32],
}

impl Anchor {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = b"CVNV".to_vec();
        out.push(1);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.root);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        if bytes.len() != NVRAM_LEN || &bytes[..4] != b"CVNV" || bytes[4] != 1 {
            return Err(CoreError::Nvram(
                "NVRAM contents are not a Coffer anchor (wrong --nvram file?)".into(),
            ));
        }
        let mut g = [0u8; 8];
        g.copy_from_slice(&bytes[5..13]);
        let mut root = [0u8; 32];
        root.copy_from_slice(&bytes[13..45]);
        Ok(Self {
            generation: u64::from_be_bytes(g),
            root,
        })
    }
}

fn marker_body(old: &Anchor, new: &Anchor) -> Vec<u8> {
    let mut out = Vec::with_capacity(MARKER_LEN - 32);
    out.extend_from_slice(&old.generation.to_be_bytes());
    out.extend_from_slice(&old.root);
    out.extend_from_slice(&new.generation.to_be_bytes());
    out.extend_from_slice(&new.root);
    out
}

pub(crate) fn make_marker(secrets: &RealmSecrets, old: &Anchor, new: &Anchor) -> Vec<u8> {
    let mut body = marker_body(old, new);
    let mut mac_input = b"coffer/v1/marker".to_vec();
    mac_input.extend_from_slice(&body);
    body.extend_from_slice(&secrets.marker_mac(&mac_input));
    body
}

/// A marker's transition, if it is well-formed and authentic.
pub(crate) fn check_marker(secrets: &RealmSecrets, marker: &[u8]) -> Option<(Anchor, Anchor)> {
    if marker.len() != MARKER_LEN {
        return None;
    }
    let mut mac_input = b"coffer/v1/marker".to_vec();
    mac_input.extend_from_slice(&marker[..80]);
    if !secrets.marker_mac_ok(&mac_input, &marker[80..]) {
        return None;
    }
    let anchor = |b: &[u8]| {
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[..8]);
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[8..40]);
        Anchor {
            generation: u64::from_be_bytes(g),
            root,
        }
    };
    Some((anchor(&marker[..40]), anchor(&marker[40..80])))
}

/// Fuzzing hooks (feature `testing`): the NVRAM, marker and record parsers,
/// which are crate-internal, for the cargo-fuzz targets in `fuzz/`.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::Anchor;
    use crate::secrets::RealmSecrets;
    use crate::CoreError;

    pub use crate::record::{fuzz_reencode_record, RECORD_LEN};

    /// [`Anchor::decode`] of NVRAM contents.
    pub fn decode_anchor(bytes: &[u8]) -> Result<Anchor, CoreError> {
        Anchor::decode(bytes)
    }

    /// The NVRAM encoding of an anchor.
    pub fn encode_anchor(anchor: &Anchor) -> Vec<u8> {
        anchor.encode()
    }

    /// A marker's transition, if it is well-formed and authentic.
    pub fn check_marker(secrets: &RealmSecrets, marker: &[u8]) -> Option<(Anchor, Anchor)> {
        super::check_marker(secrets, marker)
    }

    /// The marker the core would write for `old` → `new`.
    pub fn make_marker(secrets: &RealmSecrets, old: &Anchor, new: &Anchor) -> Vec<u8> {
        super::make_marker(secrets, old, new)
    }
}
