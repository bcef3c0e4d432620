//! One client connection: TCP, a rustls client handshake with the client certificate,
//! then requests and responses one at a time. Driven over monoio's owned-buffer sockets,
//! like the gateway itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use srrrs_edge::http::backend_response::{Boundary, ResponseTracker};

/// What went wrong, by kind, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// TCP connect failed.
    Connect,
    /// The TLS handshake failed; the alert or error.
    Tls(String),
    /// The connection broke or closed before a whole response.
    Closed,
    /// The response was not HTTP.
    Malformed,
    /// The request took longer than the timeout.
    Timeout,
}

impl Failure {
    /// The label in reports.
    pub fn label(&self) -> String {
        match self {
            Self::Connect => "connect".into(),
            Self::Tls(what) => format!("tls: {what}"),
            Self::Closed => "closed".into(),
            Self::Malformed => "malformed response".into(),
            Self::Timeout => "timeout".into(),
        }
    }
}

/// An established TLS connection.
pub struct Connection {
    socket: TcpStream,
    tls: ClientConnection,
    buffer: Vec<u8>,
    /// Whether the handshake resumed a session.
    pub resumed: bool,
}

impl Connection {
    /// Connects and completes the handshake.
    pub async fn open(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
    ) -> Result<Self, Failure> {
        let socket = TcpStream::connect_addr(addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = socket.set_nodelay(true);
        let tls = ClientConnection::new(config.clone(), name.clone())
            .map_err(|e| Failure::Tls(e.to_string()))?;
        let mut connection = Self {
            socket,
            tls,
            buffer: Vec::with_capacity(16 * 1024),
            resumed: false,
        };
        connection.handshake().await?;
        connection.resumed = connection.tls.handshake_kind() == Some(HandshakeKind::Resumed);
        Ok(connection)
    }

    async fn handshake(&mut self) -> Result<(), Failure> {
        while self.tls.is_handshaking() {
            self.flush().await?;
            if self.tls.is_handshaking() {
                self.receive().await?;
            }
        }
        self.flush().await
    }

    /// Sends one request and reads its whole response; returns the status.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<u16, Failure> {
        self.tls
            .writer()
            .write_all(request)
            .map_err(|_| Failure::Closed)?;
        self.flush().await?;
        let mut tracker = ResponseTracker::default();
        let mut sink = Vec::new();
        let mut plain = [0u8; 16 * 1024];
        loop {
            let read = match self.tls.reader().read(&mut plain) {
                Ok(0) => return Err(Failure::Closed),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.receive().await?;
                    continue;
                }
                Err(_) => return Err(Failure::Closed),
            };
            let mut rest = &plain[..read];
            while !rest.is_empty() {
                sink.clear();
                let (used, boundary) = tracker
                    .advance(rest, false, &mut sink)
                    .map_err(|_| Failure::Malformed)?;
                rest = &rest[used..];
                if let Some(Boundary::Complete { status, .. }) = boundary {
                    return Ok(status);
                }
            }
        }
    }

    /// Reads and processes more TLS records.
    async fn receive(&mut self) -> Result<(), Failure> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let (result, buffer) = self.socket.read(buffer).await;
        self.buffer = buffer;
        match result {
            Ok(0) | Err(_) => return Err(Failure::Closed),
            Ok(_) => {}
        }
        let mut input = &self.buffer[..];
        while !input.is_empty() {
            self.tls.read_tls(&mut input).map_err(|_| Failure::Closed)?;
            if let Err(error) = self.tls.process_new_packets() {
                let _ = self.flush().await;
                return Err(Failure::Tls(error.to_string()));
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        while self.tls.wants_write() {
            let mut out = Vec::new();
            self.tls.write_tls(&mut out).map_err(|_| Failure::Closed)?;
            let (result, _) = self.socket.write_all(out).await;
            result.map_err(|_| Failure::Closed)?;
        }
        Ok(())
    }

    /// Sends close_notify and closes.
    pub async fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
    }
}

/// Whether the connection is still usable after a response: the server may have closed.
pub fn keeps_alive(status: u16) -> bool {
    status < 400
}

/// Writes a `GET path` request with `headers` into `out`.
pub fn request(out: &mut Vec<u8>, host: &str, path: &str, headers: &[String], close: bool) {
    out.clear();
    let _ = write!(out, "GET {path} HTTP/1.1\r\nhost: {host}\r\n");
    for header in headers {
        let _ = write!(out, "{header}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
