//! OpenDAL errors → [`StorageError`], grouped by what the caller should do.
//!
//! OpenDAL keeps the HTTP status and headers of a failed response only in the
//! error's printed context (`response: Parts { status: 429, …, headers: {…} }`),
//! and its per-service parsers drop some signals Coffer needs (Google Drive's
//! 403 `rateLimitExceeded` is "permission denied" to it, its 429 is not
//! retryable). So the decision is made here from the kind, the retry flag and
//! that text. Only the service's own message and the status go into the
//! resulting error: the context also holds request URLs, which for some
//! services (Azure SAS) carry credentials.

use std::time::Duration;

use opendal::ErrorKind;

use crate::StorageError;

/// Longest service message kept in an error (bodies can be whole HTML pages).
const MAX_DETAIL: usize = 400;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    NotFound,
    NoSpace,
    Permission,
    /// Retry, after at least the given delay if the service named one.
    Transient(Option<Duration>),
    /// The condition of a conditional write was false: the object exists.
    ConditionFailed,
    Range,
    Permanent,
}

/// The HTTP status of the response an error came from, if it came from one.
pub(crate) fn http_status(text: &str) -> Option<u16> {
    let rest = &text[text.find("Parts { status: ")? + "Parts { status: ".len()..];
    rest.get(..3)?.parse().ok()
}

/// The `Retry-After` header of the response an error came from, in seconds
/// (the HTTP-date form is rare for these APIs and is ignored).
pub(crate) fn retry_after(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    let rest = &lower[lower.find("\"retry-after\": \"")? + "\"retry-after\": \"".len()..];
    let value = &rest[..rest.find('"')?];
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Google Drive (and other Google APIs) signal rate limits with 403 and a
/// reason, and OpenDAL keeps only the message; recognise both.
fn is_rate_limit_text(lower: &str) -> bool {
    lower.contains("ratelimitexceeded")
        || lower.contains("rate limit exceeded")
        || lower.contains("too_many_requests")
        || lower.contains("too_many_write_operations")
        || lower.contains("slowdown")
}

fn is_no_space_text(lower: &str) -> bool {
    lower.contains("storagequotaexceeded")
        || lower.contains("quotaexceeded")
        || lower.contains("insufficient_space")
        || lower.contains("insufficientstorage")
        || lower.contains("quotalimitreached")
        || lower.contains("exceeded their drive storage quota")
        || lower.contains("storagefull")
}

/// Classifies an error from its kind, OpenDAL's retry flag and its printed form.
pub(crate) fn classify(kind: ErrorKind, temporary: bool, text: &str) -> Class {
    let lower = text.to_ascii_lowercase();
    let status = http_status(text);
    let after = retry_after(text);
    if is_rate_limit_text(&lower) || matches!(status, Some(429)) || kind == ErrorKind::RateLimited {
        return Class::Transient(after);
    }
    if is_no_space_text(&lower) || matches!(status, Some(507)) {
        return Class::NoSpace;
    }
    match kind {
        ErrorKind::NotFound => return Class::NotFound,
        ErrorKind::PermissionDenied => return Class::Permission,
        ErrorKind::ConditionNotMatch => return Class::ConditionFailed,
        ErrorKind::RangeNotSatisfied => return Class::Range,
        // A concurrent conditional write on the same key (S3's 409
        // ConditionalRequestConflict): the retry sees the winner's object.
        ErrorKind::Conflict => return Class::Transient(after),
        _ => {}
    }
    // 401, or no credentials found at all ("failed to load signing
    // credential"; a failure to *reach* a credential source is temporary).
    if matches!(status, Some(401)) || (!temporary && lower.contains("credential")) {
        return Class::Permission;
    }
    if temporary || matches!(status, Some(408 | 500..=599)) {
        return Class::Transient(after);
    }
    Class::Permanent
}

/// The service's message and status, without OpenDAL's context (URLs).
fn detail(err: &opendal::Error, status: Option<u16>) -> String {
    let mut d = String::new();
    if let Some(s) = status {
        d.push_str(&format!("HTTP {s}: "));
    }
    d.push_str(err.message());
    // The cause of a transport failure ("connection refused", "operation
    // timed out") is in the source chain; reqwest's errors there carry no URL.
    let mut src = std::error::Error::source(err);
    while let Some(e) = src {
        d.push_str(": ");
        d.push_str(&e.to_string());
        src = e.source();
    }
    if d.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
        d.push('…');
    }
    d
}

/// Converts an OpenDAL error about `name` in the store at `location`.
///
/// `ConditionNotMatch` and `RangeNotSatisfied` are handled by the callers
/// that ask for conditions and ranges; reaching here they are permanent.
pub(crate) fn to_storage_error(err: &opendal::Error, name: &str, location: &str) -> StorageError {
    let text = err.to_string();
    let status = http_status(&text);
    let (name, location) = (name.to_string(), location.to_string());
    match classify(err.kind(), err.is_temporary(), &text) {
        Class::NotFound => StorageError::NotFound { name, location },
        Class::NoSpace => StorageError::NoSpace { name, location },
        Class::Permission => StorageError::PermissionDenied {
            name,
            location,
            detail: detail(err, status),
        },
        Class::Transient(retry_after) => StorageError::Transient {
            name,
            location,
            detail: detail(err, status),
            retry_after,
            attempts: 1,
        },
        Class::ConditionFailed | Class::Range | Class::Permanent => StorageError::Backend {
            name,
            location,
            detail: detail(err, status),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_with_response(kind: ErrorKind, message: &str, response: &str) -> opendal::Error {
        opendal::Error::new(kind, message.to_string()).with_context("response", response)
    }

    #[test]
    fn status_and_retry_after_come_from_the_response_context() {
        let e = err_with_response(
            ErrorKind::Unexpected,
            "S3Error { code: \"SlowDown\" }",
            r#"Parts { status: 503, version: HTTP/1.1, headers: {"retry-after": "7", "content-type": "application/xml"} }"#,
        );
        let text = e.to_string();
        assert_eq!(http_status(&text), Some(503));
        assert_eq!(retry_after(&text), Some(Duration::from_secs(7)));
        assert_eq!(
            classify(e.kind(), e.is_temporary(), &text),
            Class::Transient(Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn google_drive_403_rate_limit_is_transient_not_permission() {
        // OpenDAL's gdrive parser keeps only the message and calls a 403
        // PermissionDenied.
        let e = err_with_response(
            ErrorKind::PermissionDenied,
            "GdriveError { error: GdriveInnerError { message: \"User rate limit exceeded.\" } }",
            r#"Parts { status: 403, version: HTTP/1.1, headers: {"retry-after": "3"} }"#,
        );
        assert_eq!(
            classify(e.kind(), e.is_temporary(), &e.to_string()),
            Class::Transient(Some(Duration::from_secs(3)))
        );
        // The raw body form, when the JSON did not parse.
        let e = err_with_response(
            ErrorKind::PermissionDenied,
            r#"{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded"}],"code":403}}"#,
            r#"Parts { status: 403, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(
            classify(e.kind(), e.is_temporary(), &e.to_string()),
            Class::Transient(None)
        );
        // A real 403 stays a permission problem, not retried.
        let e = err_with_response(
            ErrorKind::PermissionDenied,
            "S3Error { code: \"AccessDenied\" }",
            r#"Parts { status: 403, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(
            classify(e.kind(), e.is_temporary(), &e.to_string()),
            Class::Permission
        );
    }

    #[test]
    fn quota_not_found_and_server_errors() {
        let quota = err_with_response(
            ErrorKind::PermissionDenied,
            "GdriveError { error: GdriveInnerError { message: \"The user's Drive storage quota has been exceeded.\" } } storageQuotaExceeded",
            r#"Parts { status: 403, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(
            classify(quota.kind(), false, &quota.to_string()),
            Class::NoSpace
        );
        let dropbox = err_with_response(
            ErrorKind::Unexpected,
            "{\"error_summary\": \"path/insufficient_space/.\"}",
            r#"Parts { status: 409, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(
            classify(dropbox.kind(), false, &dropbox.to_string()),
            Class::NoSpace
        );
        let nf = opendal::Error::new(ErrorKind::NotFound, "nope");
        assert_eq!(classify(nf.kind(), false, &nf.to_string()), Class::NotFound);
        // Google Drive's 429 is not marked retryable by OpenDAL.
        let e = err_with_response(
            ErrorKind::Unexpected,
            "Too Many Requests",
            r#"Parts { status: 429, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(
            classify(e.kind(), false, &e.to_string()),
            Class::Transient(None)
        );
        let e = err_with_response(
            ErrorKind::Unexpected,
            "bad gateway",
            r#"Parts { status: 502, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(
            classify(e.kind(), false, &e.to_string()),
            Class::Transient(None)
        );
        let e = opendal::Error::new(ErrorKind::Unexpected, "signing http request")
            .set_source(std::io::Error::other("failed to load signing credential"));
        assert_eq!(classify(e.kind(), false, &e.to_string()), Class::Permission);
        let e = err_with_response(
            ErrorKind::Unexpected,
            "bad request",
            r#"Parts { status: 400, version: HTTP/1.1, headers: {} }"#,
        );
        assert_eq!(classify(e.kind(), false, &e.to_string()), Class::Permanent);
    }

    #[test]
    fn messages_keep_the_service_message_but_not_the_urls() {
        let e = opendal::Error::new(ErrorKind::PermissionDenied, "AccessDenied")
            .with_context(
                "uri",
                "https://acct.blob.core.windows.net/c/x?sig=SECRETSIG",
            )
            .with_context(
                "response",
                r#"Parts { status: 403, version: HTTP/1.1, headers: {} }"#,
            );
        let msg = to_storage_error(&e, "index/01", "azblob://c").to_string();
        assert!(
            msg.contains("index/01") && msg.contains("azblob://c"),
            "{msg}"
        );
        assert!(msg.contains("HTTP 403: AccessDenied"), "{msg}");
        assert!(!msg.contains("SECRETSIG"), "{msg}");
    }
}
