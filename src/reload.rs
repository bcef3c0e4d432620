//! Reloading what changes while the gateway runs: the server certificate and key (when
//! either file changes, and on SIGHUP), CRLs (files when they change, URLs on their
//! interval or soon after a failed fetch, everything on SIGHUP) and session ticket keys
//! (the key file when it changes, or the in-memory key when its rotation is due), the
//! server certificate's stapled OCSP response (halfway through its life), each
//! ingress's on a thread of its own. A local JWKS file is watched by its own fetcher
//! thread; SIGHUP asks it to read the file (or fetch the URL) again. New state goes into
//! force for new handshakes at once and for live connections at the workers' next sweep;
//! a source that fails to load keeps what is in force and says why.
//!
//! The configuration file and the client CA bundles are watched by [`ConfigWatch`]: a
//! change rebuilds every ingress and swaps the new set in. The threads of a replaced
//! ingress stop once its last connection has ended ([`Lifetime`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::auth::key_store::KeyStore;
use crate::ingress::IngressSet;
use crate::metrics::Metrics;
use crate::runtime::{RestartOnly, Settings};
use crate::tls::client_auth::DeviceVerifier;
use crate::tls::revocation::{RevocationSet, RevocationSources};
use crate::tls::tickets::TicketKeyRing;
use crate::tls::ServerCertificate;
use crate::tls::{describe_time, unix_now, TlsPolicy};

/// How often the watched files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// How far ahead a CRL's expiry is warned about.
const EXPIRY_WARNING: i64 = 3600;

/// How soon CRL URLs are fetched again after one failed (or the refresh interval, if
/// shorter): the devices a missing CRL covers are refused meanwhile.
const CRL_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15);

/// How many reloads have been asked for; each reload thread compares it with the last
/// count it acted on.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Asks for everything to be reloaded now (what SIGHUP does).
pub fn request() {
    REQUESTS.fetch_add(1, Ordering::AcqRel);
}

/// Ended once the ingress whose state a background thread keeps fresh is gone (replaced
/// by a configuration reload, and its last connection closed), so that the thread stops.
#[derive(Debug, Clone, Default)]
pub struct Lifetime(Arc<AtomicBool>);

impl Lifetime {
    /// Whether the owner is gone.
    pub fn is_over(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Tells the threads holding this that their owner is gone.
    pub fn end(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Whether a reload was asked for since `seen` was last updated.
pub fn requested_since(seen: &mut u64) -> bool {
    let now = REQUESTS.load(Ordering::Acquire);
    std::mem::replace(seen, now) != now
}

/// Starts the reload thread for an ingress's TLS state, until `lifetime` ends.
/// `keys`, when tokens are checked, is asked to fetch again on SIGHUP.
pub fn spawn(
    tls: &TlsPolicy,
    keys: Option<Arc<KeyStore>>,
    lifetime: Lifetime,
) -> std::io::Result<()> {
    let mut revocation = match (&tls.revocation, &tls.device) {
        (Some(sources), Some(device)) => Some(RevocationReloader::new(
            sources.clone(),
            device.clone(),
            tls,
        )),
        _ => None,
    };
    let mut tickets = tls.ticket_keys.clone().map(TicketReloader::new);
    let mut certificate = CertificateReloader::new(tls.server_certificate.clone());
    let tls_certificate = tls.server_certificate.clone();
    let mut seen = REQUESTS.load(Ordering::Acquire);
    thread::Builder::new()
        .name("edge-reload".into())
        .spawn(move || loop {
            if lifetime.is_over() {
                return;
            }
            let asked = requested_since(&mut seen);
            if asked {
                info!("reload requested");
                if let Some(keys) = &keys {
                    keys.request_fetch();
                }
            }
            certificate.tick(asked);
            tls_certificate.refresh_staple();
            if let Some(reloader) = revocation.as_mut() {
                reloader.tick(asked);
            }
            if let Some(reloader) = tickets.as_mut() {
                reloader.tick(asked);
            }
            thread::sleep(POLL);
        })?;
    Ok(())
}

struct RevocationReloader {
    sources: Arc<RevocationSources>,
    device: Arc<DeviceVerifier>,
    stamps: Vec<Option<SystemTime>>,
    next_fetch: Instant,
    in_force: RevocationSet,
    trusted_cas: Vec<CertificateDer<'static>>,
    warned: Vec<String>,
}

impl RevocationReloader {
    fn new(sources: Arc<RevocationSources>, device: Arc<DeviceVerifier>, tls: &TlsPolicy) -> Self {
        Self {
            stamps: sources.file_stamps(),
            sources,
            device,
            next_fetch: Instant::now(),
            in_force: tls.initial_crls.clone(),
            trusted_cas: tls.trusted_cas.clone(),
            warned: Vec::new(),
        }
    }

    fn tick(&mut self, asked: bool) {
        let stamps = self.sources.file_stamps();
        let files_changed = stamps != self.stamps;
        let fetch_due = !self.sources.urls.is_empty() && Instant::now() >= self.next_fetch;
        if asked || files_changed || fetch_due {
            self.stamps = stamps;
            let failures = self.sources.fetch_failures();
            if fetch_due || asked {
                self.next_fetch = Instant::now() + self.sources.refresh;
            }
            self.reload(fetch_due || asked);
            if self.sources.fetch_failures() > failures {
                let retry = Instant::now() + CRL_RETRY_AFTER_FAILURE;
                self.next_fetch = self.next_fetch.min(retry);
            }
        }
        self.warn_about_expiry();
    }

    /// Loads every source; a CRL whose signature fails, or any unreadable file, keeps
    /// the set in force; a CRL older than the one in force for its issuer is ignored.
    fn reload(&mut self, fetch: bool) {
        let mut issuers = self.trusted_cas.clone();
        issuers.extend(self.device.known_issuers());
        let loaded = self.sources.load(fetch, &issuers).and_then(|mut set| {
            set.check_signatures(&issuers)?;
            set.keep_newer_than(&self.in_force);
            let epoch = self.device.install_revocation(&set)?;
            Ok((set, epoch))
        });
        match loaded {
            Ok((set, epoch)) => {
                info!(
                    epoch,
                    crls = set.crls.len(),
                    "CRLs reloaded; a new revocation epoch is in force"
                );
                self.in_force = set;
                self.warned.clear();
            }
            Err(error) => warn!(%error, "CRL reload failed; the CRLs in force stay"),
        }
    }

    /// Warns once when a CRL in force is about to expire, and once when it has.
    fn warn_about_expiry(&mut self) {
        let now = unix_now();
        for crl in &self.in_force.summaries {
            let Some(next_update) = crl.next_update else {
                continue;
            };
            let state = if next_update < now {
                "expired"
            } else if next_update < now + EXPIRY_WARNING {
                "expiring"
            } else {
                continue;
            };
            let key = format!("{state} {}", crl.issuer);
            if self.warned.contains(&key) {
                continue;
            }
            let at = describe_time(Some(next_update));
            match state {
                "expired" => {
                    warn!(issuer = %crl.issuer, next_update = %at, "a CRL in force has expired; load a fresh one")
                }
                _ => {
                    warn!(issuer = %crl.issuer, next_update = %at, "a CRL in force expires within the hour")
                }
            }
            self.warned.push(key);
        }
    }
}

/// A file's identity and times, compared to tell when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

impl FileStamp {
    /// The stamp of `path`, or `None` when it cannot be read.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            inode: metadata.ino(),
            size: metadata.len(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// Tells when files watched by their stamps are due to be read again: when asked, or
/// once they have changed and then held still for a look, so that a file still being
/// written is not read.
struct Settle<T> {
    seen: T,
    settling: Option<T>,
}

impl<T: PartialEq + Clone> Settle<T> {
    fn new(seen: T) -> Self {
        Self {
            seen,
            settling: None,
        }
    }

    /// Whether to read now, given the stamps `now`; when it says yes, `now` is taken as
    /// read.
    fn due(&mut self, now: T, asked: bool) -> bool {
        if !asked {
            if now == self.seen {
                self.settling = None;
                return false;
            }
            if self.settling.as_ref() != Some(&now) {
                self.settling = Some(now);
                return false;
            }
        }
        self.settling = None;
        self.seen = now;
        true
    }
}

struct CertificateReloader {
    certificate: Arc<ServerCertificate>,
    stamps: Settle<[Option<FileStamp>; 2]>,
}

impl CertificateReloader {
    fn new(certificate: Arc<ServerCertificate>) -> Self {
        let stamps = Settle::new(certificate.file_stamps());
        Self {
            certificate,
            stamps,
        }
    }

    /// Reloads when asked, or when either file changed and then held still for a look.
    /// A certificate and key replaced one after the other fail to match in between; the
    /// pair in force stays until both are in place.
    fn tick(&mut self, asked: bool) {
        if !self.stamps.due(self.certificate.file_stamps(), asked) {
            return;
        }
        match self.certificate.reload() {
            Ok(()) => info!("server certificate reloaded; new handshakes present it"),
            Err(error) => {
                warn!(%error, "server certificate reload failed; the certificate in force stays")
            }
        }
    }
}

/// Rebuilds every ingress from the configuration file when it or a client CA bundle
/// changes (and held still for a look), or on SIGHUP after such a change or a failed
/// attempt. The new ingresses are built and checked in full first; a file with any
/// problem keeps the ingresses in force and logs every problem. Once swapped in, new
/// connections use the new ingresses, and connections of the old ones close after the
/// request in flight, as in a drain.
pub struct ConfigWatch {
    /// The configuration file.
    pub file: PathBuf,
    /// The files whose change means a rebuild.
    pub watched: Vec<PathBuf>,
    /// The settings in force that only a restart changes.
    pub restart_only: RestartOnly,
    /// Where the ingresses in force are published.
    pub shared: Arc<ArcSwap<IngressSet>>,
    /// The exposition, told of the new ingresses.
    pub metrics: Arc<Metrics>,
}

impl ConfigWatch {
    /// Starts the watching thread.
    pub fn spawn(self) -> std::io::Result<()> {
        thread::Builder::new()
            .name("edge-config".into())
            .spawn(move || self.run())?;
        Ok(())
    }

    fn stamps(&self) -> Vec<Option<FileStamp>> {
        self.watched
            .iter()
            .map(|file| FileStamp::of(file))
            .collect()
    }

    /// Digests of the watched files' contents: a file written again with the same bytes
    /// (as configuration tools do) is no change.
    fn digests(&self) -> Vec<Option<Vec<u8>>> {
        let digest = |bytes: Vec<u8>| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
            digest.as_ref().to_vec()
        };
        (self.watched.iter())
            .map(|file| std::fs::read(file).ok().map(digest))
            .collect()
    }

    fn run(mut self) {
        let mut seen = REQUESTS.load(Ordering::Acquire);
        let mut stamps = Settle::new(self.stamps());
        let mut built = self.digests();
        let mut failed = false;
        loop {
            thread::sleep(POLL);
            // SIGHUP rebuilds only after a change or a failed attempt: the parts that
            // change on their own (certificates, CRLs, keys) have their own reloaders, and
            // a rebuild starts the caches afresh (all but the good OCSP answers).
            let asked = requested_since(&mut seen);
            let now = self.stamps();
            let retry = asked && (failed || now != stamps.seen);
            if !stamps.due(now, retry) {
                continue;
            }
            let digests = self.digests();
            if digests == built && !(asked && failed) {
                continue;
            }
            built = digests;
            match self.rebuild() {
                Ok(()) => {
                    failed = false;
                    stamps = Settle::new(self.stamps());
                    built = self.digests();
                }
                Err(error) => {
                    failed = true;
                    warn!("configuration reload failed; the ingresses in force stay: {error}");
                }
            }
        }
    }

    fn rebuild(&mut self) -> Result<(), String> {
        let loaded = crate::config::load(&self.file).map_err(|error| error.to_string())?;
        let settings = Settings::build(&loaded).map_err(|error| error.to_string())?;
        for warning in &settings.warnings {
            warn!("{warning}");
        }
        let changed = self.restart_only.changed_in(&settings.restart_only);
        if !changed.is_empty() {
            warn!(
                sections = ?changed,
                "these settings change only at a restart; the values in force stay"
            );
        }
        let previous = self.shared.load();
        for ingress in settings.ingresses.all() {
            let same = (previous.all().iter()).find(|old| old.hostname == ingress.hostname);
            if let Some(old) = same {
                ingress.take_over(old);
            }
        }
        // Should a start fail, dropping the new set stops what had started.
        for ingress in settings.ingresses.all() {
            ingress.start().map_err(|error| error.to_string())?;
        }
        let ingresses = Arc::new(settings.ingresses);
        self.shared.store(ingresses.clone());
        self.metrics.set_ingresses(&ingresses);
        self.watched = settings.watched;
        let names: Vec<&str> = (ingresses.all().iter())
            .map(|ingress| ingress.hostname.as_str())
            .collect();
        info!(
            ingresses = ?names,
            "configuration reloaded; new connections use it, and open ones close after \
             their request in flight"
        );
        Ok(())
    }
}

struct TicketReloader {
    keys: Arc<TicketKeyRing>,
    stamp: Option<SystemTime>,
}

impl TicketReloader {
    fn new(keys: Arc<TicketKeyRing>) -> Self {
        let stamp = stamp_of(&keys);
        Self { keys, stamp }
    }

    fn tick(&mut self, asked: bool) {
        let stamp = stamp_of(&self.keys);
        let from_file = self.keys.file().is_some();
        if from_file && !asked && stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        match self.keys.refresh() {
            Ok(true) if from_file => info!("session ticket keys reloaded"),
            Ok(true) => info!("session ticket key rotated"),
            Ok(false) => {}
            Err(error) => warn!(%error, "ticket key reload failed; the keys in force stay"),
        }
    }
}

fn stamp_of(keys: &TicketKeyRing) -> Option<SystemTime> {
    let file = keys.file()?;
    std::fs::metadata(file)
        .and_then(|metadata| metadata.modified())
        .ok()
}
