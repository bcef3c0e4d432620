//! Getting the IdP's keys: from a file, a `jwks_uri`, or OIDC discovery, on a thread of
//! its own so that no fetch ever runs on a worker. One fetcher per key store means at
//! most one fetch in flight. A failed fetch keeps the last good keys and warns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use tracing::{info, warn};

use super::jwks::Jwks;
use super::key_store::KeyStore;
use crate::fetch::{Document, Fetcher};
use crate::reload::FileStamp;
use crate::reload::Lifetime;

/// The largest JWKS or discovery document accepted.
pub const MAX_DOCUMENT: u64 = 1024 * 1024;

/// How soon a failed fetch is tried again (or the refresh interval, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15);

/// How often a local JWKS file is looked at for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A local JWKS file.
    File(PathBuf),
    /// A JWKS URL.
    Uri(String),
    /// OIDC discovery from this issuer.
    Discovery(String),
}

/// How the fetcher behaves.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Algorithms keys may be used with.
    pub algorithms: Vec<Algorithm>,
    /// How documents are fetched over HTTPS.
    pub fetcher: Fetcher,
    /// Refresh period when the IdP gives no `max-age`.
    pub refresh_interval: Duration,
    /// Bounds on a `max-age`.
    pub min_refresh: Duration,
    /// Bounds on a `max-age`.
    pub max_refresh: Duration,
}

/// Loads the keys once, now: what startup does for a file, so that a bad file is a
/// configuration error rather than a silent refusal of every token.
pub fn load_now(
    source: &KeySource,
    settings: &FetchSettings,
    store: &KeyStore,
) -> Result<usize, String> {
    let document = fetch(source, settings)?;
    install(&document.body, settings, store)
}

/// Starts the fetcher thread: it refreshes on a schedule and when asked to, until
/// `lifetime` ends (the owner then asks for a fetch, to wake it).
pub fn spawn(
    source: KeySource,
    settings: FetchSettings,
    store: Arc<KeyStore>,
    lifetime: Lifetime,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("edge-jwks".into())
        .spawn(move || loop {
            if lifetime.is_over() {
                return;
            }
            // Taken before the read, so that a write landing during it is seen next.
            let stamp = match &source {
                KeySource::File(path) => FileStamp::of(path),
                _ => None,
            };
            let loaded = fetch(&source, &settings).and_then(|document| {
                install(&document.body, &settings, &store).map(|_| document.max_age)
            });
            let next = match loaded {
                Ok(max_age) => max_age
                    .map(|age| age.clamp(settings.min_refresh, settings.max_refresh))
                    .unwrap_or(settings.refresh_interval),
                Err(error) => {
                    store.fetch_failed();
                    let keeping = store.snapshot().jwks.keys.len();
                    warn!(
                        source = %describe(&source), %error, keeping,
                        "JWKS fetch failed; keeping the last good keys"
                    );
                    RETRY_AFTER_FAILURE.min(settings.refresh_interval)
                }
            };
            store.fetch_finished();
            match &source {
                KeySource::File(path) => wait_for_change(path, stamp, &store, next),
                _ => {
                    store.wait_for_request(next);
                }
            }
        })?;
    Ok(())
}

/// Waits until a local JWKS file differs from `stamp` (looked at every second), a
/// fetch is asked for, or `longest` passes.
fn wait_for_change(path: &Path, stamp: Option<FileStamp>, store: &KeyStore, longest: Duration) {
    let deadline = Instant::now() + longest;
    while Instant::now() < deadline {
        if store.wait_for_request(FILE_POLL) || FileStamp::of(path) != stamp {
            return;
        }
    }
}

fn install(body: &[u8], settings: &FetchSettings, store: &KeyStore) -> Result<usize, String> {
    let jwks = Jwks::parse(body, &settings.algorithms)?;
    for reason in &jwks.skipped {
        warn!(%reason, "JWKS key skipped");
    }
    if jwks.keys.is_empty() {
        return Err("the JWKS has no usable signing key".into());
    }
    let count = jwks.keys.len();
    let kids: Vec<String> = jwks.keys.iter().filter_map(|key| key.kid.clone()).collect();
    if store.install(jwks, body) {
        info!(keys = count, kids = ?kids, "JWKS loaded");
    }
    Ok(count)
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::File(path) => path.display().to_string(),
        KeySource::Uri(uri) => uri.clone(),
        KeySource::Discovery(issuer) => format!("discovery from {issuer}"),
    }
}

fn fetch(source: &KeySource, settings: &FetchSettings) -> Result<Document, String> {
    let json = "application/json";
    match source {
        KeySource::File(path) => read_file(path),
        KeySource::Uri(uri) => settings.fetcher.get(uri, json),
        KeySource::Discovery(issuer) => {
            let jwks_uri = discover(issuer, &settings.fetcher)?;
            settings.fetcher.get(&jwks_uri, json)
        }
    }
}

/// Reads a local document, refusing one over [`MAX_DOCUMENT`].
pub fn read_file(path: &Path) -> Result<Document, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if metadata.len() > MAX_DOCUMENT {
        return Err(format!(
            "{}: larger than {MAX_DOCUMENT} bytes",
            path.display()
        ));
    }
    let body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Document {
        body,
        max_age: None,
    })
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// OIDC Discovery 1.0 §4: the document's `issuer` must be the one configured.
fn discover(issuer: &str, fetcher: &Fetcher) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let document = fetcher.get(&url, "application/json")?;
    let discovered: Discovery = serde_json::from_slice(&document.body)
        .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
    if discovered.issuer != issuer {
        return Err(format!(
            "{url}: names issuer {:?}, not the configured one",
            discovered.issuer
        ));
    }
    Ok(discovered.jwks_uri)
}
