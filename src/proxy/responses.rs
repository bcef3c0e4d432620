//! The response direction: relay the backend's bytes to the client, following where
//! each response ends, so that the gateway's own final response is written only after
//! every forwarded request has been answered, never inside a response.

use tracing::debug;

use super::exchange::{Exchange, PendingRequest};
use super::requests::Client;
use crate::http::backend_response::{Boundary, ResponseTracker};
use crate::http::GatewayResponse;
use crate::metrics::Timed;
use crate::tls::stream::TlsWriter;
use crate::upstream::BackendReader;

/// Size of each backend read.
const READ_CHUNK: usize = 16 * 1024;

/// What the response side does after passing a batch of bytes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Keep relaying.
    Continue,
    /// Close the client connection: the backend broke, or closes with requests pending.
    Close,
    /// The client's last request was answered (it asked to close, or the backend does):
    /// close the client connection, and keep the backend connection if it stays open.
    Finish,
    /// The backend broke a response of which nothing was passed on: answer 502 for it,
    /// then close.
    BadGateway(&'static str),
}

/// Relays responses until the exchange is over, then sends the gateway's final response
/// (if any) and closes the client connection. Gives the backend connection back when it
/// stands between two responses and the backend keeps it open.
pub async fn relay_responses(
    mut backend: BackendReader,
    client: &mut TlsWriter,
    exchange: &Exchange,
    requester: &Client<'_>,
) -> Option<BackendReader> {
    let worker = requester.worker;
    let mut state = Relay {
        tracker: ResponseTracker::default(),
        tunnel: false,
        backend_closes: false,
        response_bytes: 0,
    };
    let mut input = Vec::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    loop {
        if exchange.response_side_done() && !state.tunnel {
            let clean = finish(client, exchange, &state.tracker, requester).await;
            return (clean && state.reusable()).then_some(backend);
        }
        input.clear();
        // The backend's turn: the response timeout runs while this read waits.
        exchange.set_awaiting_backend(true);
        let (result, returned) = backend.read(input, exchange.response_read_cancel()).await;
        exchange.set_awaiting_backend(false);
        input = returned;
        let after = match result {
            Ok(0) => {
                state.backend_closes = true;
                backend_closed(&state, exchange)
            }
            Ok(read) => {
                exchange.backend_touch();
                out.clear();
                let after = pass_on(&input[..read], &mut state, &mut out, exchange, requester);
                let sent = match after {
                    // The last response and the end of the session go out together.
                    After::Finish | After::Close => client.finish(&out, exchange.cancel()).await,
                    After::Continue | After::BadGateway(_) => {
                        client.write_all(&out, exchange.cancel()).await
                    }
                };
                if sent.is_err() {
                    exchange.abort();
                    return None;
                }
                after
            }
            Err(_) if exchange.is_aborted() => return None,
            // Woken: the request side is done; the loop's first check decides.
            Err(_) => After::Continue,
        };
        match after {
            After::Continue => {}
            After::Finish => {
                exchange.abort();
                return state.reusable().then_some(backend);
            }
            After::Close => {
                // After a batch of bytes `finish` has closed the session; after the
                // backend's end of stream it has not yet.
                let _ = client.close(exchange.cancel()).await;
                exchange.abort();
                return None;
            }
            After::BadGateway(reason) => {
                let response = GatewayResponse::bad_gateway(reason);
                worker.metrics.gateway_response(response.status);
                let bytes = response.to_bytes(true);
                let entry = exchange.take_entry();
                requester.log_request(entry.as_ref(), response.status, bytes.len() as u64);
                let _ = client.finish(&bytes, exchange.cancel()).await;
                exchange.abort();
                return None;
            }
        }
    }
}

/// Where the response side stands.
struct Relay {
    tracker: ResponseTracker,
    tunnel: bool,
    backend_closes: bool,
    /// Bytes of the current response passed on so far, for the access log.
    response_bytes: u64,
}

impl Relay {
    /// Whether the backend connection can serve another exchange.
    fn reusable(&self) -> bool {
        !self.tunnel && !self.backend_closes && self.tracker.at_response_start()
    }
}

/// Splits a batch of backend bytes at response boundaries and acts on each.
fn pass_on(
    mut input: &[u8],
    state: &mut Relay,
    out: &mut Vec<u8>,
    exchange: &Exchange,
    client: &Client<'_>,
) -> After {
    let tracker = &mut state.tracker;
    while !input.is_empty() {
        if state.tunnel {
            out.extend_from_slice(input);
            return After::Continue;
        }
        let Some(front) = exchange.front() else {
            debug!("backend sent bytes no request asked for");
            return After::Close;
        };
        // Where this response began in `out`, while none of it has been passed on.
        let untouched = tracker.at_response_start().then_some(out.len());

        let before = out.len();
        let (used, boundary) = match tracker.advance(input, front.is_head, out) {
            Ok(step) => step,
            Err(error) => {
                debug!(?error, "backend response is malformed");
                return broken(out, untouched, "the backend's response was not valid HTTP");
            }
        };
        input = &input[used..];
        let final_head = matches!(
            boundary,
            Some(Boundary::FinalHead { .. } | Boundary::Complete { .. })
        );
        if let (Some(start), true) = (untouched, final_head) {
            announce_close_when_draining(out, start, &front, exchange, client);
        }
        state.response_bytes += (out.len() - before) as u64;
        match boundary {
            None | Some(Boundary::Interim) => {}
            Some(Boundary::FinalHead { .. }) if front.upgrade => exchange.decide_upgrade(false),
            Some(Boundary::FinalHead { .. }) => {}
            Some(Boundary::Complete { status, close }) => {
                let latencies = &client.worker.latencies;
                latencies.time(Timed::Request, front.received.elapsed());
                let entry = exchange.take_entry();
                client.log_request(entry.as_ref(), status, state.response_bytes);
                state.response_bytes = 0;
                exchange.answered();
                if front.upgrade {
                    exchange.decide_upgrade(false);
                }
                state.backend_closes |= close;
                if close && exchange.pending() > 0 {
                    // Requests already forwarded will not be answered.
                    return After::Close;
                }
                if close || front.close || exchange.is_closing() {
                    return After::Finish;
                }
            }
            Some(Boundary::Switched) if front.upgrade => {
                let entry = exchange.take_entry();
                client.log_request(entry.as_ref(), 101, state.response_bytes);
                state.response_bytes = 0;
                exchange.answered();
                exchange.decide_upgrade(true);
                state.tunnel = true;
            }
            Some(Boundary::Switched) => {
                debug!("backend switched protocols unasked");
                return broken(out, untouched, "the backend switched protocols unasked");
            }
        }
    }
    After::Continue
}

/// While the worker drains (or the connection's ingress has been replaced by a
/// configuration reload), the response to the last request forwarded tells the client
/// the connection closes after it (RFC 9112 §9.6), so that it sends nothing more here.
/// `head_start` is where the response's head begins in `out`, which ends with it.
fn announce_close_when_draining(
    out: &mut Vec<u8>,
    head_start: usize,
    front: &PendingRequest,
    exchange: &Exchange,
    client: &Client<'_>,
) {
    let draining = client.closing();
    if !draining || front.close || front.upgrade || exchange.pending() != 1 {
        return;
    }
    if !out[head_start..].ends_with(b"\r\n\r\n") {
        return;
    }
    let at = out.len() - 2;
    out.splice(at..at, b"connection: close\r\n".iter().copied());
    exchange.close_after_current();
}

/// A response the backend broke: answered with 502 if none of it has been passed on
/// (`untouched` is where it began in `out`), else the connection just closes.
fn broken(out: &mut Vec<u8>, untouched: Option<usize>, reason: &'static str) -> After {
    match untouched {
        Some(start) => {
            out.truncate(start);
            After::BadGateway(reason)
        }
        None => After::Close,
    }
}

/// The backend closed its side.
fn backend_closed(state: &Relay, exchange: &Exchange) -> After {
    let tracker = &state.tracker;
    if state.tunnel || tracker.ends_at_close() {
        exchange.answered();
        return After::Close;
    }
    if exchange.front().is_some() && tracker.at_response_start() {
        // Nothing of this response reached the client: it can still be told why.
        exchange.poison(GatewayResponse::bad_gateway(
            "the backend closed the connection",
        ));
        return After::Continue;
    }
    debug!("backend closed the connection");
    After::Close
}

/// Sends the final response, if there is one and it cannot land inside another, then
/// closes the client connection. Returns whether the exchange ended cleanly: no request
/// broken off, nothing aborted.
async fn finish(
    client: &mut TlsWriter,
    exchange: &Exchange,
    tracker: &ResponseTracker,
    requester: &Client<'_>,
) -> bool {
    let worker = requester.worker;
    let ended_cleanly = !exchange.is_poisoned() && !exchange.is_aborted();
    let clean = !exchange.is_poisoned() || tracker.at_response_start();
    let mut last = Vec::new();
    if let Some((response, with_body)) = exchange.take_final_response() {
        if clean && !exchange.is_aborted() {
            worker.metrics.gateway_response(response.status);
            last = response.to_bytes(with_body);
            let entry = exchange.take_final_entry();
            requester.log_request(entry.as_ref(), response.status, last.len() as u64);
        }
    }
    if !exchange.is_aborted() {
        let _ = client.finish(&last, exchange.cancel()).await;
        if !last.is_empty() {
            // The end of the stream now; the client may still be sending, and the
            // connection lingers to read it.
            let _ = client.shutdown().await;
        }
    }
    // The request side may still be reading: nothing it reads can be forwarded now.
    exchange.abort();
    ended_cleanly
}
