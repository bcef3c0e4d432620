//! A throwaway PKI made with rcgen: CAs, server and client certificates, and CRLs. The
//! demo uses it, and so do the tests, so that no certificate is ever made by hand.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

/// The key algorithms certificates can be made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 with SHA-256.
    Rsa2048,
}

impl KeyKind {
    /// A fresh key pair of this kind.
    pub fn generate_pair(self) -> KeyPair {
        let result = match self {
            Self::EcdsaP256 => KeyPair::generate_for(algorithm(self)),
            Self::EcdsaP384 => KeyPair::generate_for(algorithm(self)),
            Self::Ed25519 => KeyPair::generate_for(algorithm(self)),
            Self::Rsa2048 => KeyPair::generate_rsa_for(algorithm(self), rcgen::RsaKeySize::_2048),
        };
        result.expect("key generation with aws-lc-rs")
    }
}

fn algorithm(kind: KeyKind) -> &'static SignatureAlgorithm {
    match kind {
        KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (extended key usage serverAuth).
    Server,
    /// A TLS client: a device (extended key usage clientAuth).
    Client,
    /// An OCSP responder a CA delegates its answers to (extended key usage OCSPSigning).
    OcspSigner,
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    common_name: String,
    usage: Usage,
    dns_names: Vec<String>,
    uris: Vec<String>,
    ips: Vec<IpAddr>,
    key: KeyKind,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ocsp_url: Option<String>,
}

impl CertRequest {
    /// A client certificate named `common_name`, valid from yesterday for 30 days, P-256.
    pub fn client(common_name: &str) -> Self {
        Self::new(common_name, Usage::Client)
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from
    /// yesterday for 30 days, P-256.
    pub fn server(names: &[&str]) -> Self {
        let mut request = Self::new(names.first().copied().unwrap_or("server"), Usage::Server);
        for name in names {
            match name.parse::<IpAddr>() {
                Ok(ip) => request.ips.push(ip),
                Err(_) => request.dns_names.push((*name).to_owned()),
            }
        }
        request
    }

    /// A delegated OCSP responder's certificate named `common_name`, valid from yesterday
    /// for 30 days, P-256.
    pub fn ocsp_responder(common_name: &str) -> Self {
        Self::new(common_name, Usage::OcspSigner)
    }

    fn new(common_name: &str, usage: Usage) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            usage,
            dns_names: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            key: KeyKind::EcdsaP256,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(30),
            ocsp_url: None,
        }
    }

    /// Uses another key algorithm.
    pub fn key(mut self, key: KeyKind) -> Self {
        self.key = key;
        self
    }

    /// Adds a URI subject alternative name (a SPIFFE ID, say).
    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    /// Names `url` as where to ask about this certificate's status: an Authority
    /// Information Access extension with one OCSP access description.
    pub fn ocsp_url(mut self, url: &str) -> Self {
        self.ocsp_url = Some(url.to_owned());
        self
    }

    /// Sets the validity period.
    pub fn valid(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&self.common_name);
        params.serial_number = Some(random_serial());
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match self.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::OcspSigner => ExtendedKeyUsagePurpose::OcspSigning,
        }];
        params.custom_extensions = self.ocsp_url.iter().map(|u| ocsp_access(u)).collect();
        let dns = self
            .dns_names
            .iter()
            .filter_map(|n| n.clone().try_into().ok())
            .map(SanType::DnsName);
        let uris = self
            .uris
            .iter()
            .filter_map(|u| u.clone().try_into().ok())
            .map(SanType::URI);
        let ips = self.ips.iter().copied().map(SanType::IpAddress);
        params.subject_alt_names = dns.chain(uris).chain(ips).collect();
        params
    }
}

/// A certificate and its key, with the chain a peer presents.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate alone, PEM.
    pub cert_pem: String,
    /// The certificate followed by the intermediates up to (not including) the root, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    serial: SerialNumber,
}

impl IssuedCert {
    /// The serial number as OpenSSL's CA index file writes it: uppercase hex, two digits
    /// a byte, without leading zero bytes.
    pub fn serial_hex(&self) -> String {
        let bytes = self.serial.as_ref();
        let significant = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let hex: String = bytes[significant..]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        if hex.is_empty() {
            "00".to_owned()
        } else {
            hex
        }
    }

    /// Its line in an OpenSSL CA index (what `openssl ocsp -index` answers from): valid,
    /// or revoked at `revoked_at`; expiry, serial and subject as OpenSSL writes them,
    /// separated by tabs.
    pub fn openssl_index_line(&self, revoked_at: Option<OffsetDateTime>) -> String {
        let (_, parsed) =
            X509Certificate::from_der(&self.der).expect("a certificate this PKI issued parses");
        let expiry = index_time(parsed.validity().not_after.to_datetime());
        let (flag, revoked_at) = match revoked_at {
            None => ("V", String::new()),
            Some(at) => ("R", index_time(at)),
        };
        let serial = self.serial_hex();
        let subject = index_subject(parsed.subject());
        format!("{flag}\t{expiry}\t{revoked_at}\t{serial}\tunknown\t{subject}")
    }
}

/// A name as OpenSSL's index writes it: `/O=srrrs dev PKI/CN=device-good`.
fn index_subject(name: &X509Name) -> String {
    let registry = x509_parser::objects::oid_registry();
    name.iter_attributes()
        .map(|attribute| {
            let short = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                .unwrap_or("UNDEF");
            format!("/{short}={}", attribute.as_str().unwrap_or_default())
        })
        .collect()
}

/// A time as OpenSSL's index writes it: UTCTime, `YYMMDDHHMMSSZ`.
fn index_time(moment: OffsetDateTime) -> String {
    let utc = moment.to_offset(time::UtcOffset::UTC);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        utc.year() % 100,
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    )
}

/// A certificate authority that can issue certificates and CRLs.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub der: CertificateDer<'static>,
    /// What a leaf it issues appends to its own certificate: this CA's certificate and
    /// its parents', without the root.
    intermediates_pem: String,
    /// The CA's private key, PKCS#8 PEM.
    key_pem: String,
}

impl Authority {
    /// A self-signed root CA, P-256.
    pub fn root(common_name: &str) -> Self {
        let key = KeyKind::EcdsaP256.generate_pair();
        let params = ca_params(common_name);
        let cert = params.self_signed(&key).expect("self-signed root");
        Self {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            intermediates_pem: String::new(),
        }
    }

    /// An intermediate CA issued by this one, P-256.
    pub fn intermediate(&self, common_name: &str) -> Self {
        let key = KeyKind::EcdsaP256.generate_pair();
        let params = ca_params(common_name);
        let cert = params.signed_by(&key, &self.issuer).expect("intermediate");
        let pem = cert.pem();
        Self {
            intermediates_pem: format!("{pem}{}", self.intermediates_pem),
            cert_pem: pem,
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// This CA's own certificate, as the CA above it issued it: for a responder or an
    /// index that answers about it.
    pub fn certificate(&self) -> IssuedCert {
        let (_, parsed) = X509Certificate::from_der(&self.der).expect("a CA this PKI made parses");
        IssuedCert {
            cert_pem: self.cert_pem.clone(),
            chain_pem: self.intermediates_pem.clone(),
            key_pem: self.key_pem.clone(),
            der: self.der.clone(),
            serial: SerialNumber::from_slice(parsed.raw_serial()),
        }
    }

    /// The CA's private key, PKCS#8 PEM: for tools that sign as the CA itself (an OCSP
    /// responder answering without a delegate, say).
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// Issues a certificate as `request` describes.
    pub fn issue(&self, request: &CertRequest) -> IssuedCert {
        let key = request.key.generate_pair();
        let params = request.params();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let cert_pem = cert.pem();
        IssuedCert {
            chain_pem: format!("{cert_pem}{}", self.intermediates_pem),
            cert_pem,
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: params.serial_number.clone().unwrap_or_else(random_serial),
        }
    }

    /// A CRL revoking `revoked`, issued an hour ago and valid for `valid_for` more.
    pub fn crl(&self, revoked: &[&IssuedCert], valid_for: Duration) -> String {
        let now = OffsetDateTime::now_utc();
        self.crl_between(revoked, now - Duration::hours(1), now + valid_for)
    }

    /// A CRL with explicit thisUpdate and nextUpdate: a past nextUpdate makes an expired one.
    pub fn crl_between(
        &self,
        revoked: &[&IssuedCert],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> String {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: random_serial(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: cert.serial.clone(),
                    revocation_time: this_update,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("CRL");
        crl.pem().expect("CRL PEM")
    }
}

/// What a CA certificate of this PKI is made from: `common_name` in the PKI's
/// organisation, a random serial, valid from a day ago for a year.
pub fn ca_params(common_name: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
    params.use_authority_key_identifier_extension = true;
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "srrrs dev PKI");
    name.push(DnType::CommonName, common_name);
    name
}

/// The Authority Information Access extension (RFC 5280, 4.2.2.1) naming `url` as the
/// certificate's OCSP responder; not critical.
fn ocsp_access(url: &str) -> CustomExtension {
    const AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
    // id-ad-ocsp, 1.3.6.1.5.5.7.48.1, as DER content octets.
    const ID_AD_OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let method = der(0x06, ID_AD_OCSP);
    // GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String.
    let location = der(0x86, url.as_bytes());
    let description = der(0x30, &[method, location].concat());
    let syntax = der(0x30, &description);
    CustomExtension::from_oid_content(AUTHORITY_INFO_ACCESS, syntax)
}

/// One DER element: `tag`, the definite length of `content`, then `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut element = vec![tag];
    let length = content.len();
    if length < 0x80 {
        element.push(length as u8);
    } else {
        let octets = length.to_be_bytes();
        let significant = octets.iter().position(|b| *b != 0).unwrap_or(octets.len());
        element.push(0x80 | (octets.len() - significant) as u8);
        element.extend_from_slice(&octets[significant..]);
    }
    element.extend_from_slice(content);
    element
}

/// A positive 16-byte serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    fn ocsp_urls(der: &[u8]) -> Vec<String> {
        let (_, cert) = X509Certificate::from_der(der).expect("certificate");
        let mut urls = Vec::new();
        for extension in cert.extensions() {
            let ParsedExtension::AuthorityInfoAccess(access) = extension.parsed_extension() else {
                continue;
            };
            assert!(!extension.critical);
            for description in access.iter() {
                assert_eq!(description.access_method, OID_PKIX_ACCESS_DESCRIPTOR_OCSP);
                if let GeneralName::URI(uri) = description.access_location {
                    urls.push(uri.to_owned());
                }
            }
        }
        urls
    }

    #[test]
    fn an_ocsp_url_becomes_the_certificates_authority_information_access() {
        let ca = Authority::root("ca");
        let url = "http://127.0.0.1:8080";
        let client = ca.issue(&CertRequest::client("device").ocsp_url(url));
        let server = ca.issue(&CertRequest::server(&["localhost"]).ocsp_url(url));
        assert_eq!(ocsp_urls(&client.der), [url]);
        assert_eq!(ocsp_urls(&server.der), [url]);
        assert!(ocsp_urls(&ca.issue(&CertRequest::client("plain")).der).is_empty());
    }

    #[test]
    fn an_ocsp_url_longer_than_127_bytes_is_encoded_with_a_long_form_length() {
        let url = format!("http://127.0.0.1/{}", "a".repeat(300));
        let cert = Authority::root("ca").issue(&CertRequest::client("device").ocsp_url(&url));
        assert_eq!(ocsp_urls(&cert.der), [url]);
        assert_eq!(der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn an_ocsp_responder_certificate_carries_the_ocsp_signing_purpose() {
        let cert = Authority::root("ca").issue(&CertRequest::ocsp_responder("responder"));
        let (_, parsed) = X509Certificate::from_der(&cert.der).expect("certificate");
        let usage = parsed
            .extended_key_usage()
            .expect("parses")
            .expect("present");
        assert!(usage.value.ocsp_signing);
        assert!(!usage.value.client_auth && !usage.value.server_auth);
    }

    #[test]
    fn a_serial_is_written_as_uppercase_hex_with_two_digits_a_byte() {
        let cert = Authority::root("ca").issue(&CertRequest::client("device"));
        let hex = cert.serial_hex();
        assert_eq!(hex.len(), 32);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        let (_, parsed) = X509Certificate::from_der(&cert.der).expect("certificate");
        assert_eq!(
            hex,
            parsed
                .raw_serial_as_string()
                .replace(':', "")
                .to_uppercase()
        );
    }

    #[test]
    fn an_authority_hands_out_the_key_its_certificate_holds() {
        let ca = Authority::root("ca");
        let key = KeyPair::from_pem(&ca.key_pem()).expect("PKCS#8 key");
        let (_, parsed) = X509Certificate::from_der(&ca.der).expect("certificate");
        assert_eq!(
            key.public_key_raw(),
            parsed.public_key().subject_public_key.data.as_ref()
        );
        let intermediate = ca.intermediate("intermediate");
        assert_ne!(intermediate.key_pem(), ca.key_pem());
    }
}
