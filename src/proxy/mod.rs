//! The per-connection pipeline: TLS handshake (the device proves itself), then for each
//! request its head, its authorization (the user proves themselves), and only then its
//! bytes to the backend, with the responses relayed back. Each step is a function here
//! or in a submodule; what a step needs to know lives in `tls`, `http`, `auth` and
//! `upstream`.

pub mod admission;
pub mod drain;
pub mod exchange;
pub mod live;
pub mod requests;
pub mod responses;

use std::cell::RefCell;

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use rustls::pki_types::UnixTime;
use tracing::{debug, debug_span, field, Instrument, Span};

use crate::access_log::{AccessLog, RequestEntry};
use crate::auth::cache::TokenCache;
use crate::auth::{Authorizer, Verdict};
use crate::config::{Balance, LimitsConfig, ProxyProtocolVersion};
use crate::http::head::RequestHead;
use crate::http::GatewayResponse;
use crate::ingress::{Ingress, IngressSet};
use crate::metrics::{LatencyRecorder, Shed, Timed, WorkerMetrics};
use crate::tls::chain_cache::VerifiedChain;
use crate::tls::stream::{self, HandshakeFacts, TlsReader, TlsSession, TlsWriter};
use crate::tls::HandshakeRefusal;
use crate::upstream::pool::IdlePool;
use crate::upstream::proxy_protocol::{self, TrustedSources};
use crate::upstream::{Backend, BackendReader, BackendWriter};
use admission::{Admitted, Caps, HandshakeSlot, SourceCounts, WorkerLoad, HANDSHAKE_STALL};
use drain::Draining;
use exchange::{Abort, Exchange, Signal};
use requests::{Client, HeadFailure, TlsSummary};

/// How long a refused client gets to read the gateway's final response before the
/// connection is dropped.
const LINGER: Duration = Duration::from_secs(2);

/// What one worker thread shares between its connections.
pub struct Worker {
    /// Which worker this is, for logs.
    pub index: usize,
    /// Connection timeouts.
    pub limits: LimitsConfig,
    /// This worker's counters.
    pub metrics: Arc<WorkerMetrics>,
    /// Connections admitted with a client certificate, for revocation sweeps.
    pub live: Rc<live::LiveConnections>,
    /// Raised when the gateway drains.
    pub draining: Draining,
    /// Latencies recorded by this worker, moved to `metrics` once a second.
    pub latencies: LatencyRecorder,
    /// Where requests and refused connections are logged, if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
    load: Rc<WorkerLoad>,
    caps: Caps,
    /// The ingresses in force, which a configuration reload replaces.
    shared: Arc<ArcSwap<IngressSet>>,
    /// This worker's state for each of them, rebuilt when the set is replaced.
    local: RefCell<Rc<LocalIngresses>>,
}

/// The ingresses in force, each with this worker's state for it.
pub struct LocalIngresses {
    set: Arc<IngressSet>,
    ingresses: Vec<Rc<LocalIngress>>,
}

impl LocalIngresses {
    fn new(set: Arc<IngressSet>) -> Self {
        let ingresses = (set.all().iter())
            .map(|ingress| Rc::new(LocalIngress::new(ingress.clone())))
            .collect();
        Self { set, ingresses }
    }

    /// The ingress a client that sent `sni` reaches, if any.
    fn select(&self, sni: Option<&str>) -> Option<Rc<LocalIngress>> {
        let index = self.set.select(sni)?;
        Some(self.ingresses[index].clone())
    }
}

/// An ingress as one worker serves it: its token cache, its idle backend connections and
/// the exchanges open with each backend on this worker.
pub struct LocalIngress {
    /// The ingress.
    pub ingress: Arc<Ingress>,
    /// Backend connections kept for reuse.
    idle_backends: Rc<IdlePool>,
    /// Exchanges open with each backend on this worker, for least-connections.
    backend_load: Vec<std::cell::Cell<usize>>,
    next_backend: std::cell::Cell<usize>,
    tokens: RefCell<TokenCache>,
    /// Raised when a configuration reload has replaced this ingress: its connections
    /// close once no request is in flight, as in a drain.
    pub retired: Draining,
}

impl LocalIngress {
    fn new(ingress: Arc<Ingress>) -> Self {
        let tokens = ingress
            .auth
            .as_ref()
            .map_or_else(|| TokenCache::new(0), |auth| auth.new_cache());
        let upstream = &ingress.upstream;
        let idle_backends =
            IdlePool::new(upstream.keepalive_connections, upstream.keepalive_timeout);
        let backend_load = (0..upstream.backends().len())
            .map(|_| Default::default())
            .collect();
        Self {
            ingress,
            idle_backends,
            backend_load,
            next_backend: Default::default(),
            tokens: RefCell::new(tokens),
            retired: Draining::default(),
        }
    }

    /// The backend a new backend connection should go to first: the next in turn, or,
    /// for least-connections, the available one with the fewest exchanges on this
    /// worker (ties in turn).
    fn preferred_backend(&self) -> usize {
        let turn = self.next_backend.get();
        self.next_backend.set(turn.wrapping_add(1));
        let upstream = &self.ingress.upstream;
        let count = upstream.backends().len();
        match upstream.balance {
            Balance::RoundRobin => turn % count,
            Balance::LeastConnections => (0..count)
                .map(|offset| (turn + offset) % count)
                .filter(|index| upstream.health()[*index].is_available())
                .min_by_key(|index| self.backend_load[*index].get())
                .unwrap_or(turn % count),
        }
    }

    /// Checks a request's `Authorization` values with this worker's token cache, on a
    /// connection whose client certificate has `thumbprint`, for a path whose rule
    /// number `rule` (if any) requires claims of its own.
    pub fn authorize(
        &self,
        authorizer: &Authorizer,
        values: &[&[u8]],
        thumbprint: Option<&str>,
        rule: Option<usize>,
    ) -> Verdict {
        authorizer.authorize(values, thumbprint, &mut self.tokens.borrow_mut(), rule)
    }
}

impl Worker {
    /// State for one worker.
    pub fn new(
        index: usize,
        shared: Arc<ArcSwap<IngressSet>>,
        limits: LimitsConfig,
        metrics: Arc<WorkerMetrics>,
        sources: Option<Arc<SourceCounts>>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        let caps = Caps {
            connections: limits.max_connections_per_worker,
            handshakes: limits.max_handshakes_per_worker,
            sources,
        };
        let local = RefCell::new(Rc::new(LocalIngresses::new(shared.load_full())));
        Self {
            index,
            limits,
            draining: Draining::default(),
            latencies: LatencyRecorder::default(),
            access_log,
            load: Rc::default(),
            caps,
            metrics,
            live: Rc::default(),
            shared,
            local,
        }
    }

    /// The ingresses in force now (see `notice_reload`).
    pub fn ingresses(&self) -> Rc<LocalIngresses> {
        self.notice_reload();
        self.local.borrow().clone()
    }

    /// Puts the ingresses of a reload in force on this worker, if one has replaced those
    /// it has; the connections of the old ones are told to close once no request is in
    /// flight.
    pub fn notice_reload(&self) {
        let shared = self.shared.load();
        let mut local = self.local.borrow_mut();
        if !Arc::ptr_eq(&shared, &local.set) {
            let old = std::mem::replace(&mut *local, Rc::new(LocalIngresses::new(shared.clone())));
            for ingress in &old.ingresses {
                ingress.retired.raise();
            }
        }
    }

    /// This worker's open client connections.
    pub fn open_connections(&self) -> usize {
        self.load.connections()
    }

    /// A place among this worker's handshakes in progress, once there is room: at the
    /// cap, a handshake that has stalled for a second gives its place up; otherwise
    /// this waits for one to end. `None` when the worker drains meanwhile. `evicted`
    /// is raised if this handshake later gives its place up.
    pub async fn handshake_slot(&self, evicted: Rc<Signal>) -> Option<HandshakeSlot> {
        loop {
            if self.draining.is_raised() {
                return None;
            }
            if self.load.has_handshake_room(&self.caps) {
                return Some(self.load.start_handshake(evicted));
            }
            if self.load.evict_stalled(HANDSHAKE_STALL) {
                self.metrics.connection_shed(Shed::StalledHandshake);
                continue;
            }
            let age = self.load.oldest_handshake_age().unwrap_or_default();
            let stall = HANDSHAKE_STALL.saturating_sub(age);
            monoio::select! {
                _ = self.load.handshake_ended.wait() => {},
                _ = monoio::time::sleep(stall) => {},
                _ = self.draining.wait() => {},
            }
        }
    }
}

/// Where a connection comes from and goes to: the socket's addresses, or those a
/// trusted load balancer's PROXY header gave; and what was read before the handshake.
pub struct Arrival {
    /// The client.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub destination: Option<SocketAddr>,
    /// Bytes that followed the PROXY header, the start of the handshake.
    pub initial: Vec<u8>,
}

/// Takes an accepted connection. From a load balancer `proxied` trusts, its PROXY header
/// is read first, on a task of its own; then, with the client's address known, the
/// connection is closed at once when it is over a cap, or otherwise served.
pub fn take(
    socket: TcpStream,
    peer: SocketAddr,
    proxied: Option<&TrustedSources>,
    worker: &Rc<Worker>,
) {
    if proxied.is_some_and(|trusted| trusted.contains(peer.ip())) {
        monoio::spawn(take_proxied(socket, peer, worker.clone()));
        return;
    }
    let arrival = Arrival {
        peer,
        destination: None,
        initial: Vec::new(),
    };
    admit(socket, arrival, worker);
}

/// Reads a trusted load balancer's PROXY header, within the handshake timeout; a
/// connection without a valid one is closed and counted.
async fn take_proxied(mut socket: TcpStream, balancer: SocketAddr, worker: Rc<Worker>) {
    let limit = worker.limits.handshake_timeout;
    let read = monoio::time::timeout(limit, read_proxy_header(&mut socket)).await;
    let why = match read {
        Ok(Ok((received, initial))) => {
            let (peer, destination) = match received.addresses {
                Some((source, destination)) => (source, Some(destination)),
                None => (balancer, None),
            };
            let arrival = Arrival {
                peer,
                destination,
                initial,
            };
            return admit(socket, arrival, &worker);
        }
        Ok(Err(why)) => why,
        Err(_) => "no PROXY header within the handshake timeout",
    };
    worker.metrics.connection_shed(Shed::ProxyHeader);
    debug!(balancer = %balancer, why, "PROXY header refused");
    if let Some(log) = &worker.access_log {
        log.refused(balancer, None, Shed::ProxyHeader.label());
    }
}

/// Reads until a whole PROXY header has arrived: its addresses, and what came after it.
async fn read_proxy_header(
    socket: &mut TcpStream,
) -> Result<(proxy_protocol::Received, Vec<u8>), &'static str> {
    use monoio::io::AsyncReadRent;
    let mut input: Vec<u8> = Vec::with_capacity(256);
    loop {
        match proxy_protocol::parse(&input) {
            Ok(Some(received)) => {
                let rest = input.split_off(received.length);
                return Ok((received, rest));
            }
            Ok(None) => {}
            Err(proxy_protocol::Malformed(why)) => return Err(why),
        }
        let chunk = Vec::with_capacity(512);
        let (read, chunk) = socket.read(chunk).await;
        match read {
            Ok(0) | Err(_) => return Err("closed before a whole PROXY header"),
            Ok(_) => input.extend_from_slice(&chunk),
        }
    }
}

/// Closes a connection over a cap at once; serves the others on a task of their own.
fn admit(socket: TcpStream, arrival: Arrival, worker: &Rc<Worker>) {
    let peer = arrival.peer;
    let admitted = match worker.load.admit(peer.ip(), &worker.caps) {
        Ok(admitted) => admitted,
        Err(shed) => {
            worker.metrics.connection_shed(shed);
            debug!(worker = worker.index, client.addr = %peer, limit = shed.label(), "connection shed");
            if let Some(log) = &worker.access_log {
                log.refused(peer, None, shed.label());
            }
            return;
        }
    };
    monoio::spawn(serve(socket, arrival, worker.clone(), admitted));
}

/// Serves one admitted connection to its end.
async fn serve(socket: TcpStream, arrival: Arrival, worker: Rc<Worker>, admitted: Admitted) {
    let peer = arrival.peer;
    worker.metrics.connection_opened();
    let span = debug_span!(
        "connection",
        worker = worker.index,
        client.addr = %peer,
        sni = field::Empty,
        client.subject = field::Empty,
        client.sha256 = field::Empty,
    );
    serve_connection(socket, arrival, &worker)
        .instrument(span)
        .await;
    worker.metrics.connection_closed();
    drop(admitted);
}

async fn serve_connection(socket: TcpStream, arrival: Arrival, worker: &Worker) {
    let _ = socket.set_nodelay(true);
    let Arrival {
        peer,
        destination,
        initial,
    } = arrival;
    let destination = destination.or_else(|| socket.local_addr().ok());
    // Boxed, as is the relay below: the future of a connection that waits for its next
    // request holds only what waiting needs, not the largest step's state.
    // A handshake counts against the worker's cap from the client's first bytes on: a
    // connection that sends nothing holds no place (its handshake_timeout ends it).
    let evicted = Rc::new(Signal::default());
    let slot: RefCell<Option<HandshakeSlot>> = RefCell::new(None);
    let admit = async || match worker.handshake_slot(evicted.clone()).await {
        Some(taken) => {
            *slot.borrow_mut() = Some(taken);
            worker.metrics.handshake_started();
            true
        }
        None => false,
    };
    // The ingress the SNI names, from the set in force when the connection began.
    let ingresses = worker.ingresses();
    let chosen: RefCell<Option<Rc<LocalIngress>>> = RefCell::new(None);
    let choose = |sni: Option<&str>| {
        let local = ingresses.select(sni)?;
        let tls = &local.ingress.tls;
        let config = stream::Chosen {
            config: tls.server_config.clone(),
            may_wait: tls
                .device
                .as_ref()
                .is_some_and(|device| device.ocsp().is_some()),
        };
        *chosen.borrow_mut() = Some(local);
        Some(config)
    };
    let session = monoio::select! {
        session = Box::pin(handshake(socket, initial, peer, worker, choose, admit)) => session,
        _ = evicted.wait() => {
            debug!("handshake dropped: stalled while others waited");
            None
        }
    };
    if slot.take().is_some() {
        worker.metrics.handshake_ended();
    }
    let (Some(session), Some(local)) = (session, chosen.take()) else {
        return;
    };
    drop(ingresses);
    let TlsSession {
        mut reader,
        mut writer,
        mut facts,
    } = session;
    // Kept for the access log and PROXY headers only: an idle connection holds nothing
    // it does not need.
    let wanted = worker.access_log.is_some() || local.ingress.upstream.sends_proxy_headers();
    let sni = facts.sni.take().filter(|_| wanted);
    let tls = TlsSummary {
        destination,
        version: facts.version.map(version_name),
        resumed: facts.resumed,
        alpn: facts.alpn,
    };
    let Ok(device) = device_of(facts, worker, &local.ingress) else {
        if let Some(log) = &worker.access_log {
            log.refused(peer, sni.as_deref(), "certificate_no_longer_valid");
        }
        return;
    };
    let client = Client {
        worker,
        local: &local,
        peer,
        sni: sni.as_deref(),
        device: device.as_deref().map(|chain| &chain.identity),
        chain: device.as_deref(),
        tls,
    };
    let Some(chain) = device.clone() else {
        serve_requests(&mut reader, &mut writer, &client).await;
        Box::pin(send_pending_alert(&mut writer)).await;
        return;
    };
    // A certificate revoked while its connection is open ends the connection.
    let Some(verifier) = &local.ingress.tls.device else {
        return;
    };
    let registration = worker.live.register(chain, verifier);
    let served = monoio::select! {
        _ = serve_requests(&mut reader, &mut writer, &client) => true,
        _ = registration.close.wait() => false,
    };
    if served {
        Box::pin(send_pending_alert(&mut writer)).await;
    }
}

/// Sends what rustls still has queued (the alert for a client's bad TLS input, say),
/// within a short limit. After a clean close there is nothing.
async fn send_pending_alert(writer: &mut TlsWriter) {
    let abort = Abort::new();
    let _ = monoio::time::timeout(Duration::from_secs(1), writer.flush(abort.handle())).await;
}

async fn handshake(
    socket: TcpStream,
    initial: Vec<u8>,
    peer: SocketAddr,
    worker: &Worker,
    choose: impl FnOnce(Option<&str>) -> Option<stream::Chosen>,
    admit: impl AsyncFnOnce() -> bool,
) -> Option<TlsSession> {
    let limit = worker.limits.handshake_timeout;
    let started = Instant::now();
    let accept = stream::accept(socket, initial, choose, admit);
    let outcome = monoio::time::timeout(limit, accept).await;
    let failure = match outcome {
        Ok(Ok(session)) => {
            worker.latencies.time(Timed::Handshake, started.elapsed());
            record_session(&session);
            worker
                .metrics
                .handshake_completed(session.facts.version, session.facts.resumed);
            return Some(session);
        }
        Ok(Err(failure)) => failure,
        Err(_) => stream::HandshakeFailure {
            reason: HandshakeRefusal::Timeout,
            detail: format!("no handshake within {limit:?}"),
            sni: None,
            silent: false,
        },
    };
    worker.metrics.handshake_refused(failure.reason);
    debug!(reason = failure.reason.label(), detail = %failure.detail, sni = ?failure.sni, "handshake refused");
    // A connection that closed without a byte (a TCP health check) is not logged.
    let probe = failure.silent && failure.reason == HandshakeRefusal::PeerClosed;
    if let (Some(log), false) = (&worker.access_log, probe) {
        log.refused(peer, failure.sni.as_deref(), failure.reason.label());
    }
    None
}

fn record_session(session: &TlsSession) {
    let facts = &session.facts;
    if let Some(sni) = &facts.sni {
        Span::current().record("sni", sni.as_str());
    }
    debug!(version = ?facts.version, resumed = facts.resumed, "handshake complete");
}

/// The device behind a session: the chain rustls holds for it, checked again under the
/// revocation set in force now (a cache hit, unless a CRL arrived since it was verified,
/// in the handshake or when its ticket was opened). `Err` when it no longer passes: the
/// connection then closes before any request, since a session is past the point where a
/// TLS alert could say why. (A ticket whose chain fails is declined before that, and the
/// full handshake that follows gets the alert.)
fn device_of(
    facts: HandshakeFacts,
    worker: &Worker,
    ingress: &Ingress,
) -> Result<Option<Arc<VerifiedChain>>, ()> {
    let (Some(chain), Some(device)) = (facts.peer_chain, &ingress.tls.device) else {
        return Ok(None);
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Ok(None);
    };
    match device.check(leaf, intermediates, UnixTime::now()) {
        Ok(verified) => {
            let span = Span::current();
            span.record("client.subject", verified.identity.subject.as_str());
            span.record("client.sha256", verified.identity.fingerprint.as_str());
            Ok(Some(verified))
        }
        Err(error) => {
            worker.metrics.live_connection_revoked();
            debug!(%error, "closing: the session's certificate no longer verifies");
            Err(())
        }
    }
}

/// The first request is read and checked before any backend is contacted; only an
/// authorized request opens a backend connection, which then serves the rest.
async fn serve_requests(reader: &mut TlsReader, writer: &mut TlsWriter, client: &Client<'_>) {
    let abort = Abort::new();
    // Grows with what arrives: an idle connection holds no request buffer.
    let mut input = Vec::new();
    // The first head's time runs from the end of the handshake, and no longer than an
    // idle connection may wait.
    let limits = &client.worker.limits;
    let deadline = Instant::now() + limits.request_head_timeout.min(limits.idle_timeout);
    let head = requests::read_head(
        reader,
        &mut input,
        client,
        abort.handle(),
        Some(deadline),
        None,
    )
    .await;
    // Boxed: a connection waiting for its first request holds only the wait's state.
    Box::pin(serve_first(head, input, reader, writer, client)).await
}

/// Answers the first request head (or its failure), then relays the connection.
async fn serve_first(
    head: Result<Option<RequestHead>, HeadFailure>,
    input: Vec<u8>,
    reader: &mut TlsReader,
    writer: &mut TlsWriter,
    client: &Client<'_>,
) {
    let worker = client.worker;
    let received = Instant::now();
    let head = match head {
        Ok(Some(head)) => head,
        Err(HeadFailure::Refused(error)) => {
            let response = GatewayResponse::for_http_error(&error);
            let entry = client.unparsed_entry(input.len());
            return refuse(reader, writer, client, &response, true, entry).await;
        }
        Ok(None) | Err(HeadFailure::Broken) => return,
    };
    let with_body = head.method() != "HEAD";
    let user = match requests::authorize(&head, client).await {
        Ok(user) => user,
        Err(response) => {
            let entry = client.log_entry(&head, None, received);
            return refuse(reader, writer, client, &response, with_body, entry).await;
        }
    };
    let entry = client.log_entry(&head, user.as_deref(), received);
    let local = client.local;
    let in_use: usize = local.backend_load.iter().map(std::cell::Cell::get).sum();
    if in_use >= local.ingress.upstream.max_connections_per_worker {
        let response = GatewayResponse::backends_busy();
        return refuse(reader, writer, client, &response, with_body, entry).await;
    }
    let (backend, backend_reader, backend_writer) = match backend(client).await {
        Some(connection) => connection,
        None => {
            let response = GatewayResponse::bad_gateway("no backend could be reached");
            return refuse(reader, writer, client, &response, with_body, entry).await;
        }
    };
    // A connection that began with this client's PROXY header serves this client only.
    let settings = &local.ingress.upstream.backends()[backend];
    let pooled = settings.proxy_protocol == ProxyProtocolVersion::None;
    let format = settings.identity_format;

    // Released however this ends, the connection's future dropped included (a
    // revocation closes the connection from outside).
    let in_use = InUse::take(&local.backend_load[backend]);
    let idle = worker.limits.idle_timeout;
    let exchange = Exchange::new();
    let both = async {
        monoio::join!(
            requests::relay_requests(
                reader,
                backend_writer,
                format,
                (head, user, entry, received),
                input,
                client,
                &exchange
            ),
            responses::relay_responses(backend_reader, writer, &exchange, client),
        )
    };
    let response_timeout = local.ingress.upstream.response_timeout;
    let ended = monoio::select! {
        ended = both => Some(ended),
        _ = watchdog(&exchange, idle, response_timeout) => None,
    };
    drop(in_use);
    // A backend connection left clean by this client serves the next one.
    if let (Some((Some(backend_writer), Some(backend_reader))), true) = (ended, pooled) {
        local
            .idle_backends
            .put(backend, backend_reader, backend_writer);
    }
    // Requests that got no response (the client or the backend went away) are logged
    // with status 0.
    for entry in exchange.take_unanswered() {
        client.log_request(Some(&entry), 0, 0);
    }
    if exchange.gave_final_response() {
        linger(reader).await;
    }
}

/// The PROXY protocol header `backend` wants at the start of a connection for `client`.
fn proxy_header(backend: &Backend, client: &Client<'_>) -> Option<Vec<u8>> {
    let destination = client.tls.destination?;
    match backend.proxy_protocol {
        ProxyProtocolVersion::None => None,
        ProxyProtocolVersion::V1 => Some(proxy_protocol::v1_header(client.peer, destination)),
        ProxyProtocolVersion::V2 => {
            let device = client.chain.and_then(|chain| {
                let leaf = chain.certificates.first()?;
                Some((chain.identity.common_name.as_deref(), leaf.as_ref()))
            });
            let facts = proxy_protocol::ClientFacts {
                source: client.peer,
                destination,
                sni: client.sni,
                alpn: client.tls.alpn.then_some(crate::tls::ALPN_HTTP11),
                tls_version: client.tls.version,
                device,
                certificate_in_handshake: !client.tls.resumed,
            };
            Some(proxy_protocol::v2_header(&facts, backend.certificate_tlv))
        }
    }
}

/// A TLS version as OpenSSL names it, the form PROXY headers carry.
fn version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    }
}

/// One exchange counted against a backend on this worker, until dropped.
struct InUse<'a>(&'a std::cell::Cell<usize>);

impl<'a> InUse<'a> {
    fn take(count: &'a std::cell::Cell<usize>) -> Self {
        count.set(count.get() + 1);
        Self(count)
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A backend connection: an idle one of this worker's, or a new one (round robin, the
/// next backend when one refuses), which begins with the client's PROXY header when the
/// backend reads them.
async fn backend(client: &Client<'_>) -> Option<(usize, BackendReader, BackendWriter)> {
    let (worker, local) = (client.worker, client.local);
    let health = local.ingress.upstream.health();
    while let Some(idle) = local.idle_backends.take().await {
        // One to a backend that has been marked down or ejected since is closed.
        if health[idle.0].is_available() {
            debug!(backend = idle.0, "forwarding on an idle backend connection");
            return Some(idle);
        }
    }
    let started = Instant::now();
    let connected = local
        .ingress
        .upstream
        .connect(local.preferred_backend(), |backend| {
            proxy_header(backend, client)
        })
        .await;
    worker
        .latencies
        .time(Timed::BackendConnect, started.elapsed());
    match connected {
        Ok((stream, backend)) => {
            debug!(backend, "forwarding");
            let (reader, writer) = stream.into_split();
            Some((backend, reader, writer))
        }
        Err(unreachable) => {
            worker.metrics.backend_unreachable();
            debug!(tried = unreachable.tried, "no backend reachable");
            None
        }
    }
}

/// Answers the client without a backend, logs the request, then closes.
async fn refuse(
    reader: &mut TlsReader,
    writer: &mut TlsWriter,
    client: &Client<'_>,
    response: &GatewayResponse,
    with_body: bool,
    entry: Option<RequestEntry>,
) {
    client.worker.metrics.gateway_response(response.status);
    let bytes = response.to_bytes(with_body);
    client.log_request(entry.as_ref(), response.status, bytes.len() as u64);
    let abort = Abort::new();
    let sent = async {
        writer.finish(&bytes, abort.handle()).await?;
        // The end of the stream now, while what the client still sends is read below.
        writer.shutdown().await
    };
    if monoio::time::timeout(LINGER, sent).await.is_ok() {
        linger(reader).await;
    }
}

/// Reads and drops what the client still sends, briefly, so that a client still
/// sending gets the final response rather than a reset.
async fn linger(reader: &mut TlsReader) {
    let abort = Abort::new();
    let _ = monoio::time::timeout(LINGER, reader.discard_until_closed(abort.handle())).await;
}

/// Aborts the exchange once neither direction has moved a byte for `idle`; gives up on
/// the backend (504, or a close when part of the response has gone out) once it has
/// been silent for `response_timeout` while a response is due. Then waits for the
/// exchange to wind down.
async fn watchdog(exchange: &Exchange, idle: Duration, response_timeout: Duration) {
    loop {
        let now = Instant::now();
        if now >= exchange.last_activity() + idle {
            debug!(?idle, "idle timeout");
            exchange.abort();
            std::future::pending::<()>().await;
        }
        let response_due = exchange.backend_activity() + response_timeout;
        if exchange.backend_owes_response() && now >= response_due {
            debug!(?response_timeout, "the backend did not answer in time");
            exchange.poison(GatewayResponse::gateway_timeout(response_timeout));
            std::future::pending::<()>().await;
        }
        // A request forwarded while this sleeps sets a backend deadline no earlier than
        // `response_timeout` from now.
        let mut next = (exchange.last_activity() + idle).min(now + response_timeout);
        if exchange.backend_owes_response() {
            next = next.min(response_due);
        }
        let pause = next
            .saturating_duration_since(now)
            .max(Duration::from_millis(10));
        monoio::time::sleep(pause).await;
    }
}
