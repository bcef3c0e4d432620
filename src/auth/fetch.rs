//! Getting the IdP's keys: from a file, a `jwks_uri`, or OIDC discovery, on a thread of
//! its own so that no fetch ever runs on a worker. One fetcher per key store means at
//! most one fetch in flight. A failed fetch keeps the last good keys and warns.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use tracing::{info, warn};

use super::jwks::Jwks;
use super::key_store::KeyStore;

/// The largest JWKS or discovery document accepted.
pub const MAX_DOCUMENT: u64 = 1024 * 1024;

/// How soon a failed fetch is tried again (or the refresh interval, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15);

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
    /// Extra trusted roots for HTTPS fetches; empty for the Mozilla roots.
    pub roots: Vec<CertificateDer<'static>>,
    /// Time allowed for one HTTP exchange.
    pub timeout: Duration,
    /// Refresh period when the IdP gives no `max-age`.
    pub refresh_interval: Duration,
    /// Bounds on a `max-age`.
    pub min_refresh: Duration,
    /// Bounds on a `max-age`.
    pub max_refresh: Duration,
}

/// A loaded document and how long the IdP says it stays fresh.
struct Fetched {
    body: Vec<u8>,
    max_age: Option<Duration>,
}

/// Loads the keys once, now: what startup does for a file, so that a bad file is a
/// configuration error rather than a silent refusal of every token.
pub fn load_now(
    source: &KeySource,
    settings: &FetchSettings,
    store: &KeyStore,
) -> Result<usize, String> {
    let fetched = fetch(source, settings)?;
    install(&fetched.body, settings, store)
}

/// Starts the fetcher thread: it refreshes on a schedule and when asked to.
pub fn spawn(
    source: KeySource,
    settings: FetchSettings,
    store: Arc<KeyStore>,
) -> std::io::Result<()> {
    thread::Builder::new().name("edge-jwks".into()).spawn(move || loop {
        let next = match fetch(&source, &settings).and_then(|f| install(&f.body, &settings, &store).map(|_| f.max_age)) {
            Ok(max_age) => max_age
                .map(|age| age.clamp(settings.min_refresh, settings.max_refresh))
                .unwrap_or(settings.refresh_interval),
            Err(error) => {
                let keeping = store.snapshot().jwks.keys.len();
                warn!(source = %describe(&source), %error, keeping, "JWKS fetch failed; keeping the last good keys");
                RETRY_AFTER_FAILURE.min(settings.refresh_interval)
            }
        };
        store.fetch_finished();
        store.wait_for_request(next);
    })?;
    Ok(())
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

fn fetch(source: &KeySource, settings: &FetchSettings) -> Result<Fetched, String> {
    match source {
        KeySource::File(path) => read_file(path),
        KeySource::Uri(uri) => get(uri, settings),
        KeySource::Discovery(issuer) => {
            let jwks_uri = discover(issuer, settings)?;
            get(&jwks_uri, settings)
        }
    }
}

fn read_file(path: &PathBuf) -> Result<Fetched, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if metadata.len() > MAX_DOCUMENT {
        return Err(format!(
            "{}: larger than {MAX_DOCUMENT} bytes",
            path.display()
        ));
    }
    let body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Fetched {
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
fn discover(issuer: &str, settings: &FetchSettings) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let fetched = get(&url, settings)?;
    let document: Discovery = serde_json::from_slice(&fetched.body)
        .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
    if document.issuer != issuer {
        return Err(format!(
            "{url}: names issuer {:?}, not the configured one",
            document.issuer
        ));
    }
    Ok(document.jwks_uri)
}

fn get(url: &str, settings: &FetchSettings) -> Result<Fetched, String> {
    let agent = agent(settings);
    let mut response = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    let max_age = response
        .headers()
        .get("cache-control")
        .and_then(|value| value.to_str().ok())
        .and_then(max_age);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(Fetched { body, max_age })
}

fn agent(settings: &FetchSettings) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots = if settings.roots.is_empty() {
        RootCerts::WebPki
    } else {
        let certs: Vec<Certificate<'static>> = settings
            .roots
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        RootCerts::new_with_certs(&certs)
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = TlsConfig::builder()
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(provider)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(true)
        .http_status_as_error(false)
        .timeout_global(Some(settings.timeout))
        .max_redirects(3)
        .user_agent("srrrs-edge")
        .build()
        .new_agent()
}

/// The `max-age` directive of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            value
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(
            max_age("max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
    }
}
