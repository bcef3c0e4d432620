//! The per-connection pipeline: TLS handshake (device proof), then the client's first
//! bytes, a backend, and the relay. Each step is a function here; what a step needs to
//! know lives in its own module (`tls`, `upstream`, `http`).

pub mod relay;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use tracing::{debug, debug_span, field, Instrument, Span};

use crate::config::LimitsConfig;
use crate::http::GatewayResponse;
use crate::ingress::Ingress;
use crate::metrics::WorkerMetrics;
use crate::tls::stream::{self, TlsReader, TlsSession, TlsWriter};
use crate::tls::HandshakeRefusal;
use relay::Abort;

/// How long a refused client gets to read the gateway's final response before the
/// connection is dropped.
const LINGER: Duration = Duration::from_secs(2);

/// What one worker thread shares between its connections.
pub struct Worker {
    /// The ingress served.
    pub ingress: Arc<Ingress>,
    /// Connection timeouts.
    pub limits: LimitsConfig,
    /// This worker's counters.
    pub metrics: Arc<WorkerMetrics>,
    next_backend: Cell<usize>,
}

impl Worker {
    /// State for one worker.
    pub fn new(ingress: Arc<Ingress>, limits: LimitsConfig, metrics: Arc<WorkerMetrics>) -> Self {
        Self {
            ingress,
            limits,
            metrics,
            next_backend: Cell::new(0),
        }
    }

    fn backend_turn(&self) -> usize {
        let turn = self.next_backend.get();
        self.next_backend.set(turn.wrapping_add(1));
        turn
    }
}

/// Serves one accepted connection to its end.
pub async fn serve(socket: TcpStream, peer: SocketAddr, worker: Rc<Worker>) {
    worker.metrics.connection_opened();
    let span = debug_span!(
        "connection",
        client.addr = %peer,
        sni = field::Empty,
        client.subject = field::Empty,
        client.sha256 = field::Empty,
    );
    serve_connection(socket, &worker).instrument(span).await;
    worker.metrics.connection_closed();
}

async fn serve_connection(socket: TcpStream, worker: &Worker) {
    let _ = socket.set_nodelay(true);
    let Some(mut session) = handshake(socket, worker).await else {
        return;
    };
    let abort = Abort::new();

    let first = match first_bytes(&mut session.reader, worker, &abort).await {
        Some(bytes) => bytes,
        None => return,
    };

    let ingress = &worker.ingress;
    let backend = match ingress.upstream.connect(worker.backend_turn()).await {
        Ok((stream, backend)) => {
            debug!(backend = %backend, "forwarding");
            stream.into_split()
        }
        Err(unreachable) => {
            worker.metrics.backend_unreachable();
            debug!(tried = unreachable.tried, "no backend reachable");
            let response = GatewayResponse::bad_gateway("no backend could be reached");
            respond_and_close(&mut session.reader, &mut session.writer, &response).await;
            return;
        }
    };

    let TlsSession {
        mut reader,
        mut writer,
        ..
    } = session;
    let idle = worker.limits.idle_timeout;
    let moved = relay::relay(&mut reader, &mut writer, backend, first, idle).await;
    debug!(
        to_backend = moved.to_backend,
        to_client = moved.to_client,
        "connection finished"
    );
    flush_pending_alert(&mut writer).await;
}

async fn handshake(socket: TcpStream, worker: &Worker) -> Option<TlsSession> {
    let limit = worker.limits.handshake_timeout;
    let outcome = monoio::time::timeout(limit, stream::accept(socket, &worker.ingress.tls)).await;
    let failure = match outcome {
        Ok(Ok(session)) => {
            record_session(&session);
            worker.metrics.handshake_completed(session.facts.version);
            return Some(session);
        }
        Ok(Err(failure)) => failure,
        Err(_) => stream::HandshakeFailure {
            reason: HandshakeRefusal::Timeout,
            detail: format!("no handshake within {limit:?}"),
            sni: None,
        },
    };
    worker.metrics.handshake_refused(failure.reason);
    debug!(reason = failure.reason.label(), detail = %failure.detail, sni = ?failure.sni, "handshake refused");
    None
}

fn record_session(session: &TlsSession) {
    let span = Span::current();
    let facts = &session.facts;
    if let Some(sni) = &facts.sni {
        span.record("sni", sni.as_str());
    }
    if let Some(client) = &facts.client {
        span.record("client.subject", client.subject.as_str());
        span.record("client.sha256", client.fingerprint.as_str());
    }
    debug!(version = ?facts.version, "handshake complete");
}

/// Waits for the client's first plaintext, within the idle timeout.
async fn first_bytes(reader: &mut TlsReader, worker: &Worker, abort: &Abort) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(16 * 1024);
    let read = monoio::time::timeout(
        worker.limits.idle_timeout,
        reader.read(&mut bytes, abort.handle()),
    );
    match read.await {
        Ok(Ok(count)) if count > 0 => Some(bytes),
        Ok(Ok(_)) => {
            debug!("client closed before sending a request");
            None
        }
        Ok(Err(error)) => {
            debug!(%error, "client read failed");
            None
        }
        Err(_) => {
            debug!("client sent nothing before the idle timeout");
            None
        }
    }
}

/// Sends a gateway response, closes the TLS session, and lingers briefly so that a
/// client still sending does not get a reset instead of the response.
async fn respond_and_close(
    reader: &mut TlsReader,
    writer: &mut TlsWriter,
    response: &GatewayResponse,
) {
    let abort = Abort::new();
    let sent = async {
        writer
            .write_all(&response.to_bytes(), abort.handle())
            .await?;
        writer.close(abort.handle()).await
    };
    if monoio::time::timeout(LINGER, sent).await.is_err() {
        return;
    }
    let _ = monoio::time::timeout(LINGER, reader.discard_until_closed(abort.handle())).await;
}

/// Sends any alert rustls queued when the client's input failed, within a short limit.
async fn flush_pending_alert(writer: &mut TlsWriter) {
    let abort = Abort::new();
    let _ = monoio::time::timeout(Duration::from_secs(1), writer.flush(abort.handle())).await;
}
