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
mod prefetch;
pub mod progress;
pub mod repo;
pub mod session;
pub mod sqlite;

pub use repo::{init, set_key_mode, InitOptions, Repository};
pub mod prune;
pub mod restore;
pub mod verify;

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
