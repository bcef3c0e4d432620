//! The device certificate described in the header formats existing backends already
//! read: Envoy's `X-Forwarded-Client-Cert` and the `X-SSL-Client-*` fields nginx
//! configurations commonly set from `$ssl_client_*` variables. The gateway's own
//! format (`identity_headers`) is written by the proxy.

use aws_lc_rs::digest;
use base64::Engine as _;

use crate::tls::chain_cache::VerifiedChain;
use crate::tls::identity::hex;

/// Every field name either format writes: removed from what clients send, whichever
/// format a backend reads.
pub const FIELD_NAMES: [&str; 7] = [
    "x-forwarded-client-cert",
    "x-ssl-client-verify",
    "x-ssl-client-s-dn",
    "x-ssl-client-i-dn",
    "x-ssl-client-serial",
    "x-ssl-client-fingerprint",
    "x-ssl-client-cert",
];

/// Header fields to add to a forwarded request: those whose values still go through
/// the header value guard, and those the gateway encoded itself (visible ASCII).
#[derive(Debug, Default)]
pub struct Fields<'a> {
    /// Values from elsewhere (a subject, a claim), made safe when written.
    pub text: Vec<(&'a str, String)>,
    /// Values the gateway encoded, written as they are.
    pub encoded: Vec<(&'static str, String)>,
}

/// `X-Forwarded-Client-Cert` as Envoy writes it for a verified client certificate:
/// `Hash` (SHA-256 of the DER, hex), `Cert` and `Chain` (URL-encoded PEM), `Subject`
/// (the RFC 4514 string between double quotes, byte for byte as Envoy writes it: its
/// own escapes, `\"` among them, keep the quotes unambiguous, and escaping it again
/// would let a reader that takes the quoted text as it is split a `\,` in a name into
/// two attributes), then one `URI` and one `DNS` pair per such SAN. The value is written
/// as is: every part is visible ASCII.
pub fn xfcc(chain: &VerifiedChain) -> String {
    let identity = &chain.identity;
    let leaf = chain
        .certificates
        .first()
        .map_or(&[][..], |cert| cert.as_ref());
    let mut pem_chain = String::new();
    for cert in &chain.certificates {
        pem_chain.push_str(&pem(cert.as_ref()));
    }
    let mut value = format!(
        "Hash={};Cert=\"{}\";Chain=\"{}\";Subject=\"{}\"",
        identity.fingerprint,
        url_encode(&pem(leaf)),
        url_encode(&pem_chain),
        identity.subject
    );
    for (prefix, key) in [("URI:", "URI"), ("DNS:", "DNS")] {
        for name in identity
            .sans
            .iter()
            .filter_map(|san| san.strip_prefix(prefix))
        {
            value.push_str(&format!(";{key}={}", pair_value(name)));
        }
    }
    value
}

/// The `X-SSL-Client-*` fields, nginx's variables as their values: `Verify`
/// (`SUCCESS`), `S-DN` and `I-DN` (RFC 2253), `Serial` (uppercase hex), `Fingerprint`
/// (SHA-1 of the DER, lowercase hex, as `$ssl_client_fingerprint`) and `Cert`
/// (URL-encoded PEM, as `$ssl_client_escaped_cert`). The DNs go through the header
/// value guard; the rest is visible ASCII already.
pub fn nginx_fields(chain: &VerifiedChain) -> Fields<'static> {
    let identity = &chain.identity;
    let leaf = chain
        .certificates
        .first()
        .map_or(&[][..], |cert| cert.as_ref());
    let fingerprint = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf);
    let text = vec![
        ("x-ssl-client-s-dn", identity.subject.clone()),
        ("x-ssl-client-i-dn", identity.issuer.clone()),
    ];
    let encoded = vec![
        ("x-ssl-client-verify", "SUCCESS".to_owned()),
        ("x-ssl-client-serial", identity.serial.to_ascii_uppercase()),
        ("x-ssl-client-fingerprint", hex(fingerprint.as_ref())),
        ("x-ssl-client-cert", url_encode(&pem(leaf))),
    ];
    Fields { text, encoded }
}

/// One certificate as PEM.
fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A value inside XFCC double quotes: `"` and `\` escaped with `\`, and anything that is
/// not visible ASCII (or a space) percent-encoded, as are `%` signs.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            b' '..=b'~' if byte != b'%' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// An XFCC pair's value: quoted when it holds `,`, `;` or `=`, which separate elements,
/// pairs and keys.
fn pair_value(text: &str) -> String {
    let plain = text
        .bytes()
        .all(|byte| matches!(byte, b'!'..=b'~') && !b",;=\"\\%".contains(&byte));
    if plain {
        text.to_owned()
    } else {
        format!("\"{}\"", quoted(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_so_that_no_separator_or_control_byte_survives() {
        assert_eq!(url_encode("a b/+=\n"), "a%20b%2F%2B%3D%0A");
        assert_eq!(quoted("CN=a\"b\\c,\r\n"), "CN=a\\\"b\\\\c,%0D%0A");
        assert_eq!(pair_value("spiffe://x/y"), "spiffe://x/y");
        assert_eq!(pair_value("a;b"), "\"a;b\"");
        assert!(pem(b"\x30\x03\x02\x01\x01").starts_with("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n"));
    }
}
