//! The TLS side of an ingress: the rustls `ServerConfig` built from the server
//! certificate, the device verifier and the ticketer, plus the SNI rule applied before
//! it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use tracing::{error, info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use super::client_auth::{DeviceOcsp, DeviceVerifier};
use super::ocsp::staple::{self, Staple, StapleFailure};
use super::revocation::{RevocationSet, RevocationSources};
use super::tickets::{TicketKeyRing, TicketKeySource, Ticketer};
use super::trust::{self, describe_time, unix_now, TrustStore};
use super::{lock, pem};
use crate::config::{ClientAuthMode, IngressSource, Problems, TlsVersion};
use crate::fetch::Fetcher;
use crate::reload::FileStamp;

/// The ALPN protocol this gateway speaks.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Everything a worker needs to run a handshake for an ingress.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    /// The rustls configuration: certificate, versions, client verifier, ticketer.
    pub server_config: Arc<ServerConfig>,
    /// The server certificate in force, which a reload replaces.
    pub server_certificate: Arc<ServerCertificate>,
    /// The ingress hostname, lowercase, compared with SNI.
    pub hostname: String,
    /// Refuse a missing or different SNI.
    pub strict_sni: bool,
    /// Subjects of the trusted client CAs, for the startup log.
    pub client_ca_subjects: Vec<String>,
    /// The client-certificate verifier; `None` in `tls` mode.
    pub device: Option<Arc<DeviceVerifier>>,
    /// Where the CRLs come from, for reloads; `None` in `tls` mode.
    pub revocation: Option<Arc<RevocationSources>>,
    /// The CRLs loaded at startup, for the log.
    pub initial_crls: RevocationSet,
    /// The trusted client CAs, against which reloaded CRLs they issued are checked.
    pub trusted_cas: Vec<CertificateDer<'static>>,
    /// The ticketer; `None` when resumption is off.
    pub tickets: Option<Arc<Ticketer>>,
    /// Its keys.
    pub ticket_keys: Option<Arc<TicketKeyRing>>,
}

impl TlsPolicy {
    /// Writes the startup facts of this policy to the log.
    pub fn log_startup(&self) {
        info!(hostname = %self.hostname, strict_sni = self.strict_sni, "ingress");
        for subject in &self.client_ca_subjects {
            info!(subject = %subject, "trusted client CA");
        }
        info!(count = self.initial_crls.crls.len(), "CRLs loaded");
        if let Some(checker) = self.device.as_ref().and_then(|device| device.ocsp()) {
            info!(policy = ?checker.policy(), "client certificates checked by OCSP");
        }
        for crl in &self.initial_crls.summaries {
            info!(
                issuer = %crl.issuer,
                revoked = crl.revoked,
                next_update = %describe_time(crl.next_update),
                "CRL"
            );
        }
        match &self.ticket_keys {
            Some(keys) => match keys.file() {
                Some(file) => info!(file = %file.display(), "session tickets on, keys from a file"),
                None => info!("session tickets on, keys in memory"),
            },
            None => info!("session resumption off"),
        }
    }

    /// Reads every file the ingress's TLS settings name and builds the policy, recording
    /// each problem against its field.
    pub fn build(loaded: &IngressSource, problems: &mut Problems) -> Option<Self> {
        let ingress = &loaded.ingress;
        let provider = Arc::new(provider());

        let certificate = ServerCertificate::build(loaded, provider.clone(), problems);
        let trust = trust::client_roots(loaded, problems);
        let initial = trust::revocation_set(loaded, problems);
        if let Err(error) = initial.check_signatures(&trust.certificates) {
            problems.push("ingress.transport_security.crl_files", error);
        }
        let revocation = trust::revocation_sources(loaded, problems).map(Arc::new);
        trust::warn_about_missing_crls(loaded, &trust.subjects, &initial, problems);
        let device = device_verifier(loaded, &trust, &initial, &provider, problems)?;
        let (tickets, ticket_keys) = resumption(loaded, &trust, device.as_ref(), problems)?;
        let certificate = Arc::new(certificate?);

        let verifier: Arc<dyn ClientCertVerifier> = match &device {
            Some(device) => device.clone(),
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let versions = protocol_versions(ingress.server_tls.min_version);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|error| problems.push("ingress.server_tls.min_version", error.to_string()))
            .ok()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.ignore_client_order = true;
        // Resumption is stateless: tickets, never a session cache, so that any worker
        // (and any node sharing the key file) can resume any session.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        match &tickets {
            Some(ticketer) => config.ticketer = ticketer.clone(),
            None => config.send_tls13_tickets = 0,
        }

        Some(Self {
            server_config: Arc::new(config),
            server_certificate: certificate,
            hostname: ingress.hostname.to_ascii_lowercase(),
            strict_sni: ingress.strict_sni,
            client_ca_subjects: trust.subjects,
            device,
            revocation,
            initial_crls: initial,
            trusted_cas: trust.certificates,
            tickets,
            ticket_keys,
        })
    }
}

/// The device verifier, or `Some(None)` in `tls` mode; `None` when it cannot be built.
fn device_verifier(
    loaded: &IngressSource,
    trust: &TrustStore,
    revocation: &RevocationSet,
    provider: &Arc<CryptoProvider>,
    problems: &mut Problems,
) -> Option<Option<Arc<DeviceVerifier>>> {
    let policy = &loaded.ingress.transport_security;
    if policy.mode == ClientAuthMode::Tls {
        return Some(None);
    }
    let roots = trust.roots.clone();
    let ocsp = DeviceOcsp {
        checker: trust::ocsp_checker(loaded, trust, problems).map(Arc::new),
        trusted_cas: trust.certificates.clone(),
    };
    match DeviceVerifier::new(
        policy,
        roots,
        revocation,
        provider.clone(),
        policy.chain_cache_size,
        ocsp,
    ) {
        Ok(device) => Some(Some(device)),
        // Why there are no roots has been said already, field by field.
        Err(_) if trust.roots.is_empty() => None,
        Err(error) => {
            problems.push("ingress.transport_security", error);
            None
        }
    }
}

type Resumption = (Option<Arc<Ticketer>>, Option<Arc<TicketKeyRing>>);

/// The ticketer and its keys, or neither when resumption is off.
fn resumption(
    loaded: &IngressSource,
    trust: &TrustStore,
    device: Option<&Arc<DeviceVerifier>>,
    problems: &mut Problems,
) -> Option<Resumption> {
    let config = &loaded.ingress.session_resumption;
    if !config.enabled {
        return Some((None, None));
    }
    let source = match &config.ticket_key_file {
        Some(file) => TicketKeySource::File(loaded.resolve(file)),
        None => TicketKeySource::Memory {
            rotation: config.key_rotation,
        },
    };
    let keys = TicketKeyRing::new(source, config.ticket_lifetime)
        .map_err(|error| problems.push("ingress.session_resumption.ticket_key_file", error))
        .ok()?;
    let keys = Arc::new(keys);
    let policy = trust::policy_digest(loaded, trust);
    let ticketer = Ticketer::new(keys.clone(), policy, device.cloned());
    Some((Some(Arc::new(ticketer)), Some(keys)))
}

/// aws-lc-rs with AES-128-GCM suites first. Clients (OpenSSL, rustls) list AES-256
/// first, which ties the transcript and key schedule to SHA-384; CPUs hash SHA-256 in
/// hardware (SHA-NI) but SHA-384 in software, and that alone was a tenth of the CPU of a
/// full handshake. Every suite stays available; only the server's preference changes.
pub(super) fn provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
            _ => 2,
        });
    provider
}

/// The server's certificate and key, served whatever the SNI (the SNI rule runs before
/// rustls), and replaced whole by a reload once the new pair has been checked; with the
/// OCSP response stapled to it, when stapling is on and a current one is at hand.
#[derive(Debug)]
pub struct ServerCertificate {
    current: ArcSwap<CertifiedKey>,
    chain: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    stapling: Option<Stapling>,
}

/// The state of stapling.
#[derive(Debug)]
struct Stapling {
    responder: Option<String>,
    fetcher: Fetcher,
    staple: Mutex<Option<Staple>>,
    next_attempt: Mutex<Instant>,
    failures: AtomicU64,
}

/// How soon a failed fetch of the staple is tried again.
const STAPLE_RETRY: Duration = Duration::from_secs(10);

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServerCertificate {
    fn build(
        loaded: &IngressSource,
        provider: Arc<CryptoProvider>,
        problems: &mut Problems,
    ) -> Option<Self> {
        let tls = &loaded.ingress.server_tls;
        let (chain, key) = (
            loaded.resolve(&tls.cert_chain),
            loaded.resolve(&tls.private_key),
        );
        let stapling = tls.ocsp_stapling.then(|| Stapling {
            responder: tls.ocsp_responder.clone(),
            fetcher: staple::staple_fetcher(),
            staple: Mutex::new(None),
            next_attempt: Mutex::new(Instant::now()),
            failures: AtomicU64::new(0),
        });
        let certified = match load_pair(&chain, &key, &provider) {
            Ok(certified) => certified,
            Err(errors) => {
                for (field, error) in errors {
                    problems.push(&format!("ingress.server_tls.{field}"), error);
                }
                return None;
            }
        };
        if stapling.is_some() {
            let configured = tls.ocsp_responder.is_some();
            if let Err(missing) = staple::can_staple(&certified.cert, configured) {
                problems.push("ingress.server_tls.ocsp_stapling", missing);
                return None;
            }
        }
        Some(Self {
            current: ArcSwap::from_pointee(certified),
            chain,
            key,
            provider,
            stapling,
        })
    }

    /// Reads the certificate chain and key files again and, when they make a matching
    /// pair, puts them in force for new handshakes. On any problem the pair in force
    /// stays and the problem is returned.
    pub fn reload(&self) -> Result<(), String> {
        let certified = load_pair(&self.chain, &self.key, &self.provider).map_err(|errors| {
            let described: Vec<String> = errors
                .into_iter()
                .map(|(field, error)| format!("{field}: {error}"))
                .collect();
            described.join("; ")
        })?;
        self.current.store(Arc::new(certified));
        self.restaple(unix_now());
        Ok(())
    }

    /// Whether stapling is on, and whether a response is stapled now.
    pub fn stapling(&self) -> Option<bool> {
        self.stapling.as_ref()?;
        Some(self.current.load().ocsp.is_some())
    }

    /// How many fetches of the staple have failed.
    pub fn staple_failures(&self) -> u64 {
        (self.stapling.as_ref()).map_or(0, |s| s.failures.load(Ordering::Relaxed))
    }

    /// Fetches a new staple when the one held is halfway through its life (or missing,
    /// or for a certificate no longer served), and unstaples a lapsed one. Runs on the
    /// reload thread; the fetch waits for the responder.
    pub fn refresh_staple(&self) {
        let Some(stapling) = &self.stapling else {
            return;
        };
        let now = unix_now();
        let chain = self.current.load().cert.clone();
        let due = lock(&stapling.staple)
            .as_ref()
            .is_none_or(|staple| !staple.serves(&chain[0], now) || staple.is_due(now));
        if due && Instant::now() >= *lock(&stapling.next_attempt) {
            match staple::fetch(&chain, stapling.responder.as_deref(), &stapling.fetcher) {
                Ok(staple) => {
                    info!(good_until = %describe_time(Some(staple.good_until)), "OCSP response for the server certificate stapled");
                    *lock(&stapling.staple) = Some(staple);
                }
                Err(failure) => {
                    stapling.failures.fetch_add(1, Ordering::Relaxed);
                    *lock(&stapling.next_attempt) = Instant::now() + STAPLE_RETRY;
                    if let StapleFailure::NotGood(said) = &failure {
                        // Superseded: a good answer held is no longer the responder's word.
                        *lock(&stapling.staple) = None;
                        error!(%said, "the server certificate is not good at its OCSP responder: replace it");
                    } else {
                        let stapled = lock(&stapling.staple)
                            .as_ref()
                            .is_some_and(|s| s.serves(&chain[0], now));
                        warn!(error = %failure, stapled, "no fresh OCSP response for the server certificate");
                    }
                }
            }
        }
        self.restaple(now);
    }

    /// Puts the staple held on the certificate in force, or takes a lapsed one off.
    fn restaple(&self, now: i64) {
        let Some(stapling) = &self.stapling else {
            return;
        };
        let current = self.current.load_full();
        let staple = lock(&stapling.staple);
        let response = staple
            .as_ref()
            .filter(|staple| staple.serves(&current.cert[0], now))
            .map(|staple| staple.response.clone());
        if response == current.ocsp {
            return;
        }
        if response.is_none() {
            warn!("the server certificate's OCSP response is no longer current; none is stapled");
        }
        let mut stapled = CertifiedKey::new(current.cert.clone(), current.key.clone());
        stapled.ocsp = response;
        self.current.store(Arc::new(stapled));
    }

    /// What identifies the two files' contents without reading them (inode, size,
    /// modification and change times), to tell when one changes, even to a copy that
    /// kept the old modification time.
    pub fn file_stamps(&self) -> [Option<FileStamp>; 2] {
        [&self.chain, &self.key].map(|path| FileStamp::of(path))
    }

    /// The leaf certificate in force.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

/// The most certificates a server chain may hold; more make handshakes that many
/// clients refuse (too large a Certificate message).
const MAX_CHAIN: usize = 8;

/// The largest certificate or key file read.
const MAX_FILE: u64 = 256 * 1024;

/// A chain worth serving: a handful of certificates, each of which parses, the first
/// valid now.
fn check_chain(chain: &[CertificateDer<'_>]) -> Result<(), String> {
    if chain.len() > MAX_CHAIN {
        return Err(format!(
            "holds {} certificates; at most {MAX_CHAIN} are served",
            chain.len()
        ));
    }
    let mut parsed = Vec::with_capacity(chain.len());
    for (index, der) in chain.iter().enumerate() {
        match X509Certificate::from_der(der.as_ref()) {
            Ok((_, certificate)) => parsed.push(certificate),
            Err(error) => return Err(format!("certificate {} does not parse: {error}", index + 1)),
        }
    }
    let validity = parsed[0].validity();
    if !validity.is_valid_at(ASN1Time::now()) {
        return Err(format!(
            "the certificate is valid only from {} to {}",
            validity.not_before, validity.not_after
        ));
    }
    Ok(())
}

/// Refuses a file larger than any certificate chain or key should be, before reading it.
fn within_size(path: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() > MAX_FILE => Err(format!(
            "{}: {} bytes; a certificate chain or key file is at most {MAX_FILE}",
            path.display(),
            metadata.len()
        )),
        _ => Ok(()),
    }
}

/// Reads a certificate chain and its private key and checks that they belong
/// together; every problem is named by its config field.
fn load_pair(
    chain: &std::path::Path,
    key: &std::path::Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Vec<(&'static str, String)>> {
    let mut errors = Vec::new();
    let chain = within_size(chain)
        .and_then(|()| pem::certificates(chain))
        .map_err(|error| errors.push(("cert_chain", error)))
        .ok();
    let key = within_size(key)
        .and_then(|()| pem::private_key(key))
        .map_err(|error| errors.push(("private_key", error)))
        .ok()
        .and_then(|der| {
            provider
                .key_provider
                .load_private_key(der)
                .map_err(|error| {
                    errors.push(("private_key", format!("unsupported private key: {error}")))
                })
                .ok()
        });
    let (Some(chain), Some(key)) = (chain, key) else {
        return Err(errors);
    };
    check_chain(&chain).map_err(|error| vec![("cert_chain", error)])?;
    let certified = CertifiedKey::new(chain, key);
    if certified.keys_match().is_err() {
        let message = "is not the key of the first certificate in cert_chain".to_owned();
        return Err(vec![("private_key", message)]);
    }
    Ok(certified)
}

static TLS13_AND_TLS12: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn protocol_versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => &TLS13_AND_TLS12,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}
