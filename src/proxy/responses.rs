//! The response direction: relay the backend's bytes to the client, following where
//! each response ends, so that the gateway's own final response is written only after
//! every forwarded request has been answered, never inside a response.

use tracing::debug;

use super::exchange::Exchange;
use super::Worker;
use crate::http::backend_response::{Boundary, ResponseTracker};
use crate::http::GatewayResponse;
use crate::tls::stream::TlsWriter;
use crate::upstream::BackendReader;

/// Size of each backend read.
const READ_CHUNK: usize = 16 * 1024;

/// What the response side does after passing a batch of bytes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Keep relaying.
    Continue,
    /// Close the client connection (a response asked for it, or the backend broke).
    Close,
    /// The backend broke a response of which nothing was passed on: answer 502 for it,
    /// then close.
    BadGateway(&'static str),
}

/// Relays responses until the exchange is over, then sends the gateway's final response
/// (if any) and closes the client connection.
pub async fn relay_responses(
    mut backend: BackendReader,
    client: &mut TlsWriter,
    exchange: &Exchange,
    worker: &Worker,
) {
    let mut tracker = ResponseTracker::default();
    let mut input = Vec::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut tunnel = false;
    loop {
        if exchange.response_side_done() && !tunnel {
            return finish(client, exchange, &tracker, worker).await;
        }
        input.clear();
        let (result, returned) = backend.read(input, exchange.response_read_cancel()).await;
        input = returned;
        let after = match result {
            Ok(0) => backend_closed(&tracker, exchange, tunnel),
            Ok(read) => {
                exchange.touch();
                out.clear();
                let after = pass_on(
                    &input[..read],
                    &mut tracker,
                    &mut out,
                    &mut tunnel,
                    exchange,
                );
                if client.write_all(&out, exchange.cancel()).await.is_err() {
                    exchange.abort();
                    return;
                }
                after
            }
            Err(_) if exchange.is_aborted() => return,
            // Woken: the request side is done; the loop's first check decides.
            Err(_) => After::Continue,
        };
        match after {
            After::Continue => {}
            After::Close => {
                let _ = client.close(exchange.cancel()).await;
                exchange.abort();
                return;
            }
            After::BadGateway(reason) => {
                let response = GatewayResponse::bad_gateway(reason);
                worker.metrics.gateway_response(response.status);
                let _ = client
                    .write_all(&response.to_bytes(true), exchange.cancel())
                    .await;
                let _ = client.close(exchange.cancel()).await;
                exchange.abort();
                return;
            }
        }
    }
}

/// Splits a batch of backend bytes at response boundaries and acts on each.
fn pass_on(
    mut input: &[u8],
    tracker: &mut ResponseTracker,
    out: &mut Vec<u8>,
    tunnel: &mut bool,
    exchange: &Exchange,
) -> After {
    while !input.is_empty() {
        if *tunnel {
            out.extend_from_slice(input);
            return After::Continue;
        }
        let Some(front) = exchange.front() else {
            debug!("backend sent bytes no request asked for");
            return After::Close;
        };
        // Where this response began in `out`, while none of it has been passed on.
        let untouched = tracker.at_response_start().then_some(out.len());

        let (used, boundary) = match tracker.advance(input, front.is_head, out) {
            Ok(step) => step,
            Err(error) => {
                debug!(?error, "backend response is malformed");
                return broken(out, untouched, "the backend's response was not valid HTTP");
            }
        };
        input = &input[used..];
        match boundary {
            None | Some(Boundary::Interim) => {}
            Some(Boundary::FinalHead { .. }) if front.upgrade => exchange.decide_upgrade(false),
            Some(Boundary::FinalHead { .. }) => {}
            Some(Boundary::Complete { close, .. }) => {
                exchange.answered();
                if front.upgrade {
                    exchange.decide_upgrade(false);
                }
                if close || front.close {
                    return After::Close;
                }
            }
            Some(Boundary::Switched) if front.upgrade => {
                exchange.answered();
                exchange.decide_upgrade(true);
                *tunnel = true;
            }
            Some(Boundary::Switched) => {
                debug!("backend switched protocols unasked");
                return broken(out, untouched, "the backend switched protocols unasked");
            }
        }
    }
    After::Continue
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
fn backend_closed(tracker: &ResponseTracker, exchange: &Exchange, tunnel: bool) -> After {
    if tunnel || tracker.ends_at_close() {
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
/// closes the client connection.
async fn finish(
    client: &mut TlsWriter,
    exchange: &Exchange,
    tracker: &ResponseTracker,
    worker: &Worker,
) {
    let clean = !exchange.is_poisoned() || tracker.at_response_start();
    if let Some((response, with_body)) = exchange.take_final_response() {
        if clean && !exchange.is_aborted() {
            worker.metrics.gateway_response(response.status);
            let _ = client
                .write_all(&response.to_bytes(with_body), exchange.cancel())
                .await;
        }
    }
    if !exchange.is_aborted() {
        let _ = client.close(exchange.cancel()).await;
    }
    // The request side may still be reading: nothing it reads can be forwarded now.
    exchange.abort();
}
