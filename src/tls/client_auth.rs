//! Device authentication: the client-certificate verifier. Path building and signature
//! checks are webpki's; around them this keeps the verified-chain cache, swaps in new
//! CRLs as a new revocation epoch without rebuilding the TLS configuration, re-checks
//! chains for resumed and live sessions, asks OCSP about the leaf where the policy says
//! so, and logs every refusal with its reason and the certificate's SHA-256.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use tracing::{debug, info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::chain_cache::{ChainCache, ChainKey, VerifiedChain};
use super::handshake_notes;
use super::identity;
use super::ocsp::path::{self, Candidate};
use super::ocsp::{OcspChecker, Verdict};
use super::refusal::HandshakeRefusal;
use super::revocation::RevocationSet;
use super::trust::unix_now;
use crate::config::{
    ClientAuthMode, ExpiredCrlPolicy, OcspPolicy, RevocationScope, TransportSecurityConfig,
};

/// The most intermediates a client chain may carry.
const MAX_INTERMEDIATES: usize = 6;

/// The most bytes a client chain may take, leaf included.
const MAX_CHAIN_BYTES: usize = 16 * 1024;

/// The most intermediate CAs remembered for checking the signatures of reloaded CRLs.
const MAX_KNOWN_ISSUERS: usize = 64;

/// Epoch numbers, drawn from one counter for the whole process, so that the epoch in
/// force only ever grows, also across a configuration reload that builds new verifiers.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// One revocation epoch: the webpki verifier built with the CRLs then in force.
struct TrustEpoch {
    number: u64,
    webpki: Arc<dyn ClientCertVerifier>,
    /// When the earliest CRL expires, if expired CRLs refuse.
    crls_good_until: Option<i64>,
}

/// The client-certificate verifier of an ingress.
pub struct DeviceVerifier {
    policy: TransportSecurityConfig,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    root_hints: Vec<DistinguishedName>,
    current: ArcSwap<TrustEpoch>,
    cache: ChainCache,
    refusals_by_revocation: AtomicU64,
    /// Intermediate CAs proven (by signature) to have issued a verified chain, so that a
    /// reloaded CRL of theirs can have its signature checked before it is put in force.
    known_issuers: Mutex<Vec<CertificateDer<'static>>>,
    /// OCSP for the leaf, when the policy asks for it.
    ocsp: Option<Arc<OcspChecker>>,
    /// The trusted CA certificates: the issuer of a leaf that no intermediate issued.
    trusted_cas: Vec<CertificateDer<'static>>,
}

/// What a device needs besides its CRLs: OCSP, and the CA certificates it names.
#[derive(Debug, Default)]
pub struct DeviceOcsp {
    /// The checker; `None` when OCSP is off.
    pub checker: Option<Arc<OcspChecker>>,
    /// The trusted CA certificates.
    pub trusted_cas: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for DeviceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceVerifier")
            .field("mode", &self.policy.mode)
            .field("epoch", &self.epoch())
            .field("cached_chains", &self.cache.len())
            .finish()
    }
}

impl DeviceVerifier {
    /// A verifier for `policy` (not `tls` mode), trusting `roots`, with `revocation` in
    /// force and room for `cache_size` verified chains.
    pub fn new(
        policy: &TransportSecurityConfig,
        roots: RootCertStore,
        revocation: &RevocationSet,
        provider: Arc<CryptoProvider>,
        cache_size: usize,
        ocsp: DeviceOcsp,
    ) -> Result<Arc<Self>, String> {
        let roots = Arc::new(roots);
        let number = NEXT_EPOCH.fetch_add(1, Ordering::Relaxed);
        let first = build_epoch(policy, &roots, revocation, &provider, number)?;
        let root_hints = first.webpki.root_hint_subjects().to_vec();
        let verifier = Arc::new(Self {
            policy: policy.clone(),
            roots,
            provider,
            root_hints,
            current: ArcSwap::from_pointee(first),
            cache: ChainCache::new(cache_size),
            refusals_by_revocation: AtomicU64::new(0),
            known_issuers: Mutex::new(Vec::new()),
            ocsp: ocsp.checker,
            trusted_cas: ocsp.trusted_cas,
        });
        if verifier.ocsp.is_some() {
            let weak = Arc::downgrade(&verifier);
            std::thread::Builder::new()
                .name("srrrs-ocsp-refresh".into())
                .spawn(move || refresh_ocsp(weak))
                .map_err(|error| format!("cannot start the OCSP refresher: {error}"))?;
        }
        Ok(verifier)
    }

    /// The OCSP checker, when OCSP is on.
    pub fn ocsp(&self) -> Option<&Arc<OcspChecker>> {
        self.ocsp.as_ref()
    }

    /// Puts a new revocation epoch in force with the same CRLs: every cached verdict and
    /// every live connection is checked again (a certificate was found revoked by OCSP).
    pub fn renew_epoch(&self) -> u64 {
        let current = self.current.load();
        let number = NEXT_EPOCH.fetch_add(1, Ordering::Relaxed);
        self.current.store(Arc::new(TrustEpoch {
            number,
            webpki: current.webpki.clone(),
            crls_good_until: current.crls_good_until,
        }));
        number
    }

    /// Whether a certificate whose revocation status is unknown is refused.
    pub fn requires_known_revocation(&self) -> bool {
        self.policy.require_crl_check
    }

    /// Puts a new revocation set in force as a new epoch: every cached verdict must be
    /// earned again. Returns the new epoch.
    pub fn install_revocation(&self, revocation: &RevocationSet) -> Result<u64, String> {
        let number = NEXT_EPOCH.fetch_add(1, Ordering::Relaxed);
        let epoch = build_epoch(
            &self.policy,
            &self.roots,
            revocation,
            &self.provider,
            number,
        )?;
        self.current.store(Arc::new(epoch));
        Ok(number)
    }

    /// The revocation epoch in force.
    pub fn epoch(&self) -> u64 {
        self.current.load().number
    }

    /// The shared cache of verified chains.
    pub fn cache(&self) -> &ChainCache {
        &self.cache
    }

    /// How many chains were refused as revoked (full, resumed or live), so far.
    pub fn revocation_refusals(&self) -> u64 {
        self.refusals_by_revocation.load(Ordering::Relaxed)
    }

    /// Verifies a presented chain, from the cache when its verdict still holds.
    pub fn check(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Arc<VerifiedChain>, Error> {
        let bytes: usize = std::iter::once(leaf)
            .chain(intermediates)
            .map(|cert| cert.len())
            .sum();
        if intermediates.len() > MAX_INTERMEDIATES || bytes > MAX_CHAIN_BYTES {
            // Bounded so that a device cannot fill the chain cache (or a ticket) with
            // certificates no path uses.
            let error = Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
            self.note_refusal(&error, leaf);
            return Err(error);
        }
        let key = ChainKey::of(leaf.as_ref(), intermediates);
        let epoch = self.current.load();
        let seconds = now.as_secs() as i64;
        if let Some(chain) = self.cache.fresh(&key, epoch.number, seconds) {
            return Ok(chain);
        }
        match epoch.webpki.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => {
                let ocsp_until =
                    self.ocsp_status(leaf, intermediates, seconds)
                        .inspect_err(|error| {
                            self.note_refusal(error, leaf);
                        })?;
                let good_until = match (epoch.crls_good_until, ocsp_until) {
                    (Some(crls), Some(ocsp)) => Some(crls.min(ocsp)),
                    (crls, ocsp) => crls.or(ocsp),
                };
                let chain = VerifiedChain::new(leaf, intermediates, epoch.number, good_until)
                    .ok_or(Error::InvalidCertificate(
                        rustls::CertificateError::BadEncoding,
                    ))?;
                let chain = Arc::new(chain);
                self.cache.insert(chain.clone(), seconds);
                self.learn_issuers(leaf, intermediates);
                Ok(chain)
            }
            Err(error) => {
                self.note_refusal(&error, leaf);
                Err(error)
            }
        }
    }

    /// What OCSP says of a chain that verified: until when the verdict holds, or the
    /// refusal. The leaf is checked, and under the `chain` scope each intermediate up to
    /// the trusted CA, each with the certificate that signed it.
    fn ocsp_status(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: i64,
    ) -> Result<Option<i64>, Error> {
        let Some(checker) = &self.ocsp else {
            return Ok(None);
        };
        let bad = Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| bad.clone())?;
        // The trusted CAs first: a device may send one of them among its intermediates.
        let trusted = self.trusted_cas.iter().map(|der| (der, true));
        let sent = intermediates.iter().map(|der| (der, false));
        let candidates: Vec<Candidate<'_>> = (trusted.chain(sent))
            .filter_map(|(der, trusted)| {
                let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
                Some(Candidate { cert, trusted })
            })
            .collect();
        let Some(links) = path::links(&cert, &candidates, checker.scope()) else {
            // webpki found a path; not finding one again is a chain to refuse, never one
            // to admit unasked.
            debug!(cert.sha256 = %identity::fingerprint(leaf), "OCSP: no path of signed certificates to a trusted CA");
            return Err(Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        match checker.status(&links, now) {
            Verdict::Good { until } => Ok(Some(until)),
            Verdict::Revoked => Err(Error::InvalidCertificate(rustls::CertificateError::Revoked)),
            Verdict::NoAnswer(reason) if checker.policy() == OcspPolicy::HardFail => {
                debug!(%reason, cert.sha256 = %identity::fingerprint(leaf), "OCSP: no valid answer; refused under hard-fail");
                Err(Error::InvalidCertificate(
                    rustls::CertificateError::UnknownRevocationStatus,
                ))
            }
            Verdict::NoAnswer(reason) => {
                checker.note_soft_admission();
                warn!(%reason, cert.sha256 = %identity::fingerprint(leaf), cert.subject = %identity::subject_of(leaf), "OCSP: no valid answer; admitted under soft-fail");
                Ok(Some(now + checker.retry_interval().as_secs().max(1) as i64))
            }
        }
    }

    /// The intermediate CAs seen issuing verified chains.
    pub fn known_issuers(&self) -> Vec<CertificateDer<'static>> {
        self.known_issuers
            .lock()
            .map(|known| known.clone())
            .unwrap_or_default()
    }

    /// Remembers the intermediates of a verified chain, walking up from the leaf and
    /// keeping each one whose key signed the certificate below it: a device cannot make
    /// the gateway remember a certificate that no path of its chain used.
    fn learn_issuers(&self, leaf: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let mut child = leaf.as_ref();
        for _ in 0..intermediates.len() {
            let Ok((_, below)) = X509Certificate::from_der(child) else {
                return;
            };
            let issuer = intermediates.iter().find_map(|candidate| {
                let (_, parsed) = X509Certificate::from_der(candidate.as_ref()).ok()?;
                (parsed.subject().as_raw() == below.issuer().as_raw())
                    .then_some((candidate, parsed))
            });
            let Some((issuer, parsed)) = issuer else {
                return;
            };
            let Ok(mut known) = self.known_issuers.lock() else {
                return;
            };
            if !known.iter().any(|k| k.as_ref() == issuer.as_ref()) {
                if known.len() >= MAX_KNOWN_ISSUERS
                    || below.verify_signature(Some(parsed.public_key())).is_err()
                {
                    return;
                }
                known.push(issuer.clone().into_owned());
            }
            child = issuer.as_ref();
        }
    }

    /// Re-checks a chain verified earlier (a resumed session's, a live connection's)
    /// against the revocation set and the time now.
    pub fn recheck(&self, chain: &VerifiedChain) -> Result<Arc<VerifiedChain>, Error> {
        self.check(chain.leaf(), chain.intermediates(), UnixTime::now())
    }

    fn note_refusal(&self, error: &Error, leaf: &CertificateDer<'_>) {
        let reason = HandshakeRefusal::from_tls_error(error);
        if reason == HandshakeRefusal::CertificateRevoked {
            self.refusals_by_revocation.fetch_add(1, Ordering::Relaxed);
        }
        debug!(
            reason = reason.label(),
            detail = %error,
            cert.sha256 = %identity::fingerprint(leaf),
            cert.subject = %identity::subject_of(leaf),
            "client certificate refused"
        );
    }
}

/// Keeps the OCSP answers in use fresh for as long as the verifier lives; a certificate
/// found revoked on the way puts a new epoch in force, which closes its live connections
/// and keeps its tickets from resuming.
fn refresh_ocsp(verifier: Weak<DeviceVerifier>) {
    loop {
        let Some(strong) = verifier.upgrade() else {
            return;
        };
        let Some(checker) = strong.ocsp.clone() else {
            return;
        };
        if checker.refresh(unix_now()) {
            let epoch = strong.renew_epoch();
            info!(
                epoch,
                "OCSP found a certificate revoked; a new revocation epoch is in force"
            );
        }
        // The verifier is not held while asleep, so that its thread ends with it.
        drop(strong);
        checker.pause(Duration::from_secs(1));
    }
}

fn build_epoch(
    policy: &TransportSecurityConfig,
    roots: &Arc<RootCertStore>,
    revocation: &RevocationSet,
    provider: &Arc<CryptoProvider>,
    number: u64,
) -> Result<TrustEpoch, String> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(revocation.crls.iter().cloned());
    if policy.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    if !policy.require_crl_check {
        builder = builder.allow_unknown_revocation_status();
    }
    if policy.revocation_scope == RevocationScope::Leaf {
        builder = builder.only_check_end_entity_revocation();
    }
    let crls_good_until = if policy.expired_crl == ExpiredCrlPolicy::Refuse {
        builder = builder.enforce_revocation_expiration();
        revocation
            .summaries
            .iter()
            .filter_map(|crl| crl.next_update)
            .min()
    } else {
        None
    };
    let webpki = builder.build().map_err(|error| error.to_string())?;
    Ok(TrustEpoch {
        number,
        webpki,
        crls_good_until,
    })
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.policy.mode == ClientAuthMode::Mtls
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let chain = self.check(end_entity, intermediates, now)?;
        handshake_notes::note_verified(&chain);
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current
            .load()
            .webpki
            .verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current
            .load()
            .webpki
            .verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().webpki.supported_verify_schemes()
    }
}
