//! Repository locations: a local path or a URL naming a cloud backend.

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroize;

use crate::StorageError;

/// Where a repository lives, parsed from what the user typed.
///
/// | form | backend |
/// |---|---|
/// | `/path`, `relative/path`, `file:///path` | local directory ([`crate::LocalStore`]) |
/// | `s3://bucket/prefix` | Amazon S3 or any S3-compatible server |
/// | `gs://bucket/prefix` | Google Cloud Storage |
/// | `azblob://container/prefix` | Azure Blob Storage |
/// | `webdav://[user[:password]@]host[:port]/path`, `webdavs://…` | WebDAV over HTTP / HTTPS |
/// | `gdrive://path`, `onedrive://path`, `dropbox://path` | consumer drives |
///
/// Credentials other than a WebDAV user and password come from the
/// environment (see [`crate::cloud`]). `Display` never shows a password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket and a key prefix (may be empty).
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// A Google Cloud Storage bucket and prefix.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// An Azure Blob Storage container and prefix.
    Azblob {
        /// Container.
        container: String,
        /// Prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// A WebDAV collection.
    WebDav {
        /// `webdavs://` (HTTPS) rather than `webdav://` (HTTP).
        tls: bool,
        /// `host` or `host:port`.
        host: String,
        /// Path on the server, without leading or trailing `/`.
        path: String,
        /// User name from the URL.
        user: Option<String>,
        /// Password from the URL.
        password: Option<Password>,
    },
    /// A folder in Google Drive ("My Drive").
    GDrive {
        /// Folder path, without leading or trailing `/`.
        path: String,
    },
    /// A folder in OneDrive.
    OneDrive {
        /// Folder path, without leading or trailing `/`.
        path: String,
    },
    /// A folder in Dropbox.
    Dropbox {
        /// Folder path, without leading or trailing `/`.
        path: String,
    },
}

/// A password from a URL: never printed, wiped from memory on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The password itself, to hand to the HTTP client.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Display already leaves the password out.
        write!(f, "Location({self})")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, scheme: &str, first: &str, rest: &str| {
            if rest.is_empty() {
                write!(f, "{scheme}://{first}")
            } else {
                write!(f, "{scheme}://{first}/{rest}")
            }
        };
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } => join(f, "s3", bucket, prefix),
            Self::Gcs { bucket, prefix } => join(f, "gs", bucket, prefix),
            Self::Azblob { container, prefix } => join(f, "azblob", container, prefix),
            Self::WebDav {
                tls,
                host,
                path,
                user,
                ..
            } => {
                let scheme = if *tls { "webdavs" } else { "webdav" };
                let host = match user {
                    Some(u) => format!("{u}@{host}"),
                    None => host.clone(),
                };
                join(f, scheme, &host, path)
            }
            Self::GDrive { path } => write!(f, "gdrive://{path}"),
            Self::OneDrive { path } => write!(f, "onedrive://{path}"),
            Self::Dropbox { path } => write!(f, "dropbox://{path}"),
        }
    }
}

impl TryFrom<&str> for Location {
    type Error = StorageError;

    fn try_from(s: &str) -> Result<Self, StorageError> {
        Self::parse(s)
    }
}

impl Location {
    /// Parses a path or URL.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(Self::Local(PathBuf::from(s)));
        };
        // Messages about a bad URL must not echo a password typed in it.
        let shown = redact_userinfo(s);
        let bad = |reason: &str| StorageError::Unsupported {
            location: shown.clone(),
            reason: reason.to_string(),
        };
        let split_first = |rest: &str, what: &str| -> Result<(String, String), StorageError> {
            let (first, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if first.is_empty() {
                return Err(bad(&format!(
                    "the URL names no {what}: write {scheme}://{what}/prefix"
                )));
            }
            Ok((first.to_string(), trim_slashes(prefix)))
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => Ok(Self::Local(PathBuf::from(rest))),
            "s3" => {
                let (bucket, prefix) = split_first(rest, "bucket")?;
                Ok(Self::S3 { bucket, prefix })
            }
            "gs" | "gcs" => {
                let (bucket, prefix) = split_first(rest, "bucket")?;
                Ok(Self::Gcs { bucket, prefix })
            }
            "azblob" => {
                let (container, prefix) = split_first(rest, "container")?;
                Ok(Self::Azblob { container, prefix })
            }
            "webdav" | "webdavs" => {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (userinfo, host) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, authority),
                };
                if host.is_empty() {
                    return Err(bad("the URL names no host: write webdav://host[:port]/path"));
                }
                let (user, password) = match userinfo {
                    None => (None, None),
                    Some(u) => {
                        let (user, pass) = match u.split_once(':') {
                            Some((user, pass)) => (user, Some(pass)),
                            None => (u, None),
                        };
                        let user = percent_decode(user)
                            .ok_or_else(|| bad("the user name in the URL is badly %-encoded"))?;
                        let password = match pass {
                            Some(p) => Some(Password::new(percent_decode(p).ok_or_else(
                                || bad("the password in the URL is badly %-encoded"),
                            )?)),
                            None => None,
                        };
                        (Some(user), password)
                    }
                };
                Ok(Self::WebDav {
                    tls: scheme.eq_ignore_ascii_case("webdavs"),
                    host: host.to_string(),
                    path: trim_slashes(path),
                    user,
                    password,
                })
            }
            "gdrive" => Ok(Self::GDrive {
                path: trim_slashes(rest),
            }),
            "onedrive" => Ok(Self::OneDrive {
                path: trim_slashes(rest),
            }),
            "dropbox" => Ok(Self::Dropbox {
                path: trim_slashes(rest),
            }),
            other => Err(bad(&format!(
                "unknown scheme {other}://; use a local path, s3://, gs://, azblob://, webdav://, webdavs://, gdrive://, onedrive:// or dropbox://"
            ))),
        }
    }

    /// Whether this is a local directory.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }
}

fn trim_slashes(s: &str) -> String {
    s.trim_matches('/').to_string()
}

/// `scheme://user:secret@host/…` → `scheme://user@host/…`, for messages.
pub(crate) fn redact_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{path}")
        }
        None => s.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("file:///srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("s3://bkt/a/b/").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bkt").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        assert_eq!(Location::parse("gs://b/p").unwrap().to_string(), "gs://b/p");
        assert_eq!(
            Location::parse("azblob://c").unwrap().to_string(),
            "azblob://c"
        );
        assert_eq!(
            Location::parse("gdrive://Backups/phone").unwrap(),
            Location::GDrive {
                path: "Backups/phone".into()
            }
        );
        assert_eq!(
            Location::parse("dropbox://").unwrap(),
            Location::Dropbox {
                path: String::new()
            }
        );
        assert!(Location::parse("s3:///prefix").is_err());
        assert!(Location::parse("ftp://host/x").is_err());
    }

    #[test]
    fn webdav_credentials_are_parsed_and_never_shown() {
        let l =
            Location::parse("webdavs://me:p%40ss%3Aw@dav.example:8443/remote.php/dav/").unwrap();
        let Location::WebDav {
            tls,
            host,
            path,
            user,
            password,
        } = &l
        else {
            panic!("{l:?}")
        };
        assert!(tls);
        assert_eq!(host, "dav.example:8443");
        assert_eq!(path, "remote.php/dav");
        assert_eq!(user.as_deref(), Some("me"));
        assert_eq!(password.as_ref().unwrap().expose_secret(), "p@ss:w");
        assert_eq!(
            l.to_string(),
            "webdavs://me@dav.example:8443/remote.php/dav"
        );
        assert!(!format!("{l:?}").contains("p%40ss"));
        assert!(!format!("{l:?}").contains("p@ss"));
        // A bad URL's message does not echo the password either.
        let err = Location::parse("webdav://me:s3cret@/x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        let err = Location::parse("webdav://me:%zz@host/x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("%zz"), "{err}");
    }
}
