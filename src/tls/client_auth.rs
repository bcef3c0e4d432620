//! Device authentication: the client certificate verifier built from the trust store
//! and the revocation set, wrapped so that every refusal is logged with its reason and
//! the certificate's SHA-256. Path building and signature checks are webpki's.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use tracing::debug;

use super::identity;
use super::refusal::HandshakeRefusal;
use super::revocation::RevocationSet;
use crate::config::{ClientAuthMode, ExpiredCrlPolicy, RevocationScope, TransportSecurityConfig};

/// Builds the verifier for `policy`: none for `tls` mode, otherwise webpki's, wrapped.
pub fn verifier(
    policy: &TransportSecurityConfig,
    roots: RootCertStore,
    revocation: &RevocationSet,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    if policy.mode == ClientAuthMode::Tls {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }

    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
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
    if policy.expired_crl == ExpiredCrlPolicy::Refuse {
        builder = builder.enforce_revocation_expiration();
    }

    let inner = builder.build().map_err(|error| error.to_string())?;
    Ok(Arc::new(DeviceVerifier { inner }))
}

/// webpki's verifier, with refusals logged at debug.
#[derive(Debug)]
struct DeviceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(error) = &verdict {
            debug!(
                reason = HandshakeRefusal::from_tls_error(error).label(),
                detail = %error,
                cert.sha256 = %identity::fingerprint(end_entity),
                cert.subject = %identity::subject_of(end_entity),
                "client certificate refused"
            );
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
