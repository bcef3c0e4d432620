//! Backend responses, read only far enough to know where each one ends (RFC 9112
//! §6.3), so that the gateway's own responses never land inside one. The bytes are
//! relayed unchanged; a head is held back until it is complete, so that a backend
//! failing mid-head can still be answered with a clean 502.

use super::chunked::ChunkedBody;
use super::HttpError;

/// The largest backend response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The most header fields in a backend response head.
const MAX_RESPONSE_FIELDS: usize = 256;

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: 1xx, 204, 304, or the answer to HEAD.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Everything until the backend closes.
    UntilClose,
    /// 101: the connection becomes a tunnel.
    Switching,
}

/// What the relay needs from a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes the head takes.
    pub length: usize,
    /// The status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: ResponseFraming,
    /// The backend closes after this response.
    pub close: bool,
}

impl ResponseHead {
    /// A 1xx other than 101: the final response to the same request is still to come.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses the response head at the start of `input`; `Ok(None)` when incomplete.
/// `to_head` says whether the request was `HEAD`.
pub fn parse(input: &[u8], to_head: bool) -> Result<Option<ResponseHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > MAX_RESPONSE_HEAD => {
            return Err(HttpError::Malformed("backend response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed("malformed backend response head")),
    };
    let status = response.code.unwrap_or(0);
    let minor_version = response.version.unwrap_or(1);

    let mut lengths = Vec::new();
    let mut chunked = None;
    let mut close = minor_version == 0;
    let mut websocket = false;
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
        if header.name.eq_ignore_ascii_case("content-length") {
            lengths.extend(value.split(',').map(|item| item.trim().to_owned()));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value
                .rsplit(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            chunked = Some(last == "chunked");
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            websocket |= value.split(',').any(|token| token.trim() == "websocket");
        } else if header.name.eq_ignore_ascii_case("connection") {
            let tokens: Vec<&str> = value.split(',').map(str::trim).collect();
            close |= tokens.contains(&"close");
            if minor_version == 0 && tokens.contains(&"keep-alive") {
                close = false;
            }
        }
    }

    let framing = match (status, chunked) {
        // RFC 9110 §15.2.2: a 101 names the protocol switched to; only WebSocket is
        // ever asked for, and only a 101 that switches to it turns into a tunnel.
        (101, _) if websocket => ResponseFraming::Switching,
        (101, _) => {
            return Err(HttpError::Malformed(
                "a 101 response that does not switch to WebSocket",
            ))
        }
        (100..=199 | 204 | 304, _) => ResponseFraming::Empty,
        _ if to_head => ResponseFraming::Empty,
        (_, Some(true)) => ResponseFraming::Chunked,
        (_, Some(false)) => ResponseFraming::UntilClose,
        (_, None) => length_framing(&lengths)?,
    };
    if framing == ResponseFraming::UntilClose {
        close = true;
    }
    Ok(Some(ResponseHead {
        length,
        status,
        framing,
        close,
    }))
}

fn length_framing(lengths: &[String]) -> Result<ResponseFraming, HttpError> {
    let Some(first) = lengths.first() else {
        return Ok(ResponseFraming::UntilClose);
    };
    if lengths.iter().any(|length| length != first) {
        return Err(HttpError::Malformed(
            "conflicting Content-Length in a backend response",
        ));
    }
    let valid = !first.is_empty() && first.len() <= 18 && first.bytes().all(|b| b.is_ascii_digit());
    match first.parse::<u64>() {
        Ok(0) if valid => Ok(ResponseFraming::Empty),
        Ok(length) if valid => Ok(ResponseFraming::Length(length)),
        _ => Err(HttpError::Malformed(
            "invalid Content-Length in a backend response",
        )),
    }
}

/// A point in the backend's stream that the relay must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// An interim (1xx) response ended; the final one to the same request follows.
    Interim,
    /// The final response head to the front request was read; its body follows.
    FinalHead {
        /// Its status.
        status: u16,
    },
    /// The response to the front request ended.
    Complete {
        /// Its status.
        status: u16,
        /// The backend closes after it.
        close: bool,
    },
    /// A 101 response ended: the connection is now a tunnel.
    Switched,
}

#[derive(Debug, Clone)]
enum Tracking {
    Head,
    Length {
        remaining: u64,
        status: u16,
        close: bool,
    },
    Chunked {
        body: ChunkedBody,
        status: u16,
        close: bool,
    },
    UntilClose,
    Tunnel,
}

/// Follows the backend's byte stream response by response.
#[derive(Debug, Clone)]
pub struct ResponseTracker {
    state: Tracking,
    head: Vec<u8>,
}

impl Default for ResponseTracker {
    fn default() -> Self {
        Self {
            state: Tracking::Head,
            head: Vec::new(),
        }
    }
}

impl ResponseTracker {
    /// Whether the tracker is between responses, or holding an incomplete head: no
    /// byte of the current response has been passed on yet.
    pub fn at_response_start(&self) -> bool {
        matches!(self.state, Tracking::Head)
    }

    /// Whether the response ends when the backend closes.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.state, Tracking::UntilClose | Tracking::Tunnel)
    }

    /// Advances over `input`, appending to `out` what may be passed on, and stops at the
    /// first boundary. Returns how much of `input` was used and the boundary reached.
    /// `to_head`: the front request was `HEAD`.
    pub fn advance(
        &mut self,
        input: &[u8],
        to_head: bool,
        out: &mut Vec<u8>,
    ) -> Result<(usize, Option<Boundary>), HttpError> {
        match &mut self.state {
            Tracking::Head => self.advance_head(input, to_head, out),
            Tracking::Length {
                remaining,
                status,
                close,
            } => {
                let take = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                if *remaining > 0 {
                    return Ok((take, None));
                }
                let boundary = Boundary::Complete {
                    status: *status,
                    close: *close,
                };
                self.state = Tracking::Head;
                Ok((take, Some(boundary)))
            }
            Tracking::Chunked {
                body,
                status,
                close,
            } => {
                let used = body.advance(input)?;
                out.extend_from_slice(&input[..used]);
                if !body.is_done() {
                    return Ok((used, None));
                }
                let boundary = Boundary::Complete {
                    status: *status,
                    close: *close,
                };
                self.state = Tracking::Head;
                Ok((used, Some(boundary)))
            }
            Tracking::UntilClose | Tracking::Tunnel => {
                out.extend_from_slice(input);
                Ok((input.len(), None))
            }
        }
    }

    fn advance_head(
        &mut self,
        input: &[u8],
        to_head: bool,
        out: &mut Vec<u8>,
    ) -> Result<(usize, Option<Boundary>), HttpError> {
        let held = self.head.len();
        self.head.extend_from_slice(input);
        let Some(head) = parse(&self.head, to_head)? else {
            return Ok((input.len(), None));
        };
        let used = head.length - held;
        out.extend_from_slice(&self.head[..head.length]);
        self.head.clear();

        let status = head.status;
        let (state, boundary) = match head.framing {
            ResponseFraming::Switching => (Tracking::Tunnel, Boundary::Switched),
            ResponseFraming::Empty if head.is_interim() => (Tracking::Head, Boundary::Interim),
            ResponseFraming::Empty => (
                Tracking::Head,
                Boundary::Complete {
                    status,
                    close: head.close,
                },
            ),
            ResponseFraming::Length(remaining) => (
                Tracking::Length {
                    remaining,
                    status,
                    close: head.close,
                },
                Boundary::FinalHead { status },
            ),
            ResponseFraming::Chunked => {
                let body = ChunkedBody::response();
                (
                    Tracking::Chunked {
                        body,
                        status,
                        close: head.close,
                    },
                    Boundary::FinalHead { status },
                )
            }
            ResponseFraming::UntilClose => (Tracking::UntilClose, Boundary::FinalHead { status }),
        };
        self.state = state;
        Ok((used, Some(boundary)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing_of(text: &str, to_head: bool) -> ResponseFraming {
        parse(text.as_bytes(), to_head).unwrap().unwrap().framing
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            ResponseFraming::Length(5)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            ResponseFraming::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\n\r\n", false),
            ResponseFraming::Empty
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            ResponseFraming::Chunked
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n", false),
            ResponseFraming::UntilClose
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\r\n",
                false
            ),
            ResponseFraming::Switching
        );
        assert!(parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        assert!(parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap()
            .is_interim());
    }

    /// Runs `wire` through a tracker in pieces of `step` bytes; returns the boundaries
    /// and what was passed on.
    fn track(wire: &[u8], step: usize, to_head: bool) -> (Vec<Boundary>, Vec<u8>) {
        let mut tracker = ResponseTracker::default();
        let (mut boundaries, mut out) = (Vec::new(), Vec::new());
        for piece in wire.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (used, boundary) = tracker.advance(rest, to_head, &mut out).unwrap();
                rest = &rest[used..];
                boundaries.extend(boundary);
            }
        }
        (boundaries, out)
    }

    #[test]
    fn pipelined_responses_are_told_apart_however_they_arrive() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        for step in [1, 2, 7, wire.len()] {
            let (boundaries, out) = track(wire, step, false);
            assert_eq!(out, wire);
            assert_eq!(
                boundaries,
                [
                    Boundary::Interim,
                    Boundary::FinalHead { status: 200 },
                    Boundary::Complete {
                        status: 200,
                        close: false
                    },
                    Boundary::FinalHead { status: 200 },
                    Boundary::Complete {
                        status: 200,
                        close: false
                    },
                    Boundary::Complete {
                        status: 204,
                        close: true
                    },
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn an_incomplete_head_is_held_back() {
        let mut tracker = ResponseTracker::default();
        let mut out = Vec::new();
        let (used, boundary) = tracker
            .advance(b"HTTP/1.1 200 OK\r\nContent-Le", false, &mut out)
            .unwrap();
        assert_eq!((used, boundary), (27, None));
        assert!(out.is_empty());
        assert!(tracker.at_response_start());
    }

    #[test]
    fn switching_protocols_turns_into_a_tunnel() {
        let (boundaries, out) = track(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw",
            4,
            false,
        );
        assert_eq!(boundaries, [Boundary::Switched]);
        assert!(out.ends_with(b"raw"));
    }

    #[test]
    fn close_is_read_from_the_version_and_connection() {
        let close = |text: &str| parse(text.as_bytes(), false).unwrap().unwrap().close;
        assert!(close(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(close("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!close(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!close("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    }
}
