//! The revocation set: CRLs from files and URLs, with what the logs say of each, and
//! how they are loaded again. Checking a chain against them is webpki's job (see
//! `client_auth`); when a new set is loaded it goes into force as a new epoch there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tracing::warn;
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};

use super::{identity, lock, pem};
use crate::fetch::Fetcher;

/// The largest CRL accepted from a URL.
pub const MAX_CRL_DOCUMENT: u64 = 64 * 1024 * 1024;

/// The CRLs in force, and a summary of each for logs.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    /// The CRLs, DER encoded.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// One summary per CRL, in the same order.
    pub summaries: Vec<CrlSummary>,
}

/// What the logs say about one CRL, and what decides which of two CRLs is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The issuer's distinguished name, DER: how CRLs and CAs are matched.
    pub issuer_der: Vec<u8>,
    /// thisUpdate, in seconds since the Unix epoch.
    pub this_update: i64,
    /// How many certificates it revokes.
    pub revoked: usize,
    /// nextUpdate, in seconds since the Unix epoch; `None` when the CRL has none.
    pub next_update: Option<i64>,
}

impl CrlSummary {
    /// Whether nextUpdate is before `now` (seconds since the Unix epoch).
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }
}

impl RevocationSet {
    /// Adds every CRL in `path`. A CRL that does not parse is an error naming the file.
    pub fn load_file(&mut self, path: &Path) -> Result<(), String> {
        let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// Adds every CRL in `bytes` (PEM blocks or one DER CRL) that came from `origin`.
    /// Of two CRLs from one issuer only the newer is kept: webpki consults the first
    /// one it finds, and an older one must never hide a newer revocation.
    pub fn load_bytes(&mut self, bytes: &[u8], origin: &str) -> Result<(), String> {
        for crl in pem::revocation_lists_in(bytes).map_err(|e| format!("{origin}: {e}"))? {
            let summary =
                summarize(&crl).ok_or_else(|| format!("{origin}: not a valid X.509 CRL"))?;
            self.keep_newer(crl, summary);
        }
        Ok(())
    }

    fn keep_newer(&mut self, crl: CertificateRevocationListDer<'static>, summary: CrlSummary) {
        match self
            .summaries
            .iter()
            .position(|held| held.issuer_der == summary.issuer_der)
        {
            Some(at) if self.summaries[at].this_update >= summary.this_update => {}
            Some(at) => {
                self.crls[at] = crl;
                self.summaries[at] = summary;
            }
            None => {
                self.crls.push(crl);
                self.summaries.push(summary);
            }
        }
    }

    /// Refuses to go back in time: where `in_force` holds a newer CRL from an issuer
    /// than this set, the newer one stays (RFC 5280 §5.2.3: a replayed old CRL must not
    /// undo a revocation).
    pub fn keep_newer_than(&mut self, in_force: &RevocationSet) {
        for (crl, summary) in in_force.crls.iter().zip(&in_force.summaries) {
            let mine = self
                .summaries
                .iter()
                .position(|held| held.issuer_der == summary.issuer_der);
            if let Some(at) = mine {
                if self.summaries[at].this_update < summary.this_update {
                    warn!(issuer = %summary.issuer, "refusing a CRL older than the one in force");
                    self.crls[at] = crl.clone();
                    self.summaries[at] = summary.clone();
                }
            }
        }
    }

    /// Checks the signature of every CRL whose issuer is among `issuers` (client CAs and
    /// intermediates seen in verified chains): one certificate of that name must have
    /// signed it. A CRL of an issuer not yet seen is left to webpki, which checks it
    /// against the chain in every verification.
    pub fn check_signatures(&self, issuers: &[CertificateDer<'_>]) -> Result<(), String> {
        let issuers: Vec<X509Certificate<'_>> = issuers
            .iter()
            .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok().map(|(_, c)| c))
            .collect();
        for (crl, summary) in self.crls.iter().zip(&self.summaries) {
            let named: Vec<_> = issuers
                .iter()
                .filter(|ca| ca.subject().as_raw() == summary.issuer_der.as_slice())
                .collect();
            if named.is_empty() {
                // An issuer not yet seen: webpki checks the signature when it uses the CRL.
                continue;
            }
            let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref())
                .map_err(|_| format!("the CRL of {} does not parse", summary.issuer))?;
            if !named
                .iter()
                .any(|ca| parsed.verify_signature(ca.public_key()).is_ok())
            {
                return Err(format!(
                    "the CRL of {} is not signed by that CA's key",
                    summary.issuer
                ));
            }
        }
        Ok(())
    }
}

fn summarize(crl: &CertificateRevocationListDer<'_>) -> Option<CrlSummary> {
    let (rest, parsed) = CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    Some(CrlSummary {
        issuer: identity::distinguished_name(parsed.issuer()),
        issuer_der: parsed.issuer().as_raw().to_vec(),
        this_update: parsed.last_update().timestamp(),
        revoked: parsed.iter_revoked_certificates().count(),
        next_update: parsed.next_update().map(|time| time.timestamp()),
    })
}

/// Where the CRLs come from, and the last good copy of each one fetched.
#[derive(Debug)]
pub struct RevocationSources {
    /// CRL files, reread when they change.
    pub files: Vec<PathBuf>,
    /// CRL URLs, fetched every `refresh`.
    pub urls: Vec<String>,
    /// How URLs are fetched.
    pub fetcher: Fetcher,
    /// How often URLs are fetched.
    pub refresh: Duration,
    fetched: Mutex<HashMap<String, Vec<u8>>>,
    fetch_failures: AtomicU64,
}

impl RevocationSources {
    /// Sources for these files and URLs.
    pub fn new(
        files: Vec<PathBuf>,
        urls: Vec<String>,
        fetcher: Fetcher,
        refresh: Duration,
    ) -> Self {
        Self {
            files,
            urls,
            fetcher,
            refresh,
            fetched: Mutex::new(HashMap::new()),
            fetch_failures: AtomicU64::new(0),
        }
    }

    /// Reads every file and, with `fetch`, every URL anew. A file that cannot be read
    /// fails the whole load (the set in force stays); a URL that cannot be fetched, or
    /// answers with CRLs that do not parse or that a CA among `issuers` did not sign,
    /// keeps its last good copy, or is left out, so that what it would cover has no
    /// known status.
    pub fn load(
        &self,
        fetch: bool,
        issuers: &[CertificateDer<'_>],
    ) -> Result<RevocationSet, String> {
        let mut set = RevocationSet::default();
        for path in &self.files {
            set.load_file(path)?;
        }
        let mut fetched = lock(&self.fetched);
        for url in &self.urls {
            if fetch {
                // A copy is kept only once it reads as CRLs signed by their issuers: a
                // bad or forged document must not displace the last good one, nor fail
                // every later load.
                let document = self
                    .fetcher
                    .get(url, "application/pkix-crl")
                    .and_then(|document| {
                        let mut set = RevocationSet::default();
                        set.load_bytes(&document.body, url)?;
                        set.check_signatures(issuers)?;
                        Ok(document)
                    });
                match document {
                    Ok(document) => {
                        fetched.insert(url.clone(), document.body);
                    }
                    Err(error) => {
                        self.fetch_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(%url, %error, "CRL fetch failed; keeping the last good copy")
                    }
                }
            }
            if let Some(bytes) = fetched.get(url) {
                set.load_bytes(bytes, url)?;
            }
        }
        Ok(set)
    }

    /// How many URL fetches have failed (the last good copy stayed), for `/metrics`.
    pub fn fetch_failures(&self) -> u64 {
        self.fetch_failures.load(Ordering::Relaxed)
    }

    /// The CRL URLs that have no good copy yet.
    pub fn urls_without_copy(&self) -> Vec<String> {
        let fetched = lock(&self.fetched);
        self.urls
            .iter()
            .filter(|url| !fetched.contains_key(*url))
            .cloned()
            .collect()
    }

    /// The modification times of the files, to tell when one changes.
    pub fn file_stamps(&self) -> Vec<Option<SystemTime>> {
        self.files
            .iter()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }
}
