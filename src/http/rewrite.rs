//! The head a backend receives: the client's request line and fields, minus hop-by-hop
//! fields and anything the gateway itself vouches for, plus the gateway's own fields.
//! It is written afresh rather than patched, so that what the backend parses is exactly
//! what the gateway checked.

use std::borrow::Cow;

use super::head::{is_token_byte, BodyFraming, RequestHead};
use crate::config::{IdentityHeadersConfig, IngressSource, Problems};

/// Fields removed from every request: hop-by-hop fields, framing fields (written anew
/// from what the gateway framed), and claims about the client's address or scheme that
/// only the gateway, as the first hop, can make.
const ALWAYS_REMOVED: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// The fields a request loses on its way through, decided once per ingress.
#[derive(Debug, Clone, Default)]
pub struct FieldFilter {
    removed: Vec<String>,
}

impl FieldFilter {
    /// Removes the hop-by-hop fields, the fields of every client-certificate format,
    /// `extra` (the identity header names, lowercase), and `Authorization` unless
    /// `keep_authorization`.
    pub fn new(extra: impl IntoIterator<Item = String>, keep_authorization: bool) -> Self {
        let mut removed: Vec<String> = (ALWAYS_REMOVED.iter())
            .chain(&super::client_cert::FIELD_NAMES)
            .map(|name| (*name).to_owned())
            .collect();
        removed.extend(extra.into_iter().map(|name| normalized(&name)));
        if !keep_authorization {
            removed.push("authorization".into());
        }
        Self { removed }
    }

    /// Names are compared with `_` read as `-`: backends that map fields to CGI-style
    /// variables (WSGI, Rack, PHP-FPM) cannot tell `x_auth_subject` from
    /// `x-auth-subject`, so a client's underscore spelling must go too.
    fn removes(&self, name: &str, head: &RequestHead) -> bool {
        let listed = |names: &[String]| names.iter().any(|listed| same_field(name, listed));
        listed(&self.removed) || listed(&head.connection_options)
    }
}

/// The names of the headers that carry identity to backends, checked once.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Certificate subject.
    pub cert_subject: String,
    /// Certificate SANs.
    pub cert_sans: String,
    /// Certificate SHA-256.
    pub cert_fingerprint: String,
    /// Token `sub`.
    pub token_subject: String,
    /// Token `iss`.
    pub token_issuer: String,
    /// One header per exported claim, in the order of the claim paths.
    pub claims: Vec<String>,
    /// What every forwarded request loses.
    pub filter: FieldFilter,
}

impl IdentityHeaders {
    /// Checks the configured names and builds the field filter.
    pub fn build(loaded: &IngressSource, problems: &mut Problems) -> Self {
        let config: &IdentityHeadersConfig = &loaded.ingress.identity_headers;
        let mut name = |field: &str, value: &str| {
            let valid = value.bytes().all(is_token_byte);
            if !valid {
                problems.push(
                    &format!("ingress.identity_headers.{field}"),
                    "not a valid header name",
                );
            }
            value.to_ascii_lowercase()
        };
        let headers_of_claims: Vec<String> = config
            .claims
            .iter()
            .map(|(path, header)| name(&format!("claims.{path}"), header))
            .collect();
        let mut headers = Self {
            cert_subject: name("cert_subject", &config.cert_subject),
            cert_sans: name("cert_sans", &config.cert_sans),
            cert_fingerprint: name("cert_fingerprint", &config.cert_fingerprint),
            token_subject: name("token_subject", &config.token_subject),
            token_issuer: name("token_issuer", &config.token_issuer),
            claims: headers_of_claims,
            filter: FieldFilter::default(),
        };
        let keep_authorization = loaded
            .ingress
            .application_auth
            .as_ref()
            .is_some_and(|auth| auth.forward_authorization);
        let names = [
            &headers.cert_subject,
            &headers.cert_sans,
            &headers.cert_fingerprint,
            &headers.token_subject,
            &headers.token_issuer,
        ];
        let all = names
            .into_iter()
            .chain(headers.claims.iter())
            .filter(|n| !n.is_empty())
            .cloned()
            .collect::<Vec<_>>();
        headers.filter = FieldFilter::new(all, keep_authorization);
        headers
    }
}

/// Writes the head to forward into `out` (cleared first): the request line, the kept
/// fields, then `added` (name, value) pairs, each value made safe for a header, then
/// `encoded` pairs, whose values the gateway encoded itself and are written as they are.
pub fn write_forwarded_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    filter: &FieldFilter,
    added: &[(&str, &str)],
    encoded: &[(&str, &str)],
) {
    out.clear();
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target().as_bytes());
    out.extend_from_slice(if head.minor_version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });

    for (name, value) in head.fields() {
        if !filter.removes(name, head) {
            push_field(out, name, value);
        }
    }
    match head.framing {
        BodyFraming::Length(length) => {
            push_field(out, "content-length", length.to_string().as_bytes())
        }
        BodyFraming::Chunked => push_field(out, "transfer-encoding", b"chunked"),
        BodyFraming::Empty => {}
    }
    // A client's `Connection: close` is about its own connection: the one to the
    // backend stays open for the next client (HTTP/1.0 requests close it by default).
    if head.websocket_upgrade {
        push_field(out, "connection", b"upgrade");
        push_field(out, "upgrade", b"websocket");
    }
    for (name, value) in added {
        if !name.is_empty() {
            push_field(out, name, safe_value(value).as_bytes());
        }
    }
    for (name, value) in encoded {
        debug_assert!(value.bytes().all(|byte| matches!(byte, b' '..=b'~')));
        push_field(out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A field name lowercased, with `_` as `-`.
fn normalized(name: &str) -> String {
    name.bytes().map(|b| char::from(fold(b))).collect()
}

/// Whether two field names are the same once case and `_`/`-` are set aside.
fn same_field(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

fn fold(byte: u8) -> u8 {
    if byte == b'_' {
        b'-'
    } else {
        byte.to_ascii_lowercase()
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A header value from text the gateway did not write itself (a certificate subject, a
/// claim): visible ASCII and spaces kept, anything else percent-encoded, so that no
/// value can end the field or carry bytes a backend might read differently.
pub fn safe_value(value: &str) -> Cow<'_, str> {
    let clean = |byte: u8| matches!(byte, b' '..=b'~') && byte != b'%';
    if value.bytes().all(clean) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for byte in value.bytes() {
        if clean(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse, HeadLimits};

    fn forward(text: &str, filter: &FieldFilter, added: &[(&str, &str)]) -> String {
        let limits = HeadLimits {
            max_bytes: 16384,
            max_headers: 100,
        };
        let head = parse(text.as_bytes(), limits).unwrap().unwrap();
        let mut out = Vec::new();
        write_forwarded_head(&mut out, &head, filter, added, &[]);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn client_copies_of_gateway_fields_are_replaced() {
        let filter = FieldFilter::new(["X-Auth-Subject".to_owned()], false);
        let text =
            "GET /p HTTP/1.1\r\nHost: h\r\nx-auth-subject: admin\r\nX-Forwarded-For: 6.6.6.6\r\n\
                    Authorization: Bearer t\r\nAccept: */*\r\n\r\n";
        let out = forward(
            text,
            &filter,
            &[("x-auth-subject", "alice"), ("x-forwarded-for", "10.0.0.1")],
        );
        assert_eq!(
            out,
            "GET /p HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nx-auth-subject: alice\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn fields_named_in_connection_are_dropped_and_close_stays_with_the_client() {
        let filter = FieldFilter::new([], true);
        let text = "POST / HTTP/1.1\r\nHost: h\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\
                    Content-Length: 3, 3\r\nAuthorization: Bearer t\r\n\r\n";
        let out = forward(text, &filter, &[]);
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn unsafe_bytes_in_added_values_are_encoded() {
        assert_eq!(safe_value("CN=a\r\nX-Evil: 1"), "CN=a%0D%0AX-Evil: 1");
        assert_eq!(safe_value("O=Zürich"), "O=Z%C3%BCrich");
        assert_eq!(safe_value("plain"), "plain");
    }
}
