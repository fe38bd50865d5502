//! Vault login benchmark (issue #3 point 10): server-side OPAQUE logins per
//! second per core through the whole path (HTTP, channel, core, sealing,
//! store, NVRAM) against raw opaque-ke on the same machine in the same run.
//!
//! ```text
//! cargo build --release -p coffer-vault --examples --bins
//! target/release/examples/loginbench all --bin target/release/coffer-vault
//! ```
//!
//! (`bench/vault.sh` does both.) Three measurements per run, each pinned:
//!
//! - `raw`: opaque-ke 4.0.1 with `CofferSuite`, server side only
//!   (`ServerLogin::start` + `finish`, including deserializing the stored
//!   password file, KE1 and KE3 and serializing KE2, like the core), one
//!   thread on the server CPU; client messages precomputed.
//! - `core`: the trusted core (`coffer-vault-core`) in process, same CPU,
//!   with an in-memory store and NVRAM: channel (HPKE), OPAQUE, record
//!   sealing, Merkle tree, marker; no HTTP, no redb, no fsync.
//! - `path`: the real daemon (`coffer-vault serve`) pinned to the server CPU,
//!   this load generator pinned to the other CPU, HTTP/1.1 keep-alive, C
//!   concurrent clients; server CPU from `/proc/<pid>/stat`.
//! - `floor`: the same load against a server that does only what no
//!   conforming server can skip (axum HTTP on the daemon's runtime, the
//!   channel's HPKE, opaque-ke) and nothing else: no tokens, record, tree,
//!   store or fsync (`floor-serve`; `--no-floor` skips it). A lower bound for
//!   the whole path on this machine. `FLOOR_RUNTIME=current` serves it on a
//!   single-threaded tokio runtime instead.
//! - `http`: the same load against the floor server in `--http-only` mode:
//!   the same axum app and runtime, but each request gets a recorded real
//!   reply of the right size, with no crypto at all. What two HTTP requests
//!   cost per login on this machine (`--no-http-floor` skips it). With raw
//!   and the HPKE accept it gives the **ceiling from parts**: raw / (raw +
//!   HPKE accept + HTTP), the best any server doing the mandated work could
//!   reach if running them together cost nothing extra.
//!
//! The machine's speed drifts by 10-20% within minutes (a shared VM), so
//! every `path` and `floor` phase runs between two short raw runs on the
//! server CPU (3,000 logins each), and its % of raw is against their mean.
//!
//! Every measured login is a wrong-password login with a random KE3: the
//! client never runs Argon2, and the server's work is the same as for a
//! correct KE3 (opaque-ke compares the KE3 MAC with one computed in
//! `ServerLogin::start`; `raw` measures both to show it). Each user gets at
//! most 9 wrong logins (of 10 attempts), so no record is ever erased.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use clap::{Parser, Subcommand};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use coffer_vault::realm::EngineMode;
use coffer_vault_core::merkle::bucket_of;
use coffer_vault_core::{
    Bucket, Core, CoreError, Input, Platform, PlatformError, RealmConfig, RecordId, StoreWrites,
};
use coffer_vault_proto::client::{Login, Registration};
use coffer_vault_proto::realm::REALM_FORMAT;
use coffer_vault_proto::suite::opaque_context;
use coffer_vault_proto::{
    ClientChannel, CofferSuite, ErrorCode, KsfParams, RealmDescriptor, Request, Response,
};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, ServerLogin, ServerLoginParameters, ServerRegistration,
    ServerSetup,
};

/// The smallest Argon2id a client accepts (what `bench/vault.sh` inits realms with).
const KSF_MEMORY_KIB: u32 = 19456;
const KSF_ITERATIONS: u32 = 1;
/// Wrong logins per user at most (of 10 attempts): no record is erased.
const WRONG_PER_USER: usize = 9;
const TENANT: &str = "bench";

#[derive(Parser)]
#[command(about = "Coffer vault login benchmark: whole path vs raw opaque-ke")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything, `--runs` times: raw and core (subprocess pinned to the
    /// server CPU), then the daemon; prints the tables.
    All(Box<AllArgs>),
    /// Raw opaque-ke and the in-process core; prints JSON (used by `all`).
    Raw(RawArgs),
    /// Replicated realms (issue 4 point 6): the same whole-path workload
    /// against a single-node vault (`init`) and `realm new` realms of N
    /// nodes, sent to the leader (and, for one size, to a follower).
    Realm(Box<RealmArgs>),
    /// Where the server's CPU goes: `perf script` output (from a `--perf`
    /// phase) on stdin, grouped by what each sample's call stack is doing.
    /// The floor server (used by `all`): HTTP (axum, as the daemon) + the
    /// channel + opaque-ke and nothing else; writes its realm descriptor to
    /// `--realm-out`, then serves on 127.0.0.1:`--port`.
    #[command(hide = true)]
    FloorServe {
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// Where the realm descriptor goes.
        #[arg(long)]
        realm_out: PathBuf,
        /// No crypto: answer every open and send with a recorded real reply
        /// (HTTP cost only).
        #[arg(long)]
        http_only: bool,
    },
    /// Prints the tables of an earlier `all` from its results.json (for
    /// example after the tables gained a section).
    Render {
        /// The results.json of `all`.
        json: PathBuf,
    },
    PerfSummary {
        /// Server CPU µs per login to scale the shares with (e.g. the
        /// unprofiled C=64 phase); 0: shares only.
        #[arg(long, default_value_t = 0.0)]
        us_per_login: f64,
        /// Group by the realm categories (log, peers, forwarding) of
        /// `loginbench realm`, for a node of a replicated realm.
        #[arg(long)]
        realm: bool,
    },
}

#[derive(clap::Args, Clone)]
struct RawArgs {
    /// CPU to pin to once set up.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Timed raw logins (wrong KE3).
    #[arg(long, default_value_t = 20_000)]
    logins: usize,
    /// Raw logins with a correct KE3 (each costs the client an Argon2 run, untimed).
    #[arg(long, default_value_t = 50)]
    correct: usize,
    /// Registered users for the raw loop.
    #[arg(long, default_value_t = 16)]
    raw_users: usize,
    /// Users of the in-process core measurement (one Argon2 each to register).
    #[arg(long, default_value_t = 256)]
    core_users: usize,
    /// Batch sizes of the in-process core measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    core_batches: Vec<usize>,
    /// Raw opaque-ke only (no in-process core, no HPKE accept): the short
    /// probe `all` runs before and after every phase.
    #[arg(long)]
    no_core: bool,
}

#[derive(clap::Args, Clone)]
struct AllArgs {
    /// The coffer-vault binary.
    #[arg(long, default_value = "target/release/coffer-vault")]
    bin: PathBuf,
    /// Runs (each: fresh realm, raw + core + path).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// CPU of the server (and of raw/core).
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU of the load generator.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Concurrent clients of the whole-path phases.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64,128")]
    concurrency: Vec<usize>,
    /// Logins per whole-path phase (at most).
    #[arg(long, default_value_t = 10_000)]
    phase_logins: usize,
    /// Seconds per whole-path phase (at most).
    #[arg(long, default_value_t = 10.0)]
    phase_secs: f64,
    /// Registered users of the daemon (0: enough for all phases at 9 wrong logins each).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Client threads registering users (Argon2 once per user).
    #[arg(long, default_value_t = 4)]
    register_threads: usize,
    /// After the measured phases, profile the server with `perf record` for
    /// a phase at the highest concurrency; perf.data goes into --out.
    #[arg(long)]
    perf: bool,
    /// Concurrency of the profiled phase (default: the highest of --concurrency).
    #[arg(long)]
    perf_concurrency: Option<usize>,
    /// `perf record` call-graph option (`fp`, `dwarf`, or `none`).
    #[arg(long, default_value = "dwarf")]
    perf_callgraph: String,
    /// Where results go (results.json, results.md, server logs, perf.data).
    #[arg(long, default_value = "bench/work/vault")]
    out: PathBuf,
    /// Before each measurement, wait until all CPUs together are less busy
    /// than this fraction (the machine may be shared).
    #[arg(long, default_value_t = 0.08)]
    quiet_threshold: f64,
    /// Longest wait for a quiet machine, seconds (then measure anyway).
    #[arg(long, default_value_t = 900.0)]
    quiet_wait_secs: f64,
    /// Working directory for realms (default: a temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Skip the floor server's phases (HTTP + channel + opaque-ke only).
    #[arg(long)]
    no_floor: bool,
    /// Skip the HTTP-only phases (the floor server answering without crypto).
    #[arg(long)]
    no_http_floor: bool,
    /// `coffer-vault serve --engine`.
    #[arg(long, value_enum, default_value_t = EngineMode::Thread)]
    engine: EngineMode,
    /// Keep-alive connections of the saturating HTTP-only measurement (an
    /// async client on the load generator's CPU; 0 skips it).
    #[arg(long, default_value_t = 128)]
    saturate_connections: usize,
    #[command(flatten)]
    raw: RawArgs,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Raw(a) => {
            let r = run_raw(&a)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::All(a) => run_all(&a),
        Cmd::Realm(a) => run_realms(&a),
        Cmd::FloorServe {
            port,
            realm_out,
            http_only,
        } => floor_serve(port, &realm_out, http_only),
        Cmd::Render { json } => {
            let runs: Vec<RunResult> = serde_json::from_slice(&std::fs::read(&json)?)?;
            println!("{}", render(&runs));
            Ok(())
        }
        Cmd::PerfSummary {
            us_per_login,
            realm,
        } => perf_summary(us_per_login, realm),
    }
}

// ---------------------------------------------------------------- process tools

/// Moves every thread of `pid` to `cpus` (`taskset -a -p`; no unsafe code).
fn set_affinity(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("taskset (util-linux) is needed")?;
    ensure!(
        out.status.success(),
        "taskset -a -p -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn clk_tck() -> anyhow::Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()?)
}

/// utime + stime of a process (all its threads, dead ones included), clock ticks.
fn proc_ticks(pid: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // field 14 (utime) and 15 (stime) → indices 11, 12 after "state".
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// Busy clock ticks of one CPU (everything but idle and iowait, kernel
/// threads and softirqs included) from /proc/stat.
fn cpu_busy_ticks(cpu: usize) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| anyhow!("{name} not in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = v.iter().take(8).sum();
    Ok(total - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0))
}

/// (busy, total) clock ticks over all CPUs.
fn all_cpus_ticks() -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The machine is shared: waits (up to `max_wait_s`) until all CPUs together
/// are less than `threshold` busy over a 2-second window, so that builds of
/// other users do not land in a measurement. Returns whether it got quiet.
fn wait_quiet(threshold: f64, max_wait_s: f64) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let mut said = false;
    loop {
        let (b0, t0_) = all_cpus_ticks()?;
        std::thread::sleep(Duration::from_secs(2));
        let (b1, t1_) = all_cpus_ticks()?;
        let busy = (b1 - b0) as f64 / (t1_ - t0_).max(1) as f64;
        if busy < threshold {
            if said {
                eprintln!("  quiet after {:.0} s", t0.elapsed().as_secs_f64());
            }
            return Ok(true);
        }
        if t0.elapsed().as_secs_f64() > max_wait_s {
            eprintln!(
                "  machine still {:.0}% busy after {:.0} s; measuring anyway (see the other-load columns)",
                100.0 * busy,
                max_wait_s
            );
            return Ok(false);
        }
        if !said {
            eprintln!(
                "  machine {:.0}% busy (other users' processes); waiting for it to be quiet",
                100.0 * busy
            );
            said = true;
        }
    }
}

/// On-CPU nanoseconds of a process's live threads (schedstat, ns resolution).
fn proc_sched_ns(pid: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// On-CPU nanoseconds of the calling thread.
fn thread_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ksf() -> KsfParams {
    KsfParams {
        memory_kib: KSF_MEMORY_KIB,
        iterations: KSF_ITERATIONS,
        parallelism: 1,
        ..KsfParams::default()
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Runs `f` over `items` on `threads` threads (set-up work: Argon2).
fn par_map<T: Send, U: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> anyhow::Result<U> + Sync,
) -> anyhow::Result<Vec<U>> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let out: Mutex<Vec<Option<U>>> = Mutex::new((0..n).map(|_| None).collect());
    let err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((i, item)) = next else { break };
                match f(item) {
                    Ok(u) => {
                        if let Ok(mut o) = out.lock() {
                            o[i] = Some(u);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut er) = err.lock() {
                            er.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().map_err(|_| anyhow!("poisoned"))? {
        return Err(e);
    }
    out.into_inner()
        .map_err(|_| anyhow!("poisoned"))?
        .into_iter()
        .map(|o| o.ok_or_else(|| anyhow!("par_map: missing result")))
        .collect()
}

// ---------------------------------------------------------------- raw opaque-ke

/// serde_json writes NaN as null; read null back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct RawResult {
    logins: usize,
    /// Wall µs per login (start + finish), quantiles over logins.
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    /// Thread on-CPU µs per login over the whole timed loop.
    cpu_us: f64,
    start_p50_us: f64,
    finish_p50_us: f64,
    correct_samples: usize,
    #[serde(deserialize_with = "nan_if_null")]
    correct_start_p50_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    correct_finish_p50_us: f64,
    /// Same users, same loop, wrong KE3, sampled next to the correct ones.
    #[serde(deserialize_with = "nan_if_null")]
    wrong_start_p50_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    wrong_finish_p50_us: f64,
    /// `ServerChannel::accept` of an open frame (HPKE X25519 decap, key
    /// schedule, ChaCha20-Poly1305 open of 448 bytes, export): p50 µs.
    hpke_accept_p50_us: f64,
    /// Busy time of the CPU not spent by this thread during the raw loop, % of wall.
    other_load_pct: f64,
    /// The same over the in-process core measurement.
    core_other_load_pct: f64,
    core: Vec<CoreResult>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct CoreResult {
    batch: usize,
    logins: usize,
    /// Wall µs per login in prepare + store + commit, on a pinned quiet CPU.
    us_per_login: f64,
}

struct RawUser {
    id: [u8; 32],
    password: Vec<u8>,
    file: Vec<u8>,
}

/// Registers a user with opaque-ke directly (client Argon2 included): a
/// random credential id and the serialized password file.
fn raw_user(
    setup: &ServerSetup<CofferSuite>,
    ksf: &KsfParams,
    password: Vec<u8>,
) -> anyhow::Result<RawUser> {
    let argon = ksf.argon2()?;
    let mut id = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    let start = ClientRegistration::<CofferSuite>::start(&mut OsRng, &password)
        .map_err(|e| anyhow!("{e:?}"))?;
    let resp = ServerRegistration::<CofferSuite>::start(setup, start.message, &id)
        .map_err(|e| anyhow!("{e:?}"))?;
    let fin = start
        .state
        .finish(
            &mut OsRng,
            &password,
            resp.message,
            ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&argon)),
        )
        .map_err(|e| anyhow!("{e:?}"))?;
    Ok(RawUser {
        id,
        password,
        file: ServerRegistration::finish(fin.message).serialize().to_vec(),
    })
}

fn server_params(context: &[u8]) -> ServerLoginParameters<'_, 'static> {
    ServerLoginParameters {
        context: Some(context),
        identifiers: Identifiers::default(),
    }
}

/// One server-side login exactly as the core does it: deserialize the
/// password file and KE1, `ServerLogin::start`, serialize KE2; then
/// deserialize KE3 and `finish`. Returns (start µs, finish µs, finish ok).
fn raw_login(
    setup: &ServerSetup<CofferSuite>,
    context: &[u8],
    user: &RawUser,
    ke1: &[u8],
    ke3: impl FnOnce(&[u8]) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<(f64, f64, bool)> {
    let t0 = Instant::now();
    let file = ServerRegistration::<CofferSuite>::deserialize(&user.file)
        .map_err(|e| anyhow!("password file: {e:?}"))?;
    let ke1 = CredentialRequest::<CofferSuite>::deserialize(ke1).map_err(|e| anyhow!("{e:?}"))?;
    let start = ServerLogin::start(
        &mut OsRng,
        setup,
        Some(file),
        ke1,
        &user.id,
        server_params(context),
    )
    .map_err(|e| anyhow!("ServerLogin::start: {e:?}"))?;
    let ke2 = black_box(start.message.serialize());
    let t_start = t0.elapsed();
    let ke3 = ke3(&ke2)?; // untimed: the client's side
    let t1 = Instant::now();
    let ok = match CredentialFinalization::<CofferSuite>::deserialize(&ke3) {
        Ok(m) => black_box(start.state.finish(m, server_params(context))).is_ok(),
        Err(_) => false,
    };
    let t_finish = t1.elapsed();
    Ok((
        t_start.as_secs_f64() * 1e6,
        t_finish.as_secs_f64() * 1e6,
        ok,
    ))
}

/// Busy time of `cpu` since `busy0` not spent by this thread (`own_ns`), % of wall.
fn other_load(
    cpu: usize,
    busy0: u64,
    wall0: Instant,
    own_ns: u64,
    tck: f64,
) -> anyhow::Result<f64> {
    let busy_s = cpu_busy_ticks(cpu)?.saturating_sub(busy0) as f64 / tck;
    let wall = wall0.elapsed().as_secs_f64();
    Ok(100.0 * (busy_s - own_ns as f64 / 1e9).max(0.0) / wall)
}

fn run_raw(a: &RawArgs) -> anyhow::Result<RawResult> {
    // Set-up on every CPU (Argon2 for registrations), then pin.
    let realm_id = {
        let mut r = [0u8; 16];
        OsRng.fill_bytes(&mut r);
        r
    };
    let context = opaque_context(&realm_id);
    let argon = ksf().argon2()?;
    let setup = ServerSetup::<CofferSuite>::new(&mut OsRng);
    let users = par_map((0..a.raw_users).collect(), 2, |i| {
        raw_user(&setup, &ksf(), format!("correct horse {i}").into_bytes())
    })?;
    let core_setup = if a.no_core {
        None
    } else {
        Some(core_setup(a)?)
    };
    // Open frames for the HPKE micro-measurement.
    let channel_key = coffer_vault_proto::channel::ChannelKey::derive(&[9u8; 32]);
    let hpke_realm = RealmDescriptor {
        format: REALM_FORMAT.into(),
        realm_id,
        public_key: channel_key.public_key(),
        ksf: ksf(),
        max_attempts_limit: 10,
        address: "in-process".into(),
    };
    let hpke_frames: Vec<Vec<u8>> = (0..if a.no_core { 0 } else { 2000 })
        .map(|_| {
            let ke1 = Box::new([0u8; 96]);
            ClientChannel::open(
                &hpke_realm,
                &Request::LoginStart { ke1 },
                now_ms(),
                &mut OsRng,
            )
            .map(|(_, f)| f)
            .map_err(|e| anyhow!("{e}"))
        })
        .collect::<Result<_, _>>()?;
    let ke1s: Vec<Vec<u8>> = (0..a.logins)
        .map(|_| {
            ClientLogin::<CofferSuite>::start(&mut OsRng, b"wrong password")
                .map(|s| s.message.serialize().to_vec())
                .map_err(|e| anyhow!("{e:?}"))
        })
        .collect::<Result<_, _>>()?;
    let ke3s: Vec<Vec<u8>> = (0..a.logins)
        .map(|_| {
            let mut k = vec![0u8; 64];
            OsRng.fill_bytes(&mut k);
            k
        })
        .collect();
    set_affinity(std::process::id(), &a.cpu.to_string())?;
    std::thread::sleep(Duration::from_millis(50));

    // Warm-up.
    for i in 0..a.logins.min(500) {
        let k3 = ke3s[i].clone();
        raw_login(&setup, &context, &users[i % users.len()], &ke1s[i], |_| {
            Ok(k3)
        })?;
    }
    // Timed: wrong KE3s.
    let mut total = Vec::with_capacity(a.logins);
    let mut starts = Vec::with_capacity(a.logins);
    let mut finishes = Vec::with_capacity(a.logins);
    let tck = clk_tck()?;
    let busy0 = cpu_busy_ticks(a.cpu)?;
    let wall0 = Instant::now();
    let cpu0 = thread_ns();
    for i in 0..a.logins {
        let k3 = &ke3s[i];
        let (s, f, ok) = raw_login(&setup, &context, &users[i % users.len()], &ke1s[i], |_| {
            Ok(k3.clone())
        })?;
        ensure!(!ok, "a random KE3 verified");
        total.push(s + f);
        starts.push(s);
        finishes.push(f);
    }
    let cpu_ns = thread_ns() - cpu0;
    let other_load_pct = other_load(a.cpu, busy0, wall0, cpu_ns, tck)?;
    let cpu_us = cpu_ns as f64 / 1e3 / a.logins as f64;
    let total = sorted(total);
    let mean_us = total.iter().sum::<f64>() / total.len() as f64;

    // Correct KE3s (the client's Argon2 runs between start and finish,
    // untimed), interleaved with wrong ones over the same users.
    let (mut cs, mut cf, mut ws, mut wf) = (vec![], vec![], vec![], vec![]);
    for j in 0..a.correct {
        let u = &users[j % users.len()];
        let cl = ClientLogin::<CofferSuite>::start(&mut OsRng, &u.password)
            .map_err(|e| anyhow!("{e:?}"))?;
        let ke1 = cl.message.serialize().to_vec();
        let state = cl.state;
        let (s, f, ok) = raw_login(&setup, &context, u, &ke1, |ke2| {
            let resp = CredentialResponse::<CofferSuite>::deserialize(ke2)
                .map_err(|e| anyhow!("{e:?}"))?;
            let fin = state
                .finish(
                    &mut OsRng,
                    &u.password,
                    resp,
                    ClientLoginFinishParameters::new(
                        Some(&context),
                        Identifiers::default(),
                        Some(&argon),
                    ),
                )
                .map_err(|e| anyhow!("client finish: {e:?}"))?;
            Ok(fin.message.serialize().to_vec())
        })?;
        ensure!(ok, "a correct KE3 did not verify");
        cs.push(s);
        cf.push(f);
        let i = j % ke1s.len();
        let k3 = ke3s[i].clone();
        let (s, f, ok) = raw_login(&setup, &context, u, &ke1s[i], |_| Ok(k3))?;
        ensure!(!ok, "a random KE3 verified");
        ws.push(s);
        wf.push(f);
    }
    let p50 = |v: Vec<f64>| quantile(&sorted(v), 0.5);

    let mut hpke = Vec::with_capacity(hpke_frames.len());
    for f in &hpke_frames {
        let t = Instant::now();
        let acc = coffer_vault_proto::channel::ServerChannel::accept(&channel_key, &realm_id, f)
            .map_err(|e| anyhow!("{e}"))?;
        black_box(acc);
        hpke.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let busy0 = cpu_busy_ticks(a.cpu)?;
    let wall0 = Instant::now();
    let cpu0 = thread_ns();
    let core = match core_setup {
        Some(c) => core_bench(a, c)?,
        None => Vec::new(),
    };
    let core_other_load_pct = other_load(a.cpu, busy0, wall0, thread_ns() - cpu0, tck)?;
    Ok(RawResult {
        logins: a.logins,
        p50_us: quantile(&total, 0.5),
        p99_us: quantile(&total, 0.99),
        mean_us,
        cpu_us,
        start_p50_us: p50(starts),
        finish_p50_us: p50(finishes),
        correct_samples: a.correct,
        correct_start_p50_us: p50(cs),
        correct_finish_p50_us: p50(cf),
        wrong_start_p50_us: p50(ws),
        wrong_finish_p50_us: p50(wf),
        hpke_accept_p50_us: p50(hpke),
        other_load_pct,
        core_other_load_pct,
        core,
    })
}

// ---------------------------------------------------------------- the core, in process

/// Clock and OS randomness like the daemon's platform; NVRAM in memory.
#[derive(Clone, Default)]
struct MemPlatform {
    nvram: Rc<RefCell<Option<Vec<u8>>>>,
}

impl Platform for MemPlatform {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
    fn fill_random(&mut self, buf: &mut [u8]) {
        OsRng.fill_bytes(buf)
    }
    fn nvram_read(&self) -> Result<Option<Vec<u8>>, PlatformError> {
        Ok(self.nvram.borrow().clone())
    }
    fn nvram_write(&mut self, data: &[u8]) -> Result<(), PlatformError> {
        *self.nvram.borrow_mut() = Some(data.to_vec());
        Ok(())
    }
}

/// The store, in memory: records by bucket (what `Store::buckets` reads).
#[derive(Default)]
struct MemStore {
    buckets: HashMap<u16, BTreeMap<RecordId, Vec<u8>>>,
}

impl MemStore {
    fn read(&self, wanted: &[u16]) -> Vec<Bucket> {
        wanted
            .iter()
            .map(|&b| Bucket {
                index: b,
                records: self
                    .buckets
                    .get(&b)
                    .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
                    .unwrap_or_default(),
            })
            .collect()
    }
    fn apply(&mut self, w: &StoreWrites) {
        for (id, sealed) in &w.records {
            self.buckets
                .entry(bucket_of(id))
                .or_default()
                .insert(*id, sealed.clone());
        }
    }
}

enum CoreIn<'a> {
    Open { user: &'a str, frame: Vec<u8> },
    Data { frame: Vec<u8> },
}

struct CoreRig {
    core: Core<MemPlatform>,
    store: MemStore,
    realm: RealmDescriptor,
}

impl CoreRig {
    /// One batch as the engine runs it: record ids, bucket reads, prepare,
    /// store writes, commit.
    fn batch(&mut self, inputs: Vec<CoreIn<'_>>) -> anyhow::Result<Vec<Vec<u8>>> {
        let inputs: Vec<Input> = inputs
            .into_iter()
            .map(|i| match i {
                CoreIn::Open { user, frame } => Input::Open {
                    record: self.core.record_id(TENANT, user),
                    frame,
                },
                CoreIn::Data { frame } => Input::Data { frame },
            })
            .collect();
        let mut wanted: Vec<u16> = inputs
            .iter()
            .filter_map(|i| self.core.bucket_for(i))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let buckets = self.store.read(&wanted);
        let writes = self.core.prepare(inputs, buckets)?;
        self.store.apply(&writes);
        self.core
            .commit()?
            .into_iter()
            .map(|r| r.map_err(|e: CoreError| anyhow!(e)))
            .collect()
    }
}

struct CoreSetup {
    rig: CoreRig,
    users: Vec<String>,
}

fn core_setup(a: &RawArgs) -> anyhow::Result<CoreSetup> {
    let mut master = [0u8; 32];
    OsRng.fill_bytes(&mut master);
    let mut realm_id = [0u8; 16];
    OsRng.fill_bytes(&mut realm_id);
    let config = RealmConfig {
        realm_id,
        max_attempts_limit: 10,
    };
    let platform = MemPlatform::default();
    let created = Core::init(platform.clone(), &master, config.clone())?;
    let (core, _) = Core::start(
        platform,
        &master,
        config,
        &created.sealed_setup,
        vec![],
        None,
    )?;
    let realm = RealmDescriptor {
        format: REALM_FORMAT.into(),
        realm_id,
        public_key: created.public_key,
        ksf: ksf(),
        max_attempts_limit: 10,
        address: "in-process".into(),
    };
    let mut rig = CoreRig {
        core,
        store: MemStore::default(),
        realm,
    };
    let users: Vec<String> = (0..a.core_users)
        .map(|i| format!("core-user-{i}"))
        .collect();
    // Register: all starts in one batch, Argon2 on two threads, all finishes in one batch.
    let mut regs = Vec::new();
    let mut frames = Vec::new();
    for u in &users {
        let pw = format!("pw {u}").into_bytes();
        let (reg, req) = Registration::start(&mut OsRng, &pw, 10, false)?;
        let (ch, frame) = ClientChannel::open(&rig.realm, &req, now_ms(), &mut OsRng)?;
        regs.push((reg, ch, pw));
        frames.push(CoreIn::Open { user: u, frame });
    }
    let replies = rig.batch(frames)?;
    let mut work = Vec::new();
    for ((reg, mut ch, pw), reply) in regs.into_iter().zip(replies) {
        let resp = ch.receive(&reply)?;
        work.push((reg, ch, pw, resp));
    }
    let realm = rig.realm.clone();
    let done = par_map(work, 2, |(reg, ch, pw, resp)| {
        let up = reg.finish(&mut OsRng, &realm, &pw, &resp, &[7u8; 32])?;
        Ok((ch, up))
    })?;
    let mut chans = Vec::new();
    let mut frames = Vec::new();
    for (mut ch, up) in done {
        frames.push(CoreIn::Data {
            frame: ch.send(&up, now_ms())?,
        });
        chans.push(ch);
    }
    let replies = rig.batch(frames)?;
    for (mut ch, reply) in chans.into_iter().zip(replies) {
        match ch.receive(&reply)? {
            Response::Registered { .. } => {}
            other => bail!("core registration: {other:?}"),
        }
    }
    Ok(CoreSetup { rig, users })
}

/// The in-process core: wrong-password logins in batches of B, only the
/// batch calls timed (client work in between is not).
fn core_bench(a: &RawArgs, setup: CoreSetup) -> anyhow::Result<Vec<CoreResult>> {
    let CoreSetup { mut rig, users } = setup;
    let configs = a.core_batches.len().max(1);
    let rounds = WRONG_PER_USER / configs;
    ensure!(
        rounds >= 1,
        "too many --core-batches for 9 attempts per user"
    );
    let mut out = Vec::new();
    for &b in &a.core_batches {
        let mut timed = Duration::ZERO;
        let mut logins = 0;
        for round in 0..rounds {
            for chunk in users.chunks(b.max(1)) {
                let mut chans = Vec::new();
                let mut inputs = Vec::new();
                for u in chunk {
                    let (_, req) = Login::start(&mut OsRng, b"wrong password")?;
                    let (ch, frame) = ClientChannel::open(&rig.realm, &req, now_ms(), &mut OsRng)?;
                    chans.push(ch);
                    inputs.push(CoreIn::Open { user: u, frame });
                }
                let t = Instant::now();
                let replies = rig.batch(inputs)?;
                timed += t.elapsed();
                let mut inputs = Vec::new();
                for (ch, reply) in chans.iter_mut().zip(replies) {
                    match ch.receive(&reply)? {
                        Response::LoginStarted { .. } => {}
                        other => bail!("core KE2: {other:?}"),
                    }
                    let mut ke3 = Box::new([0u8; 64]);
                    OsRng.fill_bytes(&mut ke3[..]);
                    inputs.push(CoreIn::Data {
                        frame: ch.send(&Request::LoginFinish { ke3 }, now_ms())?,
                    });
                }
                let t = Instant::now();
                let replies = rig.batch(inputs)?;
                timed += t.elapsed();
                for (ch, reply) in chans.iter_mut().zip(replies) {
                    match ch.receive(&reply)? {
                        Response::Error {
                            code: ErrorCode::WrongPassword,
                            ..
                        } => {}
                        other => bail!("core KE3 answer: {other:?}"),
                    }
                }
                // The first round warms up.
                if round > 0 {
                    logins += chunk.len();
                } else {
                    timed = Duration::ZERO;
                }
            }
        }
        out.push(CoreResult {
            batch: b,
            logins,
            us_per_login: timed.as_secs_f64() * 1e6 / logins.max(1) as f64,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- the whole path

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    body: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/octet-stream");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body)?;
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_vec()?;
    ensure!(
        status == 200,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

fn get_text(url: &str) -> anyhow::Result<String> {
    let mut r = agent().get(url).call()?;
    Ok(r.body_mut().read_to_string()?)
}

fn metrics(base: &str) -> anyhow::Result<HashMap<String, f64>> {
    let text = get_text(&format!("{base}/metrics"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

struct Daemon {
    child: Child,
    base: String,
    realm: RealmDescriptor,
    tokens: Vec<String>,
    /// A floor server in `--http-only` mode: replies are recorded bytes, not
    /// for this client's channel, so only their status and size are checked.
    http_only: bool,
}

impl Daemon {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }
    /// Waits (30 s at most) until `ready()` and `/healthz` answers.
    fn wait_up(&mut self, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            if ready() && get_text(&format!("{}/healthz", self.base)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("{what} exited: {st}");
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "{what} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_daemon(a: &AllArgs, dir: &Path, run: usize, users: usize) -> anyhow::Result<Daemon> {
    let data = dir.join("data");
    let nvram = dir.join("nvram").join("anchor.bin");
    std::fs::create_dir_all(nvram.parent().context("nvram dir")?)?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let out = Command::new(&a.bin)
        .args(["init", "--data"])
        .arg(&data)
        .arg("--nvram")
        .arg(&nvram)
        .args(["--address", &base])
        .args(["--ksf-memory-kib", &KSF_MEMORY_KIB.to_string()])
        .args(["--ksf-iterations", &KSF_ITERATIONS.to_string()])
        .output()
        .with_context(|| format!("running {}", a.bin.display()))?;
    ensure!(
        out.status.success(),
        "coffer-vault init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let realm = RealmDescriptor::from_json(&std::fs::read_to_string(data.join("realm.json"))?)?;
    // `coffer-vault token` in process (same library function), before serve.
    let tokens = (0..users)
        .map(|i| coffer_vault::tenants::dev_token(&data, TENANT, &format!("user-{i}"), 86_400))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out)?;
    let log = std::fs::File::create(a.out.join(format!("server-run{run}.log")))?;
    let child = Command::new("taskset")
        .args(["-c", &a.server_cpu.to_string()])
        .arg(&a.bin)
        .args(["serve", "--data"])
        .arg(&data)
        .arg("--nvram")
        .arg(&nvram)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--user-burst",
            "100000",
            "--user-rate-per-minute",
            "10000000",
        ])
        .args([
            "--tenant-burst",
            "10000000",
            "--tenant-rate-per-second",
            "10000000",
        ])
        .args(["--engine", &a.engine.to_string()])
        .env("COFFER_VAULT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut d = Daemon {
        child,
        base,
        realm,
        tokens,
        http_only: false,
    };
    d.wait_up("coffer-vault serve", || true)?;
    Ok(d)
}

fn register_all(a: &AllArgs, d: &Daemon) -> anyhow::Result<()> {
    let agents: Vec<ureq::Agent> = (0..a.register_threads.max(1)).map(|_| agent()).collect();
    let next = AtomicUsize::new(0);
    par_map((0..d.tokens.len()).collect(), a.register_threads, |i| {
        let ag = &agents[next.fetch_add(1, Ordering::Relaxed) % agents.len()];
        let pw = format!("correct horse {i}").into_bytes();
        let (reg, req) = Registration::start(&mut OsRng, &pw, 10, false)?;
        let (mut ch, frame) = ClientChannel::open(&d.realm, &req, now_ms(), &mut OsRng)?;
        let body = post(
            ag,
            &format!("{}/v1/open", d.base),
            Some(&d.tokens[i]),
            &frame,
        )?;
        let resp = ch.receive(&body)?;
        let up = reg.finish(&mut OsRng, &d.realm, &pw, &resp, &[7u8; 32])?;
        let frame = ch.send(&up, now_ms())?;
        let body = post(ag, &format!("{}/v1/send", d.base), None, &frame)?;
        match ch.receive(&body)? {
            Response::Registered { .. } => Ok(()),
            other => bail!("registration of user {i}: {other:?}"),
        }
    })?;
    // One correct login through the whole path: the path works end to end.
    let ag = agent();
    let (mut login, ke1) = Login::start(&mut OsRng, b"correct horse 0")?;
    let (mut ch, frame) = ClientChannel::open(&d.realm, &ke1, now_ms(), &mut OsRng)?;
    let resp = ch.receive(&post(
        &ag,
        &format!("{}/v1/open", d.base),
        Some(&d.tokens[0]),
        &frame,
    )?)?;
    let (ke3, wrong) = login.finish(&mut OsRng, &d.realm, b"correct horse 0", &resp)?;
    ensure!(!wrong, "the correct password did not verify");
    let frame = ch.send(&ke3, now_ms())?;
    let resp = ch.receive(&post(&ag, &format!("{}/v1/send", d.base), None, &frame)?)?;
    ensure!(
        *login.key(&d.realm, &resp)? == [7u8; 32],
        "a correct login did not release the key"
    );
    Ok(())
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct PathResult {
    concurrency: usize,
    logins: usize,
    errors: usize,
    first_error: Option<String>,
    wall_s: f64,
    server_cpu_s: f64,
    server_sched_cpu_s: f64,
    /// Busy time of the server's CPU (the process plus kernel work that ran there).
    server_core_busy_s: f64,
    client_cpu_s: f64,
    /// Busy time of the load generator's CPU.
    client_core_busy_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// NaN (null in JSON) for the floor servers, which do not batch.
    #[serde(deserialize_with = "nan_if_null")]
    mean_batch: f64,
    store_commit_us_per_login: f64,
    core_us_per_login: f64,
    batches_per_login: f64,
    /// Raw opaque-ke's thread CPU µs per login, measured on the server CPU
    /// right before and right after this phase (the machine's speed drifts:
    /// the % of raw of a phase is against the mean of these two).
    #[serde(default)]
    raw_probes_us: Vec<f64>,
}

impl PathResult {
    /// Raw opaque-ke µs per login next to this phase, else the run's.
    fn raw_us(&self, run_raw_us: f64) -> f64 {
        if self.raw_probes_us.is_empty() {
            run_raw_us
        } else {
            self.raw_probes_us.iter().sum::<f64>() / self.raw_probes_us.len() as f64
        }
    }
    fn per_core(&self) -> f64 {
        self.logins as f64 / self.server_cpu_s
    }
    /// Server CPU µs per login.
    fn cpu_us_per_login(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.logins.max(1) as f64
    }
    fn wall_rate(&self) -> f64 {
        self.logins as f64 / self.wall_s
    }
    /// Load on the server's CPU that is not the server process (other
    /// users' processes, and kernel work not charged to it), % of wall.
    fn other_load_server_cpu(&self) -> f64 {
        100.0 * (self.server_core_busy_s - self.server_cpu_s).max(0.0) / self.wall_s
    }
    fn other_load_client_cpu(&self) -> f64 {
        100.0 * (self.client_core_busy_s - self.client_cpu_s).max(0.0) / self.wall_s
    }
}

struct Item {
    user: usize,
    ch: ClientChannel,
    frame: Vec<u8>,
}

/// Logins at concurrency `c`: `budget` precomputed open frames (KE1 inside
/// HPKE, so the load generator only does HTTP, an AES-GCM open and a
/// ChaCha20-Poly1305 seal per request while timed), users round-robin from
/// `slot0`.
#[allow(clippy::too_many_arguments)]
fn path_phase(
    d: &Daemon,
    c: usize,
    slot0: usize,
    budget: usize,
    max_secs: f64,
    tck: f64,
    (server_cpu, client_cpu): (usize, usize),
    perf: Option<(&Path, &str)>,
) -> anyhow::Result<PathResult> {
    let users = d.tokens.len();
    let items: Vec<Item> = (0..budget)
        .map(|i| {
            let (_, req) = Login::start(&mut OsRng, b"wrong password")?;
            let (ch, frame) = ClientChannel::open(&d.realm, &req, now_ms(), &mut OsRng)?;
            Ok(Item {
                user: (slot0 + i) % users,
                ch,
                frame,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let queue = Mutex::new(items.into_iter());
    let agents: Vec<ureq::Agent> = (0..c).map(|_| agent()).collect();
    // Open the keep-alive connections before timing.
    for ag in &agents {
        let _ = ag.get(format!("{}/healthz", d.base)).call();
    }
    let m0 = metrics(&d.base)?;
    let pid = d.pid();
    let mut perf_child = match perf {
        Some((out, cg)) => {
            let mut cmd = Command::new("perf");
            cmd.args(["record", "-F", "1999", "-o"]).arg(out);
            match cg {
                "none" => {}
                "dwarf" => {
                    cmd.args(["--call-graph", "dwarf,32768"]);
                }
                other => {
                    cmd.args(["--call-graph", other]);
                }
            }
            let ch = cmd
                .args(["-p", &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf")?;
            std::thread::sleep(Duration::from_millis(500));
            Some(ch)
        }
        None => None,
    };
    let barrier = Barrier::new(c + 1);
    let deadline = Duration::from_secs_f64(max_secs);
    let lat: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(budget));
    let errors = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let me = std::process::id().to_string();
    let (t_start, cpu0, sched0, client0, busy0, cbusy0) =
        std::thread::scope(|s| -> anyhow::Result<_> {
            for ag in &agents {
                let (queue, barrier, lat, errors, first_error) =
                    (&queue, &barrier, &lat, &errors, &first_error);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    barrier.wait();
                    let t0 = Instant::now();
                    loop {
                        if t0.elapsed() > deadline {
                            break;
                        }
                        let next = queue.lock().ok().and_then(|mut q| q.next());
                        let Some(mut it) = next else { break };
                        let t = Instant::now();
                        match login_once(ag, d, &mut it) {
                            Ok(()) => mine.push(t.elapsed().as_secs_f64() * 1e3),
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(format!("{e:#}"));
                                }
                            }
                        }
                    }
                    if let Ok(mut l) = lat.lock() {
                        l.extend(mine);
                    }
                });
            }
            let cpu0 = proc_ticks(&pid)?;
            let sched0 = proc_sched_ns(&pid);
            let client0 = proc_ticks(&me)?;
            let busy0 = cpu_busy_ticks(server_cpu)?;
            let cbusy0 = cpu_busy_ticks(client_cpu)?;
            let t_start = Instant::now();
            barrier.wait();
            Ok((t_start, cpu0, sched0, client0, busy0, cbusy0))
        })?;
    let wall_s = t_start.elapsed().as_secs_f64();
    let busy1 = cpu_busy_ticks(server_cpu)?;
    let cbusy1 = cpu_busy_ticks(client_cpu)?;
    let cpu1 = proc_ticks(&pid)?;
    let sched1 = proc_sched_ns(&pid);
    let client1 = proc_ticks(&me)?;
    if let Some(p) = perf_child.as_mut() {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    let m1 = metrics(&d.base)?;
    let dm = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    let lat = sorted(lat.into_inner().map_err(|_| anyhow!("poisoned"))?);
    let logins = lat.len();
    let n = logins.max(1) as f64;
    Ok(PathResult {
        concurrency: c,
        logins,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().ok().flatten(),
        wall_s,
        server_cpu_s: (cpu1 - cpu0) as f64 / tck,
        server_sched_cpu_s: sched1.saturating_sub(sched0) as f64 / 1e9,
        server_core_busy_s: busy1.saturating_sub(busy0) as f64 / tck,
        client_cpu_s: (client1 - client0) as f64 / tck,
        client_core_busy_s: cbusy1.saturating_sub(cbusy0) as f64 / tck,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        mean_batch: dm("coffer_vault_batch_frames_total") / dm("coffer_vault_batches_total"),
        store_commit_us_per_login: dm("coffer_vault_store_commit_microseconds_total") / n,
        core_us_per_login: dm("coffer_vault_core_microseconds_total") / n,
        batches_per_login: dm("coffer_vault_batches_total") / n,
        raw_probes_us: Vec::new(),
    })
}

/// `POST /v1/open` with the item's open frame and its user's token.
fn post_open(ag: &ureq::Agent, d: &Daemon, it: &Item) -> anyhow::Result<Vec<u8>> {
    post(
        ag,
        &format!("{}/v1/open", d.base),
        Some(&d.tokens[it.user]),
        &it.frame,
    )
}

/// One wrong-password login: open (KE1 → KE2), send (random KE3 → refusal).
fn login_once(ag: &ureq::Agent, d: &Daemon, it: &mut Item) -> anyhow::Result<()> {
    if d.http_only {
        return http_once(ag, d, it);
    }
    let body = post_open(ag, d, it)?;
    match it.ch.receive(&body)? {
        Response::LoginStarted { .. } => {}
        other => bail!("expected KE2, got {other:?}"),
    }
    let mut ke3 = Box::new([0u8; 64]);
    OsRng.fill_bytes(&mut ke3[..]);
    let frame = it.ch.send(&Request::LoginFinish { ke3 }, now_ms())?;
    let body = post(ag, &format!("{}/v1/send", d.base), None, &frame)?;
    match it.ch.receive(&body)? {
        Response::Error {
            code: ErrorCode::WrongPassword,
            attempts_remaining: Some(_),
            ..
        } => Ok(()),
        other => bail!("expected a wrong-password refusal, got {other:?}"),
    }
}

/// The two requests of a login against an `--http-only` server: the real
/// open frame, then a data frame of the real size; checks the replies' sizes.
fn http_once(ag: &ureq::Agent, d: &Daemon, it: &Item) -> anyhow::Result<()> {
    use coffer_vault_proto::channel::DATA_FRAME_LEN;
    let body = post_open(ag, d, it)?;
    ensure!(
        body.len() == DATA_FRAME_LEN,
        "open reply of {} bytes",
        body.len()
    );
    let body = post(
        ag,
        &format!("{}/v1/send", d.base),
        None,
        &[0u8; DATA_FRAME_LEN],
    )?;
    ensure!(
        body.len() == DATA_FRAME_LEN,
        "send reply of {} bytes",
        body.len()
    );
    Ok(())
}

// ---------------------------------------------------------------- all

#[derive(Serialize, Deserialize, Clone, Debug)]
struct RunResult {
    run: usize,
    raw: RawResult,
    path: Vec<PathResult>,
    /// The floor server at the same concurrencies (see [`floor_serve`]).
    #[serde(default)]
    floor: Vec<PathResult>,
    /// The floor server in `--http-only` mode at the same concurrencies.
    #[serde(default)]
    http: Vec<PathResult>,
    /// The same server saturated by an async client.
    #[serde(default)]
    http_saturated: Option<Saturated>,
}

/// HTTP alone with the server saturated: many requests per wake-up.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Saturated {
    connections: usize,
    /// Logins (an open and a send request each) in the timed window.
    logins: u64,
    wall_s: f64,
    server_cpu_s: f64,
    /// Raw opaque-ke next to it (the probes' mean).
    raw_us: f64,
}

impl Saturated {
    fn us_per_login(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.logins.max(1) as f64
    }
}

/// One login's two requests on a hyper connection; checks each reply.
async fn saturating_login(
    tx: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    authority: &str,
    auth: &str,
    open: &hyper::body::Bytes,
    data: &hyper::body::Bytes,
) -> anyhow::Result<()> {
    use coffer_vault_proto::channel::DATA_FRAME_LEN;
    use http_body_util::{BodyExt, Full};
    for (path, body) in [("/v1/open", open), ("/v1/send", data)] {
        tx.ready().await?;
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::AUTHORIZATION, auth)
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body.clone()))?;
        let resp = tx.send_request(req).await?;
        let status = resp.status();
        let n = resp.into_body().collect().await?.to_bytes().len();
        ensure!(
            status == 200 && n == DATA_FRAME_LEN,
            "{path}: HTTP {status}, {n} bytes"
        );
    }
    Ok(())
}

/// Drives an `--http-only` floor server with `conns` keep-alive HTTP/1.1
/// connections from one async task each (hyper's client on a
/// single-threaded runtime: far less client CPU per request than the
/// blocking load generator, so the server saturates). Each login is the
/// real open frame and a data frame of the real size; every reply's status
/// and size is checked. Counts logins over `secs` after 0.5 s of warm-up.
fn http_saturated(d: &Daemon, conns: usize, secs: f64, tck: f64) -> anyhow::Result<Saturated> {
    use coffer_vault_proto::channel::DATA_FRAME_LEN;
    use hyper::body::Bytes;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    let (_, req) = Login::start(&mut OsRng, b"wrong password")?;
    let (_, open) = ClientChannel::open(&d.realm, &req, now_ms(), &mut OsRng)?;
    let open = Bytes::from(open);
    let data = Bytes::from(vec![0u8; DATA_FRAME_LEN]);
    let authority = d.base.trim_start_matches("http://").to_string();
    let auth = format!("Bearer {}", d.tokens[0]);
    let pid = d.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let logins = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        for _ in 0..conns {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let (logins, stop, failure) = (logins.clone(), stop.clone(), failure.clone());
            let (open, data, authority, auth) =
                (open.clone(), data.clone(), authority.clone(), auth.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = saturating_login(&mut tx, &authority, &auth, &open, &data).await
                    {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(format!("{e:#}"));
                        }
                        return;
                    }
                    logins.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (n0, cpu0, t0) = (
            logins.load(Ordering::Relaxed),
            proc_ticks(&pid)?,
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (n1, cpu1, wall_s) = (
            logins.load(Ordering::Relaxed),
            proc_ticks(&pid)?,
            t0.elapsed().as_secs_f64(),
        );
        stop.store(true, Ordering::Relaxed);
        if let Some(e) = failure.lock().map_err(|_| anyhow!("poisoned"))?.take() {
            bail!("saturating HTTP load: {e}");
        }
        anyhow::Ok(Saturated {
            connections: conns,
            logins: n1 - n0,
            wall_s,
            server_cpu_s: (cpu1 - cpu0) as f64 / tck,
            raw_us: 0.0,
        })
    })
}

fn run_all(a: &AllArgs) -> anyhow::Result<()> {
    let tck = clk_tck()?;
    let me = std::process::id();
    let both = format!("{},{}", a.server_cpu, a.client_cpu);
    let cpus = (a.server_cpu, a.client_cpu);
    let quiet = || wait_quiet(a.quiet_threshold, a.quiet_wait_secs);
    let exe = std::env::current_exe()?;
    // A short raw run on the server CPU (it pins itself), next to each phase.
    let probe = || -> anyhow::Result<f64> {
        let out = Command::new(&exe)
            .arg("raw")
            .args(["--cpu", &a.server_cpu.to_string()])
            .args(["--logins", "3000", "--correct", "0", "--raw-users", "4"])
            .arg("--no-core")
            .stderr(Stdio::null())
            .output()?;
        ensure!(out.status.success(), "loginbench raw (probe) failed");
        // Only cpu_us: with no correct logins some medians are NaN (null).
        serde_json::from_slice::<serde_json::Value>(&out.stdout)?["cpu_us"]
            .as_f64()
            .context("probe: no cpu_us")
    };
    // Runs a phase between two probes.
    let probed = |f: &mut dyn FnMut() -> anyhow::Result<PathResult>| -> anyhow::Result<PathResult> {
        let before = probe()?;
        let mut p = f()?;
        p.raw_probes_us = vec![before, probe()?];
        Ok(p)
    };
    let warmup = 300;
    let measured: usize = a.concurrency.len() * a.phase_logins;
    let perf_budget = if a.perf { a.phase_logins } else { 0 };
    let needed = warmup + measured + perf_budget;
    let users = if a.users > 0 {
        a.users
    } else {
        needed.div_ceil(WRONG_PER_USER)
    };
    ensure!(
        users * WRONG_PER_USER >= needed,
        "--users {users} too few: {needed} logins need {} users at 9 wrong logins each",
        needed.div_ceil(WRONG_PER_USER)
    );
    std::fs::create_dir_all(&a.out)?;
    let mut runs = Vec::new();
    let mut profile = String::new();
    for run in 1..=a.runs {
        set_affinity(me, &both)?;
        eprintln!(
            "[run {run}] raw opaque-ke + in-process core, pinned to CPU {}",
            a.server_cpu
        );
        let r = &a.raw;
        quiet()?;
        let out = Command::new(&exe)
            .arg("raw")
            .args(["--cpu", &a.server_cpu.to_string()])
            .args(["--logins", &r.logins.to_string()])
            .args(["--correct", &r.correct.to_string()])
            .args(["--raw-users", &r.raw_users.to_string()])
            .args(["--core-users", &r.core_users.to_string()])
            .arg(format!(
                "--core-batches={}",
                r.core_batches
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .stderr(Stdio::inherit())
            .output()?;
        ensure!(out.status.success(), "loginbench raw failed");
        let raw: RawResult = serde_json::from_slice(&out.stdout)?;
        eprintln!(
            "[run {run}] raw: {:.1} µs/login (p50), {:.0} logins/s/core; correct KE3 start/finish p50 {:.1}/{:.2} µs vs wrong {:.1}/{:.2} µs",
            raw.p50_us,
            1e6 / raw.cpu_us,
            raw.correct_start_p50_us,
            raw.correct_finish_p50_us,
            raw.wrong_start_p50_us,
            raw.wrong_finish_p50_us
        );

        let tmp;
        let dir = match &a.workdir {
            Some(w) => {
                let d = w.join(format!("run{run}"));
                if d.exists() {
                    std::fs::remove_dir_all(&d)?;
                }
                std::fs::create_dir_all(&d)?;
                d
            }
            None => {
                tmp = tempfile::tempdir()?;
                tmp.path().to_path_buf()
            }
        };
        eprintln!(
            "[run {run}] daemon on CPU {}: registering {users} users (client Argon2id m={KSF_MEMORY_KIB} KiB t={KSF_ITERATIONS})",
            a.server_cpu
        );
        let mut d = start_daemon(a, &dir, run, users)?;
        let t = Instant::now();
        register_all(a, &d)?;
        eprintln!(
            "[run {run}] registered in {:.1} s; load generator on CPU {}",
            t.elapsed().as_secs_f64(),
            a.client_cpu
        );
        set_affinity(me, &a.client_cpu.to_string())?;
        let mut slot = 0;
        let w = path_phase(&d, 8, slot, warmup, 30.0, tck, cpus, None)?;
        ensure!(w.errors == 0, "warm-up errors: {:?}", w.first_error);
        slot += warmup;
        let mut path = Vec::new();
        for &c in &a.concurrency {
            quiet()?;
            let p = probed(&mut || {
                path_phase(&d, c, slot, a.phase_logins, a.phase_secs, tck, cpus, None)
            })?;
            slot += a.phase_logins;
            eprintln!(
                "[run {run}] path C={c}: {} logins in {:.2} s, {:.0} logins/s/core ({:.0}% of raw), {:.0}/s wall, p50 {:.2} ms, p99 {:.2} ms, batch {:.1}, server CPU {:.0}%, client CPU {:.0}%, errors {}",
                p.logins,
                p.wall_s,
                p.per_core(),
                100.0 * p.per_core() * p.raw_us(raw.cpu_us) / 1e6,
                p.wall_rate(),
                p.p50_ms,
                p.p99_ms,
                p.mean_batch,
                100.0 * p.server_cpu_s / p.wall_s,
                100.0 * p.client_cpu_s / p.wall_s,
                p.errors
            );
            if let Some(e) = &p.first_error {
                eprintln!("[run {run}]   first error: {e}");
            }
            path.push(p);
        }
        if a.perf && run == a.runs {
            let c = a
                .perf_concurrency
                .unwrap_or_else(|| a.concurrency.iter().copied().max().unwrap_or(64));
            let file = a.out.join(format!("perf-run{run}.data"));
            quiet()?;
            eprintln!(
                "[run {run}] profiling the server at C={c} → {}",
                file.display()
            );
            let p = path_phase(
                &d,
                c,
                slot,
                a.phase_logins,
                a.phase_secs,
                tck,
                cpus,
                Some((&file, &a.perf_callgraph)),
            )?;
            eprintln!(
                "[run {run}] (under perf) {:.0} logins/s/core, {} logins, {:.3} s server CPU",
                p.per_core(),
                p.logins,
                p.server_cpu_s
            );
            std::fs::write(
                a.out.join(format!("perf-run{run}.json")),
                serde_json::to_string_pretty(&p)?,
            )?;
            // Scale the shares with this run's unprofiled phase at the same C.
            let us = path
                .iter()
                .find(|q| q.concurrency == c)
                .map(PathResult::cpu_us_per_login)
                .unwrap_or(0.0);
            let script = Command::new("perf")
                .args(["script", "-F", "tid,period,ip,sym", "-i"])
                .arg(&file)
                .stderr(Stdio::null())
                .output()
                .context("perf script")?;
            profile = format!(
                "\nProfile (run {run}, C={c}, `perf record -F 1999 --call-graph {}` on the server; samples grouped by call stack, µs/login = share × the unprofiled phase's {us:.0} µs of server CPU per login):\n\n{}",
                a.perf_callgraph,
                summarize(&script.stdout[..], us, CATEGORIES)?
            );
        }
        d.stop();
        // The floor server, and the same server answering without crypto
        // (its phases, then saturated by the async client).
        let floor_phases =
            |http_only: bool| -> anyhow::Result<(Vec<PathResult>, Option<Saturated>)> {
                let name = if http_only { "HTTP only" } else { "floor" };
                let mut f = start_floor(a, &dir, run, users, http_only)?;
                let w = path_phase(&f, 8, 0, warmup, 30.0, tck, cpus, None)?;
                ensure!(w.errors == 0, "{name} warm-up errors: {:?}", w.first_error);
                let mut out = Vec::new();
                for &c in &a.concurrency {
                    quiet()?;
                    let p = probed(&mut || {
                        path_phase(&f, c, 0, a.phase_logins, a.phase_secs, tck, cpus, None)
                    })?;
                    eprintln!(
                    "[run {run}] {name} C={c}: {} logins in {:.2} s, {:.0} logins/s/core ({:.0}% of raw), {:.0} µs of server CPU per login, p50 {:.2} ms, errors {}",
                    p.logins,
                    p.wall_s,
                    p.per_core(),
                    100.0 * p.per_core() * p.raw_us(raw.cpu_us) / 1e6,
                    p.cpu_us_per_login(),
                    p.p50_ms,
                    p.errors
                );
                    if let Some(e) = &p.first_error {
                        eprintln!("[run {run}]   first error: {e}");
                    }
                    out.push(p);
                }
                let mut sat = None;
                if http_only && a.saturate_connections > 0 {
                    quiet()?;
                    let before = probe()?;
                    let mut s =
                        http_saturated(&f, a.saturate_connections, a.phase_secs.min(5.0), tck)?;
                    s.raw_us = (before + probe()?) / 2.0;
                    eprintln!(
                    "[run {run}] HTTP only, saturated ({} connections, async client): {} logins in {:.2} s, {:.1} µs of server CPU per login, server CPU {:.0}%",
                    s.connections,
                    s.logins,
                    s.wall_s,
                    s.us_per_login(),
                    100.0 * s.server_cpu_s / s.wall_s
                );
                    sat = Some(s);
                }
                f.stop();
                Ok((out, sat))
            };
        let (floor, _) = if a.no_floor {
            (Vec::new(), None)
        } else {
            floor_phases(false)?
        };
        let (http, http_saturated) = if a.no_http_floor {
            (Vec::new(), None)
        } else {
            floor_phases(true)?
        };
        runs.push(RunResult {
            run,
            raw,
            path,
            floor,
            http,
            http_saturated,
        });
    }
    set_affinity(me, &both)?;
    let md = render(&runs) + &profile;
    println!("{md}");
    std::fs::write(a.out.join("results.md"), &md)?;
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    Ok(())
}

/// One row of the main table.
struct Row {
    what: String,
    per_core: f64,
    pct_raw: f64,
    busy_rate: Option<f64>,
    wall_rate: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    batch: Option<f64>,
    server_cpu_pct: f64,
    client_cpu_pct: Option<f64>,
    other_load: String,
}

fn rows(r: &RunResult) -> Vec<Row> {
    let raw_rate = 1e6 / r.raw.cpu_us;
    let mut out = vec![Row {
        what: "raw opaque-ke, server side, 1 thread".into(),
        per_core: raw_rate,
        pct_raw: 100.0,
        busy_rate: None,
        wall_rate: Some(1e6 / r.raw.mean_us),
        p50_ms: Some(r.raw.p50_us / 1e3),
        p99_ms: Some(r.raw.p99_us / 1e3),
        batch: None,
        server_cpu_pct: 100.0,
        client_cpu_pct: None,
        other_load: format!("{:.0}", r.raw.other_load_pct),
    }];
    for c in &r.raw.core {
        let rate = 1e6 / c.us_per_login;
        out.push(Row {
            what: format!(
                "core in process, batches of {} (no HTTP, redb, fsync)",
                c.batch
            ),
            per_core: rate,
            pct_raw: 100.0 * rate / raw_rate,
            busy_rate: None,
            wall_rate: None,
            p50_ms: None,
            p99_ms: None,
            batch: Some(c.batch as f64),
            server_cpu_pct: 100.0,
            client_cpu_pct: None,
            other_load: format!("{:.0}", r.raw.core_other_load_pct),
        });
    }
    let phases = r
        .path
        .iter()
        .map(|p| (format!("whole path, C={}", p.concurrency), p, true))
        .chain(r.floor.iter().map(|p| {
            (
                format!(
                    "floor: HTTP + channel + opaque-ke only (no store, core, tokens), C={}",
                    p.concurrency
                ),
                p,
                false,
            )
        }))
        .chain(r.http.iter().map(|p| {
            (
                format!(
                    "HTTP only: 2 requests, recorded replies, no crypto, C={}",
                    p.concurrency
                ),
                p,
                false,
            )
        }));
    for (what, p, batched) in phases {
        out.push(Row {
            what,
            per_core: p.per_core(),
            pct_raw: 100.0 * p.per_core() * p.raw_us(r.raw.cpu_us) / 1e6,
            busy_rate: Some(p.logins as f64 / p.server_core_busy_s),
            wall_rate: Some(p.wall_rate()),
            p50_ms: Some(p.p50_ms),
            p99_ms: Some(p.p99_ms),
            batch: batched.then_some(p.mean_batch),
            server_cpu_pct: 100.0 * p.server_cpu_s / p.wall_s,
            client_cpu_pct: Some(100.0 * p.client_cpu_s / p.wall_s),
            other_load: format!(
                "{:.0} / {:.0}",
                p.other_load_server_cpu(),
                p.other_load_client_cpu()
            ),
        });
    }
    if let Some(sat) = &r.http_saturated {
        let rate = 1e6 / sat.us_per_login();
        out.push(Row {
            what: format!(
                "HTTP only, saturated by an async client ({} connections)",
                sat.connections
            ),
            per_core: rate,
            pct_raw: 100.0 * rate * sat.raw_us / 1e6,
            busy_rate: None,
            wall_rate: Some(sat.logins as f64 / sat.wall_s),
            p50_ms: None,
            p99_ms: None,
            batch: None,
            server_cpu_pct: 100.0 * sat.server_cpu_s / sat.wall_s,
            client_cpu_pct: None,
            other_load: "–".into(),
        });
    }
    out
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "–".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn raw_probes(p: &PathResult) -> String {
    if p.raw_probes_us.is_empty() {
        "–".into()
    } else {
        p.raw_probes_us
            .iter()
            .map(|u| format!("{u:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

fn render(runs: &[RunResult]) -> String {
    let mut s = String::new();
    let all: Vec<Vec<Row>> = runs.iter().map(rows).collect();
    if runs.len() > 1 {
        s.push_str(&format!(
            "Median of {} runs (min–max), per row:\n\n",
            runs.len()
        ));
        s.push_str(
            "| what | logins/s/core | % of raw | wall logins/s | p50 ms | p99 ms | mean batch |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (i, row) in all[0].iter().enumerate() {
            let col = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<f64> {
                all.iter().filter_map(|rs| rs.get(i).and_then(f)).collect()
            };
            let fmt = |v: Vec<f64>, prec: usize| -> String {
                if v.is_empty() {
                    return "–".into();
                }
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{:.prec$} ({lo:.prec$}–{hi:.prec$})", median(v.clone()))
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                row.what,
                fmt(col(&|r| Some(r.per_core)), 0),
                fmt(col(&|r| Some(r.pct_raw)), 0),
                fmt(col(&|r| r.wall_rate), 0),
                fmt(col(&|r| r.p50_ms), 2),
                fmt(col(&|r| r.p99_ms), 2),
                fmt(col(&|r| r.batch), 1),
            ));
        }
        s.push_str("\nEach run:\n\n");
    }
    s.push_str("| run | what | logins/s/core | % of raw | logins/s per busy CPU | wall logins/s | p50 ms | p99 ms | mean batch | server CPU % | client CPU % | other load % (server CPU / client CPU) |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (r, rs) in runs.iter().zip(&all) {
        for row in rs {
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {} | {} |\n",
                r.run,
                row.what,
                row.per_core,
                row.pct_raw,
                opt(row.busy_rate, 0),
                opt(row.wall_rate, 0),
                opt(row.p50_ms, if row.pct_raw == 100.0 { 3 } else { 2 }),
                opt(row.p99_ms, if row.pct_raw == 100.0 { 3 } else { 2 }),
                opt(row.batch, 1),
                row.server_cpu_pct,
                opt(row.client_cpu_pct, 0),
                row.other_load
            ));
        }
    }
    s.push_str("\nWhole path, per login (server CPU from /proc/<pid>/stat and from summed schedstat; engine wall time from /metrics):\n\n");
    s.push_str("| run | C | logins | errors | server CPU µs (stat) | server CPU µs (schedstat) | CPU busy µs | store commit wall µs | core wall µs (incl. NVRAM) | batches/login | raw µs before / after |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        for p in &r.path {
            let n = p.logins.max(1) as f64;
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {} |\n",
                r.run,
                p.concurrency,
                p.logins,
                p.errors,
                p.server_cpu_s * 1e6 / n,
                p.server_sched_cpu_s * 1e6 / n,
                p.server_core_busy_s * 1e6 / n,
                p.store_commit_us_per_login,
                p.core_us_per_login,
                p.batches_per_login,
                raw_probes(p)
            ));
        }
    }
    if runs.iter().any(|r| !r.floor.is_empty()) {
        s.push_str("\nFloor server, per login: server CPU µs, and what is left after raw opaque-ke (the probes next to the phase) and the HPKE accept (p50, the run's raw measurement): about HTTP's two requests plus the session map:\n\n");
        s.push_str("| run | C | logins | errors | server CPU µs | raw µs before / after | minus raw and accept µs |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for r in runs {
            for p in &r.floor {
                let us = p.cpu_us_per_login();
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {:.0} | {} | {:.0} |\n",
                    r.run,
                    p.concurrency,
                    p.logins,
                    p.errors,
                    us,
                    raw_probes(p),
                    us - p.raw_us(r.raw.cpu_us) - r.raw.hpke_accept_p50_us
                ));
            }
        }
    }
    if runs.iter().any(|r| !r.http.is_empty()) {
        s.push_str(&ceiling(runs));
    }
    s.push_str("\nRaw opaque-ke, server µs per login (p50): ServerLogin::start (incl. deserializing file + KE1, serializing KE2) / finish (incl. deserializing KE3); and the channel's HPKE accept:\n\n");
    for r in runs {
        s.push_str(&format!(
            "- run {}: all {} wrong KE3: {:.1} / {:.2} (thread CPU {:.1} µs/login); {} correct KE3: {:.1} / {:.2} vs {} wrong interleaved with them: {:.1} / {:.2}; HPKE accept {:.1}\n",
            r.run,
            r.raw.logins,
            r.raw.start_p50_us,
            r.raw.finish_p50_us,
            r.raw.cpu_us,
            r.raw.correct_samples,
            r.raw.correct_start_p50_us,
            r.raw.correct_finish_p50_us,
            r.raw.correct_samples,
            r.raw.wrong_start_p50_us,
            r.raw.wrong_finish_p50_us,
            r.raw.hpke_accept_p50_us
        ));
    }
    s
}

/// The ceiling from parts: each mandated part measured alone, summed as if
/// running them together cost nothing extra.
fn ceiling(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "\nCeiling from parts, per login. HTTP = server CPU µs of the HTTP-only phase (two requests, no crypto); \
         raw = the probes next to that phase; accept = the run's HPKE accept p50; core extra = the in-process core \
         at its largest batch (OPAQUE, HPKE, records, tree, sessions; no I/O) minus the raw run it was measured with \
         (same process, same minute). A = raw / (raw + accept + HTTP): only the mandated parts. \
         B = raw / (raw + core extra + HTTP): plus the core's own work, still without store, fsync, tokens or \
         hand-off. HTTP sat. = the HTTP-only server saturated by an async client (many requests per \
         wake-up, the least HTTP costs here) and A' = raw / (raw + accept + HTTP sat.). Floor and whole path \
         at the same C for comparison:\n\n",
    );
    s.push_str("| run | C | HTTP µs | raw µs | accept µs | A: % of raw | core extra µs | B: % of raw | HTTP sat. µs | A': % of raw | floor % of raw | whole path % of raw |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let pct = |v: &[PathResult], c: usize| {
            v.iter()
                .find(|p| p.concurrency == c)
                .map(|p| 100.0 * p.per_core() * p.raw_us(r.raw.cpu_us) / 1e6)
        };
        let extra = r
            .raw
            .core
            .iter()
            .max_by_key(|c| c.batch)
            .map(|c| c.us_per_login - r.raw.cpu_us);
        for p in &r.http {
            let http = p.cpu_us_per_login();
            let raw = p.raw_us(r.raw.cpu_us);
            let accept = r.raw.hpke_accept_p50_us;
            let b = extra.map(|e| 100.0 * raw / (raw + e + http));
            let sat = r.http_saturated.as_ref().map(Saturated::us_per_login);
            let a2 = sat.map(|h| 100.0 * raw / (raw + accept + h));
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
                r.run,
                p.concurrency,
                http,
                raw,
                accept,
                100.0 * raw / (raw + accept + http),
                opt(extra, 0),
                opt(b, 0),
                opt(sat, 0),
                opt(a2, 0),
                opt(pct(&r.floor, p.concurrency), 0),
                opt(pct(&r.path, p.concurrency), 0),
            ));
        }
    }
    s
}

// ---------------------------------------------------------------- floor

/// The least a server could do per login and still be this protocol over
/// HTTP: axum on a tokio runtime built like the daemon's, the channel's HPKE
/// accept and data-frame open, opaque-ke's `ServerLogin::start`/`finish`
/// (deserializing the password file and the messages, as the core does), and
/// the reply seals. Nothing else: no tokens, rate limits or metrics, no
/// record, sealing, Merkle tree or replay cache, no store, NVRAM or fsync, no
/// batching and no hand-off to another thread. Each login uses the same
/// password file. It is a lower bound for the whole path, not a vault: it
/// keeps no guess count.
struct Floor {
    key: coffer_vault_proto::channel::ChannelKey,
    realm_id: [u8; 16],
    context: Vec<u8>,
    setup: ServerSetup<CofferSuite>,
    user: RawUser,
    sessions: Mutex<
        HashMap<
            coffer_vault_proto::SessionId,
            (coffer_vault_proto::ServerChannel, ServerLogin<CofferSuite>),
        >,
    >,
}

/// What a floor server answers to a login's two requests.
trait Answers: Send + Sync + 'static {
    /// `POST /v1/open`: an open frame in, the KE2 reply out.
    fn open(&self, frame: &[u8]) -> anyhow::Result<Vec<u8>>;
    /// `POST /v1/send`: a data frame (KE3) in, the refusal out.
    fn send(&self, frame: &[u8]) -> anyhow::Result<Vec<u8>>;
}

impl Answers for Floor {
    fn open(&self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        let acc = coffer_vault_proto::ServerChannel::accept(&self.key, &self.realm_id, frame)?;
        let (req, _) = Request::decode(&acc.request)?;
        let Request::LoginStart { ke1 } = req else {
            bail!("the floor server takes logins only, got {}", req.name());
        };
        let file = ServerRegistration::<CofferSuite>::deserialize(&self.user.file)
            .map_err(|e| anyhow!("password file: {e:?}"))?;
        let ke1 = CredentialRequest::<CofferSuite>::deserialize(&ke1[..])
            .map_err(|e| anyhow!("{e:?}"))?;
        let start = ServerLogin::start(
            &mut OsRng,
            &self.setup,
            Some(file),
            ke1,
            &self.user.id,
            server_params(&self.context),
        )
        .map_err(|e| anyhow!("ServerLogin::start: {e:?}"))?;
        let mut ke2 = Box::new([0u8; coffer_vault_proto::suite::sizes::KE2]);
        ke2.copy_from_slice(&start.message.serialize());
        let mut session = [0u8; 16];
        OsRng.fill_bytes(&mut session);
        let mut channel = acc.channel;
        let reply = channel.seal_reply(
            &session,
            &Response::LoginStarted {
                attempts_remaining: 9,
                ke2,
            },
        );
        self.sessions
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(session, (channel, start.state));
        Ok(reply)
    }

    fn send(&self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        let session = coffer_vault_proto::channel::frame_session(frame)?;
        let (mut channel, state) = self
            .sessions
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .remove(&session)
            .context("unknown session")?;
        let plain = channel.open_data(frame)?;
        let (req, _) = Request::decode(&plain)?;
        let Request::LoginFinish { ke3 } = req else {
            bail!("expected KE3, got {}", req.name());
        };
        let ok = match CredentialFinalization::<CofferSuite>::deserialize(&ke3[..]) {
            Ok(m) => state.finish(m, server_params(&self.context)).is_ok(),
            Err(_) => false,
        };
        ensure!(!ok, "a random KE3 was accepted");
        Ok(channel.seal_reply(
            &session,
            &Response::Error {
                code: ErrorCode::WrongPassword,
                attempts_remaining: Some(8),
                server_time_ms: now_ms(),
            },
        ))
    }
}

fn floor_reply(r: anyhow::Result<Vec<u8>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match r {
        Ok(body) => (
            axum::http::StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            body,
        )
            .into_response(),
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    }
}

/// What the floor server answers in `--http-only` mode: a real open reply and
/// a real send reply, recorded once at start-up.
struct Recorded {
    open: Vec<u8>,
    send: Vec<u8>,
}

impl Answers for Recorded {
    fn open(&self, _frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(self.open.clone())
    }
    fn send(&self, _frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(self.send.clone())
    }
}

/// The floor server's axum app, answering with `answers`: the routes and
/// body limit of the daemon's API.
fn floor_app<A: Answers>(answers: Arc<A>) -> axum::Router {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/v1/open",
            post(
                |State(a): State<Arc<A>>, body: axum::body::Bytes| async move {
                    floor_reply(a.open(&body))
                },
            ),
        )
        .route(
            "/v1/send",
            post(
                |State(a): State<Arc<A>>, body: axum::body::Bytes| async move {
                    floor_reply(a.send(&body))
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(|| async { "" }))
        .layer(DefaultBodyLimit::max(
            coffer_vault_proto::channel::MAX_FRAME_LEN,
        ))
        .with_state(answers)
}

impl Recorded {
    /// One real login through `floor`, keeping the two reply frames.
    fn record(floor: &Floor, realm: &RealmDescriptor) -> anyhow::Result<Self> {
        let (_, req) = Login::start(&mut OsRng, b"wrong password")?;
        let (mut ch, frame) = ClientChannel::open(realm, &req, now_ms(), &mut OsRng)?;
        let open = floor.open(&frame)?;
        ensure!(
            matches!(ch.receive(&open)?, Response::LoginStarted { .. }),
            "recording: no KE2"
        );
        let frame = ch.send(
            &Request::LoginFinish {
                ke3: Box::new([7u8; 64]),
            },
            now_ms(),
        )?;
        let send = floor.send(&frame)?;
        Ok(Self { open, send })
    }
}

fn floor_serve(port: u16, realm_out: &Path, http_only: bool) -> anyhow::Result<()> {
    let mut realm_id = [0u8; 16];
    OsRng.fill_bytes(&mut realm_id);
    let mut ikm = [0u8; 32];
    OsRng.fill_bytes(&mut ikm);
    let key = coffer_vault_proto::channel::ChannelKey::derive(&ikm);
    let setup = ServerSetup::<CofferSuite>::new(&mut OsRng);
    let user = raw_user(&setup, &ksf(), b"floor user".to_vec())?;
    let realm = RealmDescriptor {
        format: REALM_FORMAT.into(),
        realm_id,
        public_key: key.public_key(),
        ksf: ksf(),
        max_attempts_limit: 10,
        address: format!("http://127.0.0.1:{port}"),
    };
    let floor = Arc::new(Floor {
        key,
        realm_id,
        context: opaque_context(&realm_id),
        setup,
        user,
        sessions: Mutex::new(HashMap::new()),
    });
    // The same app and runtime either way; `--http-only` answers with the
    // replies of one real login, recorded here.
    let app = if http_only {
        floor_app(Arc::new(Recorded::record(&floor, &realm)?))
    } else {
        floor_app(floor)
    };
    // The same runtime as `coffer-vault serve` (FLOOR_RUNTIME=current: a
    // single-threaded one, to see what the runtime costs).
    let rt = if std::env::var("FLOOR_RUNTIME").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        std::fs::write(realm_out, realm.to_json())?;
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// Starts the floor server pinned to the server CPU; `users` only sets how
/// the load generator round-robins (every login uses the same password file).
fn start_floor(
    a: &AllArgs,
    dir: &Path,
    run: usize,
    users: usize,
    http_only: bool,
) -> anyhow::Result<Daemon> {
    let port = free_port()?;
    let name = if http_only { "http" } else { "floor" };
    let realm_file = dir.join(format!("{name}-realm.json"));
    let log = std::fs::File::create(a.out.join(format!("{name}-run{run}.log")))?;
    let child = Command::new("taskset")
        .args(["-c", &a.server_cpu.to_string()])
        .arg(std::env::current_exe()?)
        .args(["floor-serve", "--port", &port.to_string(), "--realm-out"])
        .arg(&realm_file)
        .args(http_only.then_some("--http-only"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut d = Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
        realm: RealmDescriptor {
            format: REALM_FORMAT.into(),
            realm_id: [0; 16],
            public_key: [0; 32],
            ksf: ksf(),
            max_attempts_limit: 10,
            address: String::new(),
        },
        tokens: vec!["floor".into(); users.max(1)],
        http_only,
    };
    d.wait_up("the floor server", || realm_file.exists())?;
    d.realm = RealmDescriptor::from_json(&std::fs::read_to_string(&realm_file)?)?;
    Ok(d)
}

// ---------------------------------------------------------------- replicated realms

#[derive(clap::Args, Clone)]
// A later value wins (bench/realm.sh passes defaults before the user's arguments).
#[command(args_override_self = true)]
struct RealmArgs {
    /// The coffer-vault binary.
    #[arg(long, default_value = "target/release/coffer-vault")]
    bin: PathBuf,
    /// Setups, in order: `single` (`coffer-vault init`, the baseline) or a
    /// node count (`coffer-vault realm new` with that many nodes).
    #[arg(long, value_delimiter = ',', default_value = "single,1,3,5")]
    setups: Vec<String>,
    /// Concurrent clients of the measured phases.
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    concurrency: Vec<usize>,
    /// Logins per measured phase (at most).
    #[arg(long, default_value_t = 6000)]
    phase_logins: usize,
    /// Seconds per measured phase (at most).
    #[arg(long, default_value_t = 8.0)]
    phase_secs: f64,
    /// The realm size whose phases are also run against a follower (it
    /// forwards every request to the leader); 0: none.
    #[arg(long, default_value_t = 3)]
    follower_nodes: usize,
    /// CPUs the vault processes run on (a taskset list; all nodes share them).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs of the load generator (a taskset list).
    #[arg(long, default_value = "1")]
    client_cpus: String,
    /// Client threads registering users (Argon2id once per user).
    #[arg(long, default_value_t = 8)]
    register_threads: usize,
    /// Correct-password logins after each phase (the client's Argon2id each),
    /// round-robin over the nodes; each must release that user's own key.
    #[arg(long, default_value_t = 10)]
    probes: usize,
    /// Count flushes (fsync, fdatasync) per node with `perf stat` in an
    /// extra phase at this concurrency (0: skip; needs perf).
    #[arg(long, default_value_t = 32)]
    flush_concurrency: usize,
    /// Logins of the flush-counting phase (at most; 4 s at most).
    #[arg(long, default_value_t = 2000)]
    flush_logins: usize,
    /// Profile every node of the realm of this size with `perf record` in an
    /// extra phase (0: none).
    #[arg(long, default_value_t = 0)]
    perf_nodes: usize,
    /// Concurrency of the profiled phase.
    #[arg(long, default_value_t = 128)]
    perf_concurrency: usize,
    /// `perf record` call-graph option (`fp`, `dwarf`, or `none`).
    #[arg(long, default_value = "dwarf")]
    perf_callgraph: String,
    /// Where results go (results.md, results.json, node logs, perf data).
    #[arg(long, default_value = "bench/work/realm")]
    out: PathBuf,
    /// Before each measured phase, wait until all CPUs together are less
    /// busy than this fraction.
    #[arg(long, default_value_t = 0.08)]
    quiet_threshold: f64,
    /// Longest wait for a quiet machine, seconds (then measure anyway).
    #[arg(long, default_value_t = 60.0)]
    quiet_wait_secs: f64,
    /// Working directory for realms (default: a temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

/// Guess limit every benchmark user registers with.
const MAX_ATTEMPTS: u8 = 10;
/// Users kept for the correct-password probes (never given a wrong login).
const PROBE_USERS: usize = 16;

/// Each user's own key, so a released key proves whose it is.
fn key_of(user: usize) -> [u8; 32] {
    let mut k = [0x5au8; 32];
    k[..8].copy_from_slice(&(user as u64).to_le_bytes());
    k
}

fn password_of(user: usize) -> Vec<u8> {
    format!("correct horse {user}").into_bytes()
}

/// The CPUs of a taskset list ("0", "0,1", "0-3").
fn cpu_list(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => v.push(part.parse()?),
        }
    }
    ensure!(!v.is_empty(), "empty CPU list {s:?}");
    Ok(v)
}

fn cpus_busy_ticks(cpus: &[usize]) -> anyhow::Result<u64> {
    cpus.iter().map(|&c| cpu_busy_ticks(c)).sum()
}

/// utime + stime of each live thread of `pid`, summed by thread group.
fn thread_ticks(pid: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let comm = &s[l + 1..r];
        let group = if comm.starts_with("peer-") {
            "peer senders".to_string()
        } else if comm.starts_with("tokio") {
            "tokio (HTTP workers, blocking pool)".to_string()
        } else if comm == "coffer-vault" {
            "main (HTTP accept)".to_string()
        } else {
            comm.to_string()
        };
        let f: Vec<&str> = s[r + 1..].split_whitespace().collect();
        let t = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(group).or_default() += t;
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Single,
    Realm(usize),
}

impl Setup {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if s == "single" {
            return Ok(Self::Single);
        }
        let n: usize = s
            .parse()
            .map_err(|_| anyhow!("setup {s:?}: `single` or a node count"))?;
        ensure!((1..=7).contains(&n), "setup {s:?}: 1 to 7 nodes");
        Ok(Self::Realm(n))
    }
    fn name(&self) -> String {
        match self {
            Self::Single => "single node (`init`)".into(),
            Self::Realm(1) => "realm, 1 node".into(),
            Self::Realm(n) => format!("realm, {n} nodes"),
        }
    }
    fn nodes(&self) -> usize {
        match self {
            Self::Single => 1,
            Self::Realm(n) => *n,
        }
    }
}

struct VNode {
    /// 1-based, as in `realm new`.
    id: usize,
    base: String,
    child: Child,
}

impl VNode {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for VNode {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    setup: Setup,
    nodes: Vec<VNode>,
    realm: RealmDescriptor,
    /// Tokens of the measured users, then of the probe users.
    tokens: Vec<String>,
    measured_users: usize,
    /// Wrong logins sent per measured user (the next answer's attempts left follow).
    spent: Vec<AtomicUsize>,
    /// Next measured-user slot.
    cursor: AtomicUsize,
    probes: AtomicUsize,
}

fn spawn_serve(
    a: &RealmArgs,
    data: &Path,
    nvram: &Path,
    port: u16,
    log: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(Command::new("taskset")
        .args(["-c", &a.server_cpus])
        .arg(&a.bin)
        .args(["serve", "--data"])
        .arg(data)
        .arg("--nvram")
        .arg(nvram)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--user-burst",
            "100000",
            "--user-rate-per-minute",
            "10000000",
        ])
        .args([
            "--tenant-burst",
            "10000000",
            "--tenant-rate-per-second",
            "10000000",
        ])
        .env("COFFER_VAULT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

fn start_cluster(
    a: &RealmArgs,
    setup: Setup,
    dir: &Path,
    measured_users: usize,
) -> anyhow::Result<Cluster> {
    let n = setup.nodes();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let ksf_args = [
        "--ksf-memory-kib".to_string(),
        KSF_MEMORY_KIB.to_string(),
        "--ksf-iterations".to_string(),
        KSF_ITERATIONS.to_string(),
    ];
    // (data dir, nvram file) per node; `token` writes the shared tenants file.
    let (paths, token_dir): (Vec<(PathBuf, PathBuf)>, PathBuf) = match setup {
        Setup::Single => {
            let data = dir.join("data");
            let nvram = dir.join("nvram").join("anchor.bin");
            std::fs::create_dir_all(nvram.parent().context("nvram dir")?)?;
            let out = Command::new(&a.bin)
                .args(["init", "--data"])
                .arg(&data)
                .arg("--nvram")
                .arg(&nvram)
                .args(["--address", &urls[0]])
                .args(&ksf_args)
                .output()
                .with_context(|| format!("running {}", a.bin.display()))?;
            ensure!(
                out.status.success(),
                "coffer-vault init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (vec![(data.clone(), nvram)], data)
        }
        Setup::Realm(_) => {
            let mut cmd = Command::new(&a.bin);
            cmd.args(["realm", "new", "--out"]).arg(dir);
            for u in &urls {
                cmd.args(["--node", u]);
            }
            let out = cmd
                .args(&ksf_args)
                .output()
                .with_context(|| format!("running {}", a.bin.display()))?;
            ensure!(
                out.status.success(),
                "coffer-vault realm new: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let paths = (1..=n)
                .map(|i| {
                    let d = dir.join(format!("node-{i}"));
                    let nv = d.join("nvram");
                    (d, nv)
                })
                .collect();
            (paths, dir.join("node-1"))
        }
    };
    let realm =
        RealmDescriptor::from_json(&std::fs::read_to_string(paths[0].0.join("realm.json"))?)?;
    let users = measured_users + PROBE_USERS;
    // `coffer-vault token` in process (same library function), before serve.
    let tokens = (0..users)
        .map(|i| coffer_vault::tenants::dev_token(&token_dir, TENANT, &format!("user-{i}"), 86_400))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tag = match setup {
        Setup::Single => "single".to_string(),
        Setup::Realm(n) => format!("realm{n}"),
    };
    let mut nodes = Vec::new();
    for (i, ((data, nvram), port)) in paths.iter().zip(&ports).enumerate() {
        let log = a.out.join(format!("{tag}-node{}.log", i + 1));
        nodes.push(VNode {
            id: i + 1,
            base: urls[i].clone(),
            child: spawn_serve(a, data, nvram, *port, &log)?,
        });
    }
    let t0 = Instant::now();
    for nd in &mut nodes {
        loop {
            if get_text(&format!("{}/healthz", nd.base)).is_ok() {
                break;
            }
            if let Ok(Some(st)) = nd.child.try_wait() {
                bail!("node {}: coffer-vault serve exited: {st}", nd.id);
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "vault did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Cluster {
        setup,
        nodes,
        realm,
        tokens,
        measured_users,
        spent: (0..measured_users).map(|_| AtomicUsize::new(0)).collect(),
        cursor: AtomicUsize::new(0),
        probes: AtomicUsize::new(0),
    })
}

fn metric(m: &HashMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

/// The leader's index in `cl.nodes` (found by `coffer_vault_realm_leading`);
/// waits for exactly one leader that serves, then for its first heartbeats.
fn find_leader(cl: &Cluster) -> anyhow::Result<usize> {
    if cl.setup == Setup::Single {
        return Ok(0);
    }
    let t0 = Instant::now();
    loop {
        let ms: Vec<Option<HashMap<String, f64>>> =
            cl.nodes.iter().map(|n| metrics(&n.base).ok()).collect();
        let leaders: Vec<usize> = ms
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.as_ref().is_some_and(|m| {
                    metric(m, "coffer_vault_realm_leading") == 1.0
                        && metric(m, "coffer_vault_refusing") == 0.0
                })
            })
            .map(|(i, _)| i)
            .collect();
        if leaders.len() == 1 {
            // Followers learn the leader's URL from its heartbeats (50 ms).
            std::thread::sleep(Duration::from_millis(400));
            return Ok(leaders[0]);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no single leader after 30 s ({} leading)",
            leaders.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers every user through `node` (Argon2id on the client, both CPUs).
fn register_users(a: &RealmArgs, cl: &Cluster, node: usize) -> anyhow::Result<()> {
    let base = &cl.nodes[node].base;
    let agents: Vec<ureq::Agent> = (0..a.register_threads.max(1)).map(|_| agent()).collect();
    let next = AtomicUsize::new(0);
    par_map((0..cl.tokens.len()).collect(), a.register_threads, |i| {
        let ag = &agents[next.fetch_add(1, Ordering::Relaxed) % agents.len()];
        let pw = password_of(i);
        let (reg, req) = Registration::start(&mut OsRng, &pw, MAX_ATTEMPTS, false)?;
        let (mut ch, frame) = ClientChannel::open(&cl.realm, &req, now_ms(), &mut OsRng)?;
        let body = post(ag, &format!("{base}/v1/open"), Some(&cl.tokens[i]), &frame)?;
        let resp = ch.receive(&body)?;
        let up = reg.finish(&mut OsRng, &cl.realm, &pw, &resp, &key_of(i))?;
        let frame = ch.send(&up, now_ms())?;
        let body = post(ag, &format!("{base}/v1/send"), None, &frame)?;
        match ch.receive(&body)? {
            Response::Registered { .. } => Ok(()),
            other => bail!("registration of user {i}: {other:?}"),
        }
    })?;
    Ok(())
}

/// One correct-password login of a probe user through `node`: the vault must
/// release exactly that user's key.
fn probe_login(ag: &ureq::Agent, cl: &Cluster, node: usize, user: usize) -> anyhow::Result<()> {
    let base = &cl.nodes[node].base;
    let pw = password_of(user);
    let (mut login, ke1) = Login::start(&mut OsRng, &pw)?;
    let (mut ch, frame) = ClientChannel::open(&cl.realm, &ke1, now_ms(), &mut OsRng)?;
    let resp = ch.receive(&post(
        ag,
        &format!("{base}/v1/open"),
        Some(&cl.tokens[user]),
        &frame,
    )?)?;
    let (ke3, wrong) = login.finish(&mut OsRng, &cl.realm, &pw, &resp)?;
    ensure!(!wrong, "user {user}: the correct password did not verify");
    let frame = ch.send(&ke3, now_ms())?;
    let resp = ch.receive(&post(ag, &format!("{base}/v1/send"), None, &frame)?)?;
    let k = login.key(&cl.realm, &resp)?;
    ensure!(
        *k == key_of(user),
        "user {user}: the vault released another key"
    );
    Ok(())
}

/// `n` probes round-robin over the nodes (2 threads): (ok, failed, first error).
fn probes(cl: &Cluster, n: usize) -> (usize, usize, Option<String>) {
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let first: Mutex<Option<String>> = Mutex::new(None);
    let jobs: Vec<usize> = (0..n).collect();
    let _ = par_map(jobs, 2, |j| {
        let k = cl.probes.fetch_add(1, Ordering::Relaxed);
        let user = cl.measured_users + k % PROBE_USERS;
        let node = j % cl.nodes.len();
        match probe_login(&agent(), cl, node, user) {
            Ok(()) => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = first.lock() {
                    f.get_or_insert(format!("node {}: {e:#}", cl.nodes[node].id));
                }
            }
        }
        Ok(())
    });
    (
        ok.into_inner(),
        failed.into_inner(),
        first.into_inner().ok().flatten(),
    )
}

/// A wrong-password login whose answers must carry the exact attempts left.
fn login_checked(
    ag: &ureq::Agent,
    base: &str,
    token: &str,
    it: &mut Item,
    expect: u8,
) -> anyhow::Result<()> {
    let body = post(ag, &format!("{base}/v1/open"), Some(token), &it.frame)?;
    match it.ch.receive(&body)? {
        Response::LoginStarted {
            attempts_remaining, ..
        } if attempts_remaining == expect => {}
        other => bail!(
            "user {}: expected KE2 with {expect} attempts left, got {other:?}",
            it.user
        ),
    }
    let mut ke3 = Box::new([0u8; 64]);
    OsRng.fill_bytes(&mut ke3[..]);
    let frame = it.ch.send(&Request::LoginFinish { ke3 }, now_ms())?;
    let body = post(ag, &format!("{base}/v1/send"), None, &frame)?;
    match it.ch.receive(&body)? {
        Response::Error {
            code: ErrorCode::WrongPassword,
            attempts_remaining: Some(r),
            ..
        } if r == expect => Ok(()),
        other => bail!(
            "user {}: expected a wrong-password refusal with {expect} attempts left, got {other:?}",
            it.user
        ),
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct RealmPhase {
    setup: String,
    nodes: usize,
    /// "leader" (or the single node) or "follower".
    target: String,
    /// "measured", "flushes" (perf stat) or "profile" (perf record).
    kind: String,
    concurrency: usize,
    logins: usize,
    errors: usize,
    first_error: Option<String>,
    wall_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    /// 1-based id of the leader (1 for the single node).
    leader: usize,
    /// 1-based id of the node the clients sent to.
    sent_to: usize,
    /// utime + stime per node process, seconds (node order).
    node_cpu_s: Vec<f64>,
    /// The same by thread group ("exited threads": the process's CPU not in a live thread).
    node_threads_s: Vec<BTreeMap<String, f64>>,
    server_cpus_busy_s: f64,
    client_cpu_s: f64,
    client_cpus_busy_s: f64,
    /// Deltas of the leader's metrics over the phase.
    batches: f64,
    batch_frames: f64,
    logins_started: f64,
    logins_failed: f64,
    logins_ok: f64,
    /// The leader's epoch before and after, and whether it still led.
    epoch_before: f64,
    epoch_after: f64,
    still_leading: bool,
    /// fsync and fdatasync calls per node (kind "flushes").
    flushes: Vec<(u64, u64)>,
    /// Every node applied the leader's last entry this long after the phase.
    catch_up_ms: Option<f64>,
    probes_ok: usize,
    probes_failed: usize,
    probe_error: Option<String>,
}

impl RealmPhase {
    fn rate(&self) -> f64 {
        self.logins as f64 / self.wall_s
    }
    fn cpu_us(&self, node: usize) -> f64 {
        self.node_cpu_s.get(node).copied().unwrap_or(0.0) * 1e6 / self.logins.max(1) as f64
    }
    fn all_cpu_us(&self) -> f64 {
        self.node_cpu_s.iter().sum::<f64>() * 1e6 / self.logins.max(1) as f64
    }
    /// The leader's counters saw exactly the logins the clients saw.
    /// (A login that failed in transport may or may not have reached the core.)
    fn counters_match(&self) -> bool {
        let (started, failed) = (self.logins_started as usize, self.logins_failed as usize);
        self.logins_ok == 0.0
            && (self.logins..=self.logins + self.errors).contains(&started)
            && (self.logins..=self.logins + self.errors).contains(&failed)
    }
}

enum Instr<'a> {
    None,
    Flushes,
    Profile(&'a Path, &'a str),
}

/// Logins at concurrency `c` sent to node `target`; `leader` reads the counters.
#[allow(clippy::too_many_arguments)]
fn realm_phase(
    cl: &Cluster,
    leader: usize,
    target: usize,
    c: usize,
    budget: usize,
    max_secs: f64,
    tck: f64,
    (server_cpus, client_cpus): (&[usize], &[usize]),
    instr: Instr<'_>,
) -> anyhow::Result<RealmPhase> {
    let slot0 = cl.cursor.fetch_add(budget, Ordering::Relaxed);
    let users = cl.measured_users;
    ensure!(
        (slot0 + budget).div_ceil(users) <= WRONG_PER_USER,
        "out of users: {users} users cannot take {} wrong logins",
        slot0 + budget
    );
    let items: Vec<Item> = (0..budget)
        .map(|i| {
            let (_, req) = Login::start(&mut OsRng, b"wrong password")?;
            let (ch, frame) = ClientChannel::open(&cl.realm, &req, now_ms(), &mut OsRng)?;
            Ok(Item {
                user: (slot0 + i) % users,
                ch,
                frame,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let base = cl.nodes[target].base.clone();
    let queue = Mutex::new(items.into_iter());
    let agents: Vec<ureq::Agent> = (0..c).map(|_| agent()).collect();
    for ag in &agents {
        let _ = ag.get(format!("{base}/healthz")).call();
    }
    let lbase = &cl.nodes[leader].base;
    let m0 = metrics(lbase)?;
    let pids: Vec<String> = cl.nodes.iter().map(VNode::pid).collect();
    let tags: Vec<String> = cl.nodes.iter().map(|n| format!("node{}", n.id)).collect();
    let mut tools: Vec<(Child, PathBuf)> = Vec::new();
    match instr {
        Instr::None => {}
        Instr::Flushes => {
            for (pid, tag) in pids.iter().zip(&tags) {
                let file = std::env::temp_dir().join(format!("loginbench-flushes-{pid}.csv"));
                let ch = Command::new("perf")
                    .args([
                        "stat",
                        "-e",
                        "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                        "-x",
                        ",",
                        "-o",
                    ])
                    .arg(&file)
                    .args(["-p", pid])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("perf stat for {tag}"))?;
                tools.push((ch, file));
            }
        }
        Instr::Profile(dir, cg) => {
            for (pid, tag) in pids.iter().zip(&tags) {
                let file = dir.join(format!("{tag}.data"));
                let mut cmd = Command::new("perf");
                cmd.args(["record", "-F", "999", "-o"]).arg(&file);
                match cg {
                    "none" => {}
                    "dwarf" => {
                        cmd.args(["--call-graph", "dwarf,16384"]);
                    }
                    other => {
                        cmd.args(["--call-graph", other]);
                    }
                }
                let ch = cmd
                    .args(["-p", pid])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join(format!("{tag}.perf.log")))?)
                    .spawn()
                    .context("perf record")?;
                tools.push((ch, file));
            }
        }
    }
    if !tools.is_empty() {
        std::thread::sleep(Duration::from_millis(700));
    }
    let barrier = Barrier::new(c + 1);
    let deadline = Duration::from_secs_f64(max_secs);
    let lat: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(budget));
    let errors = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let me = std::process::id().to_string();
    type Snap = (Vec<u64>, Vec<BTreeMap<String, u64>>, u64, u64, u64, Instant);
    let snap = |pids: &[String]| -> anyhow::Result<Snap> {
        Ok((
            pids.iter()
                .map(|p| proc_ticks(p))
                .collect::<anyhow::Result<_>>()?,
            pids.iter().map(|p| thread_ticks(p)).collect(),
            proc_ticks(&me)?,
            cpus_busy_ticks(server_cpus)?,
            cpus_busy_ticks(client_cpus)?,
            Instant::now(),
        ))
    };
    let s0 = std::thread::scope(|s| -> anyhow::Result<Snap> {
        for ag in &agents {
            let (queue, barrier, lat, errors, first_error, base) =
                (&queue, &barrier, &lat, &errors, &first_error, &base);
            s.spawn(move || {
                let mut mine = Vec::new();
                barrier.wait();
                let t0 = Instant::now();
                loop {
                    if t0.elapsed() > deadline {
                        break;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(mut it) = next else { break };
                    let n = cl.spent[it.user].fetch_add(1, Ordering::Relaxed) + 1;
                    let expect = MAX_ATTEMPTS.saturating_sub(n as u8);
                    let t = Instant::now();
                    match login_checked(ag, base, &cl.tokens[it.user], &mut it, expect) {
                        Ok(()) => mine.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(format!("{e:#}"));
                            }
                        }
                    }
                }
                if let Ok(mut l) = lat.lock() {
                    l.extend(mine);
                }
            });
        }
        let s0 = snap(&pids)?;
        barrier.wait();
        Ok(s0)
    })?;
    let s1 = snap(&pids)?;
    for (t, _) in tools.iter_mut() {
        let _ = Command::new("kill")
            .args(["-INT", &t.id().to_string()])
            .status();
        let _ = t.wait();
    }
    // The leader publishes its counters right after the batch's replies.
    std::thread::sleep(Duration::from_millis(100));
    let m1 = metrics(lbase)?;
    let dm = |k: &str| metric(&m1, k) - metric(&m0, k);
    let wall_s = s1.5.duration_since(s0.5).as_secs_f64();
    let node_cpu_s: Vec<f64> =
        s0.0.iter()
            .zip(&s1.0)
            .map(|(a, b)| b.saturating_sub(*a) as f64 / tck)
            .collect();
    let node_threads_s =
        s0.1.iter()
            .zip(&s1.1)
            .zip(&node_cpu_s)
            .map(|((t0, t1), total)| {
                let mut m: BTreeMap<String, f64> = t1
                    .iter()
                    .map(|(k, v)| {
                        let d = v.saturating_sub(t0.get(k).copied().unwrap_or(0));
                        (k.clone(), d as f64 / tck)
                    })
                    .collect();
                let live: f64 = m.values().sum();
                m.insert("exited threads".into(), (total - live).max(0.0));
                m
            })
            .collect();
    let mut flushes = Vec::new();
    if matches!(instr, Instr::Flushes) {
        for (_, file) in &tools {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let count = |ev: &str| -> u64 {
                text.lines()
                    .find(|l| l.contains(ev))
                    .and_then(|l| l.split(',').next()?.trim().parse().ok())
                    .unwrap_or(0)
            };
            flushes.push((count("sys_enter_fsync"), count("sys_enter_fdatasync")));
            let _ = std::fs::remove_file(file);
        }
    }
    let lat = sorted(lat.into_inner().map_err(|_| anyhow!("poisoned"))?);
    let logins = lat.len();
    let mean_ms = lat.iter().sum::<f64>() / logins.max(1) as f64;
    Ok(RealmPhase {
        setup: cl.setup.name(),
        nodes: cl.setup.nodes(),
        target: if target == leader {
            "leader"
        } else {
            "follower"
        }
        .into(),
        kind: match instr {
            Instr::None => "measured",
            Instr::Flushes => "flushes",
            Instr::Profile(..) => "profile",
        }
        .into(),
        concurrency: c,
        logins,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().ok().flatten(),
        wall_s,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        mean_ms,
        leader: cl.nodes[leader].id,
        sent_to: cl.nodes[target].id,
        node_cpu_s,
        node_threads_s,
        server_cpus_busy_s: s1.3.saturating_sub(s0.3) as f64 / tck,
        client_cpu_s: s1.2.saturating_sub(s0.2) as f64 / tck,
        client_cpus_busy_s: s1.4.saturating_sub(s0.4) as f64 / tck,
        batches: dm("coffer_vault_batches_total"),
        batch_frames: dm("coffer_vault_batch_frames_total"),
        logins_started: dm("coffer_vault_logins_started_total"),
        logins_failed: dm("coffer_vault_logins_failed_total"),
        logins_ok: dm("coffer_vault_logins_ok_total"),
        epoch_before: metric(&m0, "coffer_vault_realm_epoch"),
        epoch_after: metric(&m1, "coffer_vault_realm_epoch"),
        still_leading: cl.setup == Setup::Single
            || metric(&m1, "coffer_vault_realm_leading") == 1.0,
        flushes,
        catch_up_ms: None,
        probes_ok: 0,
        probes_failed: 0,
        probe_error: None,
    })
}

/// Every node applied the leader's last entry (followers apply on the next
/// heartbeat's certificate): ms waited, None if not within 5 s.
fn catch_up(cl: &Cluster, leader: usize) -> Option<f64> {
    if cl.setup == Setup::Single {
        return Some(0.0);
    }
    let t0 = Instant::now();
    let target = metrics(&cl.nodes[leader].base)
        .ok()
        .map(|m| metric(&m, "coffer_vault_realm_log_index"))?;
    while t0.elapsed() < Duration::from_secs(5) {
        let all = cl.nodes.iter().all(|n| {
            metrics(&n.base).is_ok_and(|m| {
                metric(&m, "coffer_vault_nvram_generation") >= target
                    && metric(&m, "coffer_vault_refusing") == 0.0
            })
        });
        if all {
            return Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Profile categories for a realm's nodes (first match wins): the
/// single-node ones plus the log, the peers and forwarding.
const REALM_CATEGORIES: &[(&str, &[&str], &[&str])] = &[
    (
        "OPAQUE server (opaque-ke)",
        &["opaque_ke::", "ServerLogin", "voprf::"],
        &[],
    ),
    (
        "channel: HPKE open frame, data frames, reply seal",
        &[
            "ServerChannel::accept",
            "ServerChannel::open_data",
            "seal_reply",
        ],
        &[],
    ),
    (
        "records, Merkle tree, marker (seal/open, SHA-256, HMAC)",
        &[
            "seal_record",
            "open_record",
            "set_leaf",
            "leaf_hash",
            "node_hash",
            "merkle::",
            "make_marker",
        ],
        &[],
    ),
    (
        "log append (Store::write_log): fsync/fdatasync",
        &["Store::write_log", "Store>::write_log"],
        &["fsync", "fdatasync", "ext4_sync_file"],
    ),
    (
        "log append (Store::write_log): B-tree, page cache",
        &["Store::write_log", "Store>::write_log"],
        &[],
    ),
    (
        "apply (Store::apply): fsync/fdatasync",
        // The member calls it through its `LogStore` trait.
        &["Store::apply", "Store>::apply"],
        &["fsync", "fdatasync", "ext4_sync_file"],
    ),
    (
        "apply (Store::apply): B-tree, page cache",
        &["Store::apply", "Store>::apply"],
        &[],
    ),
    (
        "store commit (single node): fsync/fdatasync",
        &["Store::commit", "Store::write"],
        &["fsync", "fdatasync", "ext4_sync_file"],
    ),
    (
        "store commit (single node): B-tree",
        &["Store::commit", "Store::write"],
        &[],
    ),
    (
        "store reads (buckets, log entries)",
        &[
            "Store::buckets",
            "Store>::buckets",
            "Store::log_range",
            "Store>::log_range",
        ],
        &[],
    ),
    (
        "NVRAM write: fsync of file + directory",
        &["nvram_write"],
        &["fsync", "fdatasync", "ext4_sync_file"],
    ),
    ("NVRAM write: create, write, rename", &["nvram_write"], &[]),
    (
        "peer senders (ureq POST /v1/peer, TCP)",
        &["replication::sender"],
        &[],
    ),
    (
        "forwarding to the leader (ureq, a TCP connection per request)",
        &["http::forward::"],
        &[],
    ),
    (
        "peer messages: encode, decode, /v1/peer handler",
        &["http::peer", "peer::PeerMsg", "PeerMsg::decode"],
        &[],
    ),
    (
        "core: log entries, acks, certificates (HMAC)",
        &["coffer_vault_core::replica", "coffer_vault_core::log::"],
        &[],
    ),
    (
        "core: other (sessions, codecs, allocation)",
        &[
            "coffer_vault_core::Core<",
            "coffer_vault_core::session",
            "coffer_vault_core::record",
            "coffer_vault_core::secrets",
        ],
        &[],
    ),
    (
        "member / engine thread: other (event loop, channels, metrics)",
        &[
            "replication::",
            "member::",
            "engine::run",
            "engine::spawn",
            "blocking_recv",
            "crossbeam_channel",
        ],
        &[],
    ),
    (
        "HTTP: hyper/axum/tokio incl. TCP send/recv, epoll, token check",
        &[
            "hyper",
            "axum",
            "tokio",
            "mio::",
            "Tenants::verify",
            "RateLimiter",
        ],
        &[],
    ),
];

/// (setup, per node: its name and shares of [`REALM_CATEGORIES`], per node:
/// CPU µs per login of the unprofiled phase).
type RealmProfile = (String, Vec<(String, Vec<f64>)>, Vec<f64>);

/// Per node: shares of [`REALM_CATEGORIES`] from its perf.data.
fn realm_profile(files: &[(String, PathBuf)]) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut out = Vec::new();
    for (name, file) in files {
        let script = Command::new("perf")
            .args(["script", "-F", "tid,period,ip,sym", "-i"])
            .arg(file)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        let t = categorize(&script.stdout[..], REALM_CATEGORIES)?;
        let all: f64 = t.iter().sum();
        if all == 0.0 {
            eprintln!(
                "  no samples in {} (see the .perf.log next to it)",
                file.display()
            );
        }
        // NaN: no profile for this node.
        out.push((
            name.clone(),
            t.iter()
                .map(|x| if all > 0.0 { x / all } else { f64::NAN })
                .collect(),
        ));
    }
    Ok(out)
}

fn run_realms(a: &RealmArgs) -> anyhow::Result<()> {
    let tck = clk_tck()?;
    let me = std::process::id();
    let server_cpus = cpu_list(&a.server_cpus)?;
    let client_cpus = cpu_list(&a.client_cpus)?;
    let all_cpus = {
        let mut v: Vec<usize> = server_cpus.iter().chain(&client_cpus).copied().collect();
        v.sort_unstable();
        v.dedup();
        v.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let cpus = (&server_cpus[..], &client_cpus[..]);
    let quiet = || wait_quiet(a.quiet_threshold, a.quiet_wait_secs);
    let setups: Vec<Setup> = a
        .setups
        .iter()
        .map(|s| Setup::parse(s))
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(&a.out)?;
    let tmp = tempfile::tempdir()?;
    let mut phases: Vec<RealmPhase> = Vec::new();
    let mut profile: Option<RealmProfile> = None;
    let warmup = 300;
    for (si, &setup) in setups.iter().enumerate() {
        let n = setup.nodes();
        let follower = matches!(setup, Setup::Realm(k) if k == a.follower_nodes && k > 1);
        let flush_phase = a.flush_concurrency > 0;
        let perf_phase = matches!(setup, Setup::Realm(k) if k == a.perf_nodes);
        let budget = warmup
            + a.concurrency.len() * a.phase_logins * if follower { 2 } else { 1 }
            + if follower { 100 } else { 0 }
            + if flush_phase { a.flush_logins } else { 0 }
            + if perf_phase { a.phase_logins } else { 0 };
        let users = budget.div_ceil(WRONG_PER_USER);
        let dir = match &a.workdir {
            Some(w) => {
                let d = w.join(format!("setup{si}"));
                if d.exists() {
                    std::fs::remove_dir_all(&d)?;
                }
                std::fs::create_dir_all(&d)?;
                d
            }
            None => tmp.path().join(format!("setup{si}")),
        };
        set_affinity(me, &all_cpus)?;
        eprintln!(
            "[{}] starting {n} node(s) on CPU {}; registering {} users (client Argon2id m={KSF_MEMORY_KIB} KiB t={KSF_ITERATIONS})",
            setup.name(),
            a.server_cpus,
            users + PROBE_USERS
        );
        let cl = start_cluster(a, setup, &dir, users)?;
        let leader = find_leader(&cl)?;
        let t = Instant::now();
        register_users(a, &cl, leader)?;
        let leader = find_leader(&cl)?;
        eprintln!(
            "[{}] registered in {:.1} s; leader: node {}; load generator on CPU {}",
            setup.name(),
            t.elapsed().as_secs_f64(),
            cl.nodes[leader].id,
            a.client_cpus
        );
        set_affinity(me, &a.client_cpus)?;
        let w = realm_phase(&cl, leader, leader, 8, warmup, 30.0, tck, cpus, Instr::None)?;
        ensure!(w.errors == 0, "warm-up errors: {:?}", w.first_error);
        let mut targets = vec![leader];
        if follower {
            let f = (0..n).find(|&i| i != leader).context("no follower")?;
            targets.push(f);
        }
        for &target in &targets {
            if target != leader {
                let w = realm_phase(&cl, leader, target, 8, 100, 30.0, tck, cpus, Instr::None)?;
                ensure!(
                    w.errors == 0,
                    "follower warm-up errors: {:?}",
                    w.first_error
                );
            }
            for &c in &a.concurrency {
                quiet()?;
                let leader_now = find_leader(&cl)?;
                if leader_now != leader {
                    eprintln!(
                        "[{}] the leader changed (now node {})",
                        setup.name(),
                        cl.nodes[leader_now].id
                    );
                }
                let mut p = realm_phase(
                    &cl,
                    leader_now,
                    target,
                    c,
                    a.phase_logins,
                    a.phase_secs,
                    tck,
                    cpus,
                    Instr::None,
                )?;
                p.catch_up_ms = catch_up(&cl, leader_now);
                let (ok, failed, err) = probes(&cl, a.probes);
                (p.probes_ok, p.probes_failed, p.probe_error) = (ok, failed, err);
                eprintln!(
                    "[{}] to {} (node {}) C={c}: {} logins in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, batch {:.1}, node CPU µs/login {:.0} (leader {:.0}), errors {}, counters {}, probes {}/{}, caught up {}",
                    setup.name(),
                    p.target,
                    p.sent_to,
                    p.logins,
                    p.wall_s,
                    p.rate(),
                    p.p50_ms,
                    p.p99_ms,
                    p.batch_frames / p.batches.max(1.0),
                    p.all_cpu_us(),
                    p.cpu_us(leader_now),
                    p.errors,
                    if p.counters_match() { "match" } else { "MISMATCH" },
                    p.probes_ok,
                    p.probes_ok + p.probes_failed,
                    p.catch_up_ms.map_or("NO".into(), |m| format!("{m:.0} ms")),
                );
                if let Some(e) = &p.first_error {
                    eprintln!("[{}]   first error: {e}", setup.name());
                }
                if let Some(e) = &p.probe_error {
                    eprintln!("[{}]   probe error: {e}", setup.name());
                }
                phases.push(p);
            }
        }
        if flush_phase {
            let leader = find_leader(&cl)?;
            quiet()?;
            let mut p = realm_phase(
                &cl,
                leader,
                leader,
                a.flush_concurrency,
                a.flush_logins,
                4.0,
                tck,
                cpus,
                Instr::Flushes,
            )?;
            p.catch_up_ms = catch_up(&cl, leader);
            eprintln!(
                "[{}] flushes at C={}: {:.0} batches, (fsync, fdatasync) per node {:?}",
                setup.name(),
                p.concurrency,
                p.batches,
                p.flushes
            );
            phases.push(p);
        }
        if perf_phase {
            let leader = find_leader(&cl)?;
            let dir = a.out.join(format!("perf-realm{n}"));
            std::fs::create_dir_all(&dir)?;
            quiet()?;
            eprintln!(
                "[{}] profiling every node at C={}",
                setup.name(),
                a.perf_concurrency
            );
            let p = realm_phase(
                &cl,
                leader,
                leader,
                a.perf_concurrency,
                a.phase_logins,
                a.phase_secs,
                tck,
                cpus,
                Instr::Profile(&dir, &a.perf_callgraph),
            )?;
            let files: Vec<(String, PathBuf)> = cl
                .nodes
                .iter()
                .enumerate()
                .map(|(i, nd)| {
                    (
                        format!(
                            "node {} ({})",
                            nd.id,
                            if i == leader { "leader" } else { "follower" }
                        ),
                        dir.join(format!("node{}.data", nd.id)),
                    )
                })
                .collect();
            // µs per login per node from the unprofiled phase at the same C.
            let us: Vec<f64> = phases
                .iter()
                .rev()
                .find(|q| {
                    q.setup == p.setup
                        && q.kind == "measured"
                        && q.target == "leader"
                        && q.concurrency == a.perf_concurrency
                })
                .map(|q| (0..n).map(|i| q.cpu_us(i)).collect())
                .unwrap_or_else(|| (0..n).map(|i| p.cpu_us(i)).collect());
            match realm_profile(&files) {
                Ok(shares) => profile = Some((setup.name(), shares, us)),
                Err(e) => eprintln!("[{}] profile failed: {e:#}", setup.name()),
            }
            phases.push(p);
        }
        drop(cl);
        set_affinity(me, &all_cpus)?;
    }
    let md = render_realms(a, &phases, profile.as_ref());
    println!("{md}");
    std::fs::write(a.out.join("results.md"), &md)?;
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&phases)?,
    )?;
    let bad = phases
        .iter()
        .filter(|p| p.errors > 0 || p.probes_failed > 0 || !p.counters_match())
        .count();
    ensure!(
        bad == 0,
        "{bad} phase(s) had errors, failed probes or mismatched counters"
    );
    Ok(())
}

fn render_realms(a: &RealmArgs, phases: &[RealmPhase], profile: Option<&RealmProfile>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let measured: Vec<&RealmPhase> = phases.iter().filter(|p| p.kind == "measured").collect();
    let single = |c: usize| {
        measured
            .iter()
            .find(|p| p.nodes == 1 && p.setup.starts_with("single") && p.concurrency == c)
    };
    let who = |p: &RealmPhase| {
        if p.setup.starts_with("single") {
            "–".to_string()
        } else {
            format!("{} (node {})", p.target, p.sent_to)
        }
    };
    let _ = writeln!(
        s,
        "Vault processes on CPU {}, load generator on CPU {}; at most {} logins or {} s per phase; wrong-password logins (as `bench/vault.sh`).\n",
        a.server_cpus, a.client_cpus, a.phase_logins, a.phase_secs
    );
    let _ = writeln!(
        s,
        "| setup | sent to | C | logins/s | p50 ms | p99 ms | logins/s vs single | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for p in &measured {
        let ratio = single(p.concurrency)
            .map(|b| format!("{:.2}", p.rate() / b.rate()))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            p.setup,
            who(p),
            p.concurrency,
            p.rate(),
            p.p50_ms,
            p.p99_ms,
            ratio,
            p.errors
        );
    }
    let _ = writeln!(s, "\nCPU per login (utime + stime of each vault process from /proc/<pid>/stat), batch size (leader's /metrics):\n");
    let _ = writeln!(s, "| setup | sent to | C | mean batch | leader µs | each follower µs | all nodes µs | all nodes vs single | vault CPUs busy % | client CPU % | other load % |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &measured {
        let li = p.leader.saturating_sub(1);
        let followers: Vec<f64> = (0..p.nodes)
            .filter(|&i| i != li)
            .map(|i| p.cpu_us(i))
            .collect();
        let f = if followers.is_empty() {
            "–".into()
        } else {
            followers
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let ratio = single(p.concurrency)
            .map(|b| format!("{:.2}", p.all_cpu_us() / b.all_cpu_us()))
            .unwrap_or_else(|| "–".into());
        let nodes_cpu: f64 = p.node_cpu_s.iter().sum();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.0} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} |",
            p.setup,
            who(p),
            p.concurrency,
            p.batch_frames / p.batches.max(1.0),
            p.cpu_us(li),
            f,
            p.all_cpu_us(),
            ratio,
            100.0 * p.server_cpus_busy_s / p.wall_s,
            100.0 * p.client_cpu_s / p.wall_s,
            100.0 * (p.server_cpus_busy_s - nodes_cpu).max(0.0) / p.wall_s,
        );
    }
    // Threads at the highest concurrency sent to the leader.
    let cmax = a.concurrency.iter().copied().max().unwrap_or(0);
    let _ = writeln!(
        s,
        "\nCPU µs per login by thread at C={cmax} (leader target):\n"
    );
    for p in measured.iter().filter(|p| p.concurrency == cmax) {
        for (i, th) in p.node_threads_s.iter().enumerate() {
            let role = if i + 1 == p.leader {
                "leader"
            } else {
                "follower"
            };
            let mut v: Vec<(&String, &f64)> = th.iter().filter(|(_, v)| **v > 0.0).collect();
            v.sort_by(|x, y| y.1.total_cmp(x.1));
            let parts: Vec<String> = v
                .iter()
                .map(|(k, x)| format!("{k} {:.0}", **x * 1e6 / p.logins.max(1) as f64))
                .collect();
            let _ = writeln!(
                s,
                "- {}, sent to {}, node {} ({role}): {}",
                p.setup,
                p.target,
                i + 1,
                parts.join(", ")
            );
        }
    }
    let fl: Vec<&RealmPhase> = phases.iter().filter(|p| p.kind == "flushes").collect();
    if !fl.is_empty() {
        let _ = writeln!(s, "\nFlushes (`perf stat -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p <node>`), one extra phase per setup:\n");
        let _ = writeln!(s, "| setup | C | logins | batches | logins/batch | leader fsync + fdatasync per batch | each follower, per batch | all nodes, per login |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for p in fl {
            let li = p.leader.saturating_sub(1);
            let b = p.batches.max(1.0);
            let per = |(f, d): (u64, u64)| format!("{:.1} + {:.1}", f as f64 / b, d as f64 / b);
            let lf = p
                .flushes
                .get(li)
                .copied()
                .map(per)
                .unwrap_or_else(|| "–".into());
            let ff: Vec<String> = p
                .flushes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != li)
                .map(|(_, x)| per(*x))
                .collect();
            let total: u64 = p.flushes.iter().map(|(f, d)| f + d).sum();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {:.2} |",
                p.setup,
                p.concurrency,
                p.logins,
                p.batches,
                p.batch_frames / b,
                lf,
                if ff.is_empty() {
                    "–".into()
                } else {
                    ff.join(" / ")
                },
                total as f64 / p.logins.max(1) as f64
            );
        }
    }
    let _ = writeln!(s, "\nCorrectness, per phase: every measured login is a wrong-password login whose KE2 and refusal must carry the exact attempts left; the leader's counters must match; then {} correct-password probes round-robin over the nodes must each release that user's own key; every node must apply the leader's last entry.\n", a.probes);
    let _ = writeln!(s, "| setup | sent to | C | kind | logins checked | errors | leader Δ started / Δ failed / Δ ok | counters | probes ok | all nodes applied after | leader kept |");
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|---|---|---:|---:|---|");
    for p in phases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {} | {}/{} | {} | {} |",
            p.setup,
            who(p),
            p.concurrency,
            p.kind,
            p.logins,
            p.errors,
            p.logins_started,
            p.logins_failed,
            p.logins_ok,
            if p.counters_match() {
                "match"
            } else {
                "MISMATCH"
            },
            p.probes_ok,
            p.probes_ok + p.probes_failed,
            p.catch_up_ms.map_or("–".into(), |m| format!("{m:.0} ms")),
            if p.still_leading && p.epoch_before == p.epoch_after {
                "yes"
            } else {
                "NO"
            },
        );
    }
    for p in phases {
        if let Some(e) = &p.first_error {
            let _ = writeln!(s, "\n{} C={} first error: {e}", p.setup, p.concurrency);
        }
        if let Some(e) = &p.probe_error {
            let _ = writeln!(s, "\n{} C={} probe error: {e}", p.setup, p.concurrency);
        }
    }
    if let Some((name, nodes, us)) = profile {
        let _ = writeln!(s, "\nProfile of every node, {name}, C={} (`perf record -F 999 --call-graph {}` per node; share of the node's samples, and µs/login = share × that node's CPU per login in the unprofiled phase at that C):\n", a.perf_concurrency, a.perf_callgraph);
        let mut head = "| where the CPU goes |".to_string();
        let mut rule = "|---|".to_string();
        for (nm, _) in nodes {
            head += &format!(" {nm} share | µs/login |");
            rule += "---:|---:|";
        }
        let _ = writeln!(s, "{head}\n{rule}");
        let ncat = REALM_CATEGORIES.len() + 1;
        let mut order: Vec<usize> = (0..ncat).collect();
        let total = |i: usize| {
            nodes
                .iter()
                .zip(us)
                .filter(|((_, sh), _)| !sh[i].is_nan())
                .map(|((_, sh), u)| sh[i] * u)
                .sum::<f64>()
        };
        order.sort_by(|x, y| total(*y).total_cmp(&total(*x)));
        for i in order {
            if nodes.iter().all(|(_, sh)| sh[i] == 0.0 || sh[i].is_nan()) {
                continue;
            }
            let name = REALM_CATEGORIES.get(i).map(|c| c.0).unwrap_or(
                "other (kernel without a user stack: softirq, scheduler, jbd2 wake-ups)",
            );
            let mut row = format!("| {name} |");
            for ((_, sh), u) in nodes.iter().zip(us) {
                row += &if sh[i].is_nan() {
                    " no samples | – |".to_string()
                } else {
                    format!(" {:.1}% | {:.0} |", 100.0 * sh[i], sh[i] * u)
                };
            }
            let _ = writeln!(s, "{row}");
        }
    }
    s
}

// ---------------------------------------------------------------- perf summary

/// Categories, first match wins: (name, a frame must contain one of `any`,
/// and, if `and` is not empty, a frame must also contain one of `and`).
const CATEGORIES: &[(&str, &[&str], &[&str])] = &[
    (
        "OPAQUE server (opaque-ke: deserialize, ServerLogin::start/finish, its RNG)",
        &["opaque_ke::", "ServerLogin", "voprf::"],
        &[],
    ),
    (
        "channel: open frame (HPKE X25519 decap + key schedule + ChaCha20-Poly1305)",
        &["ServerChannel::accept"],
        &[],
    ),
    (
        "channel: data frame (ChaCha20-Poly1305)",
        &["ServerChannel::open_data"],
        &[],
    ),
    ("channel: reply seal (AES-256-GCM)", &["seal_reply"], &[]),
    (
        "record seal/open (XChaCha20-Poly1305)",
        &["seal_record", "open_record"],
        &[],
    ),
    (
        "Merkle: leaf hashes + path to root (SHA-256)",
        &["set_leaf", "leaf_hash", "node_hash", "merkle::"],
        &[],
    ),
    ("marker (HMAC-SHA256)", &["make_marker"], &[]),
    (
        "redb commit: fsync/fdatasync (kernel)",
        &["Store::commit", "Store::write"],
        &["fsync", "fdatasync", "ext4_sync_file"],
    ),
    (
        "redb commit: B-tree, page cache writes",
        &["Store::commit", "Store::write"],
        &[],
    ),
    ("redb read (Store::buckets)", &["Store::buckets"], &[]),
    (
        "NVRAM file write: fsync of file + directory (kernel)",
        &["nvram_write"],
        &["fsync", "fdatasync", "ext4_sync_file"],
    ),
    (
        "NVRAM file write: create, write, rename",
        &["nvram_write"],
        &[],
    ),
    (
        "core: other (sessions, replay cache, record codec, bucket clones, allocation)",
        &[
            "coffer_vault_core::Core<",
            "coffer_vault_core::session",
            "coffer_vault_core::record",
            "coffer_vault_core::secrets",
        ],
        &[],
    ),
    (
        "engine ↔ HTTP hand-off (tokio mpsc/oneshot, wake-ups, futex)",
        &["sync::oneshot", "sync::mpsc", "blocking_recv"],
        &[],
    ),
    (
        "engine thread: other (record ids, batching, channel wake-ups, metrics)",
        &["engine::run", "engine::spawn"],
        &[],
    ),
    ("token check (JWT HS256)", &["Tenants::verify"], &[]),
    ("rate limiter", &["RateLimiter"], &[]),
    (
        "HTTP: hyper/axum/tokio incl. TCP send/recv, epoll",
        &["hyper", "axum", "tokio", "mio::"],
        &[],
    ),
];

fn perf_summary(us_per_login: f64, realm: bool) -> anyhow::Result<()> {
    let cats = if realm { REALM_CATEGORIES } else { CATEGORIES };
    print!(
        "{}",
        summarize(std::io::stdin().lock(), us_per_login, cats)?
    );
    Ok(())
}

/// Groups `perf script -F tid,period,ip,sym` samples by `cats` ([`CATEGORIES`]
/// for the single-node daemon).
fn summarize(
    input: impl std::io::BufRead,
    us_per_login: f64,
    cats: &[(&str, &[&str], &[&str])],
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let totals = categorize(input, cats)?;
    let all: f64 = totals.iter().sum();
    ensure!(
        all > 0.0,
        "no samples on stdin (pipe `perf script -F tid,period,ip,sym`)"
    );
    let mut rows: Vec<(usize, f64)> = totals.iter().copied().enumerate().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out = String::new();
    let _ = writeln!(out, "| where the server's CPU goes | share | µs/login |");
    let _ = writeln!(out, "|---|---:|---:|");
    for (i, t) in rows {
        if t == 0.0 {
            continue;
        }
        let name = cats
            .get(i)
            .map(|c| c.0)
            .unwrap_or("other (kernel without a user stack: softirq, scheduler, page reclaim)");
        let share = t / all;
        let us = if us_per_login > 0.0 {
            format!("{:.0}", share * us_per_login)
        } else {
            "–".into()
        };
        let _ = writeln!(out, "| {name} | {:.1}% | {us} |", 100.0 * share);
    }
    Ok(out)
}

/// Sums `perf script -F tid,period,ip,sym` sample periods by category
/// (first match wins); the last slot is "no category".
fn categorize(
    input: impl std::io::BufRead,
    cats: &[(&str, &[&str], &[&str])],
) -> anyhow::Result<Vec<f64>> {
    let mut totals: Vec<f64> = vec![0.0; cats.len() + 1];
    let mut stack: Vec<String> = Vec::new();
    let mut period = 0.0;
    let mut flush = |stack: &mut Vec<String>, period: f64| {
        if stack.is_empty() && period == 0.0 {
            return;
        }
        let has = |pats: &[&str]| stack.iter().any(|f| pats.iter().any(|p| f.contains(p)));
        let i = cats
            .iter()
            .position(|(_, any, and)| has(any) && (and.is_empty() || has(and)))
            .unwrap_or(cats.len());
        totals[i] += period;
        stack.clear();
    };
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with('\t') {
            // A sample header: "tid period" (the tid is right-aligned, so
            // it may start with spaces; stack lines start with a tab).
            flush(&mut stack, period);
            period = line
                .split_whitespace()
                .last()
                .and_then(|p| p.parse().ok())
                .unwrap_or(1.0);
        } else {
            stack.push(line);
        }
    }
    flush(&mut stack, period);
    Ok(totals)
}
