//! HTTP/1.1 as the gateway sees it: request heads and their framing, chunked bodies
//! tracked to find the next head, backend response heads read to find each response's
//! end, the head forwarded to a backend, and the gateway's own responses.

pub mod backend_response;
pub mod chunked;
pub mod client_cert;
pub mod head;
pub mod response;
pub mod rewrite;

pub use response::GatewayResponse;

/// A request the gateway will not forward, for what it is rather than who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is larger than `limits.max_head_bytes` (431).
    HeadTooLarge,
    /// More fields than `limits.max_headers` (431).
    TooManyHeaders,
    /// Malformed or ambiguous (400), with a reason safe to show the client.
    Malformed(&'static str),
    /// The head did not arrive within `limits.request_head_timeout` (408).
    HeadTimeout,
}
