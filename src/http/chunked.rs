//! Chunked framing (RFC 9112 §7.1), tracked byte by byte so that the end of a body is
//! found without decoding it: the bytes themselves are forwarded unchanged. Because
//! they are forwarded, every line must end in CRLF and hold nothing a backend could
//! read differently.

use super::HttpError;

/// The longest chunk-size line (size and extensions) accepted.
const MAX_LINE: usize = 4096;

/// Where the tracker is within a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size { digits: u8 },
    /// In the extensions after the size, up to CR.
    Extension,
    /// After a size line's CR, expecting LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data's CR, expecting LF.
    DataLf,
    /// At the start of a trailer line or the final empty line.
    TrailerStart,
    /// Inside a trailer line, up to CR.
    Trailer,
    /// After a trailer line's CR, expecting LF.
    TrailerLf,
    /// After the final empty line's CR, expecting LF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Follows a chunked body and says where it ends.
#[derive(Debug, Clone)]
pub struct ChunkedBody {
    state: State,
    size: u64,
    remaining: u64,
    line: usize,
    allow_trailers: bool,
}

impl ChunkedBody {
    /// A tracker for a request body: trailer fields are refused, since a backend that
    /// merges them into the head would see fields the gateway never checked.
    pub fn request() -> Self {
        Self::new(false)
    }

    /// A tracker for a response body: trailers pass through.
    pub fn response() -> Self {
        Self::new(true)
    }

    fn new(allow_trailers: bool) -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            line: 0,
            allow_trailers,
        }
    }

    /// Whether the final chunk and trailer section have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances over `input` and returns how many bytes belong to the body: all of
    /// them, or fewer when the body ends inside `input`.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, HttpError> {
        let mut at = 0;
        while at < input.len() && self.state != State::Done {
            if self.state == State::Data {
                let take =
                    (input.len() - at).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                at += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(input[at])?;
            at += 1;
        }
        Ok(at)
    }

    fn step(&mut self, byte: u8) -> Result<(), HttpError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(bad("chunk line too long"));
        }
        self.state = match (self.state, byte) {
            (State::Size { digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                if digits == 15 {
                    return Err(bad("chunk size too large"));
                }
                let value = (byte as char).to_digit(16).unwrap_or(0) as u64;
                self.size = self.size * 16 + value;
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => return Err(bad("invalid chunk size")),
            (State::Size { .. }, b';') => State::Extension,
            (State::Size { .. } | State::Extension, b'\r') => State::SizeLf,
            (State::Size { .. }, _) => return Err(bad("invalid chunk size")),
            (State::Extension, byte) if is_extension_byte(byte) => State::Extension,
            (State::Extension, _) => return Err(bad("invalid chunk extension")),
            (State::SizeLf, b'\n') => self.end_size_line(),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => self.start_line(State::Size { digits: 0 }),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart, _) if !self.allow_trailers => {
                return Err(bad("trailer fields in a request"))
            }
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, byte) if byte != b'\n' && byte != 0 => {
                State::Trailer
            }
            (State::TrailerLf, b'\n') => self.start_line(State::TrailerStart),
            (State::EndLf, b'\n') => State::Done,
            _ => return Err(bad("invalid chunk framing")),
        };
        Ok(())
    }

    fn end_size_line(&mut self) -> State {
        let size = std::mem::take(&mut self.size);
        if size == 0 {
            return self.start_line(State::TrailerStart);
        }
        self.remaining = size;
        self.start_line(State::Data)
    }

    fn start_line(&mut self, state: State) -> State {
        self.line = 0;
        state
    }
}

/// Bytes allowed in chunk extensions: visible ASCII, space and tab (names, `=`, tokens
/// and quoted strings), never CR, LF or NUL.
fn is_extension_byte(byte: u8) -> bool {
    matches!(byte, b'\t' | b' '..=b'~')
}

fn bad(reason: &'static str) -> HttpError {
    HttpError::Malformed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consume_all(body: &mut ChunkedBody, input: &[u8]) -> Result<usize, HttpError> {
        body.advance(input)
    }

    #[test]
    fn a_body_ends_after_the_last_chunk_and_its_empty_line() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1";
        let mut body = ChunkedBody::request();
        let used = consume_all(&mut body, wire).unwrap();
        assert!(body.is_done());
        assert_eq!(&wire[used..], b"GET / HTTP/1.1");
    }

    #[test]
    fn the_end_is_found_whatever_the_split() {
        let wire = b"a\r\n0123456789\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut body = ChunkedBody::request();
            let first = body.advance(&wire[..split]).unwrap();
            assert_eq!(first, split);
            let second = body.advance(&wire[split..]).unwrap();
            assert_eq!(first + second, wire.len());
            assert!(body.is_done());
        }
    }

    #[test]
    fn bad_framing_is_refused() {
        for wire in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"-5\r\n",
            b"1111111111111111\r\n",
            b"5 \r\nhello\r\n",
            b"5;a\0\r\n",
            b"0\r\nX-Injected: 1\r\n\r\n",
            b"\r\n",
        ] {
            let mut body = ChunkedBody::request();
            assert!(
                body.advance(wire).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn response_trailers_pass() {
        let mut body = ChunkedBody::response();
        let wire = b"0\r\nX-Checksum: 1\r\n\r\n";
        assert_eq!(body.advance(wire).unwrap(), wire.len());
        assert!(body.is_done());
    }
}
