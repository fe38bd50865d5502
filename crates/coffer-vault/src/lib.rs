//! The `coffer-vault` daemon: the untrusted host around the trusted core.
//!
//! It verifies tenants' user tokens, applies rate limits, relays channel
//! frames to the core (which it cannot read), keeps the record store (redb)
//! and the NVRAM file, and serves metrics. It never sees a password, `K` or
//! an OPAQUE export key.

pub mod custody;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod member;
pub mod metrics;
pub mod net;
pub use coffer_vault_core::peer;
pub mod platform;
pub mod ratelimit;
pub mod realm;
pub mod replication;
pub mod store;
pub mod tenants;
