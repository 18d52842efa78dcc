//! Packs on object storage: `s3://bucket/prefix`, or `http(s)://` on a plain web server
//! that honours `Range`.
//!
//! Everything above the bytes (format checks, decode, verify, unpack) reads a container
//! through one [`Source`]: a length and exact reads at an offset. [`LocalSource`] is a
//! file; [`RemoteObject`] is an object fetched by ranged GETs, which
//!
//! - pins the object's ETag when it is opened and sends `If-Match` on every later GET, so
//!   an object replaced under a reader gives a clear error, never a mix of versions;
//! - splits a long read into parallel GETs of about [`PART_LEN`] (object_store's own
//!   `get_ranges` would merge neighbours into one long GET), at most `max_inflight` at
//!   once across the whole process;
//! - checks every response's length, retries transient failures (resets, truncated bodies,
//!   5xx, 503 with backoff) within a time budget, then fails. The retry loop is ours alone
//!   ([`retrying`]; object_store's is off), so every request (HEAD, GET, PUT, DELETE) goes
//!   through it, every retry is counted in [`NetStats`], and one budget bounds them.
//!
//! Credentials and endpoint come from the environment as object_store reads it
//! (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
//! AWS_ENDPOINT_URL, web identity, instance metadata); it does not read `~/.aws/config`
//! profiles.

pub mod disk_cache;
pub mod pack;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use crate::error::{Error, Result};
use crate::format::HEADER_LEN;
use disk_cache::{DiskCache, DiskCacheConfig, DiskCounts, Key};

/// Bytes one ranged GET asks for at most: large enough that per-request latency is small
/// against transfer time, small enough that many run in parallel (mountpoint-s3's part
/// size).
pub const PART_LEN: u64 = 8 << 20;
/// Bytes of an object's end fetched when it is opened (no disk cache): its footer and the
/// index of a container of up to about a thousand chunks, or all of a small file's.
pub const TAIL_LEN: u64 = 64 << 10;
/// Whole small objects kept in memory per remote pack (their tails), at most.
pub const SMALL_OBJECTS_BUDGET: u64 = 64 << 20;
/// Ranged GETs in flight at once, by default, across the process.
pub const DEFAULT_INFLIGHT: usize = 16;
/// Connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one read keeps retrying transient failures before it fails.
pub const RETRY_BUDGET: Duration = Duration::from_secs(30);
/// First wait before a retry; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// First wait after a 503 or 429 (the server asks to slow down): longer than for a reset.
const SLOW_DOWN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// A container's bytes: a length and exact reads at an offset, from any thread.
pub trait Source: Send + Sync + fmt::Debug {
    /// What errors name: a path or a URL.
    fn name(&self) -> &Path;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; a read past the end is `Corrupt` (the index pointed
    /// there), a failure of the medium `Io`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// A local file as a [`Source`].
#[derive(Debug)]
pub struct LocalSource {
    path: PathBuf,
    file: File,
    len: u64,
}

impl LocalSource {
    pub fn new(path: &Path, file: File) -> Result<LocalSource> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(LocalSource {
            path: path.to_path_buf(),
            file,
            len,
        })
    }
}

impl Source for LocalSource {
    fn name(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(&self.path, None, "container truncated under us")
            } else {
                Error::io(&self.path, e)
            }
        })
    }
}

/// Where a pack lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(RemoteUrl),
}

/// A remote pack's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteUrl {
    /// `s3://bucket/prefix`; `prefix` has no leading or trailing `/` and may be empty.
    S3 { bucket: String, prefix: String },
    /// `http(s)://host[:port]/path`, without a trailing `/`.
    Http { base: String },
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RemoteUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            RemoteUrl::Http { base } => f.write_str(base),
        }
    }
}

impl Location {
    /// `s3://`, `http://` and `https://` are remote; anything else is a local path.
    pub fn parse(s: &str) -> Result<Location> {
        let invalid = |what: &str| Error::Invalid {
            path: PathBuf::from(s),
            what: what.into(),
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_');
            if !(3..=63).contains(&bucket.len()) || !bucket.chars().all(ok) {
                return Err(invalid("bucket name must be 3-63 of a-z, 0-9, '-', '.', '_'"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| matches!(p, "." | "..")) || prefix.contains("//") {
                return Err(invalid("prefix must not hold '.', '..' or empty parts"));
            }
            return Ok(Location::Remote(RemoteUrl::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            }));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let base = s.trim_end_matches('/');
            if base.contains(['?', '#']) {
                return Err(invalid("an http(s) pack URL takes no query or fragment"));
            }
            return Ok(Location::Remote(RemoteUrl::Http { base: base.into() }));
        }
        if lower.contains("://") {
            return Err(invalid(
                "unknown URL scheme (s3://, http:// and https:// are supported)",
            ));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

/// How to reach a remote store.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// S3 endpoint (e.g. a MinIO or Ceph server); else AWS_ENDPOINT_URL, else AWS.
    pub endpoint: Option<String>,
    /// Anonymous requests (public buckets).
    pub no_sign_request: bool,
    /// Permit plain http (also AWS_ALLOW_HTTP=true).
    pub allow_http: bool,
    /// Ranged GETs in flight at once.
    pub max_inflight: usize,
    /// How long a read retries transient failures.
    pub retry_budget: Duration,
    /// Access key id and secret, for library callers; the CLI leaves this to the
    /// environment.
    pub keys: Option<(String, String)>,
    /// A local disk cache of fetched ranges (`--cache-dir`); none by default.
    pub disk_cache: Option<DiskCacheConfig>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            endpoint: None,
            no_sign_request: false,
            allow_http: false,
            max_inflight: DEFAULT_INFLIGHT,
            retry_budget: RETRY_BUDGET,
            keys: None,
            disk_cache: None,
        }
    }
}

/// Network counters, for `dcfs stats` and tests.
#[derive(Debug, Default)]
pub struct NetStats {
    pub gets: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of [`NetStats`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct NetCounts {
    pub gets: u64,
    pub bytes: u64,
    pub retries: u64,
    pub errors: u64,
}

/// A connection to one remote pack root, with its own small runtime: callers are plain
/// threads (the CLI, rayon workers, FUSE threads) and block on it.
pub struct Remote {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    /// Always `Some` until drop, which shuts it down without blocking: the last handle
    /// may be dropped on one of its own threads (a background fetch's delivery).
    rt: Option<tokio::runtime::Runtime>,
    inflight: Arc<tokio::sync::Semaphore>,
    retry_budget: Duration,
    pub stats: Arc<NetStats>,
    /// Ranges fetched before, kept on local disk, keyed by object version.
    disk: Option<Arc<DiskCache>>,
    /// Bytes of whole small objects kept in memory (against [`SMALL_OBJECTS_BUDGET`]).
    small_kept: AtomicU64,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// What went wrong with one request, sorted by what to do about it.
enum Fault {
    /// Retry within the budget.
    Transient(String),
    /// The object changed or vanished since it was opened.
    Changed(String),
    NotFound,
    /// Retrying will not help (bad credentials, bad request).
    Fatal(String),
}

fn classify(e: object_store::Error) -> Fault {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Fault::NotFound,
        E::Precondition { .. } | E::NotModified { .. } => Fault::Changed(e.to_string()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::InvalidPath { .. } | E::NotSupported { .. } => {
            Fault::Fatal(e.to_string())
        }
        e => {
            let w = e.to_string();
            match http_status(&w) {
                // Other client errors (400, 405, 416, ...) do not heal by asking again.
                Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => Fault::Fatal(w),
                _ => Fault::Transient(w),
            }
        }
    }
}

/// The HTTP status object_store's message names ("... status code: 503 ..."), if any.
/// object_store does not expose its request error type, so its text is what there is.
fn http_status(msg: &str) -> Option<u16> {
    let at = msg.find("status code: ")? + "status code: ".len();
    let d = msg.get(at..at + 3)?;
    d.bytes().all(|b| b.is_ascii_digit()).then(|| d.parse().ok())?
}

/// Whether the server asked us to slow down (503 Slow Down / Service Unavailable, 429).
fn is_slow_down(msg: &str) -> bool {
    matches!(http_status(msg), Some(503 | 429)) || msg.contains("SlowDown")
}

/// The body of a ranged GET, counted, which must be exactly `range` long (a short body is
/// a transient fault: retried).
async fn body(
    res: object_store::GetResult,
    range: &std::ops::Range<u64>,
    stats: &NetStats,
) -> std::result::Result<Vec<u8>, Fault> {
    let b = res.bytes().await.map_err(classify)?;
    stats.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
    let want = range.end - range.start;
    if b.len() as u64 != want {
        return Err(Fault::Transient(format!(
            "got {} bytes for the {want}-byte range {range:?}",
            b.len()
        )));
    }
    Ok(b.to_vec())
}

/// The one retry loop every request goes through (object_store's own is off: its
/// `max_retries` is 0). Runs `op` until it succeeds or fails for good; a transient fault is
/// retried after an exponential backoff (starting longer when the server asked to slow
/// down), with jitter so parallel requests do not retry in step, while the wait ends before
/// the deadline. The deadline is `deadline`, or when `None`, `budget` after the first
/// failure (for an upload, whose own length is not the retries' fault). Each retry is
/// counted in `stats.retries`, each final failure other than "not found" in `stats.errors`.
async fn retrying<T, F, Fut>(
    stats: &NetStats,
    budget: Duration,
    mut deadline: Option<Instant>,
    what: &str,
    mut op: F,
) -> std::result::Result<T, Fault>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, Fault>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let w = match op().await {
            Ok(v) => return Ok(v),
            Err(Fault::Transient(w)) => w,
            Err(Fault::NotFound) => return Err(Fault::NotFound),
            Err(f) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(f);
            }
        };
        if is_slow_down(&w) {
            backoff = backoff.max(SLOW_DOWN_BACKOFF);
        }
        // Jitter: wait between 1/2 and all of the backoff.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let wait = backoff / 2 + backoff.mul_f64(f64::from(nanos % 1000) / 2000.0);
        let end = *deadline.get_or_insert_with(|| Instant::now() + budget);
        if Instant::now() + wait >= end {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(Fault::Transient(format!(
                "{w} (gave up: retrying would exceed the {budget:?} budget)"
            )));
        }
        tracing::debug!("{what}: {w}; retrying in {wait:?}");
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl Remote {
    pub fn new(url: &RemoteUrl, opts: &RemoteOptions) -> Result<Arc<Remote>> {
        let err = |what: String| Error::Invalid {
            path: PathBuf::from(url.to_string()),
            what,
        };
        let env_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let allow_http = opts.allow_http || env_http;
        let endpoint = opts.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        // Every request goes to a plain http endpoint: no TLS, so the system's trust store
        // (a few hundred files read at startup, slow on a cold page cache) is not loaded.
        let plain = match url {
            RemoteUrl::S3 { .. } => endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
            RemoteUrl::Http { base } => base.to_ascii_lowercase().starts_with("http://"),
        };
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_allow_http(allow_http)
            .with_no_system_certificates(plain);
        // No retries inside object_store: ours ([`retrying`]) count each one and share one
        // budget; two nested loops would multiply the attempts and hide them from the stats.
        let retry = object_store::RetryConfig {
            max_retries: 0,
            retry_timeout: opts.retry_budget,
            ..Default::default()
        };
        let store: Arc<dyn ObjectStore> = match url {
            RemoteUrl::S3 { bucket, .. } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_allow_http(allow_http);
                // from_env reads AWS_ENDPOINT; AWS_ENDPOINT_URL is the name the AWS tools use.
                if let Some(e) = endpoint {
                    if e.starts_with("http://") && !allow_http {
                        return Err(err(format!(
                            "endpoint {e} is plain http; pass --allow-http or set AWS_ALLOW_HTTP=true"
                        )));
                    }
                    b = b.with_endpoint(e);
                }
                if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                    b = b.with_region("us-east-1");
                }
                if let Some((id, secret)) = &opts.keys {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                }
                if opts.no_sign_request {
                    b = b.with_skip_signature(true);
                }
                Arc::new(b.build().map_err(|e| err(e.to_string()))?)
            }
            RemoteUrl::Http { base } => {
                if base.to_ascii_lowercase().starts_with("http://") && !allow_http {
                    return Err(err(
                        "plain http; pass --allow-http or set AWS_ALLOW_HTTP=true (https is always allowed)".into(),
                    ));
                }
                let b = object_store::http::HttpBuilder::new()
                    .with_url(base)
                    .with_client_options(client)
                    .with_retry(retry);
                Arc::new(b.build().map_err(|e| err(e.to_string()))?)
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dcfs-net")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        let disk = opts.disk_cache.as_ref().map(DiskCache::open).transpose()?.map(Arc::new);
        Ok(Arc::new(Remote {
            url: url.clone(),
            store,
            rt: Some(rt),
            inflight: Arc::new(tokio::sync::Semaphore::new(opts.max_inflight.max(1))),
            retry_budget: opts.retry_budget,
            stats: Arc::new(NetStats::default()),
            disk,
            small_kept: AtomicU64::new(0),
        }))
    }

    /// Runs `op` through [`retrying`] on this connection's runtime, within the retry
    /// budget from now.
    fn blocking<T, F, Fut>(&self, what: &str, op: F) -> std::result::Result<T, Fault>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Fault>>,
    {
        let deadline = Some(Instant::now() + self.retry_budget);
        self.rt()
            .block_on(retrying(&self.stats, self.retry_budget, deadline, what, op))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    pub fn counts(&self) -> NetCounts {
        let s = &self.stats;
        NetCounts {
            gets: s.gets.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        }
    }

    /// The disk cache's counters, when there is one.
    pub fn disk_counts(&self) -> Option<DiskCounts> {
        self.disk.as_ref().map(|d| d.counts())
    }

    /// The store location of `rel` (a `/`-separated path under the pack root).
    fn location(&self, rel: &str) -> ObjPath {
        match &self.url {
            RemoteUrl::S3 { prefix, .. } if !prefix.is_empty() => ObjPath::from(format!("{prefix}/{rel}")),
            _ => ObjPath::from(rel),
        }
    }

    /// What errors name for `rel`.
    pub fn name_of(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("{}/{rel}", self.url))
    }

    /// Reads a whole small object (marker, manifest), refusing one over `cap` bytes.
    /// `Ok(None)` when it does not exist.
    pub fn get_small(&self, rel: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.get_small_if(rel, cap, None)?.map(|(b, _)| b))
    }

    /// Like [`get_small`](Self::get_small), but with a disk cache: on a remount the bytes
    /// of the version a HEAD names come from the cache when it holds them (a warm remount
    /// moves none); the first time this cache sees the object, one GET brings them (and
    /// they go into the cache), as without a cache.
    pub fn get_small_cached(&self, rel: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let Some(disk) = &self.disk else {
            return self.get_small(rel, cap);
        };
        let (loc, name) = (self.location(rel), self.name_of(rel));
        let small_key = |etag: &str, len: u64| Key::new(&name.to_string_lossy(), etag, 0, len);
        if !seen(disk, &name) {
            let got = self.get_small_if(rel, cap, None)?;
            if let Some((b, Some(etag))) = &got {
                disk.put(small_key(etag, b.len() as u64), b);
                mark_seen(disk, &name);
            }
            return Ok(got.map(|(b, _)| b));
        }
        let meta = match self.open_request(&loc, &name, None) {
            Ok((meta, _)) => meta,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(etag) = meta.e_tag.filter(|_| meta.size <= cap) else {
            return self.get_small(rel, cap);
        };
        let key = small_key(&etag, meta.size);
        let mut buf = vec![0u8; meta.size as usize];
        if disk.get(key, &mut buf) {
            return Ok(Some(buf));
        }
        let got = self.get_small_if(rel, cap, Some(etag))?.map(|(b, _)| b);
        if let Some(b) = got.as_ref().filter(|b| b.len() as u64 == meta.size) {
            disk.put(key, b);
        }
        Ok(got)
    }

    /// The bytes of small object `rel` and the ETag they came with (see
    /// [`get_small`](Self::get_small)), of the version `if_match` names when given.
    fn get_small_if(&self, rel: &str, cap: u64, if_match: Option<String>) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let loc = self.location(rel);
        let name = self.name_of(rel);
        let (store, stats) = (self.store.clone(), self.stats.clone());
        let what = loc.to_string();
        let r = self.blocking(&what, || {
            let (store, loc, stats, if_match) = (store.clone(), loc.clone(), stats.clone(), if_match.clone());
            async move {
                stats.gets.fetch_add(1, Ordering::Relaxed);
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(0..cap + 1)),
                    if_match,
                    ..Default::default()
                };
                let res = store.get_opts(&loc, opts).await.map_err(classify)?;
                let (etag, size) = (res.meta.e_tag.clone(), res.meta.size);
                let b = res.bytes().await.map_err(classify)?;
                stats.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                // An ETag only for bytes that are the whole object.
                let whole = size == b.len() as u64;
                Ok((b, etag.filter(|_| whole)))
            }
        });
        match r {
            Ok((b, etag)) => {
                if b.len() as u64 > cap {
                    return Err(Error::corrupt(
                        name,
                        None,
                        format!("larger than the {cap} bytes allowed"),
                    ));
                }
                Ok(Some((b.to_vec(), etag)))
            }
            Err(Fault::NotFound) => Ok(None),
            Err(Fault::Transient(w) | Fault::Changed(w) | Fault::Fatal(w)) => {
                Err(Error::io(name, std::io::Error::other(w)))
            }
        }
    }

    /// Opens object `rel`: one HEAD for its length and ETag.
    pub fn open(self: &Arc<Self>, rel: &str) -> Result<RemoteObject> {
        self.open_expecting(rel, None)
    }

    /// Opens object `rel`, which the manifest says is `len` bytes long, in as few round
    /// trips as it can:
    ///
    /// - no disk cache: one GET of the object's last [`TAIL_LEN`] bytes (a bounded range:
    ///   some servers refuse a suffix range longer than the object), with its header
    ///   beside it when the tail does not reach it. That brings the length and ETag a
    ///   HEAD would, plus the footer and index, and all of a small object.
    /// - a disk cache that has seen the object before: a HEAD; when the cache holds this
    ///   version's footer (a warm remount) nothing more, else the same GETs, whose bytes
    ///   go into the cache as they are read.
    /// - a disk cache that has not: those GETs at once (a HEAD first would only add a
    ///   round trip), their bytes cached.
    /// - no length: a HEAD.
    pub fn open_expecting(self: &Arc<Self>, rel: &str, len: Option<u64>) -> Result<RemoteObject> {
        let loc = self.location(rel);
        let name = self.name_of(rel);
        let tail = len.filter(|&l| l > 0).map(|l| l.saturating_sub(TAIL_LEN)..l);
        let (meta, kept) = match (&self.disk, tail) {
            (Some(disk), Some(t)) if !seen(disk, &name) => {
                let (meta, kept) = self.open_request(&loc, &name, Some(t.clone()))?;
                if let Some(etag) = meta.e_tag.as_deref().filter(|_| meta.size == t.end && !kept.is_empty()) {
                    disk.put(open_key(&name, etag), &encode_spans(&kept));
                    mark_seen(disk, &name);
                }
                (meta, kept)
            }
            (Some(disk), Some(t)) => {
                let (meta, _) = self.open_request(&loc, &name, None)?;
                match meta.e_tag.as_deref().filter(|_| meta.size == t.end) {
                    Some(etag) => {
                        let key = open_key(&name, etag);
                        let mut buf = vec![0u8; spans_len(t.end) as usize];
                        match disk.get(key, &mut buf).then(|| parse_spans(&buf, t.end)).flatten() {
                            // A warm remount: no bytes move.
                            Some(kept) => (meta, kept),
                            None => {
                                let (meta2, kept) = self.open_request(&loc, &name, Some(t))?;
                                if meta2.e_tag == meta.e_tag && !kept.is_empty() {
                                    disk.put(key, &encode_spans(&kept));
                                }
                                (meta2, kept)
                            }
                        }
                    }
                    None => (meta, Vec::new()),
                }
            }
            (None, t) => self.open_request(&loc, &name, t)?,
            (Some(_), None) => self.open_request(&loc, &name, None)?,
        };
        Ok(RemoteObject {
            remote: self.clone(),
            location: loc,
            name,
            len: meta.size,
            etag: meta.e_tag,
            fresh: Default::default(),
            kept: parking_lot::RwLock::new(kept),
        })
    }

    /// The opening request of object `loc`: a GET of `tail` (and of the header beside it
    /// when `tail` does not reach it), or a HEAD when `None`. Gives the object's metadata,
    /// and the spans fetched when its length is `tail`'s end.
    fn open_request(
        &self,
        loc: &ObjPath,
        name: &Path,
        tail: Option<std::ops::Range<u64>>,
    ) -> Result<(object_store::ObjectMeta, Spans)> {
        let (store, stats) = (self.store.clone(), self.stats.clone());
        let what = loc.to_string();
        let r = self.blocking(&what, || {
            let (store, loc, stats, tail) = (store.clone(), loc.clone(), stats.clone(), tail.clone());
            async move {
                stats.gets.fetch_add(1, Ordering::Relaxed);
                let opts = GetOptions {
                    head: tail.is_none(),
                    range: tail.clone().map(GetRange::Bounded),
                    ..Default::default()
                };
                // An object longer than the tail: its header beside it, in parallel.
                let head_span = tail.as_ref().and_then(|t| open_spans(t.end).get(1).cloned());
                let get = |range: std::ops::Range<u64>| {
                    let (store, loc, stats) = (store.clone(), loc.clone(), stats.clone());
                    async move {
                        stats.gets.fetch_add(1, Ordering::Relaxed);
                        let opts = GetOptions {
                            range: Some(GetRange::Bounded(range)),
                            ..Default::default()
                        };
                        store.get_opts(&loc, opts).await.map_err(classify)
                    }
                };
                let (res, head) = match head_span.clone() {
                    Some(h) => {
                        let (a, b) = tokio::join!(store.get_opts(&loc, opts), get(h));
                        (a.map_err(classify)?, Some(b?))
                    }
                    None => (store.get_opts(&loc, opts).await.map_err(classify)?, None),
                };
                let meta = res.meta.clone();
                // Another length than the manifest's: the caller says so.
                let Some(want) = tail.filter(|t| t.end == meta.size) else {
                    return Ok((meta, Vec::new()));
                };
                let mut kept = Vec::new();
                for (r, span) in std::iter::once((res, want)).chain(head.zip(head_span)) {
                    if r.meta.e_tag != meta.e_tag {
                        return Err(Fault::Transient("the object changed while it was opened".into()));
                    }
                    kept.push((span.start, body(r, &span, &stats).await?));
                }
                Ok((meta, kept))
            }
        });
        let (meta, kept) = match r {
            Ok(m) => m,
            Err(Fault::NotFound) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(Error::NotFound {
                    path: name.to_path_buf(),
                    what: "no such object (a pack listed in the manifest must hold it)".into(),
                });
            }
            Err(Fault::Transient(w) | Fault::Changed(w) | Fault::Fatal(w)) => {
                return Err(Error::io(name, std::io::Error::other(w)))
            }
        };
        Ok((meta, kept))
    }

    /// Uploads `data` as object `rel` in one PUT.
    pub fn put(&self, rel: &str, data: Vec<u8>) -> Result<()> {
        let loc = self.location(rel);
        let store = self.store.clone();
        let payload = PutPayload::from(data);
        let what = loc.to_string();
        self.blocking(&what, || {
            let (store, loc, payload) = (store.clone(), loc.clone(), payload.clone());
            async move {
                store
                    .put_opts(&loc, payload, Default::default())
                    .await
                    .map(|_| ())
                    .map_err(classify)
            }
        })
        .map_err(|f| self.fault_error(rel, f))
    }

    /// The error for a request on `rel` that failed for good.
    fn fault_error(&self, rel: &str, f: Fault) -> Error {
        let w = match f {
            Fault::NotFound => "not found".into(),
            Fault::Transient(w) | Fault::Changed(w) | Fault::Fatal(w) => w,
        };
        Error::io(self.name_of(rel), std::io::Error::other(w))
    }

    /// Uploads the local file `path` as object `rel`: one PUT when small, else a
    /// multipart upload of `part`-byte parts, 8 in flight; aborted on failure.
    pub fn put_file(&self, rel: &str, path: &Path, part: usize) -> Result<()> {
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len <= part as u64 {
            let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            return self.put(rel, data);
        }
        let loc = self.location(rel);
        let store = self.store.clone();
        let file = Arc::new(File::open(path).map_err(|e| Error::io(path, e))?);
        // A local read error ends the upload at once: retrying will not mend the file.
        let local_err: Arc<parking_lot::Mutex<Option<std::io::Error>>> = Default::default();
        let what = loc.to_string();
        // A failed multipart upload is aborted and started again from its first part (a
        // failed part cannot be sent again under its number), within the budget counted
        // from the first failure: a long upload is not itself a reason to give up.
        let r = self
            .rt()
            .block_on(retrying(&self.stats, self.retry_budget, None, &what, || {
                let (store, loc, file, local_err) = (store.clone(), loc.clone(), file.clone(), local_err.clone());
                async move {
                    let upload = store
                        .put_multipart_opts(&loc, Default::default())
                        .await
                        .map_err(classify)?;
                    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, part);
                    let mut buf = vec![0u8; part];
                    let mut at = 0u64;
                    while at < len {
                        let n = (len - at).min(part as u64) as usize;
                        if let Err(e) = file.read_exact_at(&mut buf[..n], at) {
                            let _ = w.abort().await;
                            let msg = e.to_string();
                            *local_err.lock() = Some(e);
                            return Err(Fault::Fatal(msg));
                        }
                        if let Err(e) = w.wait_for_capacity(8).await {
                            let _ = w.abort().await;
                            return Err(classify(e));
                        }
                        w.write(&buf[..n]);
                        at += n as u64;
                    }
                    w.finish().await.map(|_| ()).map_err(classify)
                }
            }));
        match r {
            Ok(()) => Ok(()),
            Err(f) => match local_err.lock().take() {
                Some(e) => Err(Error::io(path, e)),
                None => Err(self.fault_error(rel, f)),
            },
        }
    }

    /// Deletes object `rel`; a missing one is fine.
    pub fn delete(&self, rel: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        let loc = self.location(rel);
        let store = self.store.clone();
        let what = loc.to_string();
        let r = self.blocking(&what, || {
            let (store, loc) = (store.clone(), loc.clone());
            async move { store.delete(&loc).await.map_err(classify) }
        });
        match r {
            Ok(()) | Err(Fault::NotFound) => Ok(()),
            Err(f) => Err(self.fault_error(rel, f)),
        }
    }
}

/// Spans of an object fetched when it was opened: (where each starts, its bytes).
type Spans = Vec<(u64, Vec<u8>)>;

/// The disk-cache key of an object's opening spans: its tail and, for a long object, its
/// header, kept as one entry so a warm remount reads one file per object. The offset
/// `u64::MAX` is never a range's.
fn open_key(name: &Path, etag: &str) -> Key {
    Key::new(&name.to_string_lossy(), etag, u64::MAX, 0)
}

/// The disk-cache key of the record that this cache has opened object `name` before,
/// under any version. It tells a remount, worth a HEAD to find the version's cached bytes,
/// from a first mount on this node, where that HEAD would only add a round trip. Offset
/// `u64::MAX` with length 1 is neither a range's key nor an [`open_key`].
fn seen_key(name: &Path) -> Key {
    Key::new(&name.to_string_lossy(), "", u64::MAX, 1)
}

/// Whether this cache has opened object `name` before (see [`seen_key`]).
fn seen(disk: &DiskCache, name: &Path) -> bool {
    disk.get(seen_key(name), &mut [0u8; 1])
}

fn mark_seen(disk: &DiskCache, name: &Path) {
    disk.put(seen_key(name), &[1]);
}

/// The spans an object of `len` bytes is opened with: its last [`TAIL_LEN`] bytes, and
/// its header when the tail does not reach it.
fn open_spans(len: u64) -> Vec<std::ops::Range<u64>> {
    let tail = len.saturating_sub(TAIL_LEN)..len;
    let mut v = vec![tail.clone()];
    if tail.start > 0 {
        v.push(0..HEADER_LEN.min(len));
    }
    v
}

/// Length of [`encode_spans`]'s output for an object of `len` bytes: per span its start
/// and length (u64 LE each), then its bytes.
fn spans_len(len: u64) -> u64 {
    open_spans(len).iter().map(|r| 16 + r.end - r.start).sum()
}

fn encode_spans(spans: &Spans) -> Vec<u8> {
    let mut out = Vec::new();
    for (at, b) in spans {
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// The spans of an object of `len` bytes back from [`encode_spans`]; `None` unless they
/// are exactly the spans such an object is opened with.
fn parse_spans(mut buf: &[u8], len: u64) -> Option<Spans> {
    let mut out = Vec::new();
    for want in open_spans(len) {
        let (head, rest) = buf.split_first_chunk::<16>()?;
        let at = u64::from_le_bytes(head[..8].try_into().ok()?);
        let n = u64::from_le_bytes(head[8..].try_into().ok()?);
        if at != want.start || n != want.end - want.start || rest.len() < n as usize {
            return None;
        }
        out.push((at, rest[..n as usize].to_vec()));
        buf = &rest[n as usize..];
    }
    buf.is_empty().then_some(out)
}

/// One object of a remote pack, pinned to the version (ETag) seen when it was opened.
pub struct RemoteObject {
    remote: Arc<Remote>,
    location: ObjPath,
    name: PathBuf,
    len: u64,
    etag: Option<String>,
    /// Read from the network even where the disk cache holds the range (and replace the
    /// entry): set while a read that failed its checks is tried once more.
    fresh: std::sync::atomic::AtomicBool,
    /// Spans of the object fetched when it was opened (its tail, and its header when the
    /// tail does not reach it): (where each starts, its bytes). Reads inside one need no
    /// request. Kept for small objects only (all their bytes); dropped by
    /// [`trim_tail`](Self::trim_tail) otherwise.
    kept: parking_lot::RwLock<Spans>,
}

impl fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RemoteObject({}, {} bytes, etag {:?})",
            self.name.display(),
            self.len,
            self.etag
        )
    }
}

impl RemoteObject {
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Fetches `range` with retries; the body must be exactly the range asked for, from
    /// the pinned version.
    async fn fetch(
        store: Arc<dyn ObjectStore>,
        loc: ObjPath,
        etag: Option<String>,
        range: std::ops::Range<u64>,
        stats: Arc<NetStats>,
        budget: Duration,
        deadline: Instant,
    ) -> std::result::Result<Vec<u8>, Fault> {
        let what = loc.to_string();
        retrying(&stats, budget, Some(deadline), &what, || {
            let (store, loc, etag, range, stats) =
                (store.clone(), loc.clone(), etag.clone(), range.clone(), stats.clone());
            async move {
                stats.gets.fetch_add(1, Ordering::Relaxed);
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: etag.clone(),
                    ..Default::default()
                };
                let res = store.get_opts(&loc, opts).await.map_err(classify)?;
                if etag.is_some() && res.meta.e_tag.is_some() && res.meta.e_tag != etag {
                    return Err(Fault::Changed(format!(
                        "ETag now {:?}, opened as {etag:?}",
                        res.meta.e_tag
                    )));
                }
                body(res, &range, &stats).await
            }
        })
        .await
    }
}

impl RemoteObject {
    /// The disk-cache key of `len` bytes at `offset`, when this object's ranges may be
    /// cached: there is a cache, and an ETag to tell this version from the next.
    fn disk_key(&self, offset: u64, len: usize) -> Option<(&DiskCache, Key)> {
        let disk = self.remote.disk.as_ref()?;
        let etag = self.etag.as_deref()?;
        Some((disk, Key::new(&self.name.to_string_lossy(), etag, offset, len as u64)))
    }

    /// After the footer and index were read: keeps the opening GET's bytes only when
    /// they are the whole object and the pack's budget for small objects allows.
    pub fn trim_tail(&self) {
        let mut k = self.kept.write();
        let whole = matches!(k.as_slice(), [(0, b)] if b.len() as u64 == self.len);
        let small = &self.remote.small_kept;
        if !(whole && small.fetch_add(self.len, Ordering::Relaxed) + self.len <= SMALL_OBJECTS_BUDGET) {
            if whole {
                small.fetch_sub(self.len, Ordering::Relaxed);
            }
            *k = Vec::new();
        }
    }

    /// Drops the disk cache's copy of the opening spans (they failed a check).
    pub fn forget_open_spans(&self) {
        if let (Some(disk), Some(etag)) = (&self.remote.disk, self.etag.as_deref()) {
            disk.forget(open_key(&self.name, etag));
        }
    }

    /// Copies `buf.len()` bytes at `offset` from a kept span, when one holds them.
    fn read_tail(&self, buf: &mut [u8], offset: u64) -> bool {
        if self.fresh.load(Ordering::Relaxed) {
            return false;
        }
        let k = self.kept.read();
        let Some((at, b)) = k
            .iter()
            .find(|(at, b)| offset >= *at && offset - at + buf.len() as u64 <= b.len() as u64)
        else {
            return false;
        };
        let from = (offset - at) as usize;
        buf.copy_from_slice(&b[from..from + buf.len()]);
        true
    }

    /// While set, reads skip the disk cache's copies (and replace them).
    pub fn set_fresh(&self, on: bool) {
        self.fresh.store(on, Ordering::Relaxed);
    }

    /// Drops any cached copy of `len` bytes at `offset`, so the next read of them goes to
    /// the network (they failed a check after they were read). True: a next read would
    /// fetch them again, which may help.
    pub fn forget(&self, offset: u64, len: usize) -> bool {
        if let Some((disk, key)) = self.disk_key(offset, len) {
            disk.forget(key);
        }
        let mut kept = self.kept.write();
        let before = kept.len();
        kept.retain(|(at, b)| offset >= at + b.len() as u64 || offset + len as u64 <= *at);
        if kept.len() != before {
            self.forget_open_spans();
        }
        true
    }

    /// What a network task needs to fetch ranges of this object, owned.
    fn fetcher(&self) -> Fetcher {
        let r = &self.remote;
        Fetcher {
            store: r.store.clone(),
            loc: self.location.clone(),
            etag: self.etag.clone(),
            stats: r.stats.clone(),
            inflight: r.inflight.clone(),
            budget: r.retry_budget,
            name: self.name.clone(),
        }
    }

    /// Fills `buf` from the network, in parallel parts, with retries.
    fn read_from_network(&self, buf: &mut [u8], offset: u64, end: u64) -> Result<()> {
        let f = self.fetcher();
        let deadline = Instant::now() + f.budget;
        let bytes = self.remote.rt().block_on(f.span(offset..end, deadline))?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    /// Starts fetching `ranges` of this object in the background and returns at once.
    /// `done(k, bytes)` is called exactly once per range, on a network thread, as soon as
    /// range `k` is here (from the disk cache or the network) or has failed. Ranges that
    /// miss the disk cache and follow one another (one ends where the next starts) go out
    /// together as one GET of up to [`PART_LEN`], so a reader's window of small chunks
    /// costs a few large requests, not one per chunk; each range is still cached on its
    /// own, under the key a single read of it uses.
    pub fn fetch_many(&self, ranges: Vec<std::ops::Range<u64>>, done: Delivery) {
        let out = Arc::new(Deliveries {
            given: ranges.iter().map(|_| AtomicBool::new(false)).collect(),
            done,
            name: self.name.clone(),
        });
        for (k, r) in ranges.iter().enumerate() {
            if r.start > r.end || r.end > self.len {
                out.give(
                    k,
                    Err(Error::corrupt(&self.name, None, "read past the end of the object")),
                );
                continue;
            }
            if self.kept.read().is_empty() {
                continue;
            }
            let mut b = vec![0u8; (r.end - r.start) as usize];
            if self.read_tail(&mut b, r.start) {
                out.give(k, Ok(b));
            }
        }
        let keys: Vec<Option<Key>> = ranges
            .iter()
            .map(|r| self.disk_key(r.start, (r.end - r.start) as usize).map(|(_, k)| k))
            .collect();
        let disk = self.remote.disk.clone().filter(|_| self.etag.is_some());
        let fresh = self.fresh.load(Ordering::Relaxed);
        let f = self.fetcher();
        let ranges = Arc::new(ranges);
        self.remote.rt().spawn(async move {
            // The disk cache first: file reads, off the async workers; each hit is handed
            // on as soon as it is read.
            let misses: Vec<usize> = match (&disk, fresh) {
                (Some(d), false) => {
                    let (d, keys, ranges, out) = (d.clone(), keys.clone(), ranges.clone(), out.clone());
                    tokio::task::spawn_blocking(move || {
                        (0..ranges.len())
                            .filter(|&k| {
                                if out.is_given(k) {
                                    return false;
                                }
                                let Some(key) = keys[k] else { return true };
                                let mut b = vec![0u8; (ranges[k].end - ranges[k].start) as usize];
                                if !d.get(key, &mut b) {
                                    return true;
                                }
                                out.give(k, Ok(b));
                                false
                            })
                            .collect()
                    })
                    .await
                    .unwrap_or_default()
                }
                _ => (0..ranges.len()).filter(|&k| !out.is_given(k)).collect(),
            };
            let deadline = Instant::now() + f.budget;
            for run in coalesce(&ranges, &misses, PART_LEN) {
                let (f, out, ranges, keys, disk) = (f.clone(), out.clone(), ranges.clone(), keys.clone(), disk.clone());
                tokio::spawn(async move {
                    let span = ranges[run[0]].start..ranges[run[run.len() - 1]].end;
                    let bytes = match f.span(span.clone(), deadline).await {
                        Ok(b) => b,
                        Err(e) => {
                            for &k in &run {
                                out.give(k, Err(e.clone()));
                            }
                            return;
                        }
                    };
                    let at = move |k: usize| {
                        let r = &ranges[k];
                        (r.start - span.start) as usize..(r.end - span.start) as usize
                    };
                    // Each range goes to the disk cache before its reader sees it: bytes a
                    // reader was served are on disk (or were skipped) by then, so a remount
                    // right after an unmount finds them; the daemon may exit at once.
                    match disk {
                        Some(d) => {
                            let _ = tokio::task::spawn_blocking(move || {
                                for &k in &run {
                                    if let Some(key) = keys[k] {
                                        d.put(key, &bytes[at(k)]);
                                    }
                                    out.give(k, Ok(bytes[at(k)].to_vec()));
                                }
                            })
                            .await;
                        }
                        None => {
                            for &k in &run {
                                out.give(k, Ok(bytes[at(k)].to_vec()));
                            }
                        }
                    }
                });
            }
        });
    }
}

/// Called once per range of [`RemoteObject::fetch_many`]: its position and its bytes.
pub type Delivery = Arc<dyn Fn(usize, Result<Vec<u8>>) + Send + Sync>;

/// The ranges of one [`RemoteObject::fetch_many`] not yet delivered. Each is delivered
/// once; whatever is still undelivered when the last task lets go (a task cancelled at
/// shutdown) is delivered as an error, so no reader waits forever.
struct Deliveries {
    given: Vec<AtomicBool>,
    done: Delivery,
    name: PathBuf,
}

impl Deliveries {
    fn give(&self, k: usize, r: Result<Vec<u8>>) {
        if !self.given[k].swap(true, Ordering::AcqRel) {
            (self.done)(k, r);
        }
    }

    fn is_given(&self, k: usize) -> bool {
        self.given[k].load(Ordering::Acquire)
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        for k in 0..self.given.len() {
            let e = Error::io(&self.name, std::io::Error::other("the fetch was cancelled"));
            self.give(k, Err(e));
        }
    }
}

/// Groups ranges `which` (positions in `ranges`, in order) into runs to fetch as one GET:
/// each range follows the one before it with no gap, and a run holds at most `max` bytes
/// unless a single range is larger.
fn coalesce(ranges: &[std::ops::Range<u64>], which: &[usize], max: u64) -> Vec<Vec<usize>> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for &k in which {
        let r = &ranges[k];
        let len = r.end - r.start;
        match runs.last_mut() {
            Some(run) if ranges[run[run.len() - 1]].end == r.start && bytes + len <= max => {
                run.push(k);
                bytes += len;
            }
            _ => {
                runs.push(vec![k]);
                bytes = len;
            }
        }
    }
    runs
}

/// What a network task needs to fetch ranges of one object, owned: tasks hold no
/// [`Remote`], whose runtime they run on.
#[derive(Clone)]
struct Fetcher {
    store: Arc<dyn ObjectStore>,
    loc: ObjPath,
    etag: Option<String>,
    stats: Arc<NetStats>,
    inflight: Arc<tokio::sync::Semaphore>,
    budget: Duration,
    name: PathBuf,
}

impl Fetcher {
    /// Fetches `range` as parallel GETs of at most [`PART_LEN`], each holding one of the
    /// process's in-flight permits, with retries until `deadline`.
    async fn span(&self, range: std::ops::Range<u64>, deadline: Instant) -> Result<Vec<u8>> {
        let parts: Vec<std::ops::Range<u64>> = (range.start..range.end)
            .step_by(PART_LEN as usize)
            .map(|s| s..(s + PART_LEN).min(range.end))
            .collect();
        let mut tasks = Vec::with_capacity(parts.len());
        for p in &parts {
            let (me, p) = (self.clone(), p.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = me
                    .inflight
                    .acquire_owned()
                    .await
                    .map_err(|e| Fault::Fatal(e.to_string()))?;
                RemoteObject::fetch(me.store, me.loc, me.etag, p, me.stats, me.budget, deadline).await
            }));
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (p, t) in parts.iter().zip(tasks) {
            match t.await.unwrap_or_else(|e| Err(Fault::Fatal(e.to_string()))) {
                Ok(b) if parts.len() == 1 => return Ok(b),
                Ok(b) => out.extend_from_slice(&b),
                Err(f) => return Err(self.error(p, f)),
            }
        }
        Ok(out)
    }

    fn error(&self, p: &std::ops::Range<u64>, f: Fault) -> Error {
        match f {
            Fault::Changed(w) => Error::Changed {
                file: self.name.clone(),
                what: format!("the object was replaced after it was opened ({w})"),
            },
            Fault::NotFound => Error::Changed {
                file: self.name.clone(),
                what: "the object was deleted after it was opened".into(),
            },
            Fault::Transient(w) | Fault::Fatal(w) => Error::io(
                &self.name,
                std::io::Error::other(format!("bytes {}..{}: {w}", p.start, p.end)),
            ),
        }
    }
}

impl Source for RemoteObject {
    fn name(&self) -> &Path {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| Error::corrupt(&self.name, None, "read past the end of the object"))?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.read_tail(buf, offset) {
            return Ok(());
        }
        match self.disk_key(offset, buf.len()) {
            Some((disk, key)) => {
                if !self.fresh.load(Ordering::Relaxed) && disk.get(key, buf) {
                    return Ok(());
                }
                self.read_from_network(buf, offset, end)?;
                disk.put(key, buf);
                Ok(())
            }
            None => self.read_from_network(buf, offset, end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_coalesce_into_runs_of_at_most_max_bytes() {
        let r = |a: u64, b: u64| a..b;
        let ranges = [r(0, 10), r(10, 20), r(20, 30), r(40, 50), r(50, 75), r(75, 80)];
        // A gap (30..40) starts a new run; so does the byte bound.
        assert_eq!(
            coalesce(&ranges, &[0, 1, 2, 3, 4, 5], 30),
            [vec![0, 1, 2], vec![3], vec![4, 5]]
        );
        assert_eq!(
            coalesce(&ranges, &[0, 1, 2, 3, 4, 5], 1000),
            [vec![0, 1, 2], vec![3, 4, 5]]
        );
        // Ranges left out (cached) split runs; a range above the bound stands alone.
        assert_eq!(coalesce(&ranges, &[0, 2], 1000), [vec![0], vec![2]]);
        assert_eq!(coalesce(&ranges, &[3, 4, 5], 5), [vec![3], vec![4], vec![5]]);
        assert!(coalesce(&ranges, &[], 10).is_empty());
    }

    #[test]
    fn opening_spans_round_trip_and_refuse_other_shapes() {
        for len in [1, 100, TAIL_LEN, TAIL_LEN + 1, 10 << 20] {
            let spans: Spans = open_spans(len)
                .into_iter()
                .map(|r| (r.start, (r.start..r.end).map(|i| i as u8).collect()))
                .collect();
            let enc = encode_spans(&spans);
            assert_eq!(enc.len() as u64, spans_len(len), "{len}");
            assert_eq!(parse_spans(&enc, len), Some(spans.clone()), "{len}");
            // Another object length, a cut or a longer buffer: refused.
            assert_eq!(parse_spans(&enc, len + 1), None, "{len}");
            assert_eq!(parse_spans(&enc[..enc.len() - 1], len), None, "{len}");
            let mut longer = enc.clone();
            longer.push(0);
            assert_eq!(parse_spans(&longer, len), None, "{len}");
        }
        assert_eq!(open_spans(TAIL_LEN + 1).len(), 2, "a long object's header rides along");
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            Location::parse("s3://b-1/a/b/").unwrap(),
            Location::Remote(RemoteUrl::S3 {
                bucket: "b-1".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            Location::parse("s3://bkt").unwrap(),
            Location::Remote(RemoteUrl::S3 {
                bucket: "bkt".into(),
                prefix: "".into()
            })
        );
        assert_eq!(
            Location::parse("http://h:9/x/").unwrap(),
            Location::Remote(RemoteUrl::Http {
                base: "http://h:9/x".into()
            })
        );
        assert_eq!(Location::parse("some/dir").unwrap(), Location::Local("some/dir".into()));
        for bad in [
            "s3://",
            "s3://b",
            "s3://B/x",
            "s3://b/../x",
            "s3://b/a//c",
            "ftp://x/y",
            "http://h/x?y",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        let u = RemoteUrl::S3 {
            bucket: "b".into(),
            prefix: "p".into(),
        };
        assert_eq!(u.to_string(), "s3://b/p");
    }

    #[test]
    fn statuses_are_read_from_object_store_messages() {
        let m =
            "Error performing GET http://h/x in 2ms - Server returned non-2xx status code: 503 Service Unavailable: ";
        assert_eq!(http_status(m), Some(503));
        assert!(is_slow_down(m));
        assert!(is_slow_down("... <Code>SlowDown</Code> ..."));
        assert_eq!(http_status("status code: 40"), None);
        assert_eq!(http_status("connection reset"), None);
        assert!(!is_slow_down("status code: 500 Internal Server Error"));
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn retrying_counts_each_retry_and_gives_up_within_the_budget() {
        // Three 503s, then success: three retries, no error.
        let stats = NetStats::default();
        let mut left = 3;
        let r = rt().block_on(retrying(&stats, Duration::from_secs(20), None, "x", || {
            let fail = left > 0;
            left -= 1;
            async move {
                if fail {
                    Err(Fault::Transient("status code: 503 Service Unavailable".into()))
                } else {
                    Ok(7)
                }
            }
        }));
        assert!(matches!(r, Ok(7)));
        assert_eq!(stats.retries.load(Ordering::Relaxed), 3);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
        // Always failing: gives up before the deadline, one error.
        let stats = NetStats::default();
        let deadline = Instant::now() + Duration::from_millis(600);
        let r: std::result::Result<(), _> =
            rt().block_on(retrying(&stats, Duration::ZERO, Some(deadline), "x", || async {
                Err(Fault::Transient("reset".into()))
            }));
        assert!(matches!(r, Err(Fault::Transient(w)) if w.contains("gave up")));
        assert!(stats.retries.load(Ordering::Relaxed) >= 2);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        // Fatal and not-found are not retried; only fatal counts as an error.
        let stats = NetStats::default();
        let r: std::result::Result<(), _> =
            rt().block_on(retrying(&stats, Duration::from_secs(20), None, "x", || async {
                Err(Fault::Fatal("403".into()))
            }));
        assert!(matches!(r, Err(Fault::Fatal(_))));
        let r: std::result::Result<(), _> =
            rt().block_on(retrying(&stats, Duration::from_secs(20), None, "x", || async {
                Err(Fault::NotFound)
            }));
        assert!(matches!(r, Err(Fault::NotFound)));
        assert_eq!(stats.retries.load(Ordering::Relaxed), 0);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn local_source_reads_and_refuses_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let s = LocalSource::new(&p, File::open(&p).unwrap()).unwrap();
        assert_eq!(s.len(), 5);
        let mut b = [0u8; 3];
        s.read_exact_at(&mut b, 2).unwrap();
        assert_eq!(&b, b"llo");
        assert!(s.read_exact_at(&mut b, 3).unwrap_err().is_corrupt());
    }

    #[test]
    fn plain_http_needs_consent() {
        if std::env::var_os("AWS_ALLOW_HTTP").is_some() {
            eprintln!("SKIP plain_http_needs_consent: AWS_ALLOW_HTTP is set in this environment");
            return;
        }
        let u = RemoteUrl::Http {
            base: "http://127.0.0.1:1/x".into(),
        };
        let e = Remote::new(&u, &RemoteOptions::default()).unwrap_err();
        assert!(e.to_string().contains("--allow-http"), "{e}");
        let opts = RemoteOptions {
            allow_http: true,
            ..Default::default()
        };
        assert!(Remote::new(&u, &opts).is_ok());
    }
}
