//! Reloading what changes while the gateway runs: the server certificate and key (when
//! either file changes, and on SIGHUP), CRLs (files when they change, URLs on their
//! interval, everything on SIGHUP) and session ticket keys (the key file when it
//! changes, or the in-memory key when its rotation is due). A local JWKS file is watched
//! by its own fetcher thread; SIGHUP asks it to read the file (or fetch the URL) again. New state goes into force
//! for new handshakes at once and for live connections at the workers' next sweep; a
//! source that fails to load keeps what is in force and says why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::auth::key_store::KeyStore;
use crate::tls::client_auth::DeviceVerifier;
use crate::tls::revocation::{RevocationSet, RevocationSources};
use crate::tls::tickets::TicketKeyRing;
use crate::tls::ServerCertificate;
use crate::tls::{describe_time, unix_now, TlsPolicy};

/// How often the watched files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// How far ahead a CRL's expiry is warned about.
const EXPIRY_WARNING: i64 = 3600;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks for everything to be reloaded now (what SIGHUP does).
pub fn request() {
    REQUESTED.store(true, Ordering::Release);
}

/// Starts the reload thread for an ingress's TLS state.
/// `keys`, when tokens are checked, is asked to fetch again on SIGHUP.
pub fn spawn(tls: &TlsPolicy, keys: Option<Arc<KeyStore>>) -> std::io::Result<()> {
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
    thread::Builder::new()
        .name("edge-reload".into())
        .spawn(move || loop {
            let asked = REQUESTED.swap(false, Ordering::AcqRel);
            if asked {
                info!("reload requested");
                if let Some(keys) = &keys {
                    keys.request_fetch();
                }
            }
            certificate.tick(asked);
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
            if fetch_due || asked {
                self.next_fetch = Instant::now() + self.sources.refresh;
            }
            self.reload(fetch_due || asked);
        }
        self.warn_about_expiry();
    }

    /// Loads every source; a CRL whose signature fails, or any unreadable file, keeps
    /// the set in force; a CRL older than the one in force for its issuer is ignored.
    fn reload(&mut self, fetch: bool) {
        let loaded = self.sources.load(fetch).and_then(|mut set| {
            let mut issuers = self.trusted_cas.clone();
            issuers.extend(self.device.known_issuers());
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

struct CertificateReloader {
    certificate: Arc<ServerCertificate>,
    stamps: [Option<FileStamp>; 2],
    /// Stamps seen changed at the last look; the files are read once they hold still
    /// for a look, so that a file still being written is not served.
    settling: Option<[Option<FileStamp>; 2]>,
}

impl CertificateReloader {
    fn new(certificate: Arc<ServerCertificate>) -> Self {
        let stamps = certificate.file_stamps();
        Self {
            certificate,
            stamps,
            settling: None,
        }
    }

    /// Reloads when asked, or when either file changed and then held still for a look.
    /// A certificate and key replaced one after the other fail to match in between; the
    /// pair in force stays until both are in place.
    fn tick(&mut self, asked: bool) {
        let stamps = self.certificate.file_stamps();
        if !asked {
            if stamps == self.stamps {
                self.settling = None;
                return;
            }
            if self.settling != Some(stamps) {
                self.settling = Some(stamps);
                return;
            }
        }
        self.settling = None;
        self.stamps = stamps;
        match self.certificate.reload() {
            Ok(()) => info!("server certificate reloaded; new handshakes present it"),
            Err(error) => {
                warn!(%error, "server certificate reload failed; the certificate in force stays")
            }
        }
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
