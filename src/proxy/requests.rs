//! The request direction: read each request head, check it, authorize it, and only
//! then forward its head (rewritten) and its body (framed, not parsed) to the backend.
//! A refused request is never forwarded, nor is anything after it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::CancelHandle;
use tracing::debug;

use super::exchange::{Exchange, PendingRequest};
use super::{LocalIngress, Worker};
use crate::access_log::{ConnectionFacts, RequestEntry};
use crate::auth::paths::PathDecision;
use crate::auth::{AuthRefusal, Authorized, Verdict, UNKNOWN_KID_WAIT};
use crate::config::IdentityFormat;
use crate::http::chunked::ChunkedBody;
use crate::http::client_cert;
use crate::http::head::{self, BodyFraming, RequestHead};
use crate::http::rewrite::{write_forwarded_head, IdentityHeaders};
use crate::http::{GatewayResponse, HttpError};
use crate::metrics::Timed;
use crate::tls::chain_cache::VerifiedChain;
use crate::tls::stream::TlsReader;
use crate::tls::ClientIdentity;
use crate::upstream::BackendWriter;

/// The most requests forwarded and not yet answered on one connection.
const MAX_PIPELINED: usize = 16;

/// How often a request waiting for a key fetch looks again.
const KEY_POLL: Duration = Duration::from_millis(10);

/// Who is on the other end of the connection.
pub struct Client<'a> {
    /// The worker serving it.
    pub worker: &'a Worker,
    /// The ingress it reached, as this worker serves it.
    pub local: &'a LocalIngress,
    /// Its address.
    pub peer: SocketAddr,
    /// The SNI it sent, kept only when there is an access log.
    pub sni: Option<&'a str>,
    /// The verified device, when it presented a certificate.
    pub device: Option<&'a ClientIdentity>,
    /// Its verified chain, the leaf first.
    pub chain: Option<&'a VerifiedChain>,
    /// What its handshake established, for PROXY protocol headers.
    pub tls: TlsSummary,
}

/// What a PROXY protocol header tells a backend about the handshake.
#[derive(Debug, Clone, Copy)]
pub struct TlsSummary {
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
    /// The TLS version, as OpenSSL names it.
    pub version: Option<&'static str>,
    /// The session was resumed from a ticket (the certificate is the session's, not
    /// presented again).
    pub resumed: bool,
    /// The client and the gateway agreed on `http/1.1` by ALPN.
    pub alpn: bool,
}

impl Client<'_> {
    /// Whether the connection is to close once no request is in flight: the worker
    /// drains, or a configuration reload replaced the ingress it reached. A reload is
    /// looked for here too, so that a response finished just after one says so, on a
    /// worker that has accepted nothing since (its tick looks once a second).
    pub fn closing(&self) -> bool {
        self.worker.notice_reload();
        self.worker.draining.is_raised() || self.local.retired.is_raised()
    }

    /// Completes once [`Self::closing`] holds.
    pub async fn wait_closing(&self) {
        monoio::select! {
            _ = self.worker.draining.wait() => {},
            _ = self.local.retired.wait() => {},
        }
    }

    /// The access log's entry for a request, when there is an access log.
    pub fn log_entry(
        &self,
        head: &RequestHead,
        user: Option<&Authorized>,
        received: Instant,
    ) -> Option<RequestEntry> {
        let log = self.worker.access_log.as_ref()?;
        Some(RequestEntry {
            method: head.method().to_owned(),
            path: log.path_of(head.target()).to_owned(),
            user: user.map(|user| (user.subject.clone(), user.issuer.clone())),
            received,
            authorization: received.elapsed(),
            bytes_in: head.len() as u64,
        })
    }

    /// The access log's entry for bytes that never made a request head.
    pub fn unparsed_entry(&self, bytes: usize) -> Option<RequestEntry> {
        self.worker.access_log.as_ref()?;
        Some(RequestEntry {
            method: "-".to_owned(),
            path: "-".to_owned(),
            user: None,
            received: Instant::now(),
            authorization: Duration::ZERO,
            bytes_in: bytes as u64,
        })
    }

    /// Logs a request the gateway answered itself, or whose response ended.
    pub fn log_request(&self, entry: Option<&RequestEntry>, status: u16, bytes_out: u64) {
        let (Some(log), Some(entry)) = (&self.worker.access_log, entry) else {
            return;
        };
        let facts = ConnectionFacts {
            client: self.peer,
            sni: self.sni,
            device: self
                .device
                .map(|device| (device.subject.as_str(), device.fingerprint.as_str())),
        };
        log.request(facts, entry, status, bytes_out);
    }
}

/// Why no request head could be read.
pub enum HeadFailure {
    /// The bytes are not an acceptable head.
    Refused(HttpError),
    /// The connection failed or closed mid-head.
    Broken,
}

/// Reads the next request head, consuming it from `input`. `Ok(None)`: no request
/// came, and none is owed an answer: the client closed cleanly between requests, the
/// worker drains, or the first request's time ran out before any of it arrived.
///
/// The head must be whole by `deadline`, or, when that is `None`, within
/// `limits.request_head_timeout` of its first byte; a late head gets 408. While no
/// byte of a head has arrived, draining ends the wait. Bytes that arrive count as
/// activity on `exchange`, when the connection has one.
pub async fn read_head(
    reader: &mut TlsReader,
    input: &mut Vec<u8>,
    client: &Client<'_>,
    cancel: &CancelHandle,
    mut deadline: Option<Instant>,
    exchange: Option<&Exchange>,
) -> Result<Option<RequestHead>, HeadFailure> {
    let worker = client.worker;
    loop {
        if !input.is_empty() {
            match head::parse(input, client.local.ingress.head_limits) {
                Ok(Some(head)) => {
                    input.drain(..head.len());
                    return Ok(Some(head));
                }
                Ok(None) => {}
                Err(error) => return Err(HeadFailure::Refused(error)),
            }
            deadline.get_or_insert_with(|| Instant::now() + worker.limits.request_head_timeout);
        }
        let between_requests = input.is_empty();
        // A connection whose ingress was replaced while it shook hands still gets its
        // first request answered (with `Connection: close`).
        let first = exchange.is_none();
        let closing = match first {
            true => worker.draining.is_raised(),
            false => client.closing(),
        };
        if between_requests && closing {
            return Ok(None);
        }
        let late = async {
            match deadline {
                Some(deadline) => {
                    monoio::time::sleep(deadline.saturating_duration_since(Instant::now())).await
                }
                None => std::future::pending().await,
            }
        };
        let drained = async {
            match (between_requests, first) {
                (true, true) => worker.draining.wait().await,
                (true, false) => client.wait_closing().await,
                (false, _) => std::future::pending().await,
            }
        };
        let woke = monoio::select! {
            read = reader.read(input, cancel) => Woke::Read(read),
            _ = late => Woke::Late,
            _ = drained => return Ok(None),
        };
        let read = match woke {
            Woke::Read(read) => read,
            Woke::Late if between_requests => return Ok(None),
            Woke::Late => {
                debug!(received = input.len(), "request head timeout");
                return Err(HeadFailure::Refused(HttpError::HeadTimeout));
            }
        };
        match read {
            Ok(0) if input.is_empty() => return Ok(None),
            Ok(0) => return Err(HeadFailure::Broken),
            // Head bytes are activity: the idle timeout does not cut a head that
            // arrives within its own timeout.
            Ok(_) => {
                if let Some(exchange) = exchange {
                    exchange.touch();
                }
            }
            Err(error) => {
                debug!(%error, "client read failed");
                return Err(HeadFailure::Broken);
            }
        }
    }
}

enum Woke {
    Read(std::io::Result<usize>),
    Late,
}

/// Authorizes one request: `Ok(None)` when the ingress checks no token.
pub async fn authorize(
    head: &RequestHead,
    client: &Client<'_>,
) -> Result<Option<Rc<Authorized>>, GatewayResponse> {
    let Some(authorizer) = &client.local.ingress.auth else {
        return Ok(None);
    };
    let rule = match authorizer.decide_path(head.target()) {
        // A WebSocket tunnel carries whatever follows unchecked: it needs a token even
        // on a public path.
        Ok(PathDecision::Public) if !head.websocket_upgrade => {
            debug!(path = head.target(), "public path: no token asked for");
            return Ok(None);
        }
        Ok(PathDecision::Public | PathDecision::Default) => None,
        Ok(PathDecision::Claims(rule)) => Some(rule),
        Err(reason) => {
            debug!(reason, "path refused");
            return Err(GatewayResponse::for_http_error(&HttpError::Malformed(
                reason,
            )));
        }
    };
    let started = Instant::now();
    let values: Vec<&[u8]> = head.values("authorization").collect();
    let thumbprint = client.device.map(|device| device.thumbprint.as_str());
    let mut verdict = client
        .local
        .authorize(authorizer, &values, thumbprint, rule);

    if matches!(verdict, Verdict::UnknownKey) {
        let keys = authorizer.keys();
        let before = keys.fetches_finished();
        if keys.request_fetch_for_unknown_kid() {
            let deadline = Instant::now() + UNKNOWN_KID_WAIT;
            while keys.fetches_finished() == before && Instant::now() < deadline {
                monoio::time::sleep(KEY_POLL).await;
            }
            verdict = client
                .local
                .authorize(authorizer, &values, thumbprint, rule);
        }
    }

    client
        .worker
        .latencies
        .time(Timed::Authorization, started.elapsed());
    let refusal = match verdict {
        Verdict::Allowed(user) => {
            debug!(
                sub = user.subject.as_deref().unwrap_or("-"),
                kid = user.kid.as_deref().unwrap_or("-"),
                "token accepted"
            );
            return Ok(Some(user));
        }
        Verdict::Refused(refusal) => refusal,
        Verdict::UnknownKey => AuthRefusal::InvalidToken("unknown key id"),
    };
    debug!(reason = refusal.label(), detail = ?refusal, "request refused");
    client.worker.metrics.auth_refused(&refusal);
    Err(GatewayResponse::for_auth_refusal(
        &refusal,
        &client.local.ingress.hostname,
    ))
}

/// The fields that tell a backend about the connection and its device, in `format`:
/// those whose values are to be made safe for a header, and those the gateway encoded
/// itself. They are the same for every request on the connection, so they are made
/// once, when the first request goes to a backend.
pub fn device_fields<'a>(
    client: &'a Client<'_>,
    format: IdentityFormat,
) -> client_cert::Fields<'a> {
    let names = &client.local.ingress.identity;
    let mut text = vec![
        ("x-forwarded-for", client.peer.ip().to_string()),
        ("x-forwarded-proto", "https".to_owned()),
    ];
    let mut encoded = Vec::new();
    match (format, client.chain) {
        (IdentityFormat::Edge, Some(chain)) => {
            let device = &chain.identity;
            text.push((names.cert_subject.as_str(), device.subject.clone()));
            text.push((names.cert_sans.as_str(), device.sans.join(", ")));
            text.push((names.cert_fingerprint.as_str(), device.fingerprint.clone()));
        }
        (IdentityFormat::Xfcc, Some(chain)) => {
            encoded.push(("x-forwarded-client-cert", client_cert::xfcc(chain)));
        }
        (IdentityFormat::Nginx, Some(chain)) => {
            let described = client_cert::nginx_fields(chain);
            text.extend(described.text);
            encoded.extend(described.encoded);
        }
        (IdentityFormat::Nginx, None) => {
            encoded.push(("x-ssl-client-verify", "NONE".to_owned()));
        }
        (_, None) => {}
    }
    client_cert::Fields { text, encoded }
}

/// The fields that name the user of one request, always in the gateway's own fields,
/// borrowed from its verdict.
fn user_fields<'a>(
    names: &'a IdentityHeaders,
    user: Option<&'a Authorized>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    let subject = user.and_then(|user| user.subject.as_deref());
    let issuer = user.and_then(|user| user.issuer.as_deref());
    let claims = (names.claims.iter())
        .zip(user.map_or(&[][..], |user| &user.exported))
        .filter_map(|(name, value)| Some((name.as_str(), value.as_deref()?)));
    (subject
        .map(|value| (names.token_subject.as_str(), value))
        .into_iter())
    .chain(issuer.map(|value| (names.token_issuer.as_str(), value)))
    .chain(claims)
}

fn as_pairs<'a>(fields: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    fields
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

/// The request direction once a backend is connected: forwards `first`, then every
/// following request that passes, until the client stops, a request is refused, or the
/// connection becomes a tunnel. Gives the backend connection back when nothing of an
/// unfinished request went to it, so that it can serve another client.
pub async fn relay_requests(
    reader: &mut TlsReader,
    mut backend: BackendWriter,
    format: IdentityFormat,
    first: Passed,
    mut input: Vec<u8>,
    client: &Client<'_>,
    exchange: &Exchange,
) -> Option<BackendWriter> {
    let cancel = exchange.cancel();
    let mut next = Some(first);
    let mut scratch = Vec::with_capacity(4096);
    let device = device_fields(client, format);
    let encoded = as_pairs(&device.encoded);
    loop {
        let (head, user, entry, received) = match next.take() {
            Some(request) => request,
            None => match next_request(reader, &mut input, client, exchange).await {
                Some(request) => request,
                None => return (!exchange.is_aborted()).then_some(backend),
            },
        };
        while exchange.pending() >= MAX_PIPELINED && !exchange.is_aborted() {
            exchange.responded.wait().await;
        }
        if exchange.is_aborted() {
            return None;
        }
        if exchange.is_closing() {
            // The client was told the connection closes (a drain): this request, sent
            // before it heard, is not forwarded, and it will retry elsewhere.
            exchange.finish_requests(None);
            return Some(backend);
        }

        exchange.forwarded(
            PendingRequest {
                is_head: head.method() == "HEAD",
                upgrade: head.websocket_upgrade,
                close: head.close,
                received,
            },
            entry,
        );
        let mut fields = as_pairs(&device.text);
        fields.extend(user_fields(&client.local.ingress.identity, user.as_deref()));
        write_forwarded_head(
            &mut scratch,
            &head,
            &client.local.ingress.identity.filter,
            &fields,
            &encoded,
        );
        client.worker.metrics.request_forwarded();
        if let Err(failure) = send(&mut backend, &mut scratch, cancel).await {
            debug!(error = %failure, "backend write failed");
            exchange.abort();
            return None;
        }
        exchange.backend_touch();
        exchange.set_body_in_flight(true);
        let body = forward_body(reader, &mut backend, &mut input, head.framing, exchange).await;
        exchange.set_body_in_flight(false);
        match body {
            Ok(bytes) => exchange.add_bytes_in(bytes),
            Err(BodyFailure::Framing(error)) => {
                debug!(?error, "request body framing broke; closing");
                exchange.poison(GatewayResponse::for_http_error(&error));
                return None;
            }
            Err(BodyFailure::Broken) => {
                exchange.abort();
                return None;
            }
        }

        if head.websocket_upgrade {
            match exchange.upgrade_outcome().await {
                Some(true) => {
                    tunnel(reader, backend, input, exchange).await;
                    return None;
                }
                Some(false) => {}
                None => return None,
            }
        }
        if head.close {
            exchange.finish_requests(None);
            return Some(backend);
        }
    }
}

/// A request that passed: its head, its user (when tokens are checked), its access log
/// entry (when there is an access log) and when its head was complete.
pub type Passed = (
    RequestHead,
    Option<Rc<Authorized>>,
    Option<RequestEntry>,
    Instant,
);

/// Reads and checks the next request. `None` when there is none to forward: the
/// exchange has been told why.
async fn next_request(
    reader: &mut TlsReader,
    input: &mut Vec<u8>,
    client: &Client<'_>,
    exchange: &Exchange,
) -> Option<Passed> {
    let head = match read_head(
        reader,
        input,
        client,
        exchange.cancel(),
        None,
        Some(exchange),
    )
    .await
    {
        Ok(Some(head)) => head,
        Ok(None) => {
            exchange.finish_requests(None);
            return None;
        }
        Err(HeadFailure::Refused(error)) => {
            exchange.set_final_entry(client.unparsed_entry(input.len()));
            exchange.finish_requests(Some((GatewayResponse::for_http_error(&error), true)));
            return None;
        }
        Err(HeadFailure::Broken) => {
            exchange.abort();
            return None;
        }
    };
    exchange.touch();
    let received = Instant::now();
    match authorize(&head, client).await {
        Ok(user) => {
            let entry = client.log_entry(&head, user.as_deref(), received);
            Some((head, user, entry, received))
        }
        Err(response) => {
            exchange.set_final_entry(client.log_entry(&head, None, received));
            exchange.finish_requests(Some((response, head.method() != "HEAD")));
            None
        }
    }
}

enum BodyFailure {
    Framing(HttpError),
    Broken,
}

/// Forwards one body: exactly `Content-Length` bytes, or chunks up to the last one.
/// Returns how many bytes it forwarded.
async fn forward_body(
    reader: &mut TlsReader,
    backend: &mut BackendWriter,
    input: &mut Vec<u8>,
    framing: BodyFraming,
    exchange: &Exchange,
) -> Result<u64, BodyFailure> {
    let cancel = exchange.cancel();
    let mut chunked = ChunkedBody::request();
    let mut forwarded = 0u64;
    let mut remaining = match framing {
        BodyFraming::Empty => return Ok(0),
        BodyFraming::Length(length) => length,
        BodyFraming::Chunked => u64::MAX,
    };
    loop {
        let take = match framing {
            BodyFraming::Chunked => chunked.advance(input).map_err(BodyFailure::Framing)?,
            _ => input
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX)),
        };
        if take > 0 {
            remaining = remaining.saturating_sub(take as u64);
            forwarded += take as u64;
            send_prefix(backend, input, take, cancel)
                .await
                .map_err(|_| BodyFailure::Broken)?;
            exchange.backend_touch();
        }
        let finished = match framing {
            BodyFraming::Chunked => chunked.is_done(),
            _ => remaining == 0,
        };
        if finished {
            return Ok(forwarded);
        }
        match reader.read(input, cancel).await {
            Ok(0) | Err(_) => return Err(BodyFailure::Broken),
            Ok(_) => exchange.touch(),
        }
    }
}

/// After a 101: everything the client sends goes to the backend as it is.
async fn tunnel(
    reader: &mut TlsReader,
    mut backend: BackendWriter,
    mut input: Vec<u8>,
    exchange: &Exchange,
) {
    let cancel = exchange.cancel();
    loop {
        if !input.is_empty() {
            let length = input.len();
            if send_prefix(&mut backend, &mut input, length, cancel)
                .await
                .is_err()
            {
                exchange.abort();
                return;
            }
        }
        match reader.read(&mut input, cancel).await {
            Ok(0) => {
                let _ = backend.shutdown().await;
                return;
            }
            Ok(_) => exchange.touch(),
            Err(_) => {
                exchange.abort();
                return;
            }
        }
    }
}

/// Sends and consumes the first `length` bytes of `input`.
async fn send_prefix(
    backend: &mut BackendWriter,
    input: &mut Vec<u8>,
    length: usize,
    cancel: &CancelHandle,
) -> std::io::Result<()> {
    if length == input.len() {
        let whole = std::mem::take(input);
        let (result, mut returned) = backend.send_all(whole, cancel).await;
        returned.clear();
        *input = returned;
        return result;
    }
    let prefix = input[..length].to_vec();
    input.drain(..length);
    backend.send_all(prefix, cancel).await.0
}

async fn send(
    backend: &mut BackendWriter,
    bytes: &mut Vec<u8>,
    cancel: &CancelHandle,
) -> std::io::Result<()> {
    let whole = std::mem::take(bytes);
    let (result, returned) = backend.send_all(whole, cancel).await;
    *bytes = returned;
    result
}
