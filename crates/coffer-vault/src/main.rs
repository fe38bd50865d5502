//! `coffer-vault`: the key vault daemon.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use coffer_vault::custody::CustodyArgs;
use coffer_vault::ratelimit::Limits;
use coffer_vault::realm::{self, EngineMode, InitOptions, ServeOptions};
use coffer_vault::tenants::{self, TenantKey};
use coffer_vault_proto::KsfParams;

/// Coffer's key vault: keeps each user's backup key behind OPAQUE and a guess limit.
#[derive(Debug, Parser)]
#[command(name = "coffer-vault", version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a realm: master secret, NVRAM anchor, record store and realm.json.
    Init {
        /// Data directory (created).
        #[arg(long)]
        data: PathBuf,
        /// NVRAM file (created; keep it apart from the data directory's backups).
        #[arg(long)]
        nvram: PathBuf,
        /// Address clients reach the API at, e.g. http://127.0.0.1:8420.
        #[arg(long)]
        address: String,
        #[command(flatten)]
        params: RealmParams,
        #[command(flatten)]
        custody: CustodyArgs,
    },
    /// Replicated realms.
    #[command(subcommand)]
    Realm(RealmCommand),
    /// Serve the HTTP API.
    Serve {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// NVRAM file.
        #[arg(long)]
        nvram: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8420")]
        listen: SocketAddr,
        /// Sessions one user may open per minute (rate limit, not the guess limit).
        #[arg(long, default_value_t = 60.0)]
        user_rate_per_minute: f64,
        /// Sessions one user may open in a burst.
        #[arg(long, default_value_t = 30.0)]
        user_burst: f64,
        /// Sessions one tenant may open per second.
        #[arg(long, default_value_t = 20000.0)]
        tenant_rate_per_second: f64,
        /// Sessions one tenant may open in a burst.
        #[arg(long, default_value_t = 40000.0)]
        tenant_burst: f64,
        /// How the trusted core runs: `thread` (its own thread beside a
        /// multi-threaded HTTP runtime) or `inline` (one thread for HTTP and
        /// the core, taking turns; for a single-node vault on one core).
        #[arg(long, value_enum, default_value_t = EngineMode::Thread)]
        engine: EngineMode,
        #[command(flatten)]
        custody: CustodyArgs,
    },
    /// Development: print a user token (creates the tenant with an HS256 key on first use).
    Token {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Tenant (app) name.
        #[arg(long)]
        tenant: String,
        /// User id within the tenant.
        #[arg(long)]
        user: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl_secs: u64,
    },
    /// Configure a tenant's token-verification key.
    TenantAdd {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Tenant (app) name: the `kid` and `iss` of its tokens.
        #[arg(long)]
        name: String,
        /// Ed25519 public key (64 hex digits): the app signs EdDSA tokens.
        #[arg(long, conflicts_with = "hs256_secret_file")]
        ed25519_public_key: Option<String>,
        /// File with an HS256 secret (hex).
        #[arg(long)]
        hs256_secret_file: Option<PathBuf>,
    },
    /// Print the realm descriptor clients pin.
    Descriptor {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

/// What a realm fixes for its clients.
#[derive(Debug, Clone, clap::Args)]
struct RealmParams {
    /// Highest guess limit a registration may ask for.
    #[arg(long, default_value_t = 10)]
    max_attempts_limit: u8,
    /// Argon2id memory (KiB) clients pin for the OPAQUE key-stretching function.
    #[arg(long, default_value_t = 65536)]
    ksf_memory_kib: u32,
    /// Argon2id passes.
    #[arg(long, default_value_t = 3)]
    ksf_iterations: u32,
    /// Argon2id lanes.
    #[arg(long, default_value_t = 1)]
    ksf_parallelism: u32,
}

impl RealmParams {
    fn ksf(&self) -> KsfParams {
        KsfParams {
            memory_kib: self.ksf_memory_kib,
            iterations: self.ksf_iterations,
            parallelism: self.ksf_parallelism,
            ..KsfParams::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum RealmCommand {
    /// Create a realm of several nodes: <out>/node-i/ (data, NVRAM) per node and <out>/realm.json.
    New {
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        /// A node's URL (repeat: 3 or 5 nodes; node 1 first). Run node i with
        /// `serve --data <out>/node-i --nvram <out>/node-i/nvram --listen <its address>`.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Groups: each owns an equal share of the record ids and has its own
        /// log and leader, so a realm's leaders spread over its nodes (1 to 16).
        #[arg(long, default_value_t = 1)]
        groups: u8,
        #[command(flatten)]
        params: RealmParams,
        #[command(flatten)]
        custody: CustodyArgs,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_VAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log redirected to a file stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-vault: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Command::Init {
            data,
            nvram,
            address,
            params,
            custody,
        } => {
            let desc = realm::init(&InitOptions {
                data: data.clone(),
                nvram,
                address,
                max_attempts_limit: params.max_attempts_limit,
                ksf: params.ksf(),
                custody: custody.clone(),
            })?;
            println!(
                "Created realm {} ({}).\nClients pin {}.",
                hex::encode(desc.realm_id),
                coffer_vault::custody::describe(&custody),
                data.join(realm::REALM_FILE).display()
            );
            Ok(())
        }
        Command::Realm(RealmCommand::New {
            out,
            nodes,
            groups,
            params,
            custody,
        }) => {
            let desc = realm::realm_new(&realm::RealmNewOptions {
                out: out.clone(),
                nodes: nodes.clone(),
                max_attempts_limit: params.max_attempts_limit,
                ksf: params.ksf(),
                custody: custody.clone(),
                groups,
            })?;
            println!(
                "Created realm {} with {} nodes and {groups} group(s) ({}).",
                hex::encode(desc.realm_id),
                nodes.len(),
                coffer_vault::custody::describe(&custody)
            );
            for (i, url) in nodes.iter().enumerate() {
                let i = i + 1;
                println!(
                    "  node {i}: coffer-vault serve --data {d} --nvram {n} --listen <address of {url}>",
                    d = out.join(format!("node-{i}")).display(),
                    n = realm::node_nvram(&out, i).display(),
                );
            }
            println!("Clients pin {}.", out.join(realm::REALM_FILE).display());
            Ok(())
        }
        Command::Serve {
            data,
            nvram,
            listen,
            user_rate_per_minute,
            user_burst,
            tenant_rate_per_second,
            tenant_burst,
            engine,
            custody,
        } => {
            for (name, v) in [
                ("--user-rate-per-minute", user_rate_per_minute),
                ("--user-burst", user_burst),
                ("--tenant-rate-per-second", tenant_rate_per_second),
                ("--tenant-burst", tenant_burst),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    anyhow::bail!("{name} must be a positive number, got {v}");
                }
            }
            let rt = engine.runtime()?;
            rt.block_on(realm::serve(ServeOptions {
                data,
                nvram,
                listen,
                engine,
                limits: Limits {
                    user_per_minute: user_rate_per_minute,
                    user_burst,
                    tenant_per_second: tenant_rate_per_second,
                    tenant_burst,
                },
                custody,
            }))
        }
        Command::Token {
            data,
            tenant,
            user,
            ttl_secs,
        } => {
            realm::descriptor(&data)?;
            println!("{}", tenants::dev_token(&data, &tenant, &user, ttl_secs)?);
            Ok(())
        }
        Command::TenantAdd {
            data,
            name,
            ed25519_public_key,
            hs256_secret_file,
        } => {
            let key = match (ed25519_public_key, hs256_secret_file) {
                (Some(pk), None) => {
                    let b = hex::decode(pk.trim())?;
                    anyhow::ensure!(
                        b.len() == 32,
                        "an Ed25519 public key is 32 bytes (64 hex digits)"
                    );
                    TenantKey::EdDSA {
                        public_key: hex::encode(b),
                    }
                }
                (None, Some(f)) => {
                    // The secret's copies are wiped when dropped.
                    let s = zeroize::Zeroizing::new(std::fs::read_to_string(&f)?);
                    let b = zeroize::Zeroizing::new(hex::decode(s.trim())?);
                    anyhow::ensure!(b.len() >= 32, "an HS256 secret must be at least 32 bytes");
                    TenantKey::HS256 {
                        secret: zeroize::Zeroizing::new(hex::encode(&b[..])),
                    }
                }
                _ => anyhow::bail!("give --ed25519-public-key or --hs256-secret-file"),
            };
            tenants::add_tenant(&data, &name, key)?;
            println!("Tenant {name:?} configured.");
            Ok(())
        }
        Command::Descriptor { data } => {
            println!("{}", realm::descriptor(&data)?.to_json());
            Ok(())
        }
    }
}
