//! HTTP/1.1 as the gateway sees it: the responses it writes itself. Request-head parsing
//! and body framing join this module with per-request authorization.

pub mod response;

pub use response::GatewayResponse;
