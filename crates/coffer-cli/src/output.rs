//! What the user sees: progress on a terminal, summaries as text or JSON.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use coffer_client::{BackupOutcome, Id, Progress, PruneSummary, RestoreSummary, VerifySummary};
use coffer_repo::format::types::Snapshot;

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

pub fn backup_summary(o: &BackupOutcome, json: bool) {
    let s = &o.snapshot.summary;
    let secs = (s.duration_ms as f64 / 1000.0).max(0.001);
    for w in &o.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!(
            "{}",
            json!({
                "snapshot_id": o.id.to_hex(),
                "files": s.files, "dirs": s.dirs, "files_read": s.files_read,
                "bytes_read": s.bytes_read, "bytes_new": s.bytes_new, "bytes_added": s.bytes_added,
                "total_bytes": s.total_bytes, "duration_ms": s.duration_ms,
                "throughput_bytes_per_sec": (s.bytes_read as f64 / secs) as u64,
                "warnings": o.warnings,
            })
        );
        return;
    }
    println!("snapshot {} saved", o.id.short());
    println!(
        "  files       {} ({} read, {} unchanged), {} directories",
        s.files,
        s.files_read,
        s.files - s.files_read.min(s.files),
        s.dirs
    );
    println!("  read        {}", human_bytes(s.bytes_read));
    println!(
        "  new data    {} (stored as {})",
        human_bytes(s.bytes_new),
        human_bytes(s.bytes_added)
    );
    println!(
        "  duration    {secs:.2} s, {}/s",
        human_bytes((s.bytes_read as f64 / secs) as u64)
    );
    if !o.warnings.is_empty() {
        eprintln!(
            "{} path(s) could not be read and are not in the snapshot (listed above)",
            o.warnings.len()
        );
    }
}

pub fn snapshots(list: &[(Id, Snapshot)], json: bool) {
    if json {
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
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if list.is_empty() {
        println!("no snapshots yet");
        return;
    }
    println!(
        "{:<8}  {:<19}  {:<16}  {:>10}  paths",
        "id", "time (UTC)", "host", "size"
    );
    for (id, s) in list {
        let paths: Vec<String> = s.paths.iter().map(|p| path_str(p)).collect();
        println!(
            "{:<8}  {:<19}  {:<16}  {:>10}  {}",
            id.short(),
            time_str(s.time_ns),
            truncate(&s.hostname, 16),
            human_bytes(s.summary.total_bytes),
            paths.join(" ")
        );
    }
    println!("{} snapshot(s)", list.len());
}

pub fn restore_summary(id: &Id, s: &RestoreSummary, target: &Path, json: bool) {
    for f in &s.failures {
        eprintln!("failed: {f}");
    }
    if json {
        println!(
            "{}",
            json!({"snapshot_id": id.to_hex(), "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks, "bytes": s.bytes, "failures": s.failures})
        );
        return;
    }
    println!(
        "restored snapshot {} to {}: {} files, {} directories, {} symlinks, {}",
        id.short(),
        target.display(),
        s.files,
        s.dirs,
        s.symlinks,
        human_bytes(s.bytes)
    );
}

pub fn verify_summary(s: &VerifySummary, json: bool) {
    for e in &s.errors {
        eprintln!("problem: {e}");
    }
    if json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    println!(
        "checked {} snapshots, {} trees, {} data blobs, {} packs; read back {} packs ({})",
        s.snapshots,
        s.trees,
        s.data_blobs,
        s.packs,
        s.packs_read,
        human_bytes(s.bytes_read)
    );
    match &s.conditional_writes_reason {
        None if s.conditional_writes => println!("storage: conditional writes enforced (probed)"),
        reason => println!(
            "storage: conditional writes not enforced ({}); prune does not need them (two-phase, ADR 0004)",
            reason.as_deref().unwrap_or("not probed")
        ),
    }
    if s.errors.is_empty() {
        println!("no problems found");
    }
}

pub fn forget_summary(
    kept: &[Id],
    gone: &[Id],
    pruned: Option<&PruneSummary>,
    dry_run: bool,
    json: bool,
) {
    if json {
        println!(
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
        println!("kept {} snapshot(s), {verb} {}", kept.len(), gone.len());
        for g in gone {
            println!("  {verb} {}", g.short());
        }
    }
    if let Some(p) = pruned {
        println!(
            "pruned: deleted {} pack(s), freed {}",
            p.packs_deleted,
            human_bytes(p.bytes_freed)
        );
        if p.packs_waiting > 0 {
            println!(
                "{} unused pack(s) are kept until the backup(s) running now finish; a later prune deletes them",
                p.packs_waiting
            );
        }
    }
}

/// With `--json`, an error as one object on stdout (the text stays on
/// stderr): `{"error": kind, "message", "exit_code"}`, plus
/// `attempts_remaining` after a wrong password and `retry_after_ms` and
/// `scope` when the vault rate limits.
pub fn error(e: &anyhow::Error, r: &crate::cli::ErrorReport) {
    let mut v = json!({
        "error": r.kind,
        "message": format!("{e:#}"),
        "exit_code": r.code,
    });
    if let Some(n) = r.attempts_remaining {
        v["attempts_remaining"] = json!(n);
    }
    if let Some(ms) = r.retry_after_ms {
        v["retry_after_ms"] = json!(ms);
    }
    if let Some(s) = &r.scope {
        v["scope"] = json!(s);
    }
    println!("{v}");
}
