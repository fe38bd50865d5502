//! Cloud and consumer-drive backends through Apache OpenDAL (ADR 0010).
//!
//! [`CloudStore`] adapts an OpenDAL operator to the synchronous
//! [`BlobStore`] trait: it owns a small multi-thread tokio runtime, runs each
//! call as a task there with a per-request timeout, and blocks the calling
//! thread on a channel until it finishes. Any number of threads may call it
//! at once, from outside or inside another tokio runtime.
//!
//! Credentials come from the environment (never from a file Coffer writes):
//!
//! | backend | variables |
//! |---|---|
//! | `s3://` | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; without keys, the AWS profile / instance-role chain |
//! | `gs://` | `GOOGLE_APPLICATION_CREDENTIALS` (service-account file), or `COFFER_GCS_TOKEN` (OAuth token); `COFFER_GCS_ENDPOINT` |
//! | `azblob://` | `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT` with `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`; `AZURE_STORAGE_ENDPOINT` |
//! | `webdav://`, `webdavs://` | user and password in the URL, or `COFFER_WEBDAV_USER` / `COFFER_WEBDAV_PASSWORD` |
//! | `gdrive://`, `onedrive://`, `dropbox://` | `COFFER_<DRIVE>_ACCESS_TOKEN`, or `COFFER_<DRIVE>_REFRESH_TOKEN` with `COFFER_<DRIVE>_CLIENT_ID` and `COFFER_<DRIVE>_CLIENT_SECRET` (`<DRIVE>` = `GDRIVE`, `ONEDRIVE`, `DROPBOX`) |

use std::future::Future;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use opendal::{services, ErrorKind, HttpTransporter, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;

use crate::classify::to_storage_error;
use crate::temporaries::{is_stale, is_temporary, temp_file_name, TMP_DIR};
use crate::{check_range, BlobStore, CreateMode, Location, ObjectInfo, PutOutcome, StorageError};

/// Timeouts and threads of a [`CloudStore`].
#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one request beyond its transfer time, and the
    /// longest silence tolerated while a response is read.
    pub request_timeout: Duration,
    /// Slowest transfer rate tolerated (bytes per second): a request moving
    /// `n` bytes may take `request_timeout + n / min_throughput`.
    pub min_throughput: u64,
    /// Worker threads of the store's runtime.
    pub worker_threads: usize,
}

impl Default for CloudOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
            // 64 KiB/s: a 16 MiB pack may take about 5 minutes on a bad uplink.
            min_throughput: 64 << 10,
            worker_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4),
        }
    }
}

/// The backend behind a [`CloudStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    S3,
    Gcs,
    Azblob,
    WebDav,
    GDrive,
    OneDrive,
    Dropbox,
}

impl Service {
    /// OpenDAL sends a real conditional create (`If-None-Match: *`, GCS
    /// `ifGenerationMatch=0`) only for these; the others are emulated.
    fn create_mode(self) -> CreateMode {
        match self {
            Self::S3 | Self::Gcs | Self::Azblob => CreateMode::Atomic,
            Self::WebDav | Self::GDrive | Self::OneDrive | Self::Dropbox => {
                CreateMode::CheckThenWrite
            }
        }
    }

    /// Largest object one upload may carry.
    fn max_object_size(self) -> u64 {
        match self {
            // A single PUT (OpenDAL is given the whole object at once).
            Self::S3 => 5 << 30,
            // `/2/files/upload`: Dropbox documents 150 MB as its limit.
            Self::Dropbox => 150_000_000,
            // Google Drive: OpenDAL uses single-request uploads only; Google
            // documents them for small files but sets no hard cap (ADR 0010).
            Self::Gcs | Self::Azblob | Self::WebDav | Self::GDrive | Self::OneDrive => u64::MAX,
        }
    }
}

/// Why a task on the runtime did not produce a value.
enum Failure {
    Dal(opendal::Error),
    TimedOut(Duration),
    Stopped,
}

impl From<opendal::Error> for Failure {
    fn from(e: opendal::Error) -> Self {
        Self::Dal(e)
    }
}

/// A repository in a cloud or consumer-drive service, through OpenDAL.
///
/// Not retried: wrap it in a [`crate::RetryStore`] ([`crate::open`] does).
///
/// * Writes are atomic: object services and the drives create an object only
///   when its upload completes; on WebDAV, where a server may show a
///   half-written file, objects are written under `.tmp/` and moved into place.
/// * `put_if_absent` is a conditional request on S3, GCS and Azure, and a
///   check-then-write (racy) elsewhere: see [`BlobStore::create_mode`].
pub struct CloudStore {
    op: Operator,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    service: Service,
    location: String,
    opts: CloudOptions,
}

impl std::fmt::Debug for CloudStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for CloudStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which panics inside
        // another runtime; a store may be dropped anywhere.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The HTTP client of one store: reqwest over rustls with ring (as the rest
/// of the workspace), a connect timeout, and a read timeout that catches a
/// stalled transfer long before the whole request's deadline.
fn http_transport(opts: &CloudOptions) -> Result<HttpTransporter, reqwest::Error> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // An error means another part of the process installed a provider
        // first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let client = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.request_timeout)
        .build()?;
    Ok(HttpTransporter::new(ReqwestTransport::new(client)))
}

impl CloudStore {
    /// Opens the store `location` names, credentials from the process
    /// environment.
    pub fn open(location: &Location, opts: CloudOptions) -> Result<Self, StorageError> {
        Self::open_with_env(
            location,
            &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            opts,
        )
    }

    /// Opens the store `location` names, with `env` in place of the process
    /// environment.
    pub fn open_with_env(
        location: &Location,
        env: &dyn Fn(&str) -> Option<String>,
        opts: CloudOptions,
    ) -> Result<Self, StorageError> {
        let shown = location.to_string();
        let (service, op) = build_operator(location, env).map_err(|e| match e {
            BuildError::Config(reason) => StorageError::Unsupported {
                location: shown.clone(),
                reason,
            },
            BuildError::Dal(e) => StorageError::Unsupported {
                location: shown.clone(),
                reason: format!("the backend refused its configuration: {}", e.message()),
            },
        })?;
        let transport = http_transport(&opts).map_err(|e| StorageError::Unsupported {
            location: shown.clone(),
            reason: format!("cannot set up the HTTP client: {e}"),
        })?;
        let ctx = op.base_context().with_http_transport(transport);
        let op = op.with_context(ctx);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.worker_threads.max(1))
            .thread_name("coffer-storage")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io {
                name: "(runtime)".into(),
                location: shown.clone(),
                error: e,
            })?;
        Ok(Self {
            op,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            service,
            location: shown,
            opts,
        })
    }

    fn timeout_for(&self, bytes: u64) -> Duration {
        self.opts.request_timeout
            + Duration::from_secs_f64(bytes as f64 / self.opts.min_throughput.max(1) as f64)
    }

    /// Runs `fut` on the store's runtime and waits for it.
    fn run<T, F>(&self, timeout: Duration, fut: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(Failure::TimedOut(timeout)),
            };
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(Failure::Stopped))
    }

    fn error(&self, f: Failure, name: &str) -> StorageError {
        match f {
            Failure::Dal(e) => to_storage_error(&e, name, &self.location),
            Failure::TimedOut(t) => StorageError::Transient {
                name: name.to_string(),
                location: self.location.clone(),
                detail: format!("no answer within {} s", t.as_secs()),
                retry_after: None,
                attempts: 1,
            },
            Failure::Stopped => StorageError::Backend {
                name: name.to_string(),
                location: self.location.clone(),
                detail: "the storage runtime stopped".into(),
            },
        }
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<(), Failure> {
        let (op, path) = (self.op.clone(), name.to_string());
        let buf = opendal::Buffer::from(data.to_vec());
        self.run(self.timeout_for(data.len() as u64), async move {
            op.write(&path, buf).await?;
            Ok(())
        })
    }

    fn delete_quietly(&self, name: &str) {
        let (op, path) = (self.op.clone(), name.to_string());
        let _ = self.run(self.opts.request_timeout, async move {
            Ok(op.delete(&path).await?)
        });
    }

    fn stat(&self, name: &str) -> Result<opendal::Metadata, Failure> {
        let (op, path) = (self.op.clone(), name.to_string());
        self.run(self.opts.request_timeout, async move {
            Ok(op.stat(&path).await?)
        })
    }

    fn check_size(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let max = self.service.max_object_size();
        if data.len() as u64 > max {
            return Err(StorageError::TooLarge {
                name: name.to_string(),
                location: self.location.clone(),
                size: data.len() as u64,
                max,
            });
        }
        Ok(())
    }

    /// The error of a failed ranged read: [`StorageError::ShortRead`] when the
    /// object is shorter than the range.
    fn range_error(&self, name: &str, offset: u64, len: u64, f: Failure) -> StorageError {
        let first = self.error(f, name);
        if matches!(first, StorageError::NotFound { .. }) || first.is_transient() {
            return first;
        }
        match self.stat(name) {
            Ok(m) => match check_range(name, &self.location, offset, len, m.content_length()) {
                Err(short) => short,
                Ok(_) => first,
            },
            Err(_) => first,
        }
    }
}

impl BlobStore for CloudStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.check_size(name, data)?;
        if self.service != Service::WebDav {
            return self.write(name, data).map_err(|f| self.error(f, name));
        }
        // A WebDAV server may expose a half-written PUT (WsgiDAV does):
        // write aside, then MOVE into place.
        let tmp = format!("{TMP_DIR}/{}", temp_file_name(name));
        if let Err(f) = self.write(&tmp, data) {
            self.delete_quietly(&tmp);
            return Err(self.error(f, name));
        }
        let (op, from, to) = (self.op.clone(), tmp.clone(), name.to_string());
        if let Err(f) = self.run(self.opts.request_timeout, async move {
            Ok(op.rename(&from, &to).await?)
        }) {
            self.delete_quietly(&tmp);
            return Err(self.error(f, name));
        }
        Ok(())
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StorageError> {
        self.check_size(name, data)?;
        if self.service.create_mode() == CreateMode::CheckThenWrite {
            // No conditional create in OpenDAL for this service: check, then
            // write. Two writers racing can both get `Created` (the probe
            // reports conditional writes as not enforced).
            return match self.stat(name) {
                Ok(_) => Ok(PutOutcome::AlreadyExists),
                Err(f) => match self.error(f, name) {
                    StorageError::NotFound { .. } => {
                        self.put(name, data)?;
                        Ok(PutOutcome::Created)
                    }
                    e => Err(e),
                },
            };
        }
        let (op, path) = (self.op.clone(), name.to_string());
        let buf = opendal::Buffer::from(data.to_vec());
        let r = self.run(self.timeout_for(data.len() as u64), async move {
            op.write_with(&path, buf).if_not_exists(true).await?;
            Ok(())
        });
        match r {
            Ok(()) => Ok(PutOutcome::Created),
            Err(Failure::Dal(e)) if e.kind() == ErrorKind::ConditionNotMatch => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(f) => Err(self.error(f, name)),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        let (op, path) = (self.op.clone(), name.to_string());
        // The size is not known before the read: allow for a large pack.
        self.run(self.timeout_for(64 << 20), async move {
            Ok(op.read(&path).await?.to_vec())
        })
        .map_err(|f| self.error(f, name))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        if len == 0 {
            let size = self
                .stat(name)
                .map_err(|f| self.error(f, name))?
                .content_length();
            check_range(name, &self.location, offset, len, size)?;
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len);
        let (op, path) = (self.op.clone(), name.to_string());
        let got = self.run(self.timeout_for(len), async move {
            Ok(op.read_with(&path).range(offset..end).await?.to_vec())
        });
        match got {
            Ok(v) if v.len() as u64 == len => Ok(v),
            // Fewer bytes than asked: the object ends inside the range.
            Ok(v) => Err(self.range_error(
                name,
                offset,
                len,
                Failure::Dal(opendal::Error::new(
                    ErrorKind::RangeNotSatisfied,
                    format!("read {} bytes of {len}", v.len()),
                )),
            )),
            Err(f) => Err(self.range_error(name, offset, len, f)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let (op, p) = (self.op.clone(), prefix.to_string());
        let per_page = self.opts.request_timeout;
        let show_tmp = prefix.starts_with(TMP_DIR);
        // One OpenDAL lister: pages of up to 1000 names on S3, one PROPFIND
        // per directory on WebDAV; each page has its own timeout, the whole
        // listing none (a large repository takes many pages).
        let listed = self.run(Duration::MAX, async move {
            let mut lister = match op.lister_with(&p).recursive(true).await {
                Ok(l) => l,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            loop {
                let entry = match tokio::time::timeout(per_page, lister.next()).await {
                    Err(_) => return Err(Failure::TimedOut(per_page)),
                    Ok(None) => break,
                    Ok(Some(Err(e))) if e.kind() == ErrorKind::NotFound => continue,
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(Some(Ok(entry))) => entry,
                };
                let name = entry.path();
                if entry.metadata().is_dir()
                    || !name.starts_with(&p)
                    || (!show_tmp && is_temporary(name))
                {
                    continue;
                }
                out.push(ObjectInfo {
                    name: name.to_string(),
                    size: entry.metadata().content_length(),
                });
            }
            Ok(out)
        });
        let what = if prefix.is_empty() {
            "the object list".to_string()
        } else {
            format!("the objects under {prefix}")
        };
        let mut out = listed.map_err(|f| self.error(f, &what))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        let (op, path) = (self.op.clone(), name.to_string());
        match self.run(self.opts.request_timeout, async move {
            Ok(op.delete(&path).await?)
        }) {
            Ok(()) => Ok(()),
            Err(f) => match self.error(f, name) {
                StorageError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn create_mode(&self) -> CreateMode {
        self.service.create_mode()
    }

    fn max_object_size(&self) -> u64 {
        self.service.max_object_size()
    }

    fn remove_stale_temporaries(&self, age: Duration) -> Result<u64, StorageError> {
        if self.service != Service::WebDav {
            return Ok(0);
        }
        let mut removed = 0;
        let (op, dir) = (self.op.clone(), format!("{TMP_DIR}/"));
        let entries = self
            .run(self.opts.request_timeout, async move {
                match op.list(&dir).await {
                    Ok(v) => Ok(v),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                    Err(e) => Err(e.into()),
                }
            })
            .map_err(|f| self.error(f, TMP_DIR))?;
        for e in entries {
            if e.metadata().is_dir() {
                continue;
            }
            let elapsed = e
                .metadata()
                .last_modified()
                .and_then(|t| SystemTime::from(t).elapsed().ok());
            if is_stale(e.name(), elapsed, age) {
                self.delete(e.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

enum BuildError {
    Config(String),
    Dal(opendal::Error),
}

impl From<opendal::Error> for BuildError {
    fn from(e: opendal::Error) -> Self {
        Self::Dal(e)
    }
}

fn root(prefix: &str) -> String {
    format!("/{prefix}")
}

/// OAuth settings shared by the three consumer drives.
struct DriveTokens {
    access: Option<String>,
    refresh: Option<(String, String, String)>,
}

fn drive_tokens(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    what: &str,
) -> Result<DriveTokens, BuildError> {
    let get = |k: &str| env(&format!("COFFER_{var}_{k}"));
    if let Some(refresh) = get("REFRESH_TOKEN") {
        let (Some(id), Some(secret)) = (get("CLIENT_ID"), get("CLIENT_SECRET")) else {
            return Err(BuildError::Config(format!(
                "COFFER_{var}_REFRESH_TOKEN is set but COFFER_{var}_CLIENT_ID or COFFER_{var}_CLIENT_SECRET is not: set all three (the OAuth client of your {what} app)"
            )));
        };
        return Ok(DriveTokens {
            access: None,
            refresh: Some((refresh, id, secret)),
        });
    }
    match get("ACCESS_TOKEN") {
        Some(t) => Ok(DriveTokens {
            access: Some(t),
            refresh: None,
        }),
        None => Err(BuildError::Config(format!(
            "no {what} credentials: set COFFER_{var}_ACCESS_TOKEN, or COFFER_{var}_REFRESH_TOKEN with COFFER_{var}_CLIENT_ID and COFFER_{var}_CLIENT_SECRET"
        ))),
    }
}

fn build_operator(
    location: &Location,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Service, Operator), BuildError> {
    Ok(match location {
        Location::Local(_) => {
            return Err(BuildError::Config(
                "a local path is served by LocalStore, not CloudStore".into(),
            ))
        }
        Location::S3 { bucket, prefix } => {
            let mut b = services::S3::default().bucket(bucket).root(&root(prefix));
            let endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"));
            let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
            match (&endpoint, region) {
                // A custom endpoint (MinIO, Garage, moto…): path-style
                // addressing, OpenDAL's default; its region is a formality.
                (Some(e), r) => {
                    b = b.endpoint(e).region(r.as_deref().unwrap_or("us-east-1"));
                }
                (None, Some(r)) => b = b.region(&r).enable_virtual_host_style(),
                (None, None) => {
                    return Err(BuildError::Config(
                        "set AWS_REGION (or AWS_ENDPOINT_URL for an S3-compatible server)".into(),
                    ))
                }
            }
            if let (Some(k), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                b = b.access_key_id(&k).secret_access_key(&s);
                if let Some(t) = env("AWS_SESSION_TOKEN") {
                    b = b.session_token(&t);
                }
            }
            (Service::S3, Operator::new(b)?)
        }
        Location::Gcs { bucket, prefix } => {
            let mut b = services::Gcs::default().bucket(bucket).root(&root(prefix));
            if let Some(p) = env("GOOGLE_APPLICATION_CREDENTIALS") {
                b = b.credential_path(&p);
            }
            if let Some(t) = env("COFFER_GCS_TOKEN") {
                b = b.token(t);
            }
            if let Some(e) = env("COFFER_GCS_ENDPOINT") {
                b = b.endpoint(&e);
            }
            (Service::Gcs, Operator::new(b)?)
        }
        Location::Azblob { container, prefix } => {
            let mut b = match env("AZURE_STORAGE_CONNECTION_STRING") {
                Some(cs) => services::Azblob::from_connection_string(&cs)?,
                None => services::Azblob::default(),
            };
            b = b.container(container).root(&root(prefix));
            let account = env("AZURE_STORAGE_ACCOUNT");
            if let Some(a) = &account {
                b = b.account_name(a);
            }
            match (env("AZURE_STORAGE_ENDPOINT"), &account) {
                (Some(e), _) => b = b.endpoint(&e),
                (None, Some(a)) => b = b.endpoint(&format!("https://{a}.blob.core.windows.net")),
                (None, None) => {}
            }
            if let Some(k) = env("AZURE_STORAGE_KEY") {
                b = b.account_key(&k);
            }
            if let Some(t) = env("AZURE_STORAGE_SAS_TOKEN") {
                b = b.sas_token(&t);
            }
            (Service::Azblob, Operator::new(b)?)
        }
        Location::WebDav {
            tls,
            host,
            path,
            user,
            password,
        } => {
            let scheme = if *tls { "https" } else { "http" };
            let mut b = services::Webdav::default()
                .endpoint(&format!("{scheme}://{host}"))
                .root(&root(path));
            if let Some(u) = user.clone().or_else(|| env("COFFER_WEBDAV_USER")) {
                b = b.username(&u);
            }
            let env_password = env("COFFER_WEBDAV_PASSWORD");
            if let Some(p) = password
                .as_ref()
                .map(|p| p.expose_secret())
                .or(env_password.as_deref())
            {
                b = b.password(p);
            }
            (Service::WebDav, Operator::new(b)?)
        }
        Location::GDrive { path } => {
            let t = drive_tokens(env, "GDRIVE", "Google Drive")?;
            let mut b = services::Gdrive::default().root(&root(path));
            if let Some(a) = &t.access {
                b = b.access_token(a);
            }
            if let Some((r, id, secret)) = &t.refresh {
                b = b.refresh_token(r).client_id(id).client_secret(secret);
            }
            (Service::GDrive, Operator::new(b)?)
        }
        Location::OneDrive { path } => {
            let t = drive_tokens(env, "ONEDRIVE", "OneDrive")?;
            let mut b = services::Onedrive::default().root(&root(path));
            if let Some(a) = &t.access {
                b = b.access_token(a);
            }
            if let Some((r, id, secret)) = &t.refresh {
                b = b.refresh_token(r).client_id(id).client_secret(secret);
            }
            (Service::OneDrive, Operator::new(b)?)
        }
        Location::Dropbox { path } => {
            let t = drive_tokens(env, "DROPBOX", "Dropbox")?;
            let mut b = services::Dropbox::default().root(&root(path));
            if let Some(a) = &t.access {
                b = b.access_token(a);
            }
            if let Some((r, id, secret)) = &t.refresh {
                b = b.refresh_token(r).client_id(id).client_secret(secret);
            }
            (Service::Dropbox, Operator::new(b)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn open(
        url: &str,
        vars: &'static [(&'static str, &'static str)],
    ) -> Result<CloudStore, StorageError> {
        CloudStore::open_with_env(
            &Location::parse(url)?,
            &env_of(vars),
            CloudOptions::default(),
        )
    }

    #[test]
    fn every_scheme_builds_with_its_credentials() {
        let s3 = open("s3://b/p", &[("AWS_REGION", "eu-west-1")]).unwrap();
        assert_eq!(s3.location(), "s3://b/p");
        assert_eq!(s3.create_mode(), CreateMode::Atomic);
        open("s3://b", &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")]).unwrap();
        open("gs://b/p", &[("COFFER_GCS_TOKEN", "t")]).unwrap();
        open(
            "azblob://c/p",
            &[
                ("AZURE_STORAGE_ACCOUNT", "acct"),
                ("AZURE_STORAGE_KEY", "a2V5"),
            ],
        )
        .unwrap();
        let dav = open("webdav://u:pw@127.0.0.1:9/x", &[]).unwrap();
        assert_eq!(dav.location(), "webdav://u@127.0.0.1:9/x");
        assert_eq!(dav.create_mode(), CreateMode::CheckThenWrite);
        open("gdrive://Backups", &[("COFFER_GDRIVE_ACCESS_TOKEN", "t")]).unwrap();
        open(
            "onedrive://Backups",
            &[
                ("COFFER_ONEDRIVE_REFRESH_TOKEN", "r"),
                ("COFFER_ONEDRIVE_CLIENT_ID", "i"),
                ("COFFER_ONEDRIVE_CLIENT_SECRET", "s"),
            ],
        )
        .unwrap();
        let dbx = open("dropbox://Backups", &[("COFFER_DROPBOX_ACCESS_TOKEN", "t")]).unwrap();
        assert_eq!(dbx.max_object_size(), 150_000_000);
    }

    #[test]
    fn missing_credentials_say_which_variables_to_set() {
        let e = open("gdrive://x", &[]).unwrap_err().to_string();
        assert!(e.contains("COFFER_GDRIVE_ACCESS_TOKEN"), "{e}");
        let e = open("dropbox://x", &[("COFFER_DROPBOX_REFRESH_TOKEN", "r")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("COFFER_DROPBOX_CLIENT_ID"), "{e}");
        let e = open("s3://b", &[]).unwrap_err().to_string();
        assert!(e.contains("AWS_REGION"), "{e}");
    }

    #[test]
    fn too_large_objects_are_refused_before_any_request() {
        let dbx = open("dropbox://x", &[("COFFER_DROPBOX_ACCESS_TOKEN", "t")]).unwrap();
        let big = vec![0u8; 150_000_001];
        let e = dbx.put("data/00/big", &big).unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::TooLarge {
                    max: 150_000_000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn an_unreachable_server_is_a_transient_error_naming_object_and_url() {
        // Port 9 (discard) is closed on loopback: connection refused.
        let dav = open("webdav://127.0.0.1:9/x", &[]).unwrap();
        let e = dav.get("config").unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("config") && msg.contains("webdav://127.0.0.1:9/x"),
            "{msg}"
        );
    }

    #[test]
    fn a_store_can_be_used_and_dropped_inside_another_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let dav = open("webdav://127.0.0.1:9/x", &[]).unwrap();
            assert!(dav.get("config").unwrap_err().is_transient());
            drop(dav);
        });
    }
}
