//! A small HTTP/1.1 backend that answers every request with a JSON description of what
//! it received (method, path, headers, body size) and records each request, so that a
//! demo shows what reached the backend and a test can prove what did not. A WebSocket
//! upgrade is answered with 101, after which it echoes raw bytes back.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use serde::Serialize;

/// The largest request head the echo backend reads.
const MAX_HEAD: usize = 64 * 1024;

/// One request as the backend received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedRequest {
    /// The method.
    pub method: String,
    /// The request target.
    pub path: String,
    /// Every header, in order, as received.
    #[serde(serialize_with = "as_lines")]
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The body's length.
    pub body_bytes: usize,
}

fn as_lines<S: serde::Serializer>(
    headers: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}")),
    )
}

impl ReceivedRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running echo backend.
#[derive(Debug, Clone)]
pub struct EchoBackend {
    received: Arc<Mutex<Vec<ReceivedRequest>>>,
}

impl EchoBackend {
    /// Serves on a TCP address (port 0 picks one); returns the bound address.
    pub fn start_tcp(addr: SocketAddr) -> io::Result<(Self, SocketAddr)> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let backend = Self {
            received: Arc::default(),
        };
        backend.serve(move || listener.accept().map(|(stream, _)| stream))?;
        Ok((backend, bound))
    }

    /// Serves on a Unix socket at `path`.
    pub fn start_unix(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let backend = Self {
            received: Arc::default(),
        };
        backend.serve(move || listener.accept().map(|(stream, _)| stream))?;
        Ok(backend)
    }

    /// Serves every connection `accept` yields, each on a thread of its own.
    fn serve<S, A>(&self, mut accept: A) -> io::Result<()>
    where
        S: Read + Write + Send + 'static,
        A: FnMut() -> io::Result<S> + Send + 'static,
    {
        let serving = self.clone();
        thread::Builder::new()
            .name("echo-backend".into())
            .spawn(move || loop {
                match accept() {
                    Ok(stream) => serving.spawn_connection(stream),
                    Err(_) => thread::sleep(std::time::Duration::from_millis(10)),
                }
            })?;
        Ok(())
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn spawn_connection<S: Read + Write + Send + 'static>(&self, stream: S) {
        let received = self.received.clone();
        let _ = thread::Builder::new()
            .name("echo-connection".into())
            .spawn(move || {
                let _ = serve_connection(stream, &received);
            });
    }
}

fn serve_connection<S: Read + Write>(
    stream: S,
    received: &Mutex<Vec<ReceivedRequest>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let Some((request, keep_alive)) = read_request(&mut reader)? else {
            return Ok(());
        };
        let body = serde_json::to_vec_pretty(&request).unwrap_or_default();
        let upgrade = request
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(request);
        if upgrade {
            return echo_raw(reader);
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        // One write: a response split over several small writes waits on Nagle's
        // algorithm and the peer's delayed ACK, 40 ms a response on a kept-alive connection.
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: {connection}\r\n\r\n",
            body.len() + 1
        )
        .into_bytes();
        response.extend_from_slice(&body);
        response.push(b'\n');
        let stream = reader.get_mut();
        stream.write_all(&response)?;
        stream.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Answers an upgrade with 101, then sends back every byte it receives.
fn echo_raw<S: Read + Write>(mut reader: BufReader<S>) -> io::Result<()> {
    let switching =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    reader.get_mut().write_all(switching)?;
    let buffered = reader.buffer().to_vec();
    reader.get_mut().write_all(&buffered)?;
    let mut stream = reader.into_inner();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        stream.write_all(&chunk[..read])?;
    }
}

/// Reads one request; `None` at a clean end of stream.
fn read_request<R: BufRead>(reader: &mut R) -> io::Result<Option<(ReceivedRequest, bool)>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if reader.read_until(b'\n', &mut head)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }

    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed request head",
        ));
    }
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut request = ReceivedRequest {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: parsed.path.unwrap_or_default().to_owned(),
        headers,
        body: Vec::new(),
        body_bytes: 0,
    };
    let close_requested = request
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let keep_alive = parsed.version == Some(1) && !close_requested;

    request.body = read_body(reader, &request)?;
    request.body_bytes = request.body.len();
    Ok(Some((request, keep_alive)))
}

fn read_body<R: BufRead>(reader: &mut R, request: &ReceivedRequest) -> io::Result<Vec<u8>> {
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        return read_chunked(reader);
    }
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_text = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                if line == "\r\n" || line.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}
