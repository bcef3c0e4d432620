//! Request heads: parsed with httparse, bounded in size and field count, and held to
//! RFC 9112's framing rules. Anything ambiguous is refused, since an ambiguity between
//! the gateway and a backend is request smuggling. The head is kept as its own bytes
//! plus ranges, so that it can be checked and rewritten without a copy per field.

use std::ops::Range;

use super::HttpError;

/// Bounds on a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// The most bytes a head may take, request line included.
    pub max_bytes: usize,
    /// The most header fields.
    pub max_headers: usize,
}

/// How a request's body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One header field, as ranges into the head's bytes.
#[derive(Debug, Clone)]
pub struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// A parsed, checked request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    bytes: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    fields: Vec<Field>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// The connection ends after this request (`Connection: close`, or HTTP/1.0).
    pub close: bool,
    /// A WebSocket upgrade was asked for.
    pub websocket_upgrade: bool,
    /// Names listed in `Connection` (lowercase) other than `close`, `keep-alive` and
    /// `upgrade`: hop-by-hop fields a proxy removes (RFC 9110 §7.6.1).
    pub connection_options: Vec<String>,
}

impl RequestHead {
    /// How many bytes of the stream the head took.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the head is empty; never, for a parsed head.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The method.
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.method.clone()]).unwrap_or_default()
    }

    /// The request target, as sent.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.target.clone()]).unwrap_or_default()
    }

    /// Every field as (name, value), in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|field| {
            let name = std::str::from_utf8(&self.bytes[field.name.clone()]).unwrap_or_default();
            (name, &self.bytes[field.value.clone()])
        })
    }

    /// The values of every field named `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Parses the head at the start of `input`. `Ok(None)`: more bytes are needed.
pub fn parse(input: &[u8], limits: HeadLimits) -> Result<Option<RequestHead>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut heap;
    let headers: &mut [httparse::Header<'_>] = if limits.max_headers <= storage.len() {
        &mut storage[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    let mut request = httparse::Request::new(headers);
    let length = match request.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > limits.max_bytes => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(error) => return Err(HttpError::Malformed(parse_error(error))),
    };
    if length > limits.max_bytes {
        return Err(HttpError::HeadTooLarge);
    }

    let base = input.as_ptr() as usize;
    let range_of = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::Malformed("malformed request line"));
    };
    let method = range_of(method.as_bytes());
    let target = range_of(target.as_bytes());
    let fields = request
        .headers
        .iter()
        .map(|header| Field {
            name: range_of(header.name.as_bytes()),
            value: range_of(header.value),
        })
        .collect();

    let mut head = RequestHead {
        bytes: input[..length].to_vec(),
        method,
        target,
        minor_version,
        fields,
        framing: BodyFraming::Empty,
        close: false,
        websocket_upgrade: false,
        connection_options: Vec::new(),
    };
    check(&mut head)?;
    Ok(Some(head))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name (or obs-fold)",
        httparse::Error::HeaderValue => "invalid byte in a header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::Token => "invalid request line",
        _ => "malformed request head",
    }
}

/// Applies the rules httparse leaves to its caller.
fn check(head: &mut RequestHead) -> Result<(), HttpError> {
    check_request_line(head)?;
    let mut hosts = 0;
    let mut lengths: Vec<u64> = Vec::new();
    let mut encodings: Vec<String> = Vec::new();
    let mut connection: Vec<String> = Vec::new();
    let mut upgrade = None;

    for (name, value) in head.fields() {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => lengths.extend(content_lengths(value)?),
            "transfer-encoding" => encodings.extend(list_items(value)?),
            "connection" => connection.extend(list_items(value)?),
            "upgrade" => upgrade = Some(String::from_utf8_lossy(value).trim().to_ascii_lowercase()),
            _ => {}
        }
    }

    if head.minor_version == 1 && hosts != 1 || hosts > 1 {
        return Err(HttpError::Malformed("exactly one Host header is required"));
    }
    head.framing = framing(head.minor_version, &lengths, &encodings)?;
    head.close = head.minor_version == 0 || connection.iter().any(|token| token == "close");
    let wants_upgrade = connection.iter().any(|token| token == "upgrade");
    head.websocket_upgrade = wants_upgrade
        && head.minor_version == 1
        && head.method() == "GET"
        && upgrade.as_deref() == Some("websocket");
    head.connection_options = connection
        .into_iter()
        .filter(|token| !matches!(token.as_str(), "close" | "keep-alive" | "upgrade"))
        .collect();
    if head
        .connection_options
        .iter()
        .any(|name| END_TO_END.contains(&name.as_str()))
    {
        // Dropping these as hop-by-hop would change how the backend frames the request.
        return Err(HttpError::Malformed(
            "Connection names a field that must reach the backend",
        ));
    }
    Ok(())
}

/// Fields a request cannot mark hop-by-hop (RFC 9110 §7.6.1): the backend needs them
/// to read the request as the gateway read it.
const END_TO_END: [&str; 3] = ["host", "content-length", "transfer-encoding"];

fn check_request_line(head: &RequestHead) -> Result<(), HttpError> {
    if head.method() == "CONNECT" {
        return Err(HttpError::Malformed("CONNECT is not supported"));
    }
    let target = head.target();
    if target.contains(['#', '\\']) {
        // No fragment in a request target (RFC 9112 §3.2), and no backslash, which some
        // backends read as a path separator.
        return Err(HttpError::Malformed(
            "invalid character in the request target",
        ));
    }
    let origin_form = target.starts_with('/');
    let asterisk_form = target == "*" && head.method() == "OPTIONS";
    if !origin_form && !asterisk_form {
        return Err(HttpError::Malformed(
            "only origin-form request targets are accepted",
        ));
    }
    Ok(())
}

/// RFC 9112 §6.3: chunked wins only when alone; both, or a bad value, is refused.
fn framing(
    minor_version: u8,
    lengths: &[u64],
    encodings: &[String],
) -> Result<BodyFraming, HttpError> {
    if !encodings.is_empty() {
        if minor_version == 0 {
            return Err(HttpError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !lengths.is_empty() {
            return Err(HttpError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if encodings != ["chunked"] {
            return Err(HttpError::Malformed(
                "Transfer-Encoding must be exactly chunked",
            ));
        }
        return Ok(BodyFraming::Chunked);
    }
    match lengths.split_first() {
        None => Ok(BodyFraming::Empty),
        Some((first, rest)) if rest.iter().all(|length| length == first) => {
            Ok(BodyFraming::Length(*first))
        }
        Some(_) => Err(HttpError::Malformed("conflicting Content-Length values")),
    }
}

/// The values of one `Content-Length` field: a decimal, or a list of them.
fn content_lengths(value: &[u8]) -> Result<Vec<u64>, HttpError> {
    let bad = HttpError::Malformed("invalid Content-Length");
    let text = std::str::from_utf8(value).map_err(|_| bad.clone())?;
    text.split(',')
        .map(|item| {
            let digits = item.trim_matches([' ', '\t']);
            let valid = !digits.is_empty()
                && digits.len() <= 18
                && digits.bytes().all(|b| b.is_ascii_digit());
            if valid {
                digits.parse().map_err(|_| bad.clone())
            } else {
                Err(bad.clone())
            }
        })
        .collect()
}

/// A comma-separated list of tokens, lowercase. Empty items are refused.
fn list_items(value: &[u8]) -> Result<Vec<String>, HttpError> {
    let text =
        std::str::from_utf8(value).map_err(|_| HttpError::Malformed("invalid list header"))?;
    text.split(',')
        .map(|item| {
            let item = item.trim_matches([' ', '\t']);
            if item.is_empty() || !item.bytes().all(is_token_byte) {
                Err(HttpError::Malformed("invalid token in a list header"))
            } else {
                Ok(item.to_ascii_lowercase())
            }
        })
        .collect()
}

/// RFC 9110 `tchar`.
pub fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 16 * 1024,
        max_headers: 100,
    };

    fn parsed(text: &str) -> RequestHead {
        parse(text.as_bytes(), LIMITS)
            .expect("valid")
            .expect("complete")
    }

    fn refused(text: &str) -> HttpError {
        parse(text.as_bytes(), LIMITS).expect_err("refused")
    }

    #[test]
    fn a_simple_get_has_no_body_and_keeps_the_connection() {
        let head = parsed("GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nrest");
        assert_eq!(head.method(), "GET");
        assert_eq!(head.target(), "/a?b=c");
        assert_eq!(head.framing, BodyFraming::Empty);
        assert_eq!(head.len(), "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert!(!head.close);
    }

    #[test]
    fn a_partial_head_asks_for_more_until_the_limit() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMITS)
            .unwrap()
            .is_none());
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(20_000));
        assert_eq!(
            parse(big.as_bytes(), LIMITS).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn too_many_headers_is_its_own_error() {
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(refused(&text), HttpError::TooManyHeaders);
    }

    #[test]
    fn content_length_and_chunked_frame_the_body() {
        let head = parsed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(head.framing, BodyFraming::Length(12));
        let head = parsed(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n",
        );
        assert_eq!(head.framing, BodyFraming::Length(5));
        let head = parsed("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.framing, BodyFraming::Chunked);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(refused(text), HttpError::Malformed(_)), "{text:?}");
        }
    }

    #[test]
    fn malformed_fields_are_refused() {
        for text in [
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        ] {
            assert!(matches!(refused(text), HttpError::Malformed(_)), "{text:?}");
        }
    }

    #[test]
    fn connection_tokens_decide_close_and_upgrade() {
        let head = parsed("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, x-secret\r\nUpgrade: websocket\r\n\r\n");
        assert!(head.websocket_upgrade);
        assert_eq!(head.connection_options, ["x-secret"]);
        assert!(parsed("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").close);
        assert!(parsed("GET / HTTP/1.0\r\n\r\n").close);
        let h2c =
            parsed("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
        assert!(!h2c.websocket_upgrade);
    }
}
