//! Fuzz harness for what a client sends on a connection: request heads and the bodies
//! between them, framed as the gateway frames them, and each accepted head rewritten
//! as the gateway forwards it.

use crate::http::chunked::ChunkedBody;
use crate::http::head::{self, is_token_byte, BodyFraming, HeadLimits, RequestHead};
use crate::http::rewrite::{safe_value, write_forwarded_head, FieldFilter};

/// Small enough for the fuzzer to reach both limits.
const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 2048,
    max_headers: 24,
};

/// Room for what the gateway adds to a head it forwards.
const FORWARDED_LIMITS: HeadLimits = HeadLimits {
    max_bytes: 64 * 1024,
    max_headers: 64,
};

/// The most requests read from one input.
const MAX_REQUESTS: usize = 8;

/// An identity field the gateway sets, and a value that tries to end it early.
const IDENTITY_FIELD: &str = "x-auth-subject";
const IDENTITY_VALUE: &str = "alice\r\nx-injected: 1";

/// Reads `data` as the bytes of one client connection: a head, its body, the next
/// head, and so on, until the bytes run out or the gateway would refuse them.
///
/// Every head accepted is no longer than its input and its limits, holds no CR, LF or
/// NUL in a field value, and frames its body as its fields say; the head forwarded for
/// it parses again to the same method, target, version and body framing, without the
/// client's credentials, hop-by-hop fields or copies of identity fields (what is
/// forwarded is what was checked). A chunked body ends where an ordinary reading of
/// RFC 9112 ends it, whatever pieces it arrives in.
pub fn request_head(data: &[u8]) {
    let mut rest = data;
    for _ in 0..MAX_REQUESTS {
        let head = match head::parse(rest, LIMITS) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert!(
                    rest.len() <= LIMITS.max_bytes,
                    "a partial head past the limit"
                );
                return;
            }
            Err(_) => return,
        };
        check_head(&head, rest);
        check_forwarded(&head);

        rest = &rest[head.len()..];
        match body_length(head.framing, rest) {
            Some(length) => rest = &rest[length..],
            None => return,
        }
    }
}

/// What must hold of a head parsed from the start of `input`.
fn check_head(head: &RequestHead, input: &[u8]) {
    assert!(!head.is_empty() && head.len() <= input.len());
    assert!(head.len() <= LIMITS.max_bytes, "a head past the limit");
    let bytes = &input[..head.len()];
    assert!(bytes.ends_with(b"\n"), "a head must end with an empty line");
    assert!(head.fields().count() <= LIMITS.max_headers);

    let method = head.method();
    assert!(!method.is_empty() && method.bytes().all(is_token_byte));
    assert_ne!(method, "CONNECT");
    let target = head.target();
    let origin_form = target.starts_with('/');
    assert!(
        origin_form || (target == "*" && method == "OPTIONS"),
        "{target:?}"
    );
    let unsafe_in_target = |b: u8| b <= b' ' || b == 0x7f || b == b'#' || b == b'\\';
    assert!(!target.bytes().any(unsafe_in_target), "{target:?}");

    for (name, value) in head.fields() {
        assert!(
            !name.is_empty() && name.bytes().all(is_token_byte),
            "{name:?}"
        );
        assert!(
            !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{value:?}"
        );
    }
    let hosts = head.values("host").count();
    assert!(hosts <= 1 && (head.minor_version == 0 || hosts == 1));
    check_framing(head);
    check_split(head, bytes);
}

/// The body framing, read again from the fields alone.
fn check_framing(head: &RequestHead) {
    let lengths: Vec<&[u8]> = head.values("content-length").collect();
    let encodings: Vec<&[u8]> = head.values("transfer-encoding").collect();
    match head.framing {
        BodyFraming::Empty => assert!(lengths.is_empty() && encodings.is_empty()),
        BodyFraming::Length(length) => {
            assert!(encodings.is_empty() && !lengths.is_empty());
            for value in lengths {
                let text = std::str::from_utf8(value).expect("an accepted length is text");
                for item in text.split(',') {
                    let item = item.trim_matches([' ', '\t']);
                    assert_eq!(item.parse::<u64>().ok(), Some(length), "{text:?}");
                }
            }
        }
        BodyFraming::Chunked => {
            assert!(lengths.is_empty() && head.minor_version == 1);
            assert_eq!(encodings.len(), 1);
            let coding = String::from_utf8_lossy(encodings[0]);
            assert!(coding.trim().eq_ignore_ascii_case("chunked"), "{coding:?}");
        }
    }
}

/// A head alone parses as it did at the start of a longer input, and before its last
/// byte has arrived, it asks for more rather than failing.
fn check_split(head: &RequestHead, bytes: &[u8]) {
    let alone = head::parse(bytes, LIMITS)
        .expect("a head parses alone")
        .expect("a head is whole alone");
    assert_eq!(alone.len(), head.len());
    assert_eq!(alone.target(), head.target());
    assert_eq!(alone.framing, head.framing);
    for cut in [0, bytes.len() / 2, bytes.len() - 1] {
        let partial = head::parse(&bytes[..cut], LIMITS);
        assert!(matches!(partial, Ok(None)), "cut at {cut}: {partial:?}");
    }
}

/// The head forwarded for `head`, parsed as a backend would parse it.
fn check_forwarded(head: &RequestHead) {
    let filter = FieldFilter::new([IDENTITY_FIELD.to_owned()], false);
    let added = [
        (IDENTITY_FIELD, IDENTITY_VALUE),
        ("x-forwarded-for", "192.0.2.1"),
    ];
    let mut out = Vec::new();
    write_forwarded_head(&mut out, head, &filter, &added, &[]);
    let forwarded = match head::parse(&out, FORWARDED_LIMITS) {
        Ok(Some(forwarded)) => forwarded,
        other => panic!(
            "the forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };

    assert_eq!(forwarded.len(), out.len(), "bytes after the forwarded head");
    assert_eq!(forwarded.method(), head.method());
    assert_eq!(forwarded.target(), head.target());
    assert_eq!(forwarded.minor_version, head.minor_version);
    assert_eq!(
        forwarded.framing, head.framing,
        "the backend frames the body otherwise"
    );
    assert_eq!(forwarded.websocket_upgrade, head.websocket_upgrade);
    assert_eq!(forwarded.close, head.minor_version == 0);
    assert!(forwarded.connection_options.is_empty());
    assert_eq!(
        forwarded.values("host").count(),
        head.values("host").count()
    );
    assert_eq!(forwarded.values("authorization").count(), 0);
    let injected = |head: &RequestHead| head.values("x-injected").count();
    assert_eq!(
        injected(&forwarded),
        injected(head),
        "a field made of an added value"
    );

    let identity: Vec<&[u8]> = forwarded
        .fields()
        .filter(|(name, _)| name.replace('_', "-").eq_ignore_ascii_case(IDENTITY_FIELD))
        .map(|(_, value)| value)
        .collect();
    assert_eq!(identity, [safe_value(IDENTITY_VALUE).as_bytes()]);
}

/// How many bytes of `rest` the body takes; `None` when it is not all there, or is
/// refused.
fn body_length(framing: BodyFraming, rest: &[u8]) -> Option<usize> {
    match framing {
        BodyFraming::Empty => Some(0),
        BodyFraming::Length(length) => usize::try_from(length)
            .ok()
            .filter(|length| *length <= rest.len()),
        BodyFraming::Chunked => chunked_length(rest),
    }
}

/// Tracks a chunked body in one piece and byte by byte, which must agree, and checks
/// where it ends against [`reference_chunked_end`].
fn chunked_length(input: &[u8]) -> Option<usize> {
    let mut whole = ChunkedBody::request();
    let outcome = whole.advance(input);
    assert_eq!(
        piecewise(input),
        outcome.as_ref().ok().map(|used| (*used, whole.is_done()))
    );

    let used = outcome.ok()?;
    assert!(used <= input.len());
    if !whole.is_done() {
        assert_eq!(
            used,
            input.len(),
            "an unfinished body takes every byte given"
        );
        assert_eq!(
            reference_chunked_end(input),
            None,
            "a backend would see the end"
        );
        return None;
    }
    assert!(input[..used].ends_with(b"\r\n\r\n"));
    assert_eq!(
        reference_chunked_end(input),
        Some(used),
        "a backend ends the body elsewhere"
    );
    assert_eq!(
        whole.advance(b"0\r\n\r\n"),
        Ok(0),
        "a finished body takes no more"
    );
    assert!(whole.is_done());
    Some(used)
}

/// The same body fed one byte at a time: `(bytes used, done)`, or `None` when refused.
fn piecewise(input: &[u8]) -> Option<(usize, bool)> {
    let mut body = ChunkedBody::request();
    let mut used = 0;
    for byte in input.chunks(1) {
        let taken = body.advance(byte).ok()?;
        assert!(taken <= 1);
        used += taken;
        if taken == 0 {
            assert!(body.is_done(), "a byte left untaken before the end");
            break;
        }
    }
    Some((used, body.is_done()))
}

/// Where a lenient reading of RFC 9112 §7.1 ends a chunked body: a size in hex digits
/// (anything after them up to CRLF ignored), the data and its CRLF, and after the last
/// chunk any trailer lines up to an empty one. `None` while it has not ended, or when
/// it cannot be read at all.
fn reference_chunked_end(body: &[u8]) -> Option<usize> {
    let line_end = |from: usize| -> Option<usize> {
        let found = body
            .get(from..)?
            .windows(2)
            .position(|pair| pair == b"\r\n");
        found.map(|at| from + at)
    };
    let mut at = 0;
    loop {
        let end = line_end(at)?;
        let line = &body[at..end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = std::str::from_utf8(&line[..digits]).ok()?;
        let size = usize::from_str_radix(size, 16).ok()?;
        at = end + 2;
        if size == 0 {
            loop {
                let end = line_end(at)?;
                if end == at {
                    return Some(at + 2);
                }
                at = end + 2;
            }
        }
        let data_end = at.checked_add(size)?;
        if body.get(data_end..data_end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        at = data_end + 2;
    }
}
