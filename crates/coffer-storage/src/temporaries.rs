//! Temporary objects of interrupted writes: how they are named and when one
//! may be removed. Used by the stores that write to a temporary name and then
//! rename it into place ([`crate::LocalStore`], WebDAV in [`crate::CloudStore`]).

use std::path::Path;
use std::time::Duration;

use crate::random_suffix;

/// Where temporaries live, under the store's root.
pub(crate) const TMP_DIR: &str = ".tmp";

/// Whether an object name is a temporary (under `.tmp/`).
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
pub(crate) fn is_temporary(name: &str) -> bool {
    name.strip_prefix(TMP_DIR)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// This host's name, made safe for a file name (no dots or slashes).
pub(crate) fn host_tag() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `<name>.<host>-<pid>.<random>`: leftovers of a killed process of this
/// host can be recognised and removed at once.
pub(crate) fn temp_file_name(name: &str) -> String {
    format!(
        "{}.{}-{}.{}",
        name.replace('/', "_"),
        host_tag(),
        std::process::id(),
        random_suffix()
    )
}

/// Whether a temporary may be removed: it is at least `age` old, or its
/// writer was a process of this host that no longer runs.
pub(crate) fn is_stale(file_name: &str, elapsed: Option<Duration>, age: Duration) -> bool {
    let old = elapsed.is_some_and(|el| el >= age);
    let dead_writer = file_name
        .rsplit('.')
        .nth(1)
        .and_then(|w| w.rsplit_once('-'))
        .filter(|(host, _)| *host == host_tag())
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    old || dead_writer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_by_age_or_dead_writer() {
        let mine = temp_file_name("data/ab/cd");
        assert!(mine.starts_with("data_ab_cd."));
        let hour = Duration::from_secs(3600);
        assert!(!is_stale(&mine, Some(Duration::ZERO), hour));
        assert!(is_stale(&mine, Some(hour), hour));
        // A pid that cannot be running (above the kernel's maximum).
        let dead = format!("x.{}-4294967295.abcd", host_tag());
        assert!(is_stale(&dead, None, hour));
        // Another host's writer is only removed by age.
        let other = "x.otherhost-4294967295.abcd";
        assert!(!is_stale(other, None, hour));
    }
}
