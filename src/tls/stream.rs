//! rustls driven over monoio's owned-buffer sockets: the handshake, then a session split
//! into a reader and a writer that share the one rustls connection. The same halves carry
//! the client side of a TLS connection to a backend.
//!
//! The two halves run as concurrent futures of one connection task on one thread, so the
//! connection lives in an `Rc<RefCell<_>>` and no borrow is ever held across an `.await`.
//! The writer is the only one that puts bytes on the socket once the handshake is done.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, ProtocolVersion, ServerConfig,
    ServerConnection,
};

use super::handshake_notes::{self, HandshakeNotes};
use super::ocsp;
use super::refusal::HandshakeRefusal;
use crate::socket;
use crate::upstream::proxy_protocol;

/// Size of each socket read.
const READ_CHUNK: usize = 16 * 1024;

/// The read buffer of a connection whose last read was small: an idle connection waits
/// for its next request holding this much, not a whole TLS record's worth.
const QUIET_READ: usize = 2 * 1024;

/// A fatal `unrecognized_name` alert as a plaintext TLS record (RFC 8446 §6, RFC 6066 §3).
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// What the handshake established, for logs, headers and policy.
#[derive(Debug, Clone)]
pub struct HandshakeFacts {
    /// The SNI the client sent, lowercase.
    pub sni: Option<String>,
    /// The negotiated TLS version.
    pub version: Option<ProtocolVersion>,
    /// The client's certificate chain as rustls holds it for this session: verified in
    /// this handshake, or in the one that issued the ticket it resumed. Who the device is
    /// comes from here, after the device policy has checked it again (see the proxy).
    pub peer_chain: Option<Vec<CertificateDer<'static>>>,
    /// The session was resumed from a ticket.
    pub resumed: bool,
    /// The client asked for `http/1.1` by ALPN (the one protocol offered).
    pub alpn: bool,
}

/// A handshake that did not produce a session.
#[derive(Debug)]
pub struct HandshakeFailure {
    /// The classification counted in metrics.
    pub reason: HandshakeRefusal,
    /// Detail for the debug log.
    pub detail: String,
    /// The SNI, when the ClientHello got that far.
    pub sni: Option<String>,
    /// The client sent no byte at all (a TCP health check, say).
    pub silent: bool,
}

/// An established TLS session, split into its two directions.
pub struct TlsSession {
    /// Decrypts what the client sends.
    pub reader: TlsReader,
    /// Encrypts what the client receives.
    pub writer: TlsWriter,
    /// What the handshake established.
    pub facts: HandshakeFacts,
}

/// The configuration of a handshake, as chosen by the SNI.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// Verifying the client's certificate may wait (for an OCSP answer): the client's
    /// flights after the ClientHello are then processed on the handshake pool, so that
    /// the wait never holds up the worker.
    pub may_wait: bool,
}

/// Runs a server handshake on `socket` (whose first bytes, when already read, are
/// `initial`), under the configuration `choose` gives for the
/// SNI the client sent (`None`: refused with `unrecognized_name`). On failure the alert
/// rustls chose has been sent. Once the client's first bytes have arrived, `admit`
/// decides whether the handshake goes on (it may wait for room first): a connection
/// that sends nothing has not begun a handshake.
pub async fn accept(
    socket: TcpStream,
    initial: Vec<u8>,
    choose: impl FnOnce(Option<&str>) -> Option<Chosen>,
    admit: impl AsyncFnOnce() -> bool,
) -> Result<TlsSession, HandshakeFailure> {
    let received = !initial.is_empty();
    let mut handshake = Handshake {
        socket,
        input: initial,
        sni: None,
        notes: Rc::default(),
        leftover: Vec::new(),
        received,
        may_wait: false,
    };
    if !received {
        handshake.input.reserve(QUIET_READ);
        handshake.read_some().await?;
    }
    // A PROXY protocol header where a ClientHello belongs: the listener does not trust
    // this address to send one (a trusted one's was read before the handshake).
    if proxy_protocol::starts_with_header(&handshake.input) {
        let detail = "a PROXY protocol header from an untrusted address";
        return Err(handshake.failure(HandshakeRefusal::UntrustedProxyHeader, detail));
    }
    if !admit().await {
        return Err(handshake.failure(HandshakeRefusal::PeerClosed, "not admitted: draining"));
    }
    let accepted = handshake.read_client_hello().await?;
    handshake.sni = accepted
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let Some(Chosen { config, may_wait }) = choose(handshake.sni.as_deref()) else {
        handshake.send(UNRECOGNIZED_NAME_ALERT.to_vec()).await;
        let detail = format!("SNI {:?} names no ingress", handshake.sni);
        return Err(handshake.failure(HandshakeRefusal::UnrecognizedName, detail));
    };
    handshake.may_wait = may_wait;
    // A ticket in the ClientHello is opened (and its chain re-checked) right here.
    let connection =
        match handshake_notes::within(&handshake.notes, || accepted.into_connection(config)) {
            Ok(connection) => connection,
            Err((error, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                handshake.send(out).await;
                return Err(handshake.failure(HandshakeRefusal::from_tls_error(&error), error));
            }
        };
    handshake.complete(connection).await
}

struct Handshake {
    socket: TcpStream,
    input: Vec<u8>,
    sni: Option<String>,
    notes: Rc<HandshakeNotes>,
    leftover: Vec<u8>,
    received: bool,
    may_wait: bool,
}

impl Handshake {
    /// Reads until the ClientHello is whole, starting with what `input` holds.
    async fn read_client_hello(&mut self) -> Result<rustls::server::Accepted, HandshakeFailure> {
        let mut acceptor = Acceptor::default();
        loop {
            if self.input.is_empty() {
                self.read_some().await?;
            }
            // Fed a record at a time as rustls takes it, so that a large ClientHello
            // (rustls accepts up to 64 KiB) is assembled rather than overflowing.
            let mut input = &self.input[..];
            while !input.is_empty() {
                acceptor
                    .read_tls(&mut input)
                    .map_err(|e| self.io_failure(e))?;
                match acceptor.accept() {
                    Ok(Some(accepted)) => {
                        // What came after the ClientHello is the connection's to read.
                        self.leftover = input.to_vec();
                        return Ok(accepted);
                    }
                    Ok(None) => {}
                    Err((error, mut alert)) => {
                        let mut out = Vec::new();
                        let _ = alert.write_all(&mut out);
                        self.send(out).await;
                        return Err(self.failure(HandshakeRefusal::ProtocolError, error));
                    }
                }
            }
            self.input.clear();
        }
    }

    async fn complete(
        mut self,
        mut conn: ServerConnection,
    ) -> Result<TlsSession, HandshakeFailure> {
        if !self.leftover.is_empty() {
            let leftover = std::mem::take(&mut self.leftover);
            if let Err(error) = handshake_notes::within(&self.notes, || feed(&mut conn, &leftover))
            {
                let _ = self.flush(&mut conn).await;
                return Err(self.failure(HandshakeRefusal::from_tls_error(&error), error));
            }
        }
        loop {
            self.flush(&mut conn).await?;
            if !conn.is_handshaking() {
                break;
            }
            self.read_some().await?;
            let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
            let processed = if self.may_wait && !resumed {
                let (back, processed) = self.feed_on_pool(conn).await?;
                conn = back;
                processed
            } else {
                handshake_notes::within(&self.notes, || feed(&mut conn, &self.input))
            };
            if let Err(error) = processed {
                // The alert rustls queued for this error is still to be sent.
                let _ = self.flush(&mut conn).await;
                return Err(self.failure(HandshakeRefusal::from_tls_error(&error), error));
            }
        }

        let facts = HandshakeFacts {
            sni: self.sni.take(),
            version: conn.protocol_version(),
            peer_chain: conn.peer_certificates().map(<[_]>::to_vec),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
            alpn: conn.alpn_protocol().is_some(),
        };
        Ok(split(self.socket, conn, facts))
    }

    /// Feeds what was read to rustls on the handshake pool, where the client verifier may
    /// wait for an OCSP answer, with this connection's notes taken along and back.
    async fn feed_on_pool(
        &mut self,
        mut conn: ServerConnection,
    ) -> Result<(ServerConnection, Result<(), rustls::Error>), HandshakeFailure> {
        let input = std::mem::take(&mut self.input);
        let notes = self.notes.detach();
        let fed = monoio::spawn_blocking(move || {
            // A panic in the step ends this handshake, here, rather than leaving it to
            // wait for a result that never comes.
            panic::catch_unwind(AssertUnwindSafe(move || {
                let (processed, notes) = handshake_notes::within_detached(notes, || {
                    ocsp::allow_waiting(|| feed(&mut conn, &input))
                });
                (conn, input, processed, notes)
            }))
        })
        .await;
        let (conn, input, processed, notes) = match fed {
            Ok(Ok(fed)) => fed,
            Ok(Err(_)) => {
                tracing::error!("a handshake step panicked on the handshake pool");
                return Err(
                    self.failure(HandshakeRefusal::ProtocolError, "the handshake step failed")
                );
            }
            Err(_) => {
                return Err(
                    self.failure(HandshakeRefusal::PeerClosed, "the handshake pool is gone")
                );
            }
        };
        self.input = input;
        self.notes.adopt(notes);
        Ok((conn, processed))
    }

    async fn read_some(&mut self) -> Result<(), HandshakeFailure> {
        let mut buffer = std::mem::take(&mut self.input);
        buffer.clear();
        // A connection waiting to be admitted holds a small buffer; once its handshake
        // runs, reads take whole records.
        if self.received && buffer.capacity() < READ_CHUNK {
            buffer.reserve(READ_CHUNK);
        }
        let (result, buffer) = self.socket.read(buffer).await;
        self.input = buffer;
        match result {
            Ok(0) => Err(self.failure(
                HandshakeRefusal::PeerClosed,
                "connection closed during the handshake",
            )),
            Ok(_) => {
                self.received = true;
                Ok(())
            }
            Err(error) => Err(self.io_failure(error)),
        }
    }

    async fn flush(&mut self, conn: &mut ServerConnection) -> Result<(), HandshakeFailure> {
        while conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out)
                .map_err(|error| self.io_failure(error))?;
            let (result, _) = self.socket.write_all(out).await;
            result.map_err(|error| self.io_failure(error))?;
        }
        Ok(())
    }

    /// Best effort: the peer may already be gone, and the handshake has failed anyway.
    async fn send(&mut self, bytes: Vec<u8>) {
        let _ = self.socket.write_all(bytes).await;
    }

    fn failure(&self, reason: HandshakeRefusal, error: impl ToString) -> HandshakeFailure {
        HandshakeFailure {
            reason,
            detail: error.to_string(),
            sni: self.sni.clone(),
            silent: !self.received,
        }
    }

    fn io_failure(&self, error: io::Error) -> HandshakeFailure {
        self.failure(HandshakeRefusal::PeerClosed, error)
    }
}

/// The buffer for the next read of a connection that just read `read` bytes into
/// `buffer`: a full buffer grows to a TLS record's size (more is likely on its way), a
/// short read on a large buffer goes back to the small one. The contents are consumed
/// before the next read, so they need not survive.
fn resized_for_next_read(buffer: Vec<u8>, read: usize) -> Vec<u8> {
    let capacity = buffer.capacity();
    if read == capacity && capacity < READ_CHUNK {
        let mut larger = Vec::with_capacity(READ_CHUNK);
        larger.extend_from_slice(&buffer);
        larger
    } else if read < QUIET_READ && capacity > QUIET_READ {
        let mut smaller = Vec::with_capacity(QUIET_READ);
        smaller.extend_from_slice(&buffer);
        smaller
    } else {
        buffer
    }
}

/// Hands ciphertext to rustls and processes it.
fn feed(conn: &mut ServerConnection, mut input: &[u8]) -> Result<(), rustls::Error> {
    while !input.is_empty() {
        match conn.read_tls(&mut input) {
            Ok(0) => {
                return Err(rustls::Error::General(
                    "TLS input after the peer closed".into(),
                ))
            }
            Ok(_) => {}
            Err(_) => return Err(rustls::Error::General("TLS input buffer full".into())),
        }
        conn.process_new_packets()?;
    }
    Ok(())
}

fn split(socket: TcpStream, conn: ServerConnection, facts: HandshakeFacts) -> TlsSession {
    let (reader, writer) = halves(socket, Connection::Server(conn));
    TlsSession {
        reader,
        writer,
        facts,
    }
}

fn halves(socket: TcpStream, conn: Connection) -> (TlsReader, TlsWriter) {
    let shared = Rc::new(RefCell::new(conn));
    let (read_half, write_half) = socket.into_split();
    let reader = TlsReader {
        socket: read_half,
        conn: shared.clone(),
        input: Vec::with_capacity(QUIET_READ),
        consumed: 0,
    };
    let writer = TlsWriter {
        socket: write_half,
        conn: shared,
        output: Vec::new(),
    };
    (reader, writer)
}

/// Runs a client handshake to a backend on `socket`, checking its certificate for
/// `name` under `config`; the session split into its two directions.
pub async fn connect(
    mut socket: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<(TlsReader, TlsWriter)> {
    let invalid = |error: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, error);
    let mut conn = ClientConnection::new(config, name).map_err(invalid)?;
    let mut input = Vec::with_capacity(READ_CHUNK);
    while conn.is_handshaking() {
        let mut output = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut output)?;
        }
        if !output.is_empty() {
            let (sent, _) = socket.write_all(output).await;
            sent?;
            continue;
        }
        input.clear();
        let (read, buffer) = socket.read(input).await;
        input = buffer;
        if read? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut pending = &input[..];
        while !pending.is_empty() {
            conn.read_tls(&mut pending)?;
            if let Err(error) = conn.process_new_packets() {
                // The alert rustls queued says why; the error is what the log needs.
                let mut alert = Vec::new();
                let _ = conn.write_tls(&mut alert);
                let _ = socket.write_all(alert).await;
                return Err(invalid(error));
            }
        }
    }
    // The client's last flight (its Finished) goes out with the first request, which the
    // writer sends after whatever rustls has queued.
    Ok(halves(socket, Connection::Client(conn)))
}

/// The client-to-gateway direction of a session.
pub struct TlsReader {
    socket: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<Connection>>,
    input: Vec<u8>,
    consumed: usize,
}

impl TlsReader {
    /// Appends decrypted bytes to `out` and returns how many. `Ok(0)` means the client
    /// closed: with `close_notify`, or by closing TCP (a truncation rustls reports as
    /// `UnexpectedEof`, which this treats as the end of input too).
    pub async fn read(&mut self, out: &mut Vec<u8>, cancel: &CancelHandle) -> io::Result<usize> {
        loop {
            if let Some(result) = self.take_plaintext(out) {
                return result;
            }
            if self.consumed < self.input.len() {
                self.decrypt_buffered()?;
                continue;
            }
            self.read_socket(cancel).await?;
        }
    }

    fn take_plaintext(&mut self, out: &mut Vec<u8>) -> Option<io::Result<usize>> {
        let mut conn = self.conn.borrow_mut();
        let mut reader = conn.reader();
        match reader.fill_buf() {
            Ok(chunk) => {
                let len = chunk.len();
                out.extend_from_slice(chunk);
                reader.consume(len);
                Some(Ok(len))
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
            Err(error) => Some(Err(error)),
        }
    }

    fn decrypt_buffered(&mut self) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        let mut pending = &self.input[self.consumed..];
        let before = pending.len();
        conn.read_tls(&mut pending)?;
        if pending.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input not accepted",
            ));
        }
        self.consumed += before - pending.len();
        conn.process_new_packets()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(())
    }

    async fn read_socket(&mut self, cancel: &CancelHandle) -> io::Result<()> {
        let mut buffer = std::mem::take(&mut self.input);
        buffer.clear();
        self.consumed = 0;
        let (result, buffer) = self.socket.cancelable_read(buffer, cancel.clone()).await;
        self.input = buffer;
        let read = result?;
        self.input = resized_for_next_read(std::mem::take(&mut self.input), read);
        if read == 0 {
            // Tell rustls the transport ended, so the reader reports how.
            let mut conn = self.conn.borrow_mut();
            conn.read_tls(&mut io::empty())?;
        }
        Ok(())
    }

    /// Reads and discards raw bytes until the client closes or `cancel` fires: the
    /// lingering close that lets a final response reach a client still sending.
    pub async fn discard_until_closed(&mut self, cancel: &CancelHandle) {
        loop {
            let mut buffer = std::mem::take(&mut self.input);
            buffer.clear();
            let (result, buffer) = self.socket.cancelable_read(buffer, cancel.clone()).await;
            self.input = buffer;
            if !matches!(result, Ok(n) if n > 0) {
                return;
            }
        }
    }
}

/// The gateway-to-client direction of a session.
pub struct TlsWriter {
    socket: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<Connection>>,
    output: Vec<u8>,
}

impl TlsWriter {
    /// Encrypts and sends all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8], cancel: &CancelHandle) -> io::Result<()> {
        while !data.is_empty() {
            let accepted = self.conn.borrow_mut().writer().write(data)?;
            data = &data[accepted..];
            self.flush(cancel).await?;
        }
        Ok(())
    }

    /// Sends whatever TLS records rustls has queued: data, alerts, key updates.
    pub async fn flush(&mut self, cancel: &CancelHandle) -> io::Result<()> {
        loop {
            let mut output = std::mem::take(&mut self.output);
            output.clear();
            {
                let mut conn = self.conn.borrow_mut();
                while conn.wants_write() {
                    conn.write_tls(&mut output)?;
                }
            }
            if output.is_empty() {
                self.output = output;
                return Ok(());
            }
            let (result, output) = socket::send_all(&mut self.socket, output, cancel).await;
            self.output = output;
            result?;
        }
    }

    /// Sends the last of `data` and `close_notify` together, in as few writes as rustls's
    /// buffer allows. The socket closes when the session is dropped.
    pub async fn finish(&mut self, mut data: &[u8], cancel: &CancelHandle) -> io::Result<()> {
        while !data.is_empty() {
            let accepted = self.conn.borrow_mut().writer().write(data)?;
            data = &data[accepted..];
            if !data.is_empty() {
                self.flush(cancel).await?;
            }
        }
        self.conn.borrow_mut().send_close_notify();
        self.flush(cancel).await
    }

    /// Sends `close_notify`. The socket closes when the session is dropped.
    pub async fn close(&mut self, cancel: &CancelHandle) -> io::Result<()> {
        self.finish(&[], cancel).await
    }

    /// Half-closes the socket: the client reads the end of the stream now, while the
    /// gateway may still read what it sends.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.socket.shutdown().await
    }
}
