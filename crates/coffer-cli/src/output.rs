//! What the user sees: progress on a terminal, summaries as text or JSON.

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use coffer_client::{BackupOutcome, Id, Progress, PruneSummary, RestoreSummary, VerifySummary};
use coffer_repo::format::types::Snapshot;

/// Set once stdout is closed (a reader such as `head` went away) or fails.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Like `println!`, but a closed stdout is not a panic: output stops
/// quietly and the command finishes (and exits) as it would have.
macro_rules! outln {
    () => { $crate::output::write_out(format_args!("")) };
    ($($t:tt)*) => { $crate::output::write_out(format_args!($($t)*)) };
}

/// Like `eprintln!`, without the panic on a closed stderr.
macro_rules! errln {
    ($($t:tt)*) => { $crate::output::write_err(format_args!($($t)*)) };
}

/// Writes one line to stdout (see [`outln!`]).
pub fn write_out(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            write_err(format_args!("warning: cannot write to stdout: {e}"));
        }
    }
}

/// Whether some output could not be written to stdout.
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// Writes one line to stderr, ignoring a closed stderr.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Prints a JSON document on stdout.
pub fn print_json(v: &serde_json::Value) {
    outln!("{v}");
}

/// Which operation a progress display follows.
#[derive(Clone, Copy)]
pub enum Kind {
    Backup,
    Restore,
    Verify,
}

/// Runs `op` with live counters, drawn as a progress display on stderr while
/// it runs — only on a terminal, and never with --json.
pub fn with_progress<T>(kind: Kind, json: bool, op: impl FnOnce(&Progress) -> T) -> T {
    let progress = Progress::default();
    if json || !std::io::stderr().is_terminal() {
        return op(&progress);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| draw(&progress, kind, &stop));
        let result = op(&progress);
        stop.store(true, Ordering::Relaxed);
        result
    })
}

fn draw(p: &Progress, kind: Kind, stop: &AtomicBool) {
    let bar = ProgressBar::new(0);
    let style = match kind {
        Kind::Backup => "{spinner} backup  {msg}",
        Kind::Restore => {
            "{spinner} restore [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
        }
        Kind::Verify => {
            "{spinner} verify  [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
        }
    };
    bar.set_style(
        ProgressStyle::with_template(style)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let bytes = Progress::get(&p.bytes);
        let files = Progress::get(&p.files);
        match kind {
            Kind::Backup => {
                let secs = start.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "{files} files, {} read ({}/s), {} uploaded  {}",
                    human_bytes(bytes),
                    human_bytes((bytes as f64 / secs) as u64),
                    human_bytes(Progress::get(&p.uploaded)),
                    truncate(&p.current(), 40)
                ));
            }
            Kind::Restore | Kind::Verify => {
                bar.set_length(Progress::get(&p.total_bytes));
                bar.set_position(bytes);
                bar.set_message(format!("{files} files"));
            }
        }
        bar.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

fn truncate(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    let tail: String = s.chars().skip(count - n + 1).collect();
    format!("…{tail}")
}

/// 1.5 GiB, 20.0 MiB, 512 B.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn time_str(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = coffer_repo::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn path_str(p: &[u8]) -> String {
    Path::new(std::ffi::OsStr::from_bytes(p))
        .display()
        .to_string()
}

/// Bytes per second over `took` (at least a millisecond).
fn per_sec(bytes: u64, took: Duration) -> u64 {
    (bytes as f64 / took.as_secs_f64().max(0.001)) as u64
}

/// Prints the summary as text, or with `json` returns it (the caller prints
/// it, alone or with the error fields added; see [`error`]).
pub fn backup_summary(o: &BackupOutcome, json: bool) -> Option<serde_json::Value> {
    let s = &o.snapshot.summary;
    let secs = (s.duration_ms as f64 / 1000.0).max(0.001);
    for w in &o.warnings {
        errln!("warning: {w}");
    }
    if json {
        return Some(json!({
            "snapshot_id": o.id.to_hex(),
            "files": s.files, "dirs": s.dirs, "files_read": s.files_read,
            "bytes_read": s.bytes_read, "bytes_new": s.bytes_new, "bytes_added": s.bytes_added,
            "total_bytes": s.total_bytes, "duration_ms": s.duration_ms,
            "throughput_bytes_per_sec": (s.bytes_read as f64 / secs) as u64,
            "warnings": o.warnings,
        }));
    }
    outln!("snapshot {} saved", o.id.short());
    outln!(
        "  files       {} ({} read, {} unchanged), {} directories",
        s.files,
        s.files_read,
        s.files - s.files_read.min(s.files),
        s.dirs
    );
    outln!("  read        {}", human_bytes(s.bytes_read));
    outln!(
        "  new data    {} (stored as {})",
        human_bytes(s.bytes_new),
        human_bytes(s.bytes_added)
    );
    outln!(
        "  duration    {secs:.2} s, {}/s",
        human_bytes((s.bytes_read as f64 / secs) as u64)
    );
    None
}

/// The list as `snapshots --json` prints it.
pub fn snapshots_json(list: &[(Id, Snapshot)]) -> serde_json::Value {
    let v: Vec<_> = list
        .iter()
        .map(|(id, s)| {
            json!({
                "id": id.to_hex(), "time_ns": s.time_ns, "time": time_str(s.time_ns), "hostname": s.hostname,
                "paths": s.paths.iter().map(|p| path_str(p)).collect::<Vec<_>>(),
                "databases": s.databases.iter().map(|d| path_str(&d.path)).collect::<Vec<_>>(),
                "files": s.summary.files, "total_bytes": s.summary.total_bytes,
            })
        })
        .collect();
    serde_json::Value::Array(v)
}

pub fn snapshots(list: &[(Id, Snapshot)], json: bool) {
    if json {
        outln!("{}", snapshots_json(list));
        return;
    }
    if list.is_empty() {
        outln!("no snapshots yet");
        return;
    }
    outln!(
        "{:<8}  {:<19}  {:<16}  {:>10}  paths",
        "id",
        "time (UTC)",
        "host",
        "size"
    );
    for (id, s) in list {
        let paths: Vec<String> = s.paths.iter().map(|p| path_str(p)).collect();
        outln!(
            "{:<8}  {:<19}  {:<16}  {:>10}  {}",
            id.short(),
            time_str(s.time_ns),
            truncate(&s.hostname, 16),
            human_bytes(s.summary.total_bytes),
            paths.join(" ")
        );
    }
    outln!("{} snapshot(s)", list.len());
}

/// Prints the summary as text, or with `json` returns it (see [`backup_summary`]).
pub fn restore_summary(
    id: &Id,
    s: &RestoreSummary,
    target: &Path,
    took: Duration,
    json: bool,
) -> Option<serde_json::Value> {
    for f in &s.failures {
        errln!("failed: {f}");
    }
    if json {
        return Some(json!({
            "snapshot_id": id.to_hex(), "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks,
            "bytes": s.bytes, "complete": s.failures.is_empty(), "failures": s.failures,
            "duration_ms": took.as_millis() as u64,
            "throughput_bytes_per_sec": per_sec(s.bytes, took),
        }));
    }
    let counts = format!(
        "{} files, {} directories, {} symlinks, {} in {:.2} s ({}/s)",
        s.files,
        s.dirs,
        s.symlinks,
        human_bytes(s.bytes),
        took.as_secs_f64(),
        human_bytes(per_sec(s.bytes, took))
    );
    if s.failures.is_empty() {
        outln!(
            "restored snapshot {} to {}: {counts}",
            id.short(),
            target.display()
        );
    } else {
        outln!(
            "INCOMPLETE restore of snapshot {} to {}: {} file(s) FAILED and were not written; restored {counts}",
            id.short(),
            target.display(),
            s.failures.len()
        );
    }
    None
}

/// Prints the summary as text, or with `json` returns it (see [`backup_summary`]).
pub fn verify_summary(s: &VerifySummary, took: Duration, json: bool) -> Option<serde_json::Value> {
    for e in &s.errors {
        errln!("problem: {e}");
    }
    if json {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        v["duration_ms"] = json!(took.as_millis() as u64);
        v["throughput_bytes_per_sec"] = json!(per_sec(s.bytes_read, took));
        return Some(v);
    }
    outln!(
        "checked {} snapshots, {} trees, {} data blobs, {} packs; read back {} packs ({}) in {:.2} s ({}/s)",
        s.snapshots,
        s.trees,
        s.data_blobs,
        s.packs,
        s.packs_read,
        human_bytes(s.bytes_read),
        took.as_secs_f64(),
        human_bytes(per_sec(s.bytes_read, took))
    );
    match &s.conditional_writes_reason {
        None if s.conditional_writes => outln!("storage: conditional writes enforced (probed)"),
        reason => outln!(
            "storage: conditional writes not enforced ({}); prune does not need them (two-phase, ADR 0004)",
            reason.as_deref().unwrap_or("not probed")
        ),
    }
    if s.errors.is_empty() {
        outln!("no problems found");
    } else {
        outln!("{} problem(s) found (listed above)", s.errors.len());
    }
    None
}

pub fn forget_summary(
    kept: &[Id],
    gone: &[Id],
    pruned: Option<&PruneSummary>,
    dry_run: bool,
    json: bool,
) {
    if json {
        outln!(
            "{}",
            json!({
                "kept": kept.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                "forgotten": gone.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                "dry_run": dry_run,
                "prune": pruned,
            })
        );
        return;
    }
    if !kept.is_empty() || !gone.is_empty() {
        let verb = if dry_run { "would forget" } else { "forgot" };
        outln!("kept {} snapshot(s), {verb} {}", kept.len(), gone.len());
        for g in gone {
            outln!("  {verb} {}", g.short());
        }
    }
    if let Some(p) = pruned {
        outln!(
            "pruned: deleted {} pack(s), freed {}",
            p.packs_deleted,
            human_bytes(p.bytes_freed)
        );
        if p.packs_waiting > 0 {
            outln!(
                "{} unused pack(s) are kept until the backup(s) running now finish; a later prune deletes them",
                p.packs_waiting
            );
        }
    }
}

/// With `--json`, an error as one object on stdout (the text stays on
/// stderr): `{"error": kind, "message", "exit_code"}`, plus
/// `attempts_remaining` after a wrong password and `retry_after_ms` and
/// `scope` when the vault rate limits. A command that failed after doing
/// part of its work (a backup with unreadable paths, an incomplete restore,
/// a verify that found problems) prints its summary object with these
/// fields added: one JSON document either way.
pub fn error(e: &anyhow::Error, r: &crate::cli::ErrorReport) {
    let mut v = crate::cli::failure_summary(e)
        .filter(|v| v.is_object())
        .unwrap_or_else(|| json!({}));
    v["error"] = json!(r.kind);
    v["message"] = json!(format!("{e:#}"));
    v["exit_code"] = json!(r.code);
    if let Some(n) = r.attempts_remaining {
        v["attempts_remaining"] = json!(n);
    }
    if let Some(ms) = r.retry_after_ms {
        v["retry_after_ms"] = json!(ms);
    }
    if let Some(s) = &r.scope {
        v["scope"] = json!(s);
    }
    outln!("{v}");
}
