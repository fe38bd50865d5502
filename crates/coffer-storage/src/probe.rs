//! Does the backend really enforce conditional creates? Probed, not assumed.
//!
//! OpenDAL derives its capability flags from the service type, not from the
//! server behind the endpoint: Garage 2.5.0 speaks S3, accepts
//! `If-None-Match: *` and silently overwrites (research notes §6.1). So a
//! repository asks the server itself, once, when it needs to know.

use crate::{random_suffix, BlobStore, CreateMode, PutOutcome, StorageError};

/// Where probe objects are written (`probe/<random>`), and deleted at once.
/// A process killed mid-probe leaves one small object there, harmless.
pub const PROBE_PREFIX: &str = "probe/";

/// The outcome of [`probe_conditional_writes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionalWrites {
    /// Of two writers creating the same name, exactly one gets `Created`.
    Enforced,
    /// `put_if_absent` cannot be relied on to exclude a concurrent writer.
    NotEnforced {
        /// Why, for a log line.
        reason: String,
    },
}

impl ConditionalWrites {
    /// Whether conditional creates are enforced.
    pub fn enforced(&self) -> bool {
        matches!(self, Self::Enforced)
    }
}

/// Writes a random probe object twice with `put_if_absent` (the second must
/// report `AlreadyExists` and leave the first bytes in place), then deletes it.
///
/// A store whose `put_if_absent` is a check-then-write passes that sequential
/// test but not a race, so it is reported as not enforced without probing.
/// Costs four requests (two writes, a read, a delete); needs write access.
pub fn probe_conditional_writes(store: &dyn BlobStore) -> Result<ConditionalWrites, StorageError> {
    if store.create_mode() == CreateMode::CheckThenWrite {
        return Ok(ConditionalWrites::NotEnforced {
            reason: format!(
                "{} has no conditional create (check-then-write emulation)",
                store.location()
            ),
        });
    }
    let name = format!("{PROBE_PREFIX}{}", random_suffix());
    let first = format!("coffer conditional-write probe 1 {name}");
    let second = format!("coffer conditional-write probe 2 {name}");
    let result = (|| {
        if store.put_if_absent(&name, first.as_bytes())? != PutOutcome::Created {
            return Ok(ConditionalWrites::NotEnforced {
                reason: format!("a fresh probe object {name} was reported as existing"),
            });
        }
        let outcome = store.put_if_absent(&name, second.as_bytes())?;
        let kept = store.get(&name)?;
        Ok(if outcome != PutOutcome::AlreadyExists {
            ConditionalWrites::NotEnforced {
                reason: format!(
                    "{} accepted a second create of {name} (the server ignores If-None-Match)",
                    store.location()
                ),
            }
        } else if kept != first.as_bytes() {
            ConditionalWrites::NotEnforced {
                reason: format!(
                    "{} reported {name} as existing but replaced its content",
                    store.location()
                ),
            }
        } else {
            ConditionalWrites::Enforced
        })
    })();
    // Best effort: the probe's answer matters more than its cleanup.
    let _ = store.delete(&name);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultConfig, FaultStore, LocalStore, MemStore};

    #[test]
    fn atomic_stores_pass_and_leave_nothing_behind() {
        let mem = MemStore::default();
        assert!(probe_conditional_writes(&mem).unwrap().enforced());
        assert!(mem.list("").unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::new(dir.path().to_path_buf());
        assert!(probe_conditional_writes(&local).unwrap().enforced());
        assert!(local.list("").unwrap().is_empty());
    }

    #[test]
    fn a_server_that_ignores_the_condition_is_caught() {
        // Like Garage: claims conditional creates, overwrites.
        let store = FaultStore::new(
            MemStore::default(),
            FaultConfig {
                ignore_create_condition: true,
                ..FaultConfig::quiet(1)
            },
        );
        assert_eq!(store.create_mode(), CreateMode::Atomic);
        let r = probe_conditional_writes(&store).unwrap();
        assert!(!r.enforced(), "{r:?}");
        assert!(store.inner().list("").unwrap().is_empty());
    }

    #[test]
    fn check_then_write_stores_are_not_enforced() {
        let store = FaultStore::new(
            MemStore::default(),
            FaultConfig {
                check_then_write: true,
                ..FaultConfig::quiet(1)
            },
        );
        let r = probe_conditional_writes(&store).unwrap();
        assert!(matches!(r, ConditionalWrites::NotEnforced { .. }), "{r:?}");
    }
}
