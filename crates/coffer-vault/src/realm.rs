//! `init` and `serve`: the realm's files and the running daemon.
//!
//! A data directory holds `realm.json` (the descriptor clients pin),
//! `records.redb` (the store), `tenants.json`, and the master secret's
//! custody file (`realm.key` or `realm.key.p11`). NVRAM is a separate file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use coffer_vault_core::{Core, RealmConfig, StartState};
use coffer_vault_proto::realm::REALM_FORMAT;
use coffer_vault_proto::{KsfParams, RealmDescriptor};

use crate::custody::{self, CustodyArgs};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::platform::FilePlatform;
use crate::ratelimit::{Limits, RateLimiter};
use crate::store::Store;
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
    o.ksf.argon2().context("the KSF parameters")?;
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
    match &state {
        StartState::Ready => {}
        StartState::RolledForward => tracing::warn!(
            "the store was one batch ahead of NVRAM (a crash mid-commit); NVRAM rolled forward"
        ),
        StartState::Refusing(why) => tracing::error!(reason = %why, "REFUSING TO SERVE"),
    }
    let records = store.record_count()?;
    let metrics = Arc::new(Metrics::default());
    let engine = crate::engine::spawn(core, store, metrics.clone())?;
    let state = Arc::new(AppState {
        engine,
        tenants: Tenants::open(&o.data)?,
        limits: RateLimiter::new(o.limits),
        metrics,
        realm_json: desc.to_json(),
    });
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("cannot listen on {}", o.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        realm = %hex::encode(desc.realm_id),
        records,
        tenants = state.tenants.len(),
        custody = %custody::describe(&o.custody),
        "coffer-vault serving"
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown())
        .await?;
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
