//! The device trust policy as read from the configuration: the client CAs, the CRLs
//! named by file or URL, the warnings an operator needs about them, and the digest that
//! binds a session ticket to this policy.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ocsp::OcspChecker;
use super::revocation::{CrlSummary, RevocationSet, RevocationSources, MAX_CRL_DOCUMENT};
use super::{identity, pem};
use crate::config::{ClientAuthMode, ExpiredCrlPolicy, IngressSource, Problems, RevocationScope};
use crate::fetch::Fetcher;

/// The trusted client CAs.
#[derive(Debug, Clone)]
pub struct TrustStore {
    /// For webpki.
    pub roots: RootCertStore,
    /// Their subjects, for logs and warnings.
    pub subjects: Vec<String>,
    /// Their certificates, for the policy digest.
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Where the ingress's CRLs come from, for reloads; `None` in `tls` mode.
pub fn revocation_sources(
    loaded: &IngressSource,
    problems: &mut Problems,
) -> Option<RevocationSources> {
    let policy = &loaded.ingress.transport_security;
    if policy.mode == ClientAuthMode::Tls {
        return None;
    }
    for (index, url) in policy.crl_urls.iter().enumerate() {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            problems.push(
                &format!("ingress.transport_security.crl_urls[{index}]"),
                "must be an http(s):// URL",
            );
        }
    }
    let files: Vec<PathBuf> = policy
        .crl_files
        .iter()
        .map(|file| loaded.resolve(file))
        .collect();
    let fetcher = Fetcher {
        roots: Vec::new(),
        timeout: std::time::Duration::from_secs(10),
        max_body: MAX_CRL_DOCUMENT,
        https_only: false,
    };
    Some(RevocationSources::new(
        files,
        policy.crl_urls.clone(),
        fetcher,
        policy.crl_refresh_interval,
    ))
}

/// The OCSP checker of the ingress, when its policy asks for OCSP; each responder
/// override is keyed by the key of the CA certificate(s) in its `issuer` file. Under the
/// `chain` scope, a trusted CA without an override is worth a warning: the
/// intermediates it issued have an answer only if they name a responder themselves.
pub fn ocsp_checker(
    loaded: &IngressSource,
    trust: &TrustStore,
    problems: &mut Problems,
) -> Option<OcspChecker> {
    let policy = &loaded.ingress.transport_security;
    let config = policy.ocsp.as_ref()?;
    if policy.mode == ClientAuthMode::Tls {
        return None;
    }
    let mut overrides = Vec::new();
    for (index, responder) in config.responders.iter().enumerate() {
        let field = format!("ingress.transport_security.ocsp.responders[{index}].issuer");
        let certs = match pem::certificates(&loaded.resolve(&responder.issuer)) {
            Ok(certs) => certs,
            Err(error) => {
                problems.push(&field, error);
                continue;
            }
        };
        for cert in certs {
            match X509Certificate::from_der(cert.as_ref()) {
                Ok((_, parsed)) if !parsed.is_ca() => problems.push(
                    &field,
                    format!(
                        "{} is not a CA certificate: name the CA that issues the \
                         certificates this responder answers for",
                        parsed.subject()
                    ),
                ),
                Ok((_, parsed)) => {
                    overrides.push((parsed.public_key().raw.to_vec(), responder.url.clone()))
                }
                Err(error) => {
                    problems.push(&field, format!("a certificate does not parse: {error}"))
                }
            }
        }
    }
    if config.scope == RevocationScope::Chain {
        for cert in &trust.certificates {
            let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
                continue;
            };
            let (key, subject) = (parsed.public_key().raw, parsed.subject());
            if !overrides.iter().any(|(issuer, _)| issuer == key) {
                problems.warn(
                    "ingress.transport_security.ocsp.responders",
                    format!(
                        "no responder for the trusted CA {subject}: under scope: chain, \
                         the intermediates it issued are checked only if their AIA names \
                         an OCSP responder (else they have no answer)"
                    ),
                );
            }
        }
    }
    Some(OcspChecker::new(config, overrides))
}

/// A digest of everything that decides who gets in through this ingress: a ticket
/// issued under one policy never resumes under another.
pub fn policy_digest(loaded: &IngressSource, trust: &TrustStore) -> [u8; 32] {
    let ingress = &loaded.ingress;
    let policy = &ingress.transport_security;
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let facts = format!(
        "{}|{:?}|{}|{:?}|{:?}|{:?}",
        ingress.hostname.to_ascii_lowercase(),
        policy.mode,
        policy.require_crl_check,
        policy.revocation_scope,
        policy.expired_crl,
        policy.ocsp.as_ref().map(|ocsp| ocsp.policy),
    );
    context.update(facts.as_bytes());
    for cert in &trust.certificates {
        context.update(&(cert.len() as u32).to_be_bytes());
        context.update(cert.as_ref());
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// Reads the client CAs, recording each problem against its field.
pub fn client_roots(loaded: &IngressSource, problems: &mut Problems) -> TrustStore {
    let policy = &loaded.ingress.transport_security;
    let mut trust = TrustStore {
        roots: RootCertStore::empty(),
        subjects: Vec::new(),
        certificates: Vec::new(),
    };
    if policy.mode == ClientAuthMode::Tls {
        return trust;
    }

    let files = policy.client_ca_cert.as_slice();
    if files.is_empty() {
        let message = format!("required when mode is {:?}", policy.mode).to_lowercase();
        problems.push("ingress.transport_security.client_ca_cert", message);
    }
    for (index, file) in files.iter().enumerate() {
        let field = list_field(
            "ingress.transport_security.client_ca_cert",
            index,
            files.len(),
        );
        let certs = match pem::certificates(&loaded.resolve(file)) {
            Ok(certs) => certs,
            Err(error) => {
                problems.push(&field, error);
                continue;
            }
        };
        for cert in certs {
            trust.subjects.push(identity::subject_of(&cert));
            trust.certificates.push(cert.clone());
            if let Err(error) = trust.roots.add(cert) {
                problems.push(
                    &field,
                    format!("{}: not a usable CA: {error}", file.display()),
                );
            }
        }
    }
    trust
}

/// Loads the CRL files named in the config (URLs are fetched by the reloader), recording
/// each problem against its field.
pub fn revocation_set(loaded: &IngressSource, problems: &mut Problems) -> RevocationSet {
    let policy = &loaded.ingress.transport_security;
    let mut set = RevocationSet::default();
    for (index, file) in policy.crl_files.iter().enumerate() {
        let field = format!("ingress.transport_security.crl_files[{index}]");
        let before = set.summaries.len();
        if let Err(error) = set.load_file(&loaded.resolve(file)) {
            problems.push(&field, error);
        }
        for crl in &set.summaries[before..] {
            warn_if_expired(crl, policy.expired_crl, &field, problems);
        }
    }

    let needs_crls = policy.mode != ClientAuthMode::Tls && policy.require_crl_check;
    if needs_crls && policy.crl_files.is_empty() && policy.crl_urls.is_empty() {
        problems.push(
            "ingress.transport_security.crl_files",
            "require_crl_check is true but no CRL is configured: every client certificate \
             would be refused",
        );
    }
    set
}

fn warn_if_expired(
    crl: &CrlSummary,
    policy: ExpiredCrlPolicy,
    field: &str,
    problems: &mut Problems,
) {
    if !crl.is_expired_at(unix_now()) {
        return;
    }
    let next_update = describe_time(crl.next_update);
    let message = match policy {
        ExpiredCrlPolicy::Refuse => format!(
            "the CRL of {} expired at {next_update}: the certificates it covers are refused \
             until a fresh one is loaded",
            crl.issuer
        ),
        ExpiredCrlPolicy::UseStale => format!(
            "the CRL of {} expired at {next_update} and is still applied (expired_crl: use_stale)",
            crl.issuer
        ),
    };
    problems.warn(field, message);
}

/// With CRLs required for the whole chain, every trusted CA needs a CRL of its own: it
/// issued either the leaf or the top intermediate, whose status is checked.
pub fn warn_about_missing_crls(
    loaded: &IngressSource,
    ca_subjects: &[String],
    revocation: &RevocationSet,
    problems: &mut Problems,
) {
    let policy = &loaded.ingress.transport_security;
    let chain_checked = policy.revocation_scope == RevocationScope::Chain;
    if policy.mode == ClientAuthMode::Tls || !policy.require_crl_check || !chain_checked {
        return;
    }
    for subject in ca_subjects {
        if !revocation
            .summaries
            .iter()
            .any(|crl| &crl.issuer == subject)
        {
            problems.warn(
                "ingress.transport_security.crl_files",
                format!(
                    "no CRL from the trusted CA {subject}: with require_crl_check and \
                     revocation_scope chain, every chain through it is refused"
                ),
            );
        }
    }
}

/// The field path of item `index` of a field that takes one value or a list.
fn list_field(field: &str, index: usize, count: usize) -> String {
    if count == 1 {
        field.to_owned()
    } else {
        format!("{field}[{index}]")
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// An RFC 3339 rendering of a Unix time, or `none`.
pub fn describe_time(unix: Option<i64>) -> String {
    let Some(seconds) = unix.and_then(|s| u64::try_from(s).ok()) else {
        return "none".to_owned();
    };
    let time = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}
