//! The TLS side of an ingress: the rustls `ServerConfig` built from the server
//! certificate, the client CAs and the CRLs, plus the SNI rule applied before it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tracing::info;

use super::revocation::{CrlSummary, RevocationSet};
use super::{client_auth, identity, pem};
use crate::config::{
    ClientAuthMode, ExpiredCrlPolicy, LoadedConfig, Problems, RevocationScope, TlsVersion,
};

/// The ALPN protocol this gateway speaks.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Everything a worker needs to run a handshake for an ingress.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    /// The rustls configuration: certificate, versions, client verifier.
    pub server_config: Arc<ServerConfig>,
    /// The ingress hostname, lowercase, compared with SNI.
    pub hostname: String,
    /// Refuse a missing or different SNI.
    pub strict_sni: bool,
    /// Subjects of the trusted client CAs, for the startup log.
    pub client_ca_subjects: Vec<String>,
    /// The CRLs in force.
    pub revocation: RevocationSet,
}

impl TlsPolicy {
    /// Whether the SNI a client sent is acceptable under this policy.
    pub fn accepts_sni(&self, sni: Option<&str>) -> bool {
        match sni {
            Some(name) => !self.strict_sni || name.eq_ignore_ascii_case(&self.hostname),
            None => !self.strict_sni,
        }
    }

    /// Writes the startup facts of this policy to the log.
    pub fn log_startup(&self) {
        info!(hostname = %self.hostname, strict_sni = self.strict_sni, "ingress");
        for subject in &self.client_ca_subjects {
            info!(subject = %subject, "trusted client CA");
        }
        info!(count = self.revocation.crls.len(), "CRLs loaded");
        for crl in &self.revocation.summaries {
            info!(
                issuer = %crl.issuer,
                revoked = crl.revoked,
                next_update = %describe_time(crl.next_update),
                "CRL"
            );
        }
    }

    /// Reads every file the ingress's TLS settings name and builds the policy, recording
    /// each problem against its field.
    pub fn build(loaded: &LoadedConfig, problems: &mut Problems) -> Option<Self> {
        let ingress = &loaded.config.ingress;
        let provider = Arc::new(aws_lc_rs::default_provider());

        let key = server_key(loaded, &provider, problems);
        let (roots, client_ca_subjects) = client_roots(loaded, problems);
        let revocation = revocation_set(loaded, problems);
        let policy = &ingress.transport_security;
        warn_about_missing_crls(loaded, &client_ca_subjects, &revocation, problems);
        let no_roots = roots.is_empty() && policy.mode != ClientAuthMode::Tls;
        let verifier = match client_auth::verifier(policy, roots, &revocation, provider.clone()) {
            Ok(verifier) => Some(verifier),
            // Why there are no roots has been said already, field by field.
            Err(_) if no_roots => None,
            Err(error) => {
                problems.push("ingress.transport_security", error);
                None
            }
        };
        let (key, verifier) = (key?, verifier?);

        let versions = protocol_versions(ingress.server_tls.min_version);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|error| problems.push("ingress.server_tls.min_version", error.to_string()))
            .ok()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertificate(Arc::new(key))));
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        // TODO: resumption stays off until resumed sessions are re-checked against the
        // revocation set; every reconnect pays for a full handshake meanwhile.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;

        Some(Self {
            server_config: Arc::new(config),
            hostname: ingress.hostname.to_ascii_lowercase(),
            strict_sni: ingress.strict_sni,
            client_ca_subjects,
            revocation,
        })
    }
}

/// Serves the one certificate whatever the SNI; the SNI rule runs before rustls.
#[derive(Debug)]
struct SingleCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
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

fn server_key(
    loaded: &LoadedConfig,
    provider: &CryptoProvider,
    problems: &mut Problems,
) -> Option<CertifiedKey> {
    let tls = &loaded.config.ingress.server_tls;
    let chain = pem::certificates(&loaded.resolve(&tls.cert_chain))
        .map_err(|error| problems.push("ingress.server_tls.cert_chain", error))
        .ok();
    let key = pem::private_key(&loaded.resolve(&tls.private_key))
        .map_err(|error| problems.push("ingress.server_tls.private_key", error))
        .ok()
        .and_then(|der| {
            provider
                .key_provider
                .load_private_key(der)
                .map_err(|error| {
                    let message = format!("unsupported private key: {error}");
                    problems.push("ingress.server_tls.private_key", message)
                })
                .ok()
        });

    let certified = CertifiedKey::new(chain?, key?);
    if certified.keys_match().is_err() {
        let message = "is not the key of the first certificate in cert_chain";
        problems.push("ingress.server_tls.private_key", message);
        return None;
    }
    Some(certified)
}

fn client_roots(loaded: &LoadedConfig, problems: &mut Problems) -> (RootCertStore, Vec<String>) {
    let policy = &loaded.config.ingress.transport_security;
    let mut roots = RootCertStore::empty();
    let mut subjects = Vec::new();
    if policy.mode == ClientAuthMode::Tls {
        return (roots, subjects);
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
            subjects.push(identity::subject_of(&cert));
            if let Err(error) = roots.add(cert) {
                problems.push(
                    &field,
                    format!("{}: not a usable CA: {error}", file.display()),
                );
            }
        }
    }
    (roots, subjects)
}

fn revocation_set(loaded: &LoadedConfig, problems: &mut Problems) -> RevocationSet {
    let policy = &loaded.config.ingress.transport_security;
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
    if needs_crls && policy.crl_files.is_empty() {
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
fn warn_about_missing_crls(
    loaded: &LoadedConfig,
    ca_subjects: &[String],
    revocation: &RevocationSet,
    problems: &mut Problems,
) {
    let policy = &loaded.config.ingress.transport_security;
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
