//! What went wrong talking to storage.

use std::time::Duration;

/// What went wrong talking to storage, grouped by what the caller should do.
///
/// Every message names the object and the store's location (a path, or a URL
/// without credentials). Credentials never appear in a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {name} not found in {location}")]
    NotFound {
        /// The object's name.
        name: String,
        /// The store's location.
        location: String,
    },
    /// A ranged read asked for bytes past the object's end (a truncated object).
    #[error(
        "object {name} in {location} is shorter than expected: asked for bytes {offset}..{end}, it has {size}"
    )]
    ShortRead {
        /// The object's name.
        name: String,
        /// The store's location.
        location: String,
        /// First byte asked for.
        offset: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The object's size.
        size: u64,
    },
    /// The disk or the quota is full; nothing half-written is visible.
    #[error("no space left in {location} while writing {name}: free some space (or raise the quota) and run the command again (nothing was lost)")]
    NoSpace {
        /// The object being written.
        name: String,
        /// The store's location.
        location: String,
    },
    /// The credentials do not allow this operation. Not retried: retrying
    /// cannot help, the configuration must change.
    #[error("permission denied on {name} in {location}: check the credentials and their rights on this bucket or folder ({detail})")]
    PermissionDenied {
        /// The object concerned.
        name: String,
        /// The store's location.
        location: String,
        /// What the service said.
        detail: String,
    },
    /// A failure that may go away: a timeout, a dropped connection, a 5xx, a
    /// rate limit. [`crate::RetryStore`] retries these.
    #[error("temporary storage failure on {name} in {location}{}: {detail}; run the command again later (nothing acknowledged was lost)", gave_up(*attempts, *retry_after))]
    Transient {
        /// The object concerned.
        name: String,
        /// The store's location.
        location: String,
        /// What happened.
        detail: String,
        /// How long the service asked to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
        /// How many attempts were made (1 without a retry wrapper).
        attempts: u32,
    },
    /// An object larger than the backend accepts in one upload.
    #[error("object {name} ({size} bytes) is larger than {location} accepts in one upload ({max} bytes): use a smaller pack size")]
    TooLarge {
        /// The object.
        name: String,
        /// The store's location.
        location: String,
        /// Its size.
        size: u64,
        /// The backend's limit.
        max: u64,
    },
    /// A local I/O failure, with the object concerned.
    #[error("storage I/O error on {name} in {location}: {error}")]
    Io {
        /// The object's name.
        name: String,
        /// The store's location.
        location: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Any other failure a remote service reported; retrying will not help.
    #[error("storage error on {name} in {location}: {detail}")]
    Backend {
        /// The object concerned.
        name: String,
        /// The store's location.
        location: String,
        /// What the service said.
        detail: String,
    },
    /// The location cannot be used as a store.
    #[error("cannot use {location} as a repository: {reason}")]
    Unsupported {
        /// The URL or path given (credentials removed).
        location: String,
        /// Why not, and what to do.
        reason: String,
    },
}

fn gave_up(attempts: u32, retry_after: Option<Duration>) -> String {
    let mut s = String::new();
    if attempts > 1 {
        s.push_str(&format!(" (gave up after {attempts} attempts)"));
    }
    if let Some(d) = retry_after {
        s.push_str(&format!(
            " (the service asked to wait {} s)",
            d.as_secs_f64().ceil()
        ));
    }
    s
}

impl StorageError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// How long the service asked to wait before a retry, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A failed local read: a missing file is [`StorageError::NotFound`].
    pub(crate) fn io(name: &str, location: &str, error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::NotFound {
            return Self::NotFound {
                name: name.to_string(),
                location: location.to_string(),
            };
        }
        Self::write_io(name, location, error)
    }

    /// A failed local write: "not found" here means a missing directory, not
    /// a missing object, and a full disk is [`StorageError::NoSpace`].
    pub(crate) fn write_io(name: &str, location: &str, error: std::io::Error) -> Self {
        if error.raw_os_error() == Some(28) || error.kind() == std::io::ErrorKind::StorageFull {
            return Self::NoSpace {
                name: name.to_string(),
                location: location.to_string(),
            };
        }
        Self::Io {
            name: name.to_string(),
            location: location.to_string(),
            error,
        }
    }

    pub(crate) fn not_found(name: &str, location: &str) -> Self {
        Self::NotFound {
            name: name.to_string(),
            location: location.to_string(),
        }
    }

    /// The same error with the number of attempts made.
    pub(crate) fn after_attempts(mut self, n: u32) -> Self {
        if let Self::Transient { attempts, .. } = &mut self {
            *attempts = n;
        }
        self
    }
}
