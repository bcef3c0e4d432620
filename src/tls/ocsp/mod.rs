//! OCSP (RFC 6960): client certificates checked with their issuer's responder, and the
//! server certificate's response fetched for stapling. Encoding is x509-ocsp's; the
//! checks, the policy and the caching are here. The verifier (`client_auth`) decides what
//! a verdict means for a handshake.

pub mod checker;
pub mod path;
pub mod protocol;
pub mod staple;

pub use checker::{allow_waiting, OcspChecker, Verdict};
