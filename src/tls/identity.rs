//! The device identity read from a verified client certificate: what logs, headers and
//! policies may say about the device. Never the certificate itself.

use std::fmt::Write as _;

use aws_lc_rs::digest;
use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Who the device is, according to the leaf certificate it proved it holds the key of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name as RFC 4514 writes it, the form OpenSSL's
    /// `XN_FLAG_RFC2253` prints (nginx's `$ssl_client_s_dn`): `CN=device-1,O=Example`.
    pub subject: String,
    /// The issuer's distinguished name, in the same form.
    pub issuer: String,
    /// The subject's most specific common name, unescaped, when it has one.
    pub common_name: Option<String>,
    /// Subject alternative names: `DNS:`, `URI:` (SPIFFE IDs among them), `IP:`, `email:`.
    pub sans: Vec<String>,
    /// The serial number, lowercase hex, without the sign byte DER puts before a value
    /// whose top bit is set (as OpenSSL prints it).
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
            subject: distinguished_name(cert.subject()),
            issuer: distinguished_name(cert.issuer()),
            common_name: (cert.subject().iter_common_name().last())
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            sans: subject_alt_names(&cert),
            serial: serial_hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: fingerprint(der),
            thumbprint: thumbprint(der),
        })
    }
}

/// SHA-256 of `der`, lowercase hex: how a certificate is named in logs.
pub fn fingerprint(der: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, der).as_ref())
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
        Ok((_, cert)) => distinguished_name(cert.subject()),
        Err(_) => "(unparsable certificate)".to_owned(),
    }
}

/// A distinguished name as RFC 4514 §2 writes it: the most specific RDN first, `,`
/// between RDNs and `+` inside one, short attribute names, and values escaped as
/// OpenSSL's `XN_FLAG_RFC2253` escapes them (RFC 4514's specials, and control and
/// non-ASCII bytes as `\XX`), so that backends comparing DN strings see what nginx and
/// Envoy would give them. An attribute without a known name is its dotted OID and its
/// DER as `#hex`.
pub fn distinguished_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            let parts: Vec<String> = rdn.iter().map(attribute).collect();
            parts.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    let Some(name) = attribute_name(&oid) else {
        let der = attr.attr_value().to_der_vec().unwrap_or_default();
        return format!("{oid}=#{}", hex(&der));
    };
    let value = match attr.attr_value().tag() {
        Tag::BmpString => {
            let units = attr.as_slice().chunks_exact(2);
            let code_units = units.map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(code_units)
                .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        _ => String::from_utf8_lossy(attr.as_slice()).into_owned(),
    };
    format!("{name}={}", escaped_value(&value))
}

/// OpenSSL's short names for the attribute types certificates carry.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// RFC 4514 §2.4 escaping, with control and non-ASCII bytes as `\XX`.
fn escaped_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (index, &byte) in bytes.iter().enumerate() {
        let edge_space = byte == b' ' && (index == 0 || index + 1 == bytes.len());
        match byte {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(byte as char);
            }
            b'#' if index == 0 => out.push_str("\\#"),
            b' ' if edge_space => out.push_str("\\ "),
            b' '..=b'~' => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
    out
}

/// A DER INTEGER's bytes as lowercase hex, less a leading zero byte that only marks the
/// value as positive.
fn serial_hex(raw: &[u8]) -> String {
    let magnitude = match raw {
        [0, next, ..] if *next >= 0x80 => &raw[1..],
        _ => raw,
    };
    hex(magnitude)
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
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
