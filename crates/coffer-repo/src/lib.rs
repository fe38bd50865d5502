//! Coffer's repository format and backup engine.
#![deny(missing_docs)]

pub mod chunker;
pub mod error;
pub mod format;
pub mod id;

pub use error::{RepoError, Result};
pub use id::Id;
pub mod backup;
pub mod cache;
pub mod progress;
pub mod repo;
pub mod session;
pub mod sqlite;

pub use repo::{init, InitOptions, Repository};
pub mod prune;
pub mod restore;
pub mod verify;
