//! Password mode: `K` escrowed in the vault behind a password, cached on
//! the device. Reading passwords, the token and the realm; `init --vault`,
//! opening, and the `key` commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::{ArgGroup, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use coffer_client::keycache;
use coffer_client::{
    AccessError, Coffer, Password, RealmDescriptor, RepoError, RepoInfo, VaultClient,
};

use crate::cli::{hex_short, repo_location, Args, UsageError, EXIT_OK, EXIT_OTHER};

/// Default guess limit of a new registration.
const DEFAULT_MAX_ATTEMPTS: u8 = 10;

/// `coffer key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Change the password. The key, the repository and the backups stay as
    /// they are: nothing is re-uploaded. Old password from COFFER_PASSWORD,
    /// --password-file or a prompt; the new one from COFFER_NEW_PASSWORD,
    /// --new-password-file or a prompt (asked twice).
    Passwd {
        /// Read the new password from this file.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Leave password mode: erase the vault's copy of the key.
    #[command(group(ArgGroup::new("how").required(true).args(["to_recovery_key", "make_unreadable"])))]
    Disable {
        /// Switch the repository to recovery-key mode (same key, nothing
        /// re-uploaded) and print the recovery key, once.
        #[arg(long)]
        to_recovery_key: bool,
        /// Erase the key from the vault and from this device: nobody can read
        /// these backups any more, ever. Needs --yes.
        #[arg(long)]
        make_unreadable: bool,
        /// Confirm --make-unreadable.
        #[arg(long, requires = "make_unreadable")]
        yes: bool,
    },
    /// Drop the key cached on this device for this repository; the next
    /// command asks the vault, with the password.
    Forget,
}

/// Strips one trailing line end, as files written by editors have.
fn strip_newline(mut s: Zeroizing<String>) -> Zeroizing<String> {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Where a password comes from: an environment variable, a file, a prompt.
struct PasswordSource<'a> {
    env: &'static str,
    file: Option<&'a Path>,
    file_flag: &'static str,
    prompt: &'static str,
    /// Ask twice on a terminal (a new password).
    confirm: bool,
}

impl PasswordSource<'_> {
    fn read(&self) -> anyhow::Result<Password> {
        let text = if let Ok(p) = std::env::var(self.env) {
            Zeroizing::new(p)
        } else if let Some(f) = self.file {
            strip_newline(Zeroizing::new(std::fs::read_to_string(f).with_context(
                || format!("cannot read the password file {}", f.display()),
            )?))
        } else if std::io::stdin().is_terminal() {
            let first = Zeroizing::new(
                rpassword::prompt_password(self.prompt)
                    .context("cannot read the password from the terminal")?,
            );
            if self.confirm {
                let again = Zeroizing::new(
                    rpassword::prompt_password("Repeat the password: ")
                        .context("cannot read the password from the terminal")?,
                );
                if *again != *first {
                    return Err(anyhow!(UsageError("the two passwords differ".into())));
                }
            }
            first
        } else {
            return Err(anyhow!(UsageError(format!(
                "no password: set {}, pass {} <file>, or run on a terminal",
                self.env, self.file_flag
            ))));
        };
        if text.is_empty() {
            return Err(anyhow!(UsageError("the password is empty".into())));
        }
        Ok(Password::new(text))
    }
}

/// The password that unlocks the key (single prompt).
fn password(args: &Args) -> anyhow::Result<Password> {
    PasswordSource {
        env: "COFFER_PASSWORD",
        file: args.password_file.as_deref(),
        file_flag: "--password-file",
        prompt: "Password: ",
        confirm: false,
    }
    .read()
}

fn token() -> anyhow::Result<String> {
    match std::env::var("COFFER_VAULT_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(anyhow!(UsageError(
            "no vault token: set COFFER_VAULT_TOKEN to the user token your app's vault tenant issued".into()
        ))),
    }
}

/// The realm descriptor given with --vault / COFFER_VAULT.
fn given_realm(args: &Args) -> anyhow::Result<Option<RealmDescriptor>> {
    let Some(path) = &args.vault else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the realm descriptor {}", path.display()))?;
    let realm = RealmDescriptor::from_json(&text)
        .with_context(|| format!("the realm descriptor {} is unusable", path.display()))?;
    Ok(Some(realm))
}

/// The vault client for a repository: the realm given with --vault /
/// COFFER_VAULT, checked against the one the repository's config pins.
///
/// The pinned descriptor alone is used only when the config is authenticated:
/// the config is read before `K` is known and its MAC needs `K`, so without
/// a key in this device's cache a storage provider (or anyone who can write
/// the repository) chooses what the config says, and a descriptor taken from
/// it would choose where `Authorization: Bearer <token>` goes (and the realm
/// key and KSF the client trusts). So without a cached key the user names
/// the realm; with one, the config is opened with it (key check and MAC
/// verified) and its descriptor is exactly what the key's holder wrote at
/// `init` (the `key` commands, which always talk to the vault, then need no
/// --vault on a device that caches the key).
fn vault_for(args: &Args, location: &str, info: &RepoInfo) -> anyhow::Result<VaultClient> {
    let given = given_realm(args)?;
    let pinned = info
        .realm()
        .context("the realm descriptor in the repository's config is unusable")?;
    let realm = match (pinned, given) {
        (Some(pinned), Some(given)) => {
            // Realms move: the given addresses win, the realm must match.
            pinned.check_same_realm(&given)?;
            given
        }
        (Some(_), None) => {
            let cache = keycache::default_cache()?;
            let authenticated = Coffer::inspect_authenticated(location, cache.as_ref())?;
            match authenticated.map(|i| i.realm()).transpose()? {
                Some(Some(realm)) => realm,
                // The authenticated config is in recovery-key mode (it changed
                // since `info` was read): nothing to ask.
                Some(None) => {
                    return Err(AccessError::NotPasswordMode {
                        location: location.to_string(),
                    }
                    .into())
                }
                None => return Err(anyhow!(UsageError(UNAUTHENTICATED_REALM.into()))),
            }
        }
        (None, Some(given)) => given,
        (None, None) => {
            return Err(anyhow!(UsageError(
                "this repository is in recovery-key mode: there is no vault to ask".into()
            )))
        }
    };
    Ok(VaultClient::new(realm, token()?)?)
}

/// Why the repository's own realm descriptor is not used to ask the vault.
const UNAUTHENTICATED_REALM: &str = "no key for this repository is cached on this device, so the vault's \
realm descriptor must come from you: the copy in the repository's config cannot be checked before the key \
is known, and whoever controls the storage could point it (and your vault token) elsewhere. Pass the realm \
descriptor your vault operator gave you with --vault <realm.json> or set COFFER_VAULT";

fn require_password_mode(location: &str, info: &RepoInfo) -> anyhow::Result<()> {
    if info.is_password_mode() {
        Ok(())
    } else {
        Err(AccessError::NotPasswordMode {
            location: location.to_string(),
        }
        .into())
    }
}

/// `coffer init --vault realm.json`.
pub fn init(args: &Args, location: &str, max_attempts: Option<u8>) -> anyhow::Result<u8> {
    let Some(realm) = given_realm(args)? else {
        return Err(anyhow!(UsageError(
            "init in password mode needs --vault <realm.json>".into()
        )));
    };
    let max = max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS.min(realm.max_attempts_limit));
    if max == 0 || max > realm.max_attempts_limit {
        return Err(anyhow!(UsageError(format!(
            "--max-attempts must be 1..={} for this realm, got {max}",
            realm.max_attempts_limit
        ))));
    }
    // Refuse before asking for anything when a repository is already there.
    if Coffer::inspect(location).is_ok() {
        return Err(RepoError::AlreadyExists {
            location: location.to_string(),
        }
        .into());
    }
    let realm_id = realm.realm_id;
    let vault = VaultClient::new(realm, token()?)?;
    let password = PasswordSource {
        env: "COFFER_PASSWORD",
        file: args.password_file.as_deref(),
        file_flag: "--password-file",
        prompt: "Choose a password: ",
        confirm: true,
    }
    .read()?;
    let cache = keycache::default_cache()?;
    let id = Coffer::init_with_vault(location, &vault, &password, max, cache.as_ref())?;
    if args.json {
        outln!(
            "{}",
            json!({
                "repo_id": hex::encode(id),
                "key_mode": "password",
                "realm_id": hex::encode(realm_id),
                "max_attempts": max,
            })
        );
    } else {
        outln!(
            "Created repository {} at {location} in password mode.\n",
            hex_short(&id)
        );
        outln!(
            "Its key is in the vault (realm {}) behind your password: {max} wrong passwords in a row erase it for good.",
            hex::encode(&realm_id[..4])
        );
        outln!("This device keeps a copy in its key cache, so backups here need no password.");
        outln!("On a new device, the password (and a vault token) restores everything.");
    }
    Ok(EXIT_OK)
}

/// Opens a password-mode repository: the key cache, else the vault.
pub fn open(args: &Args, location: &str, info: &RepoInfo) -> anyhow::Result<Coffer> {
    let cache = keycache::default_cache()?;
    if let Some(c) = Coffer::open_cached(location, cache.as_ref())? {
        if let Some(given) = given_realm(args)? {
            // Still pin: a --vault naming another realm is a mistake to report.
            if let Some(pinned) = info.realm()? {
                pinned.check_same_realm(&given)?;
            }
        }
        return Ok(c);
    }
    let vault = vault_for(args, location, info)?;
    let password = password(args)?;
    Ok(Coffer::open_with_vault(
        location,
        &vault,
        &password,
        cache.as_ref(),
    )?)
}

/// `coffer key …`
pub fn key_command(args: &Args, cmd: &KeyCommand) -> anyhow::Result<u8> {
    let location = repo_location(args)?;
    let info = Coffer::inspect(&location)?;
    match cmd {
        KeyCommand::Passwd { new_password_file } => {
            require_password_mode(&location, &info)?;
            let vault = vault_for(args, &location, &info)?;
            let old = PasswordSource {
                env: "COFFER_PASSWORD",
                file: args.password_file.as_deref(),
                file_flag: "--password-file",
                prompt: "Current password: ",
                confirm: false,
            }
            .read()?;
            let new = PasswordSource {
                env: "COFFER_NEW_PASSWORD",
                file: new_password_file.as_deref(),
                file_flag: "--new-password-file",
                prompt: "New password: ",
                confirm: true,
            }
            .read()?;
            Coffer::change_password(&location, &vault, &old, &new)?;
            if args.json {
                outln!("{}", json!({ "password_changed": true }));
            } else {
                outln!("Password changed. The key and the backups are unchanged: nothing was re-uploaded.");
            }
            Ok(EXIT_OK)
        }
        KeyCommand::Disable {
            to_recovery_key: true,
            ..
        } => {
            // On a repository already switched, only with --vault: a retry
            // that erases the vault's copy after a failed first attempt.
            if !info.is_password_mode() && args.vault.is_none() {
                require_password_mode(&location, &info)?;
            }
            let vault = vault_for(args, &location, &info)?;
            let password = password(args)?;
            let cache = keycache::default_cache()?;
            if !args.json {
                // The key is shown once, after the switch: a closed stdout
                // must stop us before it, not lose the key after it.
                outln!(
                    "Switching repository {} to recovery-key mode…",
                    hex_short(&info.repo_id)
                );
                if crate::output::stdout_gone() {
                    return Err(anyhow!("stdout is closed, so the recovery key could not be shown: nothing was changed"));
                }
            }
            let sw = Coffer::switch_to_recovery_key(&location, &vault, &password, cache.as_ref())?;
            let erased = sw.vault_erase.is_ok();
            if args.json {
                let mut v = json!({
                    "recovery_key": sw.recovery_key.expose_secret(),
                    "vault_erased": erased,
                });
                if let Err(e) = &sw.vault_erase {
                    v["vault_error"] = json!(e.to_string());
                }
                outln!("{v}");
            } else {
                outln!("Repository {} is in recovery-key mode now (same key: nothing was re-uploaded).\n", hex_short(&info.repo_id));
                outln!(
                    "Your recovery key (shown only this once; write it down and keep it safe):\n"
                );
                outln!("    {}\n", sw.recovery_key.expose_secret());
                outln!("Anyone with this key can read these backups. Without it nobody can, not even you.");
                if erased {
                    outln!("The vault's copy of the key is erased; the password no longer opens anything.");
                }
            }
            match sw.vault_erase {
                Ok(()) => Ok(EXIT_OK),
                Err(e) => {
                    errln!("error: the vault's copy of the key could not be erased: {e}");
                    errln!("The repository is in recovery-key mode; to erase the vault's copy, run `coffer key disable --to-recovery-key --vault <realm.json>` again.");
                    Ok(EXIT_OTHER)
                }
            }
        }
        KeyCommand::Disable { yes, .. } => {
            if !yes {
                return Err(anyhow!(UsageError(
                    "--make-unreadable erases the only copies of the key: nobody will ever read these backups again; add --yes to confirm".into()
                )));
            }
            require_password_mode(&location, &info)?;
            let vault = vault_for(args, &location, &info)?;
            let password = password(args)?;
            let cache = keycache::default_cache()?;
            Coffer::erase_vault_key(&location, &vault, &password, cache.as_ref())?;
            if args.json {
                outln!("{}", json!({ "erased": true }));
            } else {
                outln!(
                    "The key of repository {} is erased from the vault and from this device: nobody can read these backups any more.",
                    hex_short(&info.repo_id)
                );
            }
            Ok(EXIT_OK)
        }
        KeyCommand::Forget => {
            let cache = keycache::default_cache()?;
            let place = cache.describe(&info.repo_id);
            let removed = cache.forget(&info.repo_id)?;
            if args.json {
                outln!("{}", json!({ "forgotten": removed, "path": place }));
            } else if removed {
                outln!(
                    "Dropped this device's cached key of repository {} ({place}); the next command asks the vault, with the password.",
                    hex_short(&info.repo_id)
                );
            } else {
                outln!(
                    "No key of repository {} is cached on this device.",
                    hex_short(&info.repo_id)
                );
            }
            Ok(EXIT_OK)
        }
    }
}
