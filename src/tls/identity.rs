//! The device identity read from a verified client certificate: what logs, headers and
//! policies may say about the device. Never the certificate itself.

use std::fmt::Write as _;

use aws_lc_rs::digest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who the device is, according to the leaf certificate it proved it holds the key of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name, RFC 4514 style (`CN=device-1,O=Example`).
    pub subject: String,
    /// Subject alternative names: `DNS:`, `URI:` (SPIFFE IDs among them), `IP:`, `email:`.
    pub sans: Vec<String>,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The end of the validity period, in seconds since the Unix epoch.
    pub not_after: i64,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// The same digest, base64url without padding: the RFC 8705 `x5t#S256` thumbprint.
    pub thumbprint: String,
}

impl ClientIdentity {
    /// Reads the identity out of a leaf certificate's DER. `None` when it does not parse,
    /// which cannot happen for a certificate the verifier accepted.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(Self {
            subject: cert.subject().to_string(),
            sans: subject_alt_names(&cert),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: fingerprint(der),
            thumbprint: thumbprint(der),
        })
    }
}

/// SHA-256 of `der`, lowercase hex: how a certificate is named in logs.
pub fn fingerprint(der: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, der);
    hash.as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// SHA-256 of `der`, base64url without padding (RFC 8705 §3.1).
pub fn thumbprint(der: &[u8]) -> String {
    use base64::Engine as _;
    let hash = digest::digest(&digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.as_ref())
}

/// The subject distinguished name of a certificate, or a placeholder when it does not parse.
pub fn subject_of(der: &[u8]) -> String {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => cert.subject().to_string(),
        Err(_) => "(unparsable certificate)".to_owned(),
    }
}

fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(extension)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .filter_map(describe_name)
        .collect()
}

fn describe_name(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
        GeneralName::URI(uri) => Some(format!("URI:{uri}")),
        GeneralName::RFC822Name(mail) => Some(format!("email:{mail}")),
        GeneralName::IPAddress(bytes) => ip_address(bytes).map(|ip| format!("IP:{ip}")),
        _ => None,
    }
}

fn ip_address(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}
