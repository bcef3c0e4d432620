//! TLS termination: the server configuration, device (client certificate) verification
//! and its chain cache, revocation, session tickets, and rustls driven over monoio
//! sockets. What happens to the decrypted bytes is the proxy's business.

pub mod backend;
pub mod chain_cache;
pub mod client_auth;
pub mod handshake_notes;
pub mod identity;
pub mod ocsp;
pub mod pem;
mod refusal;
pub mod revocation;
mod server;
pub mod stream;
pub mod tickets;
pub mod trust;

pub use identity::ClientIdentity;
pub use refusal::HandshakeRefusal;
pub use server::{ServerCertificate, TlsPolicy, ALPN_HTTP11};
pub use trust::{describe_time, unix_now};
