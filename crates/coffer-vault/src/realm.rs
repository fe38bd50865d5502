//! `init` and `serve`: the realm's files and the running daemon.
//!
//! A data directory holds `realm.json` (the descriptor clients pin),
//! `records.redb` (the store), `tenants.json`, and the master secret's
//! custody file (`realm.key` or `realm.key.p11`). NVRAM is a separate file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use coffer_vault_core::log::NodeId;
use coffer_vault_core::replica::MemberStore;
use coffer_vault_core::{Core, RealmConfig, StartState};
use coffer_vault_proto::realm::REALM_FORMAT;
use coffer_vault_proto::{KsfParams, RealmDescriptor};

use crate::custody::{self, CustodyArgs};
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::platform::FilePlatform;
use crate::ratelimit::{Limits, RateLimiter};
use crate::store::{LogItem, Store};
use crate::tenants::Tenants;

/// The descriptor file.
pub const REALM_FILE: &str = "realm.json";
/// The store file.
pub const STORE_FILE: &str = "records.redb";

/// What `init` needs.
pub struct InitOptions {
    /// Data directory.
    pub data: PathBuf,
    /// NVRAM file.
    pub nvram: PathBuf,
    /// Address clients reach the API at.
    pub address: String,
    /// Highest guess limit a registration may ask for.
    pub max_attempts_limit: u8,
    /// KSF the clients will pin.
    pub ksf: KsfParams,
    /// Where the master secret lives.
    pub custody: CustodyArgs,
}

/// Creates a realm; returns its descriptor.
pub fn init(o: &InitOptions) -> anyhow::Result<RealmDescriptor> {
    // The bounds clients enforce (too weak, or costly enough to exhaust one):
    // a realm they would all refuse is refused here.
    o.ksf.argon2().context("the KSF parameters")?;
    // The check clients make of the address (and `realm new` of its nodes),
    // so that a realm no client could reach is not created.
    coffer_vault_proto::realm::check_vault_url(&o.address).context("--address")?;
    if o.max_attempts_limit == 0 {
        bail!("--max-attempts-limit must be at least 1");
    }
    if o.data.join(REALM_FILE).exists() {
        bail!(
            "{} already holds a realm (realm.json exists); refusing to overwrite it",
            o.data.display()
        );
    }
    if o.nvram.exists() {
        bail!(
            "the NVRAM file {} already exists; a realm's NVRAM is never reused",
            o.nvram.display()
        );
    }
    std::fs::create_dir_all(&o.data)
        .with_context(|| format!("cannot create {}", o.data.display()))?;
    if let Some(dir) = o.nvram.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut realm_id = [0u8; 16];
    getrandom::fill(&mut realm_id).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let master = custody::create_master(&o.custody, &o.data)?;
    let config = RealmConfig {
        realm_id,
        max_attempts_limit: o.max_attempts_limit,
    };
    let created = Core::init(FilePlatform::new(&o.nvram), master.expose_secret(), config)?;
    Store::create(&o.data.join(STORE_FILE), &created.sealed_setup)?;
    let desc = RealmDescriptor {
        format: REALM_FORMAT.into(),
        realm_id,
        public_key: created.public_key,
        ksf: o.ksf,
        max_attempts_limit: o.max_attempts_limit,
        address: o.address.clone(),
    };
    let path = o.data.join(REALM_FILE);
    std::fs::write(&path, desc.to_json() + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(desc)
}

/// What `realm new` needs.
pub struct RealmNewOptions {
    /// Output directory (created): `node-i/` per node and `realm.json`.
    pub out: PathBuf,
    /// The nodes' URLs, node 1 first.
    pub nodes: Vec<String>,
    /// Highest guess limit a registration may ask for.
    pub max_attempts_limit: u8,
    /// KSF the clients will pin.
    pub ksf: KsfParams,
    /// Where the master secret lives.
    pub custody: CustodyArgs,
    /// Groups, each owning an equal share of the record-id buckets and led
    /// on its own (ADR 0014).
    pub groups: u8,
}

/// Most groups in a realm (NVRAM v2 holds at most 16 slots).
pub const MAX_GROUPS: u8 = 16;

/// The NVRAM file of node `i` under `realm new`'s output.
pub fn node_nvram(out: &Path, i: usize) -> PathBuf {
    out.join(format!("node-{i}")).join("nvram")
}

/// Group `g`'s NVRAM file, given `serve --nvram` (group 0's file).
pub fn group_nvram(nvram: &Path, g: u8) -> PathBuf {
    if g == 0 {
        nvram.to_path_buf()
    } else {
        let mut name = nvram.as_os_str().to_owned();
        name.push(format!(".g{g}"));
        PathBuf::from(name)
    }
}

/// Group `g`'s store file in a node's data directory.
pub fn group_store(data: &Path, g: u8) -> PathBuf {
    if g == 0 {
        data.join(STORE_FILE)
    } else {
        data.join(format!("records-g{g}.redb"))
    }
}

/// `realm new`: one realm of N nodes in one group (ADR 0011, 0013). Every
/// node gets its data directory with the descriptor, the shared tenants
/// file (a symlink to `<out>/tenants.json`), a store holding the genesis
/// entry, a copy of the master secret's custody file, and its NVRAM.
pub fn realm_new(o: &RealmNewOptions) -> anyhow::Result<RealmDescriptor> {
    o.ksf.argon2().context("the KSF parameters")?;
    if o.max_attempts_limit == 0 {
        bail!("--max-attempts-limit must be at least 1");
    }
    if !(1..=MAX_GROUPS).contains(&o.groups) {
        bail!("--groups must be 1 to {MAX_GROUPS}, got {}", o.groups);
    }
    let n = o.nodes.len();
    if !(1..=coffer_vault_core::log::MAX_MEMBERS).contains(&n) {
        bail!(
            "a realm has 1 to {} nodes (3 or 5 for a majority that survives a lost site); got {n}",
            coffer_vault_core::log::MAX_MEMBERS
        );
    }
    if o.out.join(REALM_FILE).exists() {
        bail!(
            "{} already holds a realm (realm.json exists); refusing to overwrite it",
            o.out.display()
        );
    }
    for i in 1..=n {
        let dir = o.out.join(format!("node-{i}"));
        if dir.exists() {
            bail!("{} already exists; refusing to overwrite it", dir.display());
        }
    }
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create {}", o.out.display()))?;
    let mut realm_id = [0u8; 16];
    getrandom::fill(&mut realm_id).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let config = RealmConfig {
        realm_id,
        max_attempts_limit: o.max_attempts_limit,
    };
    let members: Vec<NodeId> = (1..=n as NodeId).collect();
    let dir1 = o.out.join("node-1");
    let master = custody::create_master(&o.custody, &dir1)?;
    let mut groups = Vec::new();
    let mut sealed: Option<Vec<u8>> = None;
    for g in 0..o.groups {
        let created = Core::init_group(
            FilePlatform::new(&group_nvram(&node_nvram(&o.out, 1), g)),
            master.expose_secret(),
            config.clone(),
            1,
            &members,
            (g, o.groups),
            sealed.as_deref(),
        )?;
        sealed = Some(created.created.sealed_setup.clone());
        groups.push(created);
    }
    let group = &groups[0];
    let desc = RealmDescriptor::new_v2(
        realm_id,
        group.created.public_key,
        o.ksf,
        o.max_attempts_limit,
        o.nodes.clone(),
    )?;
    let tenants = o.out.join(crate::tenants::TENANTS_FILE);
    if !tenants.exists() {
        // Tenants' HS256 secrets live here: owner-only from the start.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tenants)
            .and_then(|mut f| f.write_all(b"{\"tenants\": {}}\n"))
            .with_context(|| format!("cannot write {}", tenants.display()))?;
    }
    for i in 1..=n {
        let dir = o.out.join(format!("node-{i}"));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if i > 1 {
            for name in [custody::SOFTWARE_KEY_FILE, custody::PKCS11_BLOB_FILE] {
                let src = dir1.join(name);
                if src.exists() {
                    std::fs::copy(&src, dir.join(name))
                        .with_context(|| format!("cannot copy {}", src.display()))?;
                }
            }
            for (g, created) in groups.iter().enumerate() {
                Core::join_group(
                    FilePlatform::new(&group_nvram(&node_nvram(&o.out, i), g as u8)),
                    master.expose_secret(),
                    &config,
                    i as NodeId,
                    &created.genesis,
                    &created.genesis_mac,
                )?;
            }
        }
        for (g, created) in groups.iter().enumerate() {
            let genesis = LogItem {
                entry: created.genesis.clone(),
                mac: created.genesis_mac,
                body: coffer_vault_core::Body::empty().encode(),
            };
            Store::create_member(
                &group_store(&dir, g as u8),
                &created.created.sealed_setup,
                &genesis,
            )?;
        }
        std::os::unix::fs::symlink(
            Path::new("..").join(crate::tenants::TENANTS_FILE),
            dir.join(crate::tenants::TENANTS_FILE),
        )
        .with_context(|| format!("cannot link the tenants file into {}", dir.display()))?;
        let path = dir.join(REALM_FILE);
        std::fs::write(&path, desc.to_json() + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let path = o.out.join(REALM_FILE);
    std::fs::write(&path, desc.to_json() + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(desc)
}

/// Starts a replicated member's core over its store.
fn start_member(
    nvram: &Path,
    desc: &RealmDescriptor,
    store: &Store,
    master: &custody::MasterSecret,
) -> anyhow::Result<(Core<FilePlatform>, StartState)> {
    let config = RealmConfig {
        realm_id: desc.realm_id,
        max_attempts_limit: desc.max_attempts_limit,
    };
    let applied = store.applied()?;
    let last = store.log_last()?;
    let genesis = store
        .log_range(1, 1)?
        .into_iter()
        .next()
        .context("the store has no genesis entry")?;
    let log = store.log_range(applied, last)?;
    let setup = store.setup()?;
    Ok(Core::start_member(
        FilePlatform::new(nvram),
        master.expose_secret(),
        config,
        MemberStore {
            sealed_setup: &setup,
            leaves: store.leaves()?,
            genesis: (genesis.entry, genesis.mac),
            log: log.into_iter().map(|i| (i.entry, i.mac)).collect(),
        },
    )?)
}

/// Reads a data directory's descriptor.
pub fn descriptor(data: &Path) -> anyhow::Result<RealmDescriptor> {
    let path = data.join(REALM_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (run `coffer-vault init` first)",
            path.display()
        )
    })?;
    Ok(RealmDescriptor::from_json(&text)?)
}

/// What `serve` needs.
pub struct ServeOptions {
    /// Data directory.
    pub data: PathBuf,
    /// NVRAM file.
    pub nvram: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Rate limits.
    pub limits: Limits,
    /// Where the master secret lives.
    pub custody: CustodyArgs,
    /// How the trusted core runs.
    pub engine: EngineMode,
}

/// How `serve` runs the trusted core (ADR 0016).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineMode {
    /// A thread of its own, fed by a multi-threaded HTTP runtime.
    Thread,
    /// A task on a single-threaded runtime, taking turns with HTTP
    /// (single-node vaults only).
    Inline,
}

impl EngineMode {
    /// The tokio runtime this mode needs: multi-threaded beside the engine
    /// thread; single-threaded for `inline`, whose batches hold the thread
    /// they run on.
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Self::Thread => tokio::runtime::Builder::new_multi_thread(),
            Self::Inline => tokio::runtime::Builder::new_current_thread(),
        }
        .enable_all()
        .build()
    }
}

/// The flag's value, as clap spells it.
impl std::fmt::Display for EngineMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => Ok(()),
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(o: ServeOptions) -> anyhow::Result<()> {
    let desc = descriptor(&o.data)?;
    let master = custody::load_master(&o.custody, &o.data)?;
    let store = Store::open(&o.data.join(STORE_FILE))?;
    let config = RealmConfig {
        realm_id: desc.realm_id,
        max_attempts_limit: desc.max_attempts_limit,
    };
    let member = store.is_member()?;
    if member {
        if o.engine == EngineMode::Inline {
            bail!("--engine inline serves a single-node vault; a node of a replicated realm runs one event loop per group (use --engine thread)");
        }
        return serve_member(o, desc, store, master).await;
    }
    let marker = store.marker()?;
    let (core, state) = Core::start(
        FilePlatform::new(&o.nvram),
        master.expose_secret(),
        config,
        &store.setup()?,
        store.leaves()?,
        marker.as_deref(),
    )?;
    drop(master);
    if core.public_key() != desc.public_key {
        bail!("realm.json's public key does not match this realm's master secret (wrong custody or edited realm.json)");
    }
    log_start(None, &state);
    let records = store.record_count()?;
    let metrics = Arc::new(Metrics::default());
    let engine = match o.engine {
        EngineMode::Thread => crate::engine::spawn(core, store, metrics.clone())?,
        EngineMode::Inline => crate::engine::spawn_inline(core, store, metrics.clone()),
    };
    let state = Arc::new(AppState {
        engines: vec![engine],
        peers: Vec::new(),
        leaders: Vec::new(),
        router: None,
        tenants: Tenants::open(&o.data)?,
        limits: RateLimiter::new(o.limits),
        metrics,
        realm_json: desc.to_json(),
    });
    listen_and_serve(&o, &desc, state, records).await
}

fn log_start(group: Option<u8>, state: &StartState) {
    // `group` is recorded only on a replicated node (an Option field is
    // left out when None).
    match state {
        StartState::Ready => {}
        StartState::RolledForward => tracing::warn!(
            group,
            "the store was ahead of NVRAM (a crash mid-commit); NVRAM rolled forward"
        ),
        StartState::Refusing(why) => {
            tracing::error!(group, reason = %why, "REFUSING TO SERVE")
        }
        StartState::Resyncing(why) => tracing::warn!(group, reason = %why, "resynchronising"),
    }
}

/// A replicated node: one core, store, NVRAM file and event loop per group.
async fn serve_member(
    o: ServeOptions,
    desc: RealmDescriptor,
    first: Store,
    master: custody::MasterSecret,
) -> anyhow::Result<()> {
    let mut stores = vec![first];
    for g in 1..MAX_GROUPS {
        let path = group_store(&o.data, g);
        if !path.exists() {
            break;
        }
        stores.push(Store::open(&path)?);
    }
    let groups = stores.len() as u8;
    let urls: BTreeMap<NodeId, String> = desc
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, u)| ((i + 1) as NodeId, u.clone()))
        .collect();
    let metrics = Arc::new(Metrics::default());
    let mut engines = Vec::new();
    let mut peers = Vec::new();
    let mut leaders = Vec::new();
    let mut router = None;
    let mut records = 0;
    for (g, store) in stores.into_iter().enumerate() {
        let g = g as u8;
        let (core, state) = start_member(&group_nvram(&o.nvram, g), &desc, &store, &master)
            .with_context(|| format!("group {g}"))?;
        if core.public_key() != desc.public_key {
            bail!("realm.json's public key does not match this realm's master secret (wrong custody or edited realm.json)");
        }
        match core.replica_status() {
            Some(st) if st.group == g => {}
            _ => bail!(
                "{} holds another group's log than group {g}",
                group_store(&o.data, g).display()
            ),
        }
        log_start(Some(g), &state);
        if router.is_none() {
            router = core.record_router(groups);
        }
        records += store.record_count()?;
        let view = Arc::new(std::sync::Mutex::new(
            crate::replication::LeaderView::default(),
        ));
        let events =
            crate::replication::spawn(core, store, urls.clone(), view.clone(), metrics.clone())?;
        // Client jobs reach the group's event loop through one bridge.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::engine::Job>(crate::engine::QUEUE);
        let ev = events.clone();
        std::thread::Builder::new()
            .name(format!("vault-bridge-{g}"))
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    if ev.send(crate::replication::Event::Client(job)).is_err() {
                        return;
                    }
                }
            })?;
        engines.push(tx);
        peers.push(events);
        leaders.push(view);
    }
    drop(master);
    let state = Arc::new(AppState {
        engines,
        peers,
        leaders,
        router,
        tenants: Tenants::open(&o.data)?,
        limits: RateLimiter::new(o.limits),
        metrics,
        realm_json: desc.to_json(),
    });
    tracing::info!(groups, "replicated node");
    listen_and_serve(&o, &desc, state, records).await
}

async fn listen_and_serve(
    o: &ServeOptions,
    desc: &RealmDescriptor,
    state: Arc<AppState>,
    records: u64,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("cannot listen on {}", o.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        realm = %hex::encode(desc.realm_id),
        records,
        tenants = state.tenants.len(),
        custody = %custody::describe(&o.custody),
        engine = %o.engine,
        "coffer-vault serving"
    );
    crate::http::serve(listener, state, shutdown()).await?;
    tracing::info!("coffer-vault stopped");
    Ok(())
}

async fn shutdown() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
