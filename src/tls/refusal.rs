//! Why a handshake ended without a connection: one classification shared by the
//! logs, the metrics and the tests. The alert itself is chosen by rustls from the same
//! error (`CertificateError` → `AlertDescription`), so the label and the alert agree.

use rustls::{AlertDescription, CertificateError, Error};

/// The reason a TLS handshake was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeRefusal {
    /// `mtls` mode and the client sent no certificate (alert `certificate_required`).
    CertificateRequired,
    /// The chain does not lead to a trusted CA (alert `unknown_ca`).
    UnknownCa,
    /// A certificate of the chain is on a CRL (alert `certificate_revoked`).
    CertificateRevoked,
    /// A certificate of the chain is expired or not yet valid (alert `certificate_expired`).
    CertificateExpired,
    /// Revocation status required but not determinable: no CRL for the issuer, or an
    /// expired one (alert `unknown_ca`, as OpenSSL and BoringSSL send).
    RevocationUnknown,
    /// The certificate is malformed, has a bad signature, or is not for client auth.
    BadCertificate,
    /// `strict_sni` and the SNI was absent or named another host (alert `unrecognized_name`).
    UnrecognizedName,
    /// The handshake did not finish within `limits.handshake_timeout`.
    Timeout,
    /// The client closed the connection during the handshake.
    PeerClosed,
    /// Anything else the TLS layer refused: versions, ciphers, malformed messages.
    ProtocolError,
    /// The connection began with a PROXY protocol header, from an address not trusted to
    /// send one (closed without an alert).
    UntrustedProxyHeader,
}

impl HandshakeRefusal {
    /// Every reason, for metrics that list all of them from the start.
    pub const ALL: [Self; 11] = [
        Self::CertificateRequired,
        Self::UnknownCa,
        Self::CertificateRevoked,
        Self::CertificateExpired,
        Self::RevocationUnknown,
        Self::BadCertificate,
        Self::UnrecognizedName,
        Self::Timeout,
        Self::PeerClosed,
        Self::ProtocolError,
        Self::UntrustedProxyHeader,
    ];

    /// The metric label and log value.
    pub fn label(self) -> &'static str {
        match self {
            Self::CertificateRequired => "certificate_required",
            Self::UnknownCa => "unknown_ca",
            Self::CertificateRevoked => "certificate_revoked",
            Self::CertificateExpired => "certificate_expired",
            Self::RevocationUnknown => "revocation_unknown",
            Self::BadCertificate => "bad_certificate",
            Self::UnrecognizedName => "unrecognized_name",
            Self::Timeout => "handshake_timeout",
            Self::PeerClosed => "peer_closed",
            Self::ProtocolError => "protocol_error",
            Self::UntrustedProxyHeader => "untrusted_proxy_header",
        }
    }

    /// Position in [`Self::ALL`], for per-reason counters.
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or(0)
    }

    /// Classifies an error rustls reported for a server handshake.
    pub fn from_tls_error(error: &Error) -> Self {
        match error {
            Error::NoCertificatesPresented => Self::CertificateRequired,
            Error::InvalidCertificate(certificate) => Self::from_certificate_error(certificate),
            _ => Self::ProtocolError,
        }
    }

    /// Classifies a client certificate verification failure.
    pub fn from_certificate_error(error: &CertificateError) -> Self {
        if matches!(
            error,
            CertificateError::UnknownRevocationStatus
                | CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. }
        ) {
            return Self::RevocationUnknown;
        }
        match AlertDescription::from(error.clone()) {
            AlertDescription::UnknownCA => Self::UnknownCa,
            AlertDescription::CertificateRevoked => Self::CertificateRevoked,
            AlertDescription::CertificateExpired => Self::CertificateExpired,
            _ => Self::BadCertificate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexes_match_positions() {
        for (position, reason) in HandshakeRefusal::ALL.iter().enumerate() {
            assert_eq!(reason.index(), position);
            let same_label = HandshakeRefusal::ALL
                .iter()
                .filter(|other| other.label() == reason.label());
            assert_eq!(same_label.count(), 1);
        }
    }

    #[test]
    fn certificate_errors_map_to_the_alert_they_send() {
        let revoked = Error::InvalidCertificate(CertificateError::Revoked);
        assert_eq!(
            HandshakeRefusal::from_tls_error(&revoked),
            HandshakeRefusal::CertificateRevoked
        );
        let unknown = Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            HandshakeRefusal::from_tls_error(&unknown),
            HandshakeRefusal::UnknownCa
        );
        let status = CertificateError::UnknownRevocationStatus;
        assert_eq!(
            HandshakeRefusal::from_certificate_error(&status),
            HandshakeRefusal::RevocationUnknown
        );
    }
}
