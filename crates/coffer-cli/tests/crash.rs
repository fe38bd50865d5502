//! Crash safety, with real processes: the `coffer` binary is killed with
//! SIGKILL at seeded-random moments during backup and during prune; prunes
//! run while a backup is running; and one crash state of prune (new index
//! written, old not yet deleted) is made exactly, then pruned on.
//!
//! Kills use `Child::kill`, which sends SIGKILL on Unix (no `unsafe`: the
//! workspace forbids it); the exit status is checked to be "killed by signal
//! 9" or a success, nothing else.
//!
//! After every kill the repository must verify. At the end every snapshot
//! that exists — reported by a run that completed, or written by a run that
//! was killed between writing it and printing it — must restore byte-identical
//! to the source as it was when its run started (files by content, mode,
//! mtime and link target; the database logically, since it is captured as
//! SQLite sees it in one read transaction, ADR 0005).
//!
//! Every test runs on each backend (`local::`, `s3::` on moto, `webdav::` on
//! WsgiDAV; see `coffer_testkit::backend_tests!`). Killing a process against
//! a server cuts its HTTP requests mid-flight; the object stores and the
//! WebDAV temporaries must leave nothing half-written behind.
//!
//! Reproducing: every test prints its seed; `COFFER_CRASH_SEED=<seed>` replays
//! the same datasets and kill delays (timing still varies run to run).
//! `COFFER_CRASH_ITERATIONS` (default 25 locally, 10 on S3 and WebDAV),
//! `COFFER_CRASH_PRUNE_ITERATIONS` (24; 8 remotely) and
//! `COFFER_CRASH_CONCURRENT_ROUNDS` (8; 3 remotely) scale them, on every
//! backend when set. The remote defaults are lower to keep CI time down: a
//! remote iteration costs 3-5 times a local one (moto and WsgiDAV are Python
//! servers), and the kill points that matter (before and after the first
//! checkpoint, mid-upload, mid-prune) are all reached within them.
//!
//! Sizes: packs are 16 MiB and a backup writes an index checkpoint every 16
//! packs, so the backup dataset is ~400 MB: a first backup is killed before
//! and after its checkpoint, and the next run must reuse what was indexed.
//! The tests take a lock so they run one at a time: each calibrates its kill
//! delays on the machine and would skew the others' timings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coffer_testkit::{
    backend_tests, db_dump, make_chat_db, random_bytes, rng, snapshot_tree, text_bytes, write_tree,
    Backend, Cli, Entry,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

backend_tests!(
    sigkill_during_backup_many_times,
    sigkill_during_prune_many_times,
    prune_never_deletes_what_a_concurrent_backup_needs,
    prune_after_a_prune_killed_between_index_write_and_delete,
);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// SplitMix64: a tiny seeded generator for delays and choices (the test
/// crate does not depend on `rand`; datasets come from `coffer_testkit::rng`).
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Uniform in `0..=max`, microsecond resolution.
    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}

fn seed(test: &str) -> u64 {
    let s = std::env::var("COFFER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {s} (rerun with COFFER_CRASH_SEED={s})");
    s
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// What a backup run saw: the files, and the database's content.
#[derive(Clone, Debug)]
struct State {
    files: BTreeMap<Vec<u8>, Entry>,
    db: String,
}

/// The data being backed up: a directory and a chat database beside it.
struct Source {
    src: PathBuf,
    db: PathBuf,
}

impl Source {
    fn new(cli: &Cli) -> Self {
        let src = cli.path("data/src");
        fs::create_dir_all(&src).unwrap();
        Self {
            src,
            db: cli.path("data/chat.db"),
        }
    }

    fn capture(&self) -> State {
        State {
            files: snapshot_tree(&self.src),
            db: db_dump(&self.db),
        }
    }

    fn backup_args(&self) -> Vec<&str> {
        vec!["backup", "--db", s(&self.db), s(&self.src)]
    }
}

fn write_random(path: &Path, seed: u64, len: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, random_bytes(&mut rng(seed), len as usize)).unwrap();
}

enum Outcome {
    /// Exited 0 after this long: its JSON output.
    Completed(Value, Duration),
    Killed,
}

/// A `coffer` process and when it was started.
struct Running {
    child: Child,
    started: Instant,
}

fn spawn(cli: &Cli, args: &[&str]) -> Running {
    let started = Instant::now();
    let child = cli
        .command(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coffer");
    Running { child, started }
}

/// Kills the process with SIGKILL `delay` after its start unless it has
/// exited by then.
fn kill_after(mut run: Running, delay: Duration, what: &str) -> Outcome {
    let deadline = run.started + delay;
    loop {
        if run.child.try_wait().expect("try_wait").is_some() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            // On Unix, Child::kill sends SIGKILL. Should the process exit in
            // between, the kill is a no-op and the real status is read below.
            run.child.kill().expect("SIGKILL");
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
    }
    finish(run, what)
}

/// Waits for the process: success (stdout parsed) or death by SIGKILL.
fn finish(run: Running, what: &str) -> Outcome {
    let out = run.child.wait_with_output().expect("wait");
    let took = run.started.elapsed();
    if out.status.success() {
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{what}: unparsable output ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        return Outcome::Completed(v, took);
    }
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{what} failed without being killed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Outcome::Killed
}

fn snapshot_ids(cli: &Cli) -> Vec<String> {
    cli.json(&["snapshots"])
        .as_array()
        .expect("snapshots --json is an array")
        .iter()
        .map(|s| s["id"].as_str().expect("snapshot id").to_string())
        .collect()
}

/// Runs verify; asserts exit 0 and no problem reported.
fn verify(cli: &Cli, read_data: bool, context: &str) -> Value {
    let mut args = vec!["verify", "--json"];
    if read_data {
        args.push("--read-data");
    }
    let out = cli.run(&args);
    assert!(
        out.status.success(),
        "verify failed {context} ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], json!([]), "verify found problems {context}");
    if read_data {
        assert_eq!(v["packs_read"], v["packs"], "verify --read-data {context}");
    }
    v
}

fn assert_same_entries(
    want: &BTreeMap<Vec<u8>, Entry>,
    got: &BTreeMap<Vec<u8>, Entry>,
    context: &str,
) {
    let keys: BTreeSet<&Vec<u8>> = want.keys().chain(got.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .take(5)
        .map(|k| {
            format!(
                "  {}: backed up {:?}, restored {:?}",
                String::from_utf8_lossy(k),
                want.get(k),
                got.get(k)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{context}: restore differs from the source it captured:\n{}",
        diffs.join("\n")
    );
}

/// Restores one snapshot into a scratch directory and compares it with the
/// state its run captured.
fn check_restore(cli: &Cli, source: &Source, id: &str, want: &State, context: &str) {
    let target = cli.path(&format!("restore-{}", &id[..16]));
    let _ = fs::remove_dir_all(&target);
    let v = cli.json(&["restore", id, "--target", s(&target)]);
    assert_eq!(v["failures"], json!([]), "restore {id} {context}");
    let got = snapshot_tree(&Cli::restored(&target, &source.src));
    assert_same_entries(&want.files, &got, &format!("snapshot {id} {context}"));
    let got_db = db_dump(&Cli::restored(&target, &source.db));
    assert_eq!(
        want.db, got_db,
        "snapshot {id} {context}: restored database differs"
    );
    fs::remove_dir_all(&target).unwrap();
}

/// Files and bytes under `dir` (recursively; nothing if it does not exist).
fn usage(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

/// Names of the pack files on storage.
fn pack_files(cli: &Cli) -> BTreeSet<String> {
    cli.names("data/").into_iter().collect()
}

/// Leftovers a crash may leave behind that nothing cleans up (reported, not
/// asserted: they cost space, not correctness). Temporaries are looked at on
/// a local repository only (WebDAV's are not listed).
fn leftovers(cli: &Cli) -> String {
    let tmp = if cli.backend.is_remote() {
        "n/a".to_string()
    } else {
        let (files, bytes) = usage(&cli.local_repo().join(".tmp"));
        format!("{files} ({} MB)", bytes >> 20)
    };
    format!(
        "leftovers: {} lock object(s), temp files in .tmp: {tmp}, {} staged DB image(s)",
        cli.usage("locks/").0,
        usage(&cli.path("cache/staging")).0,
    )
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// Nothing stored yet: everything is uploaded.
    First,
    /// New, changed and deleted files, new database rows.
    Changed,
    /// `--force`: every file re-read and re-chunked, all of it deduplicated.
    Forced,
    /// Nothing changed: the incremental fast path.
    Unchanged,
}

fn mutate(source: &Source, r: &mut Rand, generation: usize) {
    let bulk = source.src.join("bulk");
    for k in 0..r.range(1, 2) {
        let len = r.range(4 << 20, 16 << 20);
        write_random(
            &bulk.join(format!("new-{generation:03}-{k}.bin")),
            r.next(),
            len,
        );
    }
    let mut names: Vec<PathBuf> = fs::read_dir(&bulk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    while names.len() > 24 {
        let gone = names.remove(r.below(names.len() as u64) as usize);
        fs::remove_file(gone).unwrap();
    }
    let notes = source.src.join("notes");
    let note = notes.join(format!("note-{:02}.txt", r.below(20)));
    let mut text = fs::read(&note).unwrap_or_default();
    let len = r.range(100, 20_000) as usize;
    text.extend(text_bytes(&mut rng(r.next()), len));
    fs::write(&note, text).unwrap();
    let len = r.range(1, 50_000) as usize;
    fs::write(
        notes.join(format!("gen-{generation:03}.txt")),
        text_bytes(&mut rng(r.next()), len),
    )
    .unwrap();
    if r.chance(1, 3) {
        let victim = notes.join(format!("gen-{:03}.txt", r.below(generation as u64 + 1)));
        let _ = fs::remove_file(victim);
    }
    make_chat_db(&source.db, r.range(200, 2000) as usize, r.next());
}

fn sigkill_during_backup_many_times(backend: Backend) {
    let _serial = serial();
    let seed = seed(&format!(
        "{}::sigkill_during_backup_many_times",
        backend.name()
    ));
    let iterations = env_usize("COFFER_CRASH_ITERATIONS", backend.pick(25, 10));
    let mut r = Rand(seed);
    let cli = Cli::init_on(Path::new(BIN), backend);
    let source = Source::new(&cli);

    // ~20 MB of awkward small files, ~380 MB in 24 big random files (the
    // first index checkpoint comes two thirds of the way through a first
    // backup), notes that change, a 20k-message chat DB.
    write_tree(&source.src.join("tree"), r.next(), 160, 256 << 10);
    for i in 0..24 {
        let len = r.range(14 << 20, 18 << 20);
        write_random(
            &source.src.join(format!("bulk/base-{i:02}.bin")),
            r.next(),
            len,
        );
    }
    fs::create_dir_all(source.src.join("notes")).unwrap();
    for i in 0..20 {
        let len = r.range(1000, 64_000) as usize;
        fs::write(
            source.src.join(format!("notes/note-{i:02}.txt")),
            text_bytes(&mut rng(r.next()), len),
        )
        .unwrap();
    }
    make_chat_db(&source.db, 20_000, r.next());

    // How long a first, full backup takes here: measured in a scratch
    // repository, so that the real one starts empty.
    let full = {
        let scratch = Cli::init_on(Path::new(BIN), backend);
        let t = Instant::now();
        scratch.json(&source.backup_args());
        t.elapsed()
    };
    println!("a full backup takes {full:?}");
    // How long a run of each mode takes: a completed run says; a killed one
    // says "at least this long". Kills fall uniformly in 0..1.5x that, so
    // about a third of the runs complete.
    let mut estimate: BTreeMap<Mode, Duration> = BTreeMap::from([
        (Mode::First, full),
        (Mode::Changed, full * 2 / 5),
        (Mode::Forced, full * 3 / 5),
        (Mode::Unchanged, Duration::from_millis(300)),
    ]);

    let mut known: Vec<(String, State)> = Vec::new();
    let mut ids_before: BTreeSet<String> = BTreeSet::new();
    let mut current = source.capture();
    let (mut kills, mut completed, mut unreported, mut kills_after_checkpoint) = (0, 0, 0, 0);
    let started = Instant::now();
    for i in 0..iterations {
        let mode = if known.is_empty() {
            Mode::First
        } else {
            match r.below(10) {
                0..=4 => Mode::Changed,
                5..=6 => Mode::Forced,
                _ => Mode::Unchanged,
            }
        };
        if mode == Mode::Changed {
            mutate(&source, &mut r, i);
            current = source.capture();
        }
        let mut args = source.backup_args();
        if mode == Mode::Forced {
            args.push("--force");
        }
        let delay = if mode == Mode::First {
            // Nothing can complete before something is stored: kill most
            // first backups, before or after their checkpoint.
            let full = estimate[&mode];
            full / 5 + r.delay(full * 4 / 5)
        } else {
            r.delay(estimate[&mode] * 3 / 2)
        };
        let indexes_before = cli.usage("index/").0;
        let outcome = kill_after(spawn(&cli, &args), delay, "backup");

        let ids: BTreeSet<String> = snapshot_ids(&cli).into_iter().collect();
        let new: Vec<String> = ids.difference(&ids_before).cloned().collect();
        let what = match outcome {
            Outcome::Completed(v, took) => {
                completed += 1;
                let id = v["snapshot_id"].as_str().unwrap().to_string();
                assert_eq!(
                    new,
                    vec![id.clone()],
                    "a completed backup adds its snapshot"
                );
                estimate.insert(mode, took);
                if mode == Mode::First && indexes_before > 0 {
                    // A killed first backup left an index checkpoint: the
                    // 16 packs it lists (256 MiB) are not uploaded again.
                    assert!(
                        u64_of(&v["bytes_added"]) + (200 << 20) < u64_of(&v["total_bytes"]),
                        "the backup after a checkpoint re-uploaded what it indexed: {v}"
                    );
                }
                known.push((id, current.clone()));
                format!("completed in {took:.2?}")
            }
            Outcome::Killed => {
                kills += 1;
                let e = estimate.entry(mode).or_default();
                *e = (*e).max(delay);
                assert!(new.len() <= 1, "one killed backup wrote {new:?}");
                if known.is_empty() && cli.usage("index/").0 > indexes_before {
                    kills_after_checkpoint += 1;
                }
                if let Some(id) = new.first() {
                    // Killed after writing its snapshot, before reporting it.
                    unreported += 1;
                    known.push((id.clone(), current.clone()));
                }
                "killed".to_string()
            }
        };
        ids_before = ids;
        verify(
            &cli,
            false,
            &format!("after backup #{i} ({mode:?}, {what})"),
        );
        println!(
            "#{i:02} {mode:?}: SIGKILL after {delay:.2?}: {what}; {} index files, {} MB of packs",
            cli.usage("index/").0,
            cli.usage("data/").1 >> 20
        );
    }

    // The next backup, not interrupted, completes.
    let v = cli.json(&source.backup_args());
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    println!(
        "final backup: {} MB new, {} MB added, {} ms",
        u64_of(&v["bytes_new"]) >> 20,
        u64_of(&v["bytes_added"]) >> 20,
        v["duration_ms"]
    );
    known.push((id, current.clone()));
    let loop_time = started.elapsed();

    let v = verify(&cli, true, "at the end");
    for (id, state) in &known {
        check_restore(&cli, &source, id, state, "after the crash loop");
    }
    println!(
        "{iterations} backups in {loop_time:.1?}: {kills} killed ({kills_after_checkpoint} after a checkpoint of a first backup), \
         {completed} completed, {unreported} written but unreported; {} snapshots restored byte-identical; \
         {} packs read back; {}",
        known.len(),
        v["packs_read"],
        leftovers(&cli)
    );
    assert!(
        kills > 0,
        "no backup was ever killed: the test proved nothing"
    );
}

/// One more generation: a new big file, the one before last dropped (so
/// forgetting old snapshots leaves whole packs unreferenced), a changed note,
/// new database rows.
fn new_generation(source: &Source, r: &mut Rand, generation: usize) {
    let gen = source.src.join("gen");
    let len = r.range(10 << 20, 20 << 20);
    write_random(&gen.join(format!("g-{generation:03}.bin")), r.next(), len);
    if generation >= 2 {
        let _ = fs::remove_file(gen.join(format!("g-{:03}.bin", generation - 2)));
    }
    let len = r.range(100, 30_000) as usize;
    fs::write(
        source.src.join(format!("tree/note-{}.txt", r.below(5))),
        text_bytes(&mut rng(r.next()), len),
    )
    .unwrap();
    make_chat_db(&source.db, r.range(100, 1000) as usize, r.next());
}

fn sigkill_during_prune_many_times(backend: Backend) {
    const KEEP: usize = 2;
    let keep = KEEP.to_string();
    let _serial = serial();
    let seed = seed(&format!(
        "{}::sigkill_during_prune_many_times",
        backend.name()
    ));
    let iterations = env_usize("COFFER_CRASH_PRUNE_ITERATIONS", backend.pick(24, 8));
    let mut r = Rand(seed);
    let cli = Cli::init_on(Path::new(BIN), backend);
    let source = Source::new(&cli);
    write_tree(&source.src.join("tree"), r.next(), 60, 64 << 10);
    make_chat_db(&source.db, 3000, r.next());

    let mut snaps: Vec<(String, State)> = Vec::new();
    let mut generation = 0;
    let mut backup_ms = 0;
    // An uninterrupted backup of one more generation.
    let mut backup = |r: &mut Rand, snaps: &mut Vec<(String, State)>| -> u64 {
        new_generation(&source, r, generation);
        generation += 1;
        let state = source.capture();
        let v = cli.json(&source.backup_args());
        snaps.push((v["snapshot_id"].as_str().unwrap().to_string(), state));
        u64_of(&v["duration_ms"])
    };
    for _ in 0..5 {
        backup_ms = backup_ms.max(backup(&mut r, &mut snaps));
    }

    // How long forget + prune takes here, measured on a copy.
    let mut prune_time = {
        let copy = cli.copy();
        let t = Instant::now();
        let v = copy.json(&["forget", "--keep-last", &keep, "--prune"]);
        let took = t.elapsed();
        assert!(
            u64_of(&v["prune"]["packs_deleted"]) > 0,
            "the calibration prune deleted nothing: the dataset does not exercise prune"
        );
        took
    };
    // A backup of a ~2x bigger new file than a generation's.
    let backup_time = Duration::from_millis(2 * backup_ms + 100);
    println!("forget --prune takes {prune_time:?}, a backup about {backup_time:?}");

    // The most the packs ever took, sampled after every step that can add
    // to them: the final prune must leave less. (Sampled only after killed
    // backups, it could stay below what two kept snapshots need, and a
    // correct final prune then looked like one that deleted nothing.)
    let mut peak = cli.usage("data/").1;
    let (mut prune_kills, mut prune_done, mut backup_kills) = (0, 0, 0);
    let started = Instant::now();
    for i in 0..iterations {
        if snaps.len() <= KEEP || r.chance(1, 2) {
            backup(&mut r, &mut snaps);
            peak = peak.max(cli.usage("data/").1);
        }
        if r.chance(1, 3) {
            // A backup killed while uploading: whatever packs it leaves are
            // garbage (the file goes away again), and prune must collect them.
            let extra = source.src.join("gen/extra.bin");
            let len = r.range(24 << 20, 40 << 20);
            write_random(&extra, r.next(), len);
            let state = source.capture();
            let ids_before: BTreeSet<String> = snapshot_ids(&cli).into_iter().collect();
            let delay = r.delay(backup_time);
            match kill_after(spawn(&cli, &source.backup_args()), delay, "backup") {
                Outcome::Completed(v, _) => {
                    snaps.push((v["snapshot_id"].as_str().unwrap().to_string(), state));
                }
                Outcome::Killed => {
                    backup_kills += 1;
                    let new: Vec<String> = snapshot_ids(&cli)
                        .into_iter()
                        .filter(|id| !ids_before.contains(id))
                        .collect();
                    assert!(new.len() <= 1, "one killed backup wrote {new:?}");
                    if let Some(id) = new.first() {
                        snaps.push((id.clone(), state));
                    }
                }
            }
            fs::remove_file(&extra).unwrap();
            peak = peak.max(cli.usage("data/").1);
            verify(&cli, false, &format!("after killing backup #{i}"));
        }

        // Either forget + prune in one process, or forget then prune.
        let args: Vec<&str> = if r.chance(1, 2) {
            vec!["forget", "--keep-last", &keep, "--prune"]
        } else {
            cli.json(&["forget", "--keep-last", &keep]);
            vec!["prune"]
        };
        // As for backups: a completed run says how long a prune takes, a
        // killed one that it takes at least that long.
        let delay = r.delay(prune_time * 3 / 2);
        let what = match kill_after(spawn(&cli, &args), delay, args[0]) {
            Outcome::Completed(_, took) => {
                prune_done += 1;
                prune_time = took;
                "completed"
            }
            Outcome::Killed => {
                prune_kills += 1;
                prune_time = prune_time.max(delay);
                "killed"
            }
        };
        let context = format!("after {} #{i} ({what} after {delay:.2?})", args[0]);
        verify(&cli, false, &context);

        // Every snapshot left is one we made; the newest KEEP were not forgotten.
        let ids: BTreeSet<String> = snapshot_ids(&cli).into_iter().collect();
        for id in &ids {
            assert!(
                snaps.iter().any(|(s, _)| s == id),
                "{context}: unknown snapshot {id}"
            );
        }
        for (id, _) in snaps.iter().rev().take(KEEP) {
            assert!(ids.contains(id), "{context}: snapshot {id} is gone");
        }
        snaps.retain(|(id, _)| ids.contains(id));
        for (id, state) in &snaps {
            check_restore(&cli, &source, id, state, &context);
        }
        println!(
            "#{i:02} {}: {what} after {delay:.2?}; {} snapshots, {} packs ({} MB)",
            args.join(" "),
            snaps.len(),
            cli.usage("data/").0,
            cli.usage("data/").1 >> 20
        );
    }

    // A full prune finishes the job: nothing waits, nothing unreferenced or
    // unindexed is left, and a second prune finds nothing to do.
    let v = cli.json(&["forget", "--keep-last", &keep, "--prune"]);
    assert_eq!(v["prune"]["packs_waiting"], json!(0), "{v}");
    let v = cli.json(&["prune"]);
    assert_eq!(v["prune"]["packs_deleted"], json!(0), "second prune: {v}");
    assert_eq!(v["prune"]["packs_waiting"], json!(0), "second prune: {v}");
    assert_eq!(
        cli.usage("condemned/").0,
        0,
        "condemnation records left after a complete prune"
    );
    let v = verify(&cli, true, "after the final prune");
    let (packs, bytes) = cli.usage("data/");
    assert_eq!(
        u64_of(&v["packs"]),
        packs,
        "pack files on storage that no index lists survived the final prune"
    );
    assert!(
        bytes < peak,
        "the repository did not shrink: {bytes} bytes of packs, peak {peak}"
    );
    let ids: BTreeSet<String> = snapshot_ids(&cli).into_iter().collect();
    snaps.retain(|(id, _)| ids.contains(id));
    assert_eq!(snaps.len(), KEEP);
    for (id, state) in &snaps {
        check_restore(&cli, &source, id, state, "after the final prune");
    }
    println!(
        "{iterations} prunes in {:.1?}: {prune_kills} killed, {prune_done} completed; {backup_kills} backups killed; \
         packs {} MB at peak, {} MB at the end; {}",
        started.elapsed(),
        peak >> 20,
        bytes >> 20,
        leftovers(&cli)
    );
    assert!(
        prune_kills > 0,
        "no prune was ever killed: the test proved nothing"
    );
}

/// Waits until a backup session object appears under `locks/`.
fn wait_for_session(cli: &Cli, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli.usage("locks/").0 == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before its session was seen"
        );
        assert!(Instant::now() < deadline, "no backup session appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until a pack not in `before` appears on storage.
fn wait_for_new_pack(cli: &Cli, child: &mut Child, before: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while pack_files(cli).is_subset(before) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it uploaded a pack"
        );
        assert!(Instant::now() < deadline, "the backup uploaded no pack");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `forget --keep-last 1 --prune` back to back while `child` runs;
/// returns the outputs of the prunes that ended while it was still running.
fn prune_while_running(cli: &Cli, child: &mut Child) -> Vec<Value> {
    let mut during = Vec::new();
    loop {
        let v = cli.json(&["forget", "--keep-last", "1", "--prune"]);
        if child.try_wait().unwrap().is_some() {
            return during;
        }
        during.push(v);
    }
}

fn prune_never_deletes_what_a_concurrent_backup_needs(backend: Backend) {
    let _serial = serial();
    let seed = seed(&format!(
        "{}::prune_never_deletes_what_a_concurrent_backup_needs",
        backend.name()
    ));
    let rounds = env_usize("COFFER_CRASH_CONCURRENT_ROUNDS", backend.pick(8, 3));
    let mut r = Rand(seed);
    let cli = Cli::init_on(Path::new(BIN), backend);
    let source = Source::new(&cli);
    write_tree(&source.src.join("tree"), r.next(), 40, 64 << 10);
    make_chat_db(&source.db, 3000, r.next());
    let bulk = source.src.join("bulk");
    let mut bulk_bytes = 0;
    for i in 0..12 {
        let len = r.range(15 << 20, 17 << 20);
        bulk_bytes += len;
        write_random(&bulk.join(format!("b-{i:02}.bin")), r.next(), len);
    }

    // S1 holds the bulk data; S2, newer, does not: forgetting S1 leaves the
    // bulk packs unreferenced.
    let s1 = cli.json(&source.backup_args())["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s1_packs = pack_files(&cli);
    let parked = cli.path("data/parked");
    fs::rename(&bulk, &parked).unwrap();
    cli.json(&source.backup_args());
    fs::rename(&parked, &bulk).unwrap();
    // New data too (~190 MB, ~320 MB against a server): a slower backup,
    // with packs of its own, that goes on long enough after its first upload
    // for prunes to run (a prune takes 10-20 times longer against a server
    // than on a local disk).
    let mut new_bytes = 0;
    for i in 0..backend.pick(12, 20) {
        let len = r.range(15 << 20, 17 << 20);
        new_bytes += len;
        write_random(&source.src.join(format!("new/n-{i}.bin")), r.next(), len);
    }
    let want = source.capture();

    // B3 re-reads the bulk data and deduplicates it against S1's packs while
    // S1 is forgotten and pruned under it. The prunes start once B3 uploads
    // its first new pack: by then it has loaded the index and the
    // condemnation records (a prune's record seen by B3 before that would
    // rightly stop it from deduplicating against S1, and the test would
    // prove nothing), and decided to reuse S1's packs ("bulk" is walked
    // before "new"), which it will name in its snapshot.
    let packs_before = pack_files(&cli);
    let mut child = spawn(&cli, &source.backup_args());
    wait_for_session(&cli, &mut child.child);
    wait_for_new_pack(&cli, &mut child.child, &packs_before);
    let during = prune_while_running(&cli, &mut child.child);
    let Outcome::Completed(b3, _) = finish(child, "backup") else {
        unreachable!("finish panics unless the backup succeeded or was killed")
    };
    assert!(
        !during.is_empty(),
        "no prune completed while the backup ran: make the backup slower"
    );
    assert_eq!(
        during[0]["forgotten"],
        json!([s1]),
        "the first prune forgets S1"
    );
    for v in &during {
        assert!(
            u64_of(&v["prune"]["packs_waiting"]) > 0,
            "a prune during a backup condemned nothing or deleted it at once: {v}"
        );
    }
    let b3_id = b3["snapshot_id"].as_str().unwrap().to_string();
    assert!(
        u64_of(&b3["bytes_new"]) < new_bytes + bulk_bytes / 10,
        "the backup did not deduplicate against S1 ({} bytes new, {new_bytes} of them in new files): \
         it did not depend on S1's packs",
        b3["bytes_new"]
    );
    let now = pack_files(&cli);
    let lost: Vec<&String> = s1_packs.difference(&now).collect();
    println!(
        "{} prunes ran during the backup; {} of S1's {} packs deleted",
        during.len(),
        lost.len(),
        s1_packs.len()
    );
    verify(&cli, true, "after prunes concurrent with a backup");
    check_restore(&cli, &source, &b3_id, &want, "after concurrent prunes");

    // With the backup gone, a prune deletes what is unused and keeps the rest.
    let v = cli.json(&["prune"]);
    assert_eq!(v["prune"]["packs_waiting"], json!(0), "{v}");
    verify(&cli, true, "after the prune that followed");
    check_restore(
        &cli,
        &source,
        &b3_id,
        &want,
        "after the prune that followed",
    );

    // More rounds, smaller: a backup of new data with prunes back to back
    // until it ends, so that some prune overlaps the backup's last steps
    // (final index, snapshot, end of session).
    fs::remove_dir_all(&bulk).unwrap();
    fs::remove_dir_all(source.src.join("new")).unwrap();
    let mut overlapping = 0;
    for round in 0..rounds {
        let len = r.range(20 << 20, 40 << 20);
        write_random(
            &source.src.join(format!("new/r-{round:02}.bin")),
            r.next(),
            len,
        );
        if round >= 2 {
            let _ = fs::remove_file(source.src.join(format!("new/r-{:02}.bin", round - 2)));
        }
        make_chat_db(&source.db, 300, r.next());
        let want = source.capture();
        let mut child = spawn(&cli, &source.backup_args());
        let during = prune_while_running(&cli, &mut child.child);
        overlapping += during.len();
        let Outcome::Completed(v, _) = finish(child, "backup") else {
            unreachable!("finish panics unless the backup succeeded or was killed")
        };
        let id = v["snapshot_id"].as_str().unwrap().to_string();
        let context = format!("round {round} ({} prunes during the backup)", during.len());
        verify(&cli, true, &context);
        check_restore(&cli, &source, &id, &want, &context);
    }
    println!(
        "{rounds} more rounds, {overlapping} prunes completed during their backups; {}",
        leftovers(&cli)
    );
}

/// The state a prune killed between writing its new index file and deleting
/// the old one leaves, made exactly (the new file is taken from a complete
/// prune of a copy): kept packs are listed by two index files. Later prunes
/// must still never leave an index entry for a pack they delete — a backup
/// would deduplicate against it.
fn prune_after_a_prune_killed_between_index_write_and_delete(backend: Backend) {
    let _serial = serial();
    let seed = seed(&format!(
        "{}::prune_after_a_prune_killed_between_index_write_and_delete",
        backend.name()
    ));
    let mut r = Rand(seed);
    let cli = Cli::init_on(Path::new(BIN), backend);
    let source = Source::new(&cli);
    make_chat_db(&source.db, 1000, r.next());
    // 40 MB each: f0 and f1 have packs of their own, all in one index file.
    let (f0, f1) = (source.src.join("f0.bin"), source.src.join("f1.bin"));
    write_random(&f0, r.next(), 40 << 20);
    write_random(&f1, r.next(), 40 << 20);
    cli.json(&source.backup_args());
    fs::remove_file(&f1).unwrap();
    cli.json(&source.backup_args());
    cli.json(&["forget", "--keep-last", "1"]);

    let copy = cli.copy();
    let v = copy.json(&["prune"]);
    assert!(u64_of(&v["prune"]["packs_deleted"]) > 0, "{v}");
    let mut added = 0;
    let ours: BTreeSet<String> = cli.names("index/").into_iter().collect();
    for name in copy.names("index/") {
        if !ours.contains(&name) {
            cli.put(&name, &copy.get(&name));
            added += 1;
        }
    }
    assert_eq!(added, 1, "the prune of the copy wrote one new index file");
    verify(&cli, false, "in the crash state");
    cli.json(&["prune"]);
    verify(&cli, false, "after the prune that finished the job");

    // Now f0's packs become unused and are deleted.
    let saved = cli.path("data/f0.saved");
    fs::rename(&f0, &saved).unwrap();
    fs::write(source.src.join("small.txt"), b"small").unwrap();
    cli.json(&source.backup_args());
    cli.json(&["forget", "--keep-last", "1", "--prune"]);
    verify(&cli, false, "after f0's packs were pruned");

    // f0 comes back: the backup must upload it again, not trust a stale entry.
    fs::rename(&saved, &f0).unwrap();
    let want = source.capture();
    let v = cli.json(&source.backup_args());
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    verify(&cli, true, "after f0 was backed up again");
    check_restore(&cli, &source, &id, &want, "after f0 was backed up again");
}
