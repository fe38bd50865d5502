//! The wire protocol between a Coffer client and the vault's trusted core.
//!
//! Three layers, each specified byte by byte in `docs/protocol.md`:
//!
//! - [`realm`]: the realm descriptor a client pins (realm id, channel public
//!   key, the Argon2id parameters of the OPAQUE key-stretching function).
//! - [`channel`]: frames the untrusted host relays. The first frame of a
//!   session is HPKE (RFC 9180, base mode) to the realm's pinned key; replies
//!   use a key exported from that context (RFC 9180 §9.8). The host sees
//!   session ids and sizes, nothing else.
//! - [`messages`]: the requests and responses inside the channel: OPAQUE
//!   (RFC 9807) registration and login through `opaque-ke`, key release,
//!   delete. Every plaintext is padded to one fixed size.
//!
//! This crate does no I/O and never depends on an async runtime.

pub mod channel;
pub mod client;
mod kem;
pub mod messages;
pub mod realm;
pub mod suite;
mod wire;

pub use channel::{ChannelError, ClientChannel, FrameKind, ServerChannel, SessionId};
pub use messages::{ErrorCode, Request, Response};
pub use realm::{KsfParams, RealmDescriptor, RealmError};
pub use suite::CofferSuite;

/// The protocol version carried in every frame and every message.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default guess limit of a registration (DESIGN.md §6).
pub const DEFAULT_MAX_ATTEMPTS: u8 = 10;

/// Why bytes could not be decoded. Never carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its fixed layout.
    #[error("message truncated: {0}")]
    Truncated(&'static str),
    /// A version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks version 1)")]
    Version(u8),
    /// An unknown message or frame kind.
    #[error("unknown {what} kind 0x{kind:02x}")]
    Kind {
        /// Frame or message.
        what: &'static str,
        /// The byte seen.
        kind: u8,
    },
    /// A field outside its allowed range, or bytes where there must be none.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// Larger than any valid message.
    #[error("message too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        limit: usize,
    },
}
