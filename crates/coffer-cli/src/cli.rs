//! Arguments, commands and exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use coffer_client::{
    AccessError, BackupSources, Coffer, KeepPolicy, KeyCacheError, RecoveryKey, RepoError,
    RestoreOptions, VaultError,
};

use crate::output::{self, with_progress};
use crate::password;

/// Success.
pub const EXIT_OK: u8 = 0;
/// Any other error (storage, local files, …).
pub const EXIT_OTHER: u8 = 1;
/// Bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Wrong recovery key (or password).
pub const EXIT_WRONG_KEY: u8 = 3;
/// Integrity failure: stored data failed authentication or is missing.
pub const EXIT_INTEGRITY: u8 = 4;
/// Key erased or locked in the vault.
pub const EXIT_KEY_ERASED: u8 = 5;

/// End-to-end encrypted backups of app databases and media.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, long_about = None)]
pub struct Args {
    /// Repository location: a local path or a URL (file://, s3://, gs://,
    /// azblob://, webdav://, webdavs://, gdrive://, onedrive://, dropbox://).
    /// Also from COFFER_REPO.
    #[arg(long, global = true, env = "COFFER_REPO")]
    repo: Option<String>,
    /// Read the recovery key from this file (else COFFER_RECOVERY_KEY, else a prompt).
    #[arg(long, global = true, value_name = "FILE")]
    recovery_key_file: Option<PathBuf>,
    /// Password mode: the vault's realm descriptor (realm.json). With `init`,
    /// creates a password-mode repository. Required on a device with no key
    /// cached for the repository (the repository's own copy is not trusted
    /// before the key is known); it must name the realm the repository uses,
    /// and its address wins. Also from COFFER_VAULT.
    #[arg(long, global = true, env = "COFFER_VAULT", value_name = "REALM-JSON")]
    pub(crate) vault: Option<PathBuf>,
    /// Password mode: read the password from this file (else COFFER_PASSWORD, else a prompt).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Print a JSON summary on stdout instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Log what happens (to stderr).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a repository and print its recovery key, once; with --vault,
    /// in password mode (the key escrowed in the vault behind a password).
    Init {
        /// Password mode: wrong passwords in a row before the vault erases the key (default 10).
        #[arg(long, value_name = "N")]
        max_attempts: Option<u8>,
    },
    /// Back up SQLite databases (consistently, while the app runs) and paths.
    Backup {
        /// A SQLite database to capture with SQLite's online backup API (repeatable).
        #[arg(long = "db", value_name = "SQLITE-FILE")]
        dbs: Vec<PathBuf>,
        /// Re-read every file, even those unchanged since the last snapshot.
        #[arg(long)]
        force: bool,
        /// Files and directories to back up.
        paths: Vec<PathBuf>,
    },
    /// List snapshots.
    Snapshots,
    /// Restore a snapshot (or one path, or the databases) into a directory.
    Restore {
        /// Snapshot id (or a unique prefix), or `latest`.
        snapshot: String,
        /// Directory to restore into (created if missing).
        #[arg(long)]
        target: PathBuf,
        /// Restore only this path of the snapshot: absolute, as it was backed up
        /// (as `coffer snapshots` lists it).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Restore only the SQLite databases.
        #[arg(long, conflicts_with = "path")]
        db_only: bool,
    },
    /// Check the repository; with --read-data also read back the data.
    Verify {
        /// Read back all packs, or a percentage of them chosen at random (e.g. --read-data=10).
        #[arg(long, value_name = "PERCENT", num_args = 0..=1, require_equals = true, default_missing_value = "100")]
        read_data: Option<String>,
    },
    /// Forget snapshots by a retention policy (or by id), and with --prune delete unused data.
    Forget {
        /// Forget these snapshots (ids or unique prefixes), instead of a
        /// policy; a damaged snapshot, which no policy can place, too.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Keep the N newest snapshots.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest snapshot of each of the N newest days.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: usize,
        /// Keep the newest snapshot of each of the N newest weeks.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: usize,
        /// Keep the newest snapshot of each of the N newest months.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: usize,
        /// Also delete the data no remaining snapshot needs.
        #[arg(long)]
        prune: bool,
        /// Show what would be forgotten; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete data no snapshot needs (never data a running backup needs).
    Prune,
    /// Password mode: change the password, leave password mode, or drop this device's cached key.
    Key {
        #[command(subcommand)]
        cmd: password::KeyCommand,
    },
}

/// How an error is reported: exit code, a stable kind for `--json`, and
/// the structured fields of a vault answer.
#[derive(Debug, Default)]
pub struct ErrorReport {
    /// The documented exit code.
    pub code: u8,
    /// `usage`, `wrong_key`, `wrong_password`, `key_erased`, `integrity`,
    /// `rate_limited`, `unauthorized`, `vault_unavailable`, `vault_unreachable`, `error`.
    pub kind: &'static str,
    /// For a wrong password: attempts left (0: the key was just erased).
    pub attempts_remaining: Option<u8>,
    /// For a rate limit: when to retry, and whether the user or the tenant is limited.
    pub retry_after_ms: Option<u64>,
    /// `user` or `tenant`.
    pub scope: Option<String>,
}

fn report(code: u8, kind: &'static str) -> ErrorReport {
    ErrorReport {
        code,
        kind,
        ..Default::default()
    }
}

fn repo_report(r: &RepoError) -> ErrorReport {
    match r {
        RepoError::WrongKey { .. } => report(EXIT_WRONG_KEY, "wrong_key"),
        RepoError::Integrity { .. } => report(EXIT_INTEGRITY, "integrity"),
        _ => report(EXIT_OTHER, "error"),
    }
}

fn vault_report(v: &VaultError) -> ErrorReport {
    match v {
        VaultError::WrongPassword { attempts_remaining } => ErrorReport {
            attempts_remaining: Some(*attempts_remaining),
            ..if *attempts_remaining == 0 {
                report(EXIT_KEY_ERASED, "key_erased")
            } else {
                report(EXIT_WRONG_KEY, "wrong_password")
            }
        },
        VaultError::NotRegistered => report(EXIT_KEY_ERASED, "key_erased"),
        VaultError::RateLimited {
            scope,
            retry_after_ms,
        } => ErrorReport {
            retry_after_ms: Some(*retry_after_ms),
            scope: Some(scope.clone()),
            ..report(EXIT_OTHER, "rate_limited")
        },
        VaultError::Unauthorized(_) => report(EXIT_OTHER, "unauthorized"),
        VaultError::Unavailable(_) => report(EXIT_OTHER, "vault_unavailable"),
        VaultError::Transport(_) => report(EXIT_OTHER, "vault_unreachable"),
        VaultError::Policy { .. } => report(EXIT_USAGE, "usage"),
        _ => report(EXIT_OTHER, "error"),
    }
}

/// Classifies an error (the first cause that tells decides).
pub fn error_report(e: &anyhow::Error) -> ErrorReport {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            return repo_report(r);
        }
        if let Some(v) = cause.downcast_ref::<VaultError>() {
            return vault_report(v);
        }
        if let Some(a) = cause.downcast_ref::<AccessError>() {
            return match a {
                AccessError::Repo(r) => repo_report(r),
                AccessError::Vault(v) => vault_report(v),
                AccessError::KeyMismatch { .. } | AccessError::StaleCachedKey { .. } => {
                    report(EXIT_WRONG_KEY, "wrong_key")
                }
                AccessError::NotPasswordMode { .. } => report(EXIT_USAGE, "usage"),
                _ => report(EXIT_OTHER, "error"),
            };
        }
        if cause.downcast_ref::<KeyCacheError>().is_some() {
            return report(EXIT_OTHER, "error");
        }
        if cause
            .downcast_ref::<coffer_crypto::ParseRecoveryKeyError>()
            .is_some()
        {
            return report(EXIT_WRONG_KEY, "wrong_key");
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return report(EXIT_USAGE, "usage");
        }
        if let Some(f) = cause.downcast_ref::<CommandFailure>() {
            return if f.integrity {
                report(EXIT_INTEGRITY, "integrity")
            } else {
                report(EXIT_OTHER, "error")
            };
        }
    }
    report(EXIT_OTHER, "error")
}

/// A bad command line found after parsing (exit code 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

/// A command that failed after doing part of its work (an incomplete
/// restore, a verify that found damage, a backup missing some paths): exit
/// code 4 when stored data was at fault, else 1. With `--json`, its summary
/// is printed with the error fields added (one document).
#[derive(Debug)]
struct CommandFailure {
    message: String,
    integrity: bool,
    summary: Option<serde_json::Value>,
}

/// The summary of a command that failed after doing part of its work.
pub(crate) fn failure_summary(e: &anyhow::Error) -> Option<serde_json::Value> {
    e.chain()
        .find_map(|c| c.downcast_ref::<CommandFailure>())
        .and_then(|f| f.summary.clone())
}

/// Prints a summary that `output` returned (`--json`) on success.
fn print_summary(json: Option<serde_json::Value>) {
    if let Some(v) = json {
        output::print_json(&v);
    }
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}
impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for CommandFailure {}

pub(crate) fn repo_location(args: &Args) -> anyhow::Result<String> {
    args.repo.clone().ok_or_else(|| {
        anyhow!(UsageError(
            "no repository given: pass --repo <path> or set COFFER_REPO".into()
        ))
    })
}

fn read_key(args: &Args) -> anyhow::Result<coffer_client::BackupKey> {
    let text: Zeroizing<String> = if let Ok(k) = std::env::var("COFFER_RECOVERY_KEY") {
        Zeroizing::new(k)
    } else if let Some(f) = &args.recovery_key_file {
        Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the recovery key file {}", f.display()))?,
        )
    } else if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password("Recovery key: ")
                .context("cannot read the recovery key from the terminal")?,
        )
    } else {
        return Err(anyhow!(UsageError(
            "no recovery key: set COFFER_RECOVERY_KEY, pass --recovery-key-file <file>, or run on a terminal".into()
        )));
    };
    RecoveryKey::parse(&text).map_err(|e| anyhow!(e).context("that is not a valid recovery key"))
}

fn open(args: &Args) -> anyhow::Result<Coffer> {
    let location = repo_location(args)?;
    // A config that cannot be read is reported by the open below, as before.
    if let Ok(info) = Coffer::inspect(&location) {
        if info.is_password_mode() {
            return password::open(args, &location, &info);
        }
    }
    let key = read_key(args)?;
    Ok(Coffer::open(&location, &key)?)
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> anyhow::Result<u8> {
    match &args.cmd {
        Command::Init { max_attempts } => {
            let location = repo_location(&args)?;
            if args.vault.is_some() {
                return password::init(&args, &location, *max_attempts);
            }
            if max_attempts.is_some() {
                return Err(anyhow!(UsageError(
                    "--max-attempts applies to password mode: add --vault <realm.json>".into()
                )));
            }
            let (rk, id) = Coffer::init_with_recovery_key(&location)?;
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({ "recovery_key": rk.expose_secret() })
                );
            } else {
                outln!("Created repository {} at {location}.\n", hex_short(&id));
                outln!(
                    "Your recovery key (shown only this once; write it down and keep it safe):\n"
                );
                outln!("    {}\n", rk.expose_secret());
                outln!("Anyone with this key can read these backups. Without it nobody can, not even you.");
            }
            if output::stdout_gone() {
                return Err(anyhow!(
                    "the repository was created, but its recovery key could not be printed (stdout is closed): delete the repository and run init again"
                ));
            }
            Ok(EXIT_OK)
        }
        Command::Backup { dbs, force, paths } => {
            if dbs.is_empty() && paths.is_empty() {
                return Err(anyhow!(UsageError(
                    "nothing to back up: give paths and/or --db <sqlite-file>".into()
                )));
            }
            let mut coffer = open(&args)?;
            let sources = BackupSources {
                paths: paths.clone(),
                databases: dbs.clone(),
            };
            let res = with_progress(output::Kind::Backup, args.json, |p| {
                coffer.backup(&sources, *force, p)
            });
            let outcome = res?;
            let summary = output::backup_summary(&outcome, args.json);
            if outcome.warnings.is_empty() {
                print_summary(summary);
                return Ok(EXIT_OK);
            }
            Err(anyhow!(CommandFailure {
                message: format!(
                    "snapshot {} saved without {} path(s) that could not be read (listed above)",
                    outcome.id.short(),
                    outcome.warnings.len()
                ),
                integrity: false,
                summary,
            }))
        }
        Command::Snapshots => {
            let coffer = open(&args)?;
            // Damaged snapshots are left out of the list, with a warning each
            // (logged as they are read) and a count at the end.
            let (list, damaged) = coffer.repository().readable_snapshots()?;
            if damaged.is_empty() {
                output::snapshots(&list, args.json);
                return Ok(EXIT_OK);
            }
            // The others are listed; the command then fails (exit 4).
            let summary = if args.json {
                Some(serde_json::json!({
                    "snapshots": output::snapshots_json(&list),
                    "damaged": damaged
                        .iter()
                        .map(|(id, e)| serde_json::json!({"id": id.to_hex(), "problem": e.to_string()}))
                        .collect::<Vec<_>>(),
                }))
            } else {
                output::snapshots(&list, false);
                None
            };
            let why: Vec<String> = damaged
                .iter()
                .map(|(id, e)| format!("snapshot {}: {e}", id.short()))
                .collect();
            Err(anyhow!(CommandFailure {
                message: format!(
                    "{} damaged snapshot(s) could not be read and are not listed ({}); `coffer forget <id>` removes one",
                    damaged.len(),
                    why.join("; ")
                ),
                integrity: true,
                summary,
            }))
        }
        Command::Restore {
            snapshot,
            target,
            path,
            db_only,
        } => {
            if snapshot.trim().is_empty() {
                return Err(anyhow!(UsageError(
                    "no snapshot given: pass an id (or a unique prefix) or `latest`".into()
                )));
            }
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(anyhow!(UsageError(format!(
                        "--path {}: give the absolute path, as it was backed up (as `coffer snapshots` lists it)",
                        p.display()
                    ))));
                }
            }
            let coffer = open(&args)?;
            let opts = RestoreOptions {
                path: path.clone(),
                databases_only: *db_only,
                workers: 0,
            };
            let started = std::time::Instant::now();
            let res = with_progress(output::Kind::Restore, args.json, |p| {
                coffer.restore(snapshot, target, opts, p)
            });
            let (id, summary) = res?;
            let json = output::restore_summary(&id, &summary, target, started.elapsed(), args.json);
            if summary.failures.is_empty() {
                print_summary(json);
                return Ok(EXIT_OK);
            }
            let integrity = summary.integrity_failures > 0;
            Err(anyhow!(CommandFailure {
                message: format!(
                    "restore incomplete: {} file(s) failed and were not written (see above){}",
                    summary.failures.len(),
                    if integrity {
                        ""
                    } else {
                        "; the repository is not at fault"
                    }
                ),
                integrity,
                summary: json,
            }))
        }
        Command::Verify { read_data } => {
            let pct = match read_data {
                None => None,
                Some(s) => {
                    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| {
                        anyhow!(UsageError(format!(
                            "--read-data takes a percentage, got {s:?}"
                        )))
                    })?;
                    if !(0.0..=100.0).contains(&v) {
                        return Err(anyhow!(UsageError(format!(
                            "--read-data percentage must be 0..100, got {v}"
                        ))));
                    }
                    Some(v)
                }
            };
            let coffer = open(&args)?;
            let started = std::time::Instant::now();
            let res = with_progress(output::Kind::Verify, args.json, |p| coffer.verify(pct, p));
            let s = res?;
            let json = output::verify_summary(&s, started.elapsed(), args.json);
            if s.errors.is_empty() {
                print_summary(json);
                return Ok(EXIT_OK);
            }
            Err(anyhow!(CommandFailure {
                message: format!("the repository has {} problem(s)", s.errors.len()),
                integrity: true,
                summary: json,
            }))
        }
        Command::Forget {
            ids,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            prune,
            dry_run,
        } => {
            let policy = KeepPolicy {
                last: *keep_last,
                daily: *keep_daily,
                weekly: *keep_weekly,
                monthly: *keep_monthly,
            };
            if !ids.is_empty() && !policy.is_empty() {
                return Err(anyhow!(UsageError(
                    "forget takes snapshot ids or a policy (--keep-*), not both".into()
                )));
            }
            if ids.iter().any(|i| i.trim().is_empty()) {
                return Err(anyhow!(UsageError("an empty snapshot id".into())));
            }
            if policy.is_empty() && ids.is_empty() {
                return Err(anyhow!(UsageError(
                    "forget needs a policy: --keep-last, --keep-daily, --keep-weekly or --keep-monthly (or snapshot ids)".into()
                )));
            }
            let mut coffer = open(&args)?;
            let (kept, gone) = if ids.is_empty() {
                coffer.forget(&policy, *dry_run).map_err(|e| {
                    let e = anyhow!(e);
                    match coffer.repository().readable_snapshots() {
                        Ok((_, damaged)) if !damaged.is_empty() => e.context(format!(
                            "a damaged snapshot stops forget by policy: remove it first with `coffer forget {}`",
                            damaged[0].0.short()
                        )),
                        _ => e,
                    }
                })?
            } else {
                let repo = coffer.repository();
                let mut gone = Vec::new();
                for spec in ids {
                    let id = repo.snapshot_id(spec)?;
                    if !gone.contains(&id) {
                        gone.push(id);
                    }
                }
                if !*dry_run {
                    for id in &gone {
                        repo.delete_snapshot(id)?;
                    }
                }
                (Vec::new(), gone)
            };
            let pruned = if *prune && !*dry_run {
                Some(coffer.prune()?)
            } else {
                None
            };
            output::forget_summary(&kept, &gone, pruned.as_ref(), *dry_run, args.json);
            Ok(EXIT_OK)
        }
        Command::Prune => {
            let mut coffer = open(&args)?;
            let s = coffer.prune()?;
            output::forget_summary(&[], &[], Some(&s), false, args.json);
            Ok(EXIT_OK)
        }
        Command::Key { cmd } => {
            if matches!(cmd, password::KeyCommand::Forget) {
                refuse_forget_in_recovery_key_mode(&args)?;
            }
            password::key_command(&args, cmd)
        }
    }
}

/// `key forget` on a repository in recovery-key mode is a usage error
/// (exit 2), as every `key` command is there — unless this device still
/// caches a key of it (cached while it was in password mode), which
/// `key forget` then drops.
fn refuse_forget_in_recovery_key_mode(args: &Args) -> anyhow::Result<()> {
    let location = repo_location(args)?;
    let info = Coffer::inspect(&location)?;
    if info.is_password_mode() {
        return Ok(());
    }
    let cached = coffer_client::keycache::default_cache()
        .and_then(|c| c.load(&info.repo_id))
        .is_ok_and(|k| k.is_some());
    if cached {
        return Ok(());
    }
    Err(AccessError::NotPasswordMode { location }.into())
}

pub(crate) fn hex_short(id: &[u8; 16]) -> String {
    id[..4].iter().map(|b| format!("{b:02x}")).collect()
}
